// Package procfile reads the small files of /proc and /sys that a check reads inside a pod's
// network namespace on every visit (ip_tables_names, nf_conntrack_events).
//
// os.ReadFile spends three system calls of its own on such a file (registering it with the
// runtime's poller, which refuses it, and a stat for its size, which is 0); read with open, read
// and close alone, the file costs what it must, on the thread that is in the namespace.
package procfile

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// maxSize bounds what Read returns: the files it is for hold a few lines.
const maxSize = 64 << 10

// Read returns the content of the file at path; a file larger than 64 KiB is an error. A missing
// file is an error that errors.Is(err, os.ErrNotExist) matches, as with os.ReadFile.
func Read(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	buf := make([]byte, 0, 512)
	for len(buf) <= maxSize {
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, cap(buf))...)[:len(buf)]
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
	return nil, fmt.Errorf("reading %s: larger than %d bytes", path, maxSize)
}
