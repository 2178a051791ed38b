//go:build !race

package debughttp_test

const raceDetector = false
