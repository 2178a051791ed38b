package deploy_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// ruleFile is a Prometheus rule file, as much of it as the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert  string `json:"alert,omitempty"`
			Record string `json:"record,omitempty"`
			Expr   string `json:"expr"`
		} `json:"rules"`
	} `json:"groups"`
}

func filesDir(t *testing.T) string { return filepath.Join(chartDir(t), "files") }

// TestAlertRules: the alerts are valid for Prometheus and their unit tests (files/alerts_test.yaml:
// when each fires, for which node, with which text) pass in promtool.
func TestAlertRules(t *testing.T) {
	promtool := testbed.Promtool(t)
	for _, args := range [][]string{
		{"check", "rules", filepath.Join(filesDir(t), "alerts.yaml")},
		{"test", "rules", filepath.Join(filesDir(t), "alerts_test.yaml")},
	} {
		out, err := run(t, nil, promtool, args...)
		if err != nil {
			t.Error(err)
		}
		t.Logf("promtool %s: %s", strings.Join(args[:2], " "), strings.TrimSpace(string(out)))
	}
}

// grafanaVariable is a dashboard variable in a query ($node, ${node}, $__all).
var grafanaVariable = regexp.MustCompile(`\$\{?[A-Za-z_]+\}?`)

// metricName is a series name the alerts and the dashboard read.
var metricName = regexp.MustCompile(`\b(meshdoctor_[a-z_]+|process_[a-z_]+)\b`)

// TestDashboardAndAlertsReadTheAgentsMetrics: every series the alerts and the dashboard query is
// one a real agent exposes, and every dashboard query is valid PromQL (checked by promtool as a
// recording rule, Grafana's variables replaced by what they select).
func TestDashboardAndAlertsReadTheAgentsMetrics(t *testing.T) {
	testbed.RequirePrivileged(t)
	exposed := agentSeries(t)

	var dashboard struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	data, err := os.ReadFile(filepath.Join(filesDir(t), "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dashboard); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	exprs := map[string]string{} // where → expression
	var recording strings.Builder
	recording.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, p := range dashboard.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for j, q := range p.Targets {
			exprs[fmt.Sprintf("panel %q query %d", p.Title, j)] = q.Expr
			promql := grafanaVariable.ReplaceAllString(q.Expr, ".*")
			fmt.Fprintf(&recording, "      - record: dashboard:panel_%d_%d\n        expr: %s\n", i, j, strconv.Quote(promql))
		}
	}
	for _, v := range dashboard.Templating.List {
		if v.Definition != "" {
			exprs["variable "+v.Name] = v.Definition
		}
	}
	var alerts ruleFile
	data, err = os.ReadFile(filepath.Join(filesDir(t), "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &alerts); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	for _, g := range alerts.Groups {
		for _, r := range g.Rules {
			exprs["alert "+r.Alert] = r.Expr
		}
	}
	for where, expr := range exprs {
		names := metricName.FindAllString(expr, -1)
		if len(names) == 0 {
			t.Errorf("%s reads no meshdoctor series: %s", where, expr)
		}
		for _, n := range names {
			if !exposed[n] {
				t.Errorf("%s reads %s, which the agent does not expose", where, n)
			}
		}
	}
	rules := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(rules, []byte(recording.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, nil, testbed.Promtool(t), "check", "rules", rules); err != nil {
		t.Errorf("the dashboard's queries are not valid PromQL: %v", err)
	} else {
		t.Logf("%d queries checked: %s", len(exprs), strings.TrimSpace(string(out)))
	}
}

// agentSeries runs the agent on one pod netns with Istio's rules and returns the series names of
// its exposition (histograms with their _bucket, _sum and _count).
func agentSeries(t *testing.T) map[string]bool {
	t.Helper()
	n := testbed.NewNetns(t)
	if err := n.IstioIptables(t.Context(), testbed.DefaultSidecarArgs()...); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	testbed.StartProcess(t, binary, "agent", "--kubeconfig=none", "--netns", n.Path(), "--node-backend", "none",
		"--metrics-address", addr, "--debug-address", "", "--host-root", dir, "--state-dir", t.TempDir())
	var body string
	testbed.Eventually(t, 30*time.Second, "the agent's first sweep", func() error {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		resp, err = http.Get("http://" + addr + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		body = string(b)
		return err
	})
	names := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
			if f[3] == "histogram" || f[3] == "summary" {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					names[f[2]+s] = true
				}
			}
		}
	}
	if len(names) < 10 {
		t.Fatalf("the exposition has %d series names:\n%s", len(names), body)
	}
	return names
}
