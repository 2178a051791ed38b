// Package xtlegacy reads a network namespace's iptables-legacy rules in-process.
//
// It reads the ip_tables and ip6_tables kernel tables and decodes them into meshdoctor's rule
// model, so that Istio's redirect rules written with iptables-legacy can be compared by meaning
// with the rules a pod should have.
//
// # Why not iptables-legacy-save
//
// It asks the kernel the way iptables-legacy-save does, with getsockopt IPT_SO_GET_INFO and
// IPT_SO_GET_ENTRIES (IP6T_ for IPv6) on a raw socket opened inside the namespace, rather than
// running the binary: no fork and exec per pod and family, no text to parse back, no dependency
// on the node image shipping iptables-legacy, and no xtables lock, which iptables takes and
// meshdoctor must never hold.
//
// # Leaving no trace
//
// Leaving no trace is the crux. Asking for a table that does not exist in a namespace makes the
// kernel create it, empty (this is why `iptables-legacy -t nat -S` creates a legacy nat table),
// and Istio's backend detection then sees a legacy table where there was none. So Read first
// reads the namespace's own list, /proc/thread-self/net/ip_tables_names, from the thread that
// entered the namespace, and asks only for the tables listed there. A missing list means the
// ip_tables module is not loaded: there are no legacy tables, and nothing loads the module.
//
// # Blob layout
//
// The blob layout is that of a 64-bit kernel ABI in native byte order; DecodeEntries needs no
// privileges and is what the golden tests under testdata/ exercise with real captures.
package xtlegacy
