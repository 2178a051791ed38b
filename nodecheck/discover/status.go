package discover

import (
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// ApplyStatus sets a container's state, exit code and times from the CRI's status of it.
func ApplyStatus(c *nodecheck.Container, st *runtimeapi.ContainerStatus) {
	c.State = State(st.State)
	c.ExitCode = st.ExitCode
	c.Reason, c.Message = st.Reason, st.Message
	c.CreatedAt, c.StartedAt, c.FinishedAt = unixNano(st.CreatedAt), unixNano(st.StartedAt), unixNano(st.FinishedAt)
	if st.Metadata != nil {
		c.Attempt = st.Metadata.Attempt
	}
	if c.Image == "" && st.Image != nil {
		c.Image = st.Image.Image
	}
}

// State maps a CRI container state.
func State(s runtimeapi.ContainerState) nodecheck.ContainerState {
	switch s {
	case runtimeapi.ContainerState_CONTAINER_CREATED:
		return nodecheck.ContainerCreated
	case runtimeapi.ContainerState_CONTAINER_RUNNING:
		return nodecheck.ContainerRunning
	case runtimeapi.ContainerState_CONTAINER_EXITED:
		return nodecheck.ContainerExited
	}
	return nodecheck.ContainerUnknown
}

func unixNano(ns int64) time.Time {
	if ns <= 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}
