// Package journal reads systemd journal files natively, entry by entry.
//
// # Format
//
// The reader follows systemd's documented on-disk format (JOURNAL_FILE_FORMAT): the header, the
// chain of entry arrays, entry objects and the data objects they point to; the regular and the
// compact layouts; zstd- and lz4-compressed fields. XZ-compressed fields (journals written before
// systemd 246 with XZ) are counted as skipped, not decoded.
//
// # Why not journalctl or sd-journal
//
//   - meshdoctor runs no binary on the node, and a DaemonSet image should not carry systemd;
//     running the host's journalctl would need its libraries and a chroot, and sd-journal needs
//     cgo and libsystemd;
//   - journalctl is slower to start than a scan pass and its JSON output is heavier than the
//     three or four fields a log rule reads;
//   - a resumable cursor falls out of the format itself: the file ID (stable across journald's
//     rename on rotation) and the entry sequence number, with no cursor strings to parse.
//
// The cost is owning a reader of a stable, documented format; the tests check it against journal
// files written by systemd's own writer and against journalctl's reading of the same files.
//
// # Use
//
// Files lists a journal directory's files; Open reads one file's header; File.Entries iterates
// its entries from a cursor (the sequence number last read) or a realtime, each with its
// realtime and the fields a log scanner reads (MESSAGE, _SYSTEMD_UNIT, SYSLOG_IDENTIFIER, _COMM,
// _PID). Iteration takes a context, since a file may be large.
//
// # Damage and concurrent writes
//
// journald appends to the file being read. The reader never maps or locks it: it reads with
// pread and stops quietly at the first entry not fully linked yet. A header that is not a
// journal's, or cut short, is an error from Open naming the file; a damaged or truncated object
// met while iterating ends the iteration before it, counted in Stats and explained by
// Iterator.Incomplete, and the cursor stays before it, so nothing is lost: the next iteration
// reads it once journald has finished it.
//
// # Bounds
//
// Memory is bounded whatever the file holds: a few cached 64 KiB blocks, messages cut at
// Options.MaxData (compressed ones too, decompressing no further), entries of more than 4096
// fields and objects over 256 MiB taken for damage, a bounded cache of the data objects that
// repeat on every entry of a service (unit, identifier).
package journal
