#!/usr/bin/env bash
# render-kustomize.sh renders deploy/kustomize from the Helm chart, so that both install the same
# objects and the chart stays the one source: the base from the chart's default values, and one
# kustomize component per optional object (ServiceMonitor, PodMonitor, PrometheusRule, the Grafana
# dashboard). Helm's own labels (helm.sh/chart, app.kubernetes.io/managed-by) are left out.
#
#   deploy/render-kustomize.sh [OUT_DIR]     (default: deploy/kustomize; `make manifests`)
#
# HELM names the helm binary (test/setup.sh builds one); KUBE_VERSION the Kubernetes version the
# chart is rendered for (helm built with `go install` otherwise assumes v1.20).
set -euo pipefail
deploy_dir="$(cd "$(dirname "$0")" && pwd)"
chart="$deploy_dir/helm/meshdoctor"
out="${1:-$deploy_dir/kustomize}"
helm="${HELM:-helm}"
kube_version="${KUBE_VERSION:-1.34.4}"

# render VALUES… prints the chart rendered with those --set values, in namespace meshdoctor.
render() {
  local args=()
  for v in "$@"; do args+=(--set "$v"); done
  "$helm" template meshdoctor "$chart" --namespace meshdoctor --kube-version "$kube_version" "${args[@]}"
}

# split DIR writes each template's documents to DIR/<template file>, without Helm's labels and
# source comments, and prints the file names in order.
split() {
  local dir="$1"
  mkdir -p "$dir"
  awk -v dir="$dir" -v hdr="$(header)" '
    /^# Source: meshdoctor\/templates\// {
      file = $3; sub(/^meshdoctor\/templates\//, "", file)
      path = dir "/" file
      if (!(path in seen)) { seen[path] = 1; order[++n] = file; print hdr > path }
      else { print "---" >> path }
      next
    }
    /^---$/ { next }
    /^ *helm\.sh\/chart: / || /^ *app\.kubernetes\.io\/managed-by: / { next }
    path != "" { print >> path }
    END { for (i = 1; i <= n; i++) print order[i] }
  '
}

header() {
  echo "# Rendered from deploy/helm/meshdoctor by deploy/render-kustomize.sh (make manifests): edit the chart, not this."
}

rm -rf "$out/base" "$out/components"
mkdir -p "$out/base"
files=$(render | split "$out/base")
{
  header
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  for f in $files; do echo "  - $f"; done
} >"$out/base/kustomization.yaml"

# component NAME VALUE TEMPLATE: a component holding what VALUE adds to the default render.
component() {
  local name="$1" value="$2" template="$3" dir="$out/components/$1" all
  all=$(mktemp -d)
  render "$value" | split "$all" >/dev/null
  mkdir -p "$dir"
  mv "$all/$template" "$dir/$template"
  rm -rf "$all"
  {
    header
    echo "apiVersion: kustomize.config.k8s.io/v1alpha1"
    echo "kind: Component"
    echo "resources:"
    echo "  - $template"
  } >"$dir/kustomization.yaml"
}
component servicemonitor monitoring.serviceMonitor.enabled=true servicemonitor.yaml
component podmonitor monitoring.podMonitor.enabled=true podmonitor.yaml
component prometheusrule monitoring.prometheusRule.enabled=true prometheusrule.yaml
component grafana-dashboard monitoring.dashboard.enabled=true dashboard-configmap.yaml
