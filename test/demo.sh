#!/usr/bin/env bash
# demo.sh makes a throwaway "node": five pod network namespaces whose capture rules were written by
# Istio's own pilot-agent exactly as istio-init writes them, then broken in the ways real nodes
# break, runs `meshdoctor check` on them, prints the report and removes everything it made.
#
#   usage: test/demo.sh PATH-TO-MESHDOCTOR      (as root; `make demo` builds and passes it)
set -euo pipefail

meshdoctor=${1:?usage: $0 PATH-TO-MESHDOCTOR}
bin_dir=$(bash "$(dirname "$0")/setup.sh" --demo)
pilot_agent="$bin_dir/pilot-agent"
[[ $(id -u) -eq 0 ]] || { echo "demo: must run as root (it creates network namespaces)" >&2; exit 2; }

suffix=$$
names=()
log=$(mktemp)
cleanup() {
  for n in "${names[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  rm -f "$log"
}
trap cleanup EXIT

# pod NAME ADDRESS: a netns with lo and a veth pair inside, like a pod sandbox's; its name is left
# in $ns (not printed: a command substitution would run in a subshell and lose the cleanup list).
pod() {
  local name="md-demo-$1-$suffix"
  names+=("$name")
  ns=$name
  ip netns add "$name"
  ip -n "$name" link set lo up
  ip -n "$name" link add eth0 type veth peer name eth0peer
  ip -n "$name" addr add "$2/24" dev eth0
  ip -n "$name" link set eth0 up
  ip -n "$name" link set eth0peer up
}

# istio_init NETNS [EXTRA ARGS]: what istio-init runs, with the injector's default arguments.
istio_init() {
  local ns=$1; shift
  if ! ip netns exec "$ns" "$pilot_agent" istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT \
    -i '*' -x "" -b '*' -d 15090,15021,15020 --log_output_level=default:error "$@" >"$log" 2>&1; then
    cat "$log" >&2
    return 1
  fi
}

echo "demo: writing Istio's capture rules with pilot-agent istio-iptables into 5 pod namespaces" >&2
pod healthy 10.244.1.10;        istio_init "$ns"
pod legacy 10.244.1.11;         istio_init "$ns" --force-iptables-binary legacy
pod never-captured 10.244.1.12  # istio-init never ran: no rules at all
pod jump-deleted 10.244.1.13;   istio_init "$ns"
ip netns exec "$ns" iptables-nft -t nat -D OUTPUT -j ISTIO_OUTPUT
pod wrong-port 10.244.1.14;     istio_init "$ns"
ip netns exec "$ns" iptables-nft -t nat -R ISTIO_REDIRECT 1 -p tcp -j REDIRECT --to-ports 15002

args=()
for n in "${names[@]}"; do args+=(--netns "/var/run/netns/$n"); done
echo "demo: $meshdoctor check ${args[*]}" >&2
echo
set +e
"$meshdoctor" check --node-name demo-node --node-backend nft "${args[@]}"
code=$?
set -e
echo
echo "demo: meshdoctor exited $code (1 = at least one broken pod, as expected here: 2 capturing, 3 broken)" >&2
