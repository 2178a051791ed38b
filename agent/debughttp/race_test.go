//go:build race

package debughttp_test

// raceDetector: the race detector's shadow memory makes RSS no measure of the server's.
const raceDetector = true
