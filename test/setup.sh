#!/usr/bin/env bash
# setup.sh installs what meshdoctor's privileged test bed needs on a Debian 12 machine and prints
# the directory holding the tools it built. It is idempotent and fast when everything is present,
# so `make test`, `make demo` and CI call it unconditionally.
#
#   - Debian packages (iptables with both the nft and legacy backends, nftables, iproute2 for
#     `ip netns`, util-linux for setpriv and nsenter). `apt-get update` runs only when one is missing.
#   - Istio's pilot-agent, built from source with `go install` at a pinned pseudo-version (istio.io/istio
#     publishes no tags to the module proxy). It carries `istio-iptables`, the very code istio-init
#     and istio-validation run, so the test bed writes and validates the rules Istio really writes.
#     Nothing prebuilt is ever downloaded.
#   - containerd with its CRI plugin, runc, the CNI plugins and busybox (Debian packages), plus
#     containerd 2.x and 1.7 built from source, for the real pod sandboxes of test/testbed/kubelet;
#     and ambient-inpod (test/tools/ambient-inpod), Istio's own ambient in-pod rule writer.
#   - For the agent's end-to-end tests: Debian's etcd and Chromium, kube-apiserver built from
#     k8s.io/kubernetes in a throwaway module under the cache dir (~8 min cold), and promtool
#     (~6 min cold) to lint the metrics exposition and unit-test the alerts.
#   - For the deploy tests: kubectl (same throwaway module, ~2 min more), helm (~4 min cold), and
#     prometheus-operator's module for its CRDs (ServiceMonitor, PodMonitor, PrometheusRule).
#
# `test/setup.sh --demo` installs only what `make demo` needs (the iptables tools and pilot-agent,
# ~2 min cold) instead of the whole test bed (~25 min cold).
#
# Output: progress lines on stderr, the bin directory as the only line on stdout, so
#   bin=$(test/setup.sh)
# works. Environment: MESHDOCTOR_CACHE (default $HOME/.cache/meshdoctor) is where tools are kept;
# the test bed (test/testbed) reads pilot-agent from the same place.
set -euo pipefail

# Keep in sync with testbed.PilotAgentVersion (test/testbed/pilotagent.go).
readonly ISTIO_VERSION="v0.0.0-20260827124520-eed52ebb66ad"
readonly PILOT_AGENT_PKG="istio.io/istio/pilot/cmd/pilot-agent"
readonly DEMO_PACKAGES=(iptables nftables iproute2 util-linux)
readonly TESTBED_PACKAGES=(iptables nftables iproute2 util-linux systemd-journal-remote containerd runc containernetworking-plugins busybox-static etcd-server chromium)
demo=false
case "${1:-}" in
  --demo) demo=true ;;
  "") ;;
  *) echo "usage: $0 [--demo]" >&2; exit 2 ;;
esac
if $demo; then
  DEBIAN_PACKAGES=("${DEMO_PACKAGES[@]}")
else
  DEBIAN_PACKAGES=("${TESTBED_PACKAGES[@]}")
fi
readonly DEBIAN_PACKAGES

cache_dir="${MESHDOCTOR_CACHE:-${HOME:-/root}/.cache/meshdoctor}"
bin_dir="${cache_dir}/bin"
scratch="" # build directory of an unfinished pilot-agent build, removed on exit
trap '[[ -z "$scratch" ]] || rm -rf "$scratch"' EXIT

say() { echo "setup: $*" >&2; }
die() { say "error: $*"; exit 1; }

# missing_packages prints the Debian packages that are not installed, one per line.
missing_packages() {
  local pkg status
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == "installed" ]] || echo "$pkg"
  done
}

install_packages() {
  local missing
  missing=$(missing_packages)
  [[ -z "$missing" ]] && return 0
  [[ $(id -u) -eq 0 ]] || die "missing Debian packages ($(echo $missing)); run as root"
  say "installing Debian packages: $(echo $missing)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # shellcheck disable=SC2086 # word splitting of the package list is wanted
  apt-get install -y -qq --no-install-recommends $missing >&2
}

# pilot_agent_is_current succeeds when the cached binary was built from the pinned Istio version.
# `go version -m` reads the module info Go embeds in the binary, so no stamp file can go stale.
pilot_agent_is_current() {
  local bin="$bin_dir/pilot-agent"
  [[ -x "$bin" ]] || return 1
  go version -m "$bin" 2>/dev/null | awk '$1 == "mod" { print $2, $3 }' |
    grep -qx "istio.io/istio ${ISTIO_VERSION}"
}

# install_tool DEST PKG@VERSION MINUTES runs `go install` of a command into the cache as DEST.
# It builds into a scratch GOBIN and moves the binary into place, so an interrupted build never
# leaves a half-written binary that a later run would take as built. GOFLAGS is cleared (flags meant
# for this module break `go install pkg@version`); CGO_ENABLED=0 gives static binaries, as the
# projects' own releases are.
install_tool() {
  local dest="$1" pkgver="$2" minutes="$3" name
  name=$(basename "${pkgver%@*}")
  command -v go >/dev/null || die "go is not on PATH; the Go toolchain in go.mod is needed to build ${name}"
  say "building ${pkgver} (first run takes ~${minutes} min)"
  mkdir -p "$bin_dir"
  [[ -z "$scratch" ]] || rm -rf "$scratch"
  scratch=$(mktemp -d "${bin_dir}/.build.XXXXXX")
  GOFLAGS="" CGO_ENABLED=0 GOBIN="$scratch" go install "$pkgver" >&2
  mv -f "$scratch/$name" "$dest"
  say "$(basename "$dest") ready: $dest"
}

build_pilot_agent() {
  pilot_agent_is_current || install_tool "$bin_dir/pilot-agent" "${PILOT_AGENT_PKG}@${ISTIO_VERSION}" 2
}

# istio-cni is the CNI plugin binary Istio installs into the node's CNI bin dir; the istiocni check
# is tested against the real one, built like pilot-agent.
readonly ISTIO_CNI_PKG="istio.io/istio/cni/cmd/istio-cni"

build_istio_cni() {
  local bin="$bin_dir/istio-cni"
  if [[ -x "$bin" ]] && go version -m "$bin" 2>/dev/null | awk '$1 == "mod" { print $2, $3 }' |
    grep -qx "istio.io/istio ${ISTIO_VERSION}"; then
    return 0
  fi
  install_tool "$bin" "${ISTIO_CNI_PKG}@${ISTIO_VERSION}" 4
}

# Keep in sync with testbed.Containerd2Version and testbed.Containerd17Version.
readonly CONTAINERD2_VERSION="v2.2.9"
readonly CONTAINERD17_VERSION="v1.7.30"
repo_dir="$(cd "$(dirname "$0")/.." && pwd)"

# build_containerd2 builds containerd 2.x (Debian ships 1.6 only); it runs with Debian's shim.
build_containerd2() {
  local bin="$bin_dir/containerd-${CONTAINERD2_VERSION}"
  [[ -x "$bin" ]] || install_tool "$bin" "github.com/containerd/containerd/v2/cmd/containerd@${CONTAINERD2_VERSION}" 4
}

# build_containerd17 builds containerd 1.7. Its go.mod has exclude directives, which `go install
# pkg@version` refuses, so it is built as the main module from a copy of its module source.
build_containerd17() {
  local bin="$bin_dir/containerd-${CONTAINERD17_VERSION}" src
  [[ -x "$bin" ]] && return 0
  say "building containerd ${CONTAINERD17_VERSION} (first run takes a few minutes)"
  mkdir -p "$bin_dir"
  [[ -z "$scratch" ]] || rm -rf "$scratch"
  scratch=$(mktemp -d "${bin_dir}/.build.XXXXXX")
  src=$(GOFLAGS="" go mod download -json "github.com/containerd/containerd@${CONTAINERD17_VERSION}" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -n "$src" ]] || die "cannot download containerd ${CONTAINERD17_VERSION} source"
  cp -r "$src" "$scratch/src" && chmod -R u+w "$scratch/src"
  (cd "$scratch/src" && GOFLAGS="-mod=mod" CGO_ENABLED=0 go build -trimpath -o "$scratch/containerd" ./cmd/containerd) >&2
  mv -f "$scratch/containerd" "$bin"
  say "containerd ${CONTAINERD17_VERSION} ready: $bin"
}

# build_ambient_inpod builds test/tools/ambient-inpod, a module of its own that calls Istio's
# istio-cni code to write ambient mode's in-pod rules.
build_ambient_inpod() {
  local bin="$bin_dir/ambient-inpod" src="$repo_dir/test/tools/ambient-inpod" sum
  # Stale when its sources or module files differ from those it was built from (a fresh clone's
  # mtimes say nothing): their digest is kept beside the binary.
  sum=$(cd "$src" && cat go.mod go.sum ./*.go | sha256sum | cut -d' ' -f1)
  if [[ -x "$bin" && "$(cat "$bin.src-sha256" 2>/dev/null)" == "$sum" ]] &&
    go version -m "$bin" 2>/dev/null | awk '$1 == "dep" { print $2, $3 }' | grep -qx "istio.io/istio ${ISTIO_VERSION}"; then
    return 0
  fi
  say "building ambient-inpod with Istio ${ISTIO_VERSION} (first run takes a few minutes)"
  mkdir -p "$bin_dir"
  [[ -z "$scratch" ]] || rm -rf "$scratch"
  scratch=$(mktemp -d "${bin_dir}/.build.XXXXXX")
  (cd "$src" && GOFLAGS="" CGO_ENABLED=0 go build -o "$scratch/ambient-inpod" .) >&2
  mv -f "$scratch/ambient-inpod" "$bin"
  echo "$sum" >"$bin.src-sha256"
  say "ambient-inpod ready: $bin"
}

# Keep in sync with testbed.KubeAPIServerVersion (test/testbed/apiserver.go).
readonly KUBERNETES_VERSION="v1.34.4"

# build_kubernetes_cmd builds k8s.io/kubernetes/cmd/NAME (kube-apiserver, kubectl) in a throwaway
# module under the cache dir (never in the repo): kubernetes' go.mod replaces its staging modules
# with local paths, so the throwaway module replaces each with its published v0.<minor>.<patch>
# instead. Both commands share most packages, so the second builds in a fraction of the first's time.
build_kubernetes_cmd() {
  local name="$1" minutes="$2" bin mod staging_ver modfile
  bin="$bin_dir/${name}-${KUBERNETES_VERSION}"
  [[ -x "$bin" ]] && return 0
  say "building ${name} ${KUBERNETES_VERSION} (first run takes ~${minutes} min)"
  mkdir -p "$bin_dir"
  [[ -z "$scratch" ]] || rm -rf "$scratch"
  scratch=$(mktemp -d "${bin_dir}/.build.XXXXXX")
  modfile=$(GOFLAGS="" go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [[ -n "$modfile" ]] || die "cannot download k8s.io/kubernetes ${KUBERNETES_VERSION}"
  staging_ver="v0.${KUBERNETES_VERSION#v1.}"
  mod="$scratch/mod"
  mkdir -p "$mod"
  {
    echo "module kubernetesbuild"
    echo "go 1.24"
    echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
    awk '$2 == "=>" && $1 ~ /^k8s.io\// && $3 ~ /^\.\/staging\// { print $1 }' "$modfile" |
      grep -vx -e k8s.io/sample-cli-plugin -e k8s.io/sample-controller |
      while read -r m; do echo "replace $m => $m ${staging_ver}"; done
  } >"$mod/go.mod"
  printf 'package main\n\nimport _ "k8s.io/kubernetes/cmd/%s"\n' "$name" >"$mod/tools.go"
  (cd "$mod" && GOFLAGS="-mod=mod" CGO_ENABLED=0 go build -trimpath -o "$scratch/$name" "k8s.io/kubernetes/cmd/$name") >&2
  mv -f "$scratch/$name" "$bin"
  say "${name} ${KUBERNETES_VERSION} ready: $bin"
}

# Keep in sync with testbed.HelmVersion (test/testbed/kubectl.go).
readonly HELM_VERSION="v3.22.0"

# build_helm builds helm, which renders the chart under deploy/helm for the deploy tests.
build_helm() {
  local bin="$bin_dir/helm-${HELM_VERSION}"
  [[ -x "$bin" ]] || install_tool "$bin" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" 4
}

# Keep in sync with testbed.PrometheusOperatorVersion (test/testbed/kubectl.go).
readonly PROMETHEUS_OPERATOR_VERSION="v0.85.0"

# fetch_prometheus_operator_crds puts prometheus-operator's module (which ships its CRDs) in the Go
# module cache, where the deploy tests find ServiceMonitor, PodMonitor and PrometheusRule's CRDs.
fetch_prometheus_operator_crds() {
  GOFLAGS="" go mod download "github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}" >&2 ||
    die "cannot download prometheus-operator ${PROMETHEUS_OPERATOR_VERSION} (its CRDs)"
}

# Keep in sync with testbed.PromtoolVersion.
readonly PROMTOOL_VERSION="v0.316.0"

# build_promtool builds promtool, which checks the agent's metrics exposition.
build_promtool() {
  local bin="$bin_dir/promtool-${PROMTOOL_VERSION}"
  [[ -x "$bin" ]] || install_tool "$bin" "github.com/prometheus/prometheus/cmd/promtool@${PROMTOOL_VERSION}" 6
}

install_packages
build_pilot_agent
if $demo; then
  echo "$bin_dir"
  exit 0
fi
build_istio_cni
build_containerd2
build_containerd17
build_ambient_inpod
build_kubernetes_cmd kube-apiserver 8
build_kubernetes_cmd kubectl 2
build_promtool
build_helm
fetch_prometheus_operator_crds
echo "$bin_dir"
