package logscan

import (
	"bytes"
	"errors"
	"time"
)

// CRILine is one line of a container log as the container runtime writes it for kubelet:
//
//	2026-08-27T12:45:20.123456789Z stderr F the message
//
// (the CRI logging format: RFC 3339 timestamp, stream, tags, message). A message longer than the
// runtime's line limit (16 KiB by default in containerd) is cut into lines tagged P (partial) and
// a last one tagged F (full); they are joined back per stream.
type CRILine struct {
	Time    time.Time
	Stream  string // "stdout" or "stderr"
	Partial bool
	// Message is the content without the line's newline. It aliases the input.
	Message []byte
}

// Errors of ParseCRILine.
var (
	errCRITimestamp = errors.New("CRI log line: bad or missing timestamp")
	errCRIStream    = errors.New("CRI log line: stream is not stdout or stderr")
	errCRITag       = errors.New("CRI log line: missing tag")
)

// maxCRITimestamp bounds the timestamp field: RFC 3339 with nanoseconds and a numeric zone.
const maxCRITimestamp = len("2006-01-02T15:04:05.999999999-07:00")

// ParseCRILine parses one line (without or with its trailing newline). It never allocates for the
// message, and rejects anything that is not a CRI line rather than guessing.
func ParseCRILine(line []byte) (CRILine, error) {
	line = bytes.TrimSuffix(line, []byte{'\n'})
	var l CRILine
	sp := bytes.IndexByte(line[:min(len(line), maxCRITimestamp+1)], ' ')
	if sp <= 0 {
		return l, errCRITimestamp
	}
	t, err := parseRFC3339(line[:sp])
	if err != nil {
		return l, errCRITimestamp
	}
	l.Time = t
	rest := line[sp+1:]
	switch {
	case bytes.HasPrefix(rest, []byte("stdout ")):
		l.Stream = "stdout"
	case bytes.HasPrefix(rest, []byte("stderr ")):
		l.Stream = "stderr"
	default:
		return l, errCRIStream
	}
	rest = rest[len("stdout "):]
	// Tags are colon-separated; the first is P or F. A tag field is required, a message may be empty.
	sp = bytes.IndexByte(rest, ' ')
	tags := rest
	if sp >= 0 {
		tags = rest[:sp]
		l.Message = rest[sp+1:]
	} else {
		l.Message = rest[len(rest):]
	}
	if len(tags) == 0 {
		return l, errCRITag
	}
	first := tags
	if c := bytes.IndexByte(tags, ':'); c >= 0 {
		first = tags[:c]
	}
	l.Partial = len(first) == 1 && first[0] == 'P'
	return l, nil
}

// parseRFC3339 parses the timestamps of CRI logs and modern syslog files. time.Parse with
// RFC3339Nano accepts any fraction length, which is what runtimes write (trailing zeros cut).
func parseRFC3339(b []byte) (time.Time, error) {
	return time.Parse(time.RFC3339Nano, string(b))
}
