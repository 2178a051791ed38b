// Package agent will hold the long-running DaemonSet loop: triggers from containerd and the API
// server, scheduling of re-checks, and the reporters (metrics, annotations, events, debug HTTP).
// It is empty until its issue lands; `meshdoctor agent` says so instead of pretending to run.
package agent
