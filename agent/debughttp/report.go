package debughttp

import (
	"log/slog"
	"net/http"

	"github.com/meshdoctor/meshdoctor/nodecheck/report"
)

// ReportPath is where the node report is served, on the debug endpoint and on the report
// listener alike.
const ReportPath = "/debug/report"

// ReportHandler serves the node report alone, GET /debug/report, the JSON `check -o json` prints:
// what `meshdoctor cluster` reads from every node through the API server's pod proxy
// (pods/proxy).
//
// It checks no token, because none can arrive: kube-apiserver's authentication filter deletes
// the caller's Authorization header before the request is proxied, and the proxy presents no
// client certificate either (it dials pods with a bare TLS config). Who may read the report is
// therefore decided by the API server's RBAC on pods/proxy in the agent's namespace, and, for
// anyone who reaches the node's address directly, by the network, as for the metrics port. That is
// why this listener serves nothing else: no per-pod detail, no raw rules, no page, no metrics;
// those stay on the debug endpoint, on loopback or behind a token.
func ReportHandler(src Source, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+ReportPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if err := report.WriteJSON(w, src.Report()); err != nil {
			log.Warn("writing the report", "path", ReportPath, "err", err)
		}
	})
	return mux
}
