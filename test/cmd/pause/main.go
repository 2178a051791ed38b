// Command pause is the test bed's pod sandbox process: it holds the pod's namespaces open until it
// is told to stop, as Kubernetes' pause container does. It is built static and packed into the
// sandbox image the test bed imports into containerd, so no registry is ever needed.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// As PID 1 of the sandbox, reap any orphan re-parented to us, and exit on the signals a
	// runtime sends to stop a sandbox.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
