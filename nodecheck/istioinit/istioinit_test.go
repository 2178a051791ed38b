package istioinit

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

var finished = time.Date(2026, 11, 24, 9, 0, 11, 0, time.UTC)

func initContainer(name string, mod func(*nodecheck.Container)) nodecheck.Container {
	c := nodecheck.Container{Name: name, Role: nodecheck.RoleInit, State: nodecheck.ContainerExited,
		Capabilities: []string{"CAP_NET_ADMIN", "CAP_NET_RAW"}, FinishedAt: finished}
	if mod != nil {
		mod(&c)
	}
	return c
}

// Each case is the pod's init containers as discovery reports them and the findings, as JSON
// without remedies, that the check must produce.
func TestCheck(t *testing.T) {
	cases := []struct {
		name       string
		containers []nodecheck.Container
		want       string
	}{
		{"succeeded", []nodecheck.Container{initContainer("istio-init", nil)}, `[]`},
		{"no containers known (bare netns)", nil, `[]`},
		{"without NET_ADMIN, exited 1", []nodecheck.Container{initContainer("istio-init", func(c *nodecheck.Container) {
			c.Capabilities, c.ExitCode, c.Reason = []string{"CAP_NET_RAW"}, 1, "Error"
		})}, `[
 {"code":"InitMissingNetAdmin","severity":"error","message":"istio-init runs without CAP_NET_ADMIN in its effective capabilities: it cannot write the pod's iptables rules","evidence":{"container":"istio-init","effectiveCapabilities":["CAP_NET_RAW"],"missing":["CAP_NET_ADMIN"]}},
 {"code":"InitContainerFailed","severity":"error","message":"istio-init exited with code 1 at 2026-11-24T09:00:11Z","evidence":{"attempt":0,"container":"istio-init","exitCode":1,"finishedAt":"2026-11-24T09:00:11Z","reason":"Error","state":"exited"}}]`},
		{"no capabilities at all", []nodecheck.Container{initContainer("istio-init", func(c *nodecheck.Container) {
			c.Capabilities = []string{}
		})}, `[
 {"code":"InitMissingNetAdmin","severity":"error","message":"istio-init runs without CAP_NET_ADMIN and CAP_NET_RAW in its effective capabilities: it cannot write the pod's iptables rules","evidence":{"container":"istio-init","effectiveCapabilities":[],"missing":["CAP_NET_ADMIN","CAP_NET_RAW"]}}]`},
		{"capabilities unknown", []nodecheck.Container{initContainer("istio-init", func(c *nodecheck.Container) {
			c.Capabilities = nil
		})}, `[]`},
		{"istio-init validation 126", []nodecheck.Container{initContainer("istio-init", func(c *nodecheck.Container) {
			c.ExitCode = 126
		})}, `[
 {"code":"InitContainerFailed","severity":"error","message":"istio-init exited with code 126 at 2026-11-24T09:00:11Z (126: Istio's validation found that traffic redirection does not work)","evidence":{"attempt":0,"container":"istio-init","exitCode":126,"finishedAt":"2026-11-24T09:00:11Z","state":"exited"}}]`},
		{"istio-validation 126 in CNI mode, after restarts", []nodecheck.Container{initContainer("istio-validation", func(c *nodecheck.Container) {
			c.ExitCode, c.Attempt, c.Capabilities = 126, 3, []string{}
		})}, `[
 {"code":"InitContainerFailed","severity":"error","message":"istio-validation exited with code 126 at 2026-11-24T09:00:11Z (126: Istio's validation found that traffic redirection does not work), restarted 3 time(s): kubelet retries it after failures; in CNI mode the istio-cni plugin sets up the pod's redirection and istio-validation only checks it","evidence":{"attempt":3,"container":"istio-validation","exitCode":126,"finishedAt":"2026-11-24T09:00:11Z","state":"exited"},"component":"istio-cni"}]`},
		{"restarting, running again", []nodecheck.Container{initContainer("istio-init", func(c *nodecheck.Container) {
			c.State, c.Attempt, c.FinishedAt = nodecheck.ContainerRunning, 2, time.Time{}
		})}, `[
 {"code":"InitContainerFailed","severity":"error","message":"istio-init is running, restarted 2 time(s): kubelet retries it after failures","evidence":{"attempt":2,"container":"istio-init","state":"running"}}]`},
		{"succeeded after restarts", []nodecheck.Container{initContainer("istio-init", func(c *nodecheck.Container) {
			c.Attempt = 2
		})}, `[]`},
		{"other containers are not looked at", []nodecheck.Container{{Name: "app", State: nodecheck.ContainerExited, ExitCode: 1, Capabilities: []string{}}}, `[]`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := Check{}.Check(t.Context(), nodecheck.Target{Name: "p", Containers: c.containers})
			if err != nil {
				t.Fatal(err)
			}
			for i := range res.Findings {
				if res.Findings[i].Remedy == "" {
					t.Errorf("%s has no remedy", res.Findings[i].Code)
				}
				res.Findings[i].Remedy = ""
			}
			if res.Findings == nil {
				res.Findings = []nodecheck.Finding{}
			}
			got, _ := json.Marshal(res.Findings)
			var want any
			if err := json.Unmarshal([]byte(c.want), &want); err != nil {
				t.Fatal(err)
			}
			wantJSON, _ := json.Marshal(want)
			var gotNorm any
			_ = json.Unmarshal(got, &gotNorm)
			gotJSON, _ := json.Marshal(gotNorm)
			if string(gotJSON) != string(wantJSON) {
				t.Errorf("findings:\n%s\nwant:\n%s", gotJSON, wantJSON)
			}
		})
	}
}
