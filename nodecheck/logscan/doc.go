// Package logscan finds log evidence of Istio capture problems on a node.
//
// The evidence is istiod losing the API server, istio-cni plugin failures, pod sandboxes failing
// in the CNI chain, nsenter errors. It reads kubelet's container logs, the systemd journal and
// plain syslog files, matches them against rules that are data (embedded defaults, or a YAML
// file), and turns matches into node-level findings with their evidence: count, first and last
// seen, sample lines with their file and offset, the pods named.
//
// # Reading
//
// Container logs are the files kubelet's runtime writes under /var/log/pods/<ns>_<pod>_<uid>/
// <container>/N.log in the CRI format; lines tagged P (partial) are joined with their final F line
// per stream. Only the containers some rule selects are opened.
//
// The journal is read natively from its files with nodecheck/journal (see there for why not
// journalctl); where reading stopped is its file ID and the last entry's sequence number.
//
// Syslog files (/var/log/syslog, /var/log/messages) are read with their rotated copies, in the
// traditional and the RFC 3339 timestamp formats.
//
// # Tailing
//
// A file is identified by its inode and a fingerprint of its first bytes; a renamed file (kubelet
// rotation, logrotate's create mode) keeps its inode, a copytruncate copy or a compressed
// rotation keeps its first bytes, and a reused inode has other first bytes. Where reading stopped
// is kept per file, and saved atomically in a state directory with the conditions built so far,
// so a restarted agent resumes: nothing is lost and nothing is counted twice. A first start, and
// a file never seen before in a stream never seen before, read only a bounded look-back (found by
// bisection on the lines' timestamps), not whole histories.
//
// Memory is bounded whatever the input: one fixed read buffer, messages cut at a maximum length
// (a 10 MiB line costs the same as a 64 KiB one), binary junk counted and skipped, a half-written
// last line left for the next pass.
//
// # Matching
//
// Each rule's pattern yields literals that every match contains (or the rule lists them). A
// buffer is searched for those literals with bytes.Index, which is SIMD-accelerated, and only the
// lines containing one are parsed and given to the regular expression. That is what lets a scan
// keep up with grep: the regexp engine, tens of MB/s, only sees candidate lines.
package logscan
