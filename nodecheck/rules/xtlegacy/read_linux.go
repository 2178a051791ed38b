package xtlegacy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/nodecheck/procfile"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// Socket options of ip_tables and ip6_tables (IPT_BASE_CTL = 64): the numbers are the same for
// both families, only the socket level differs.
const (
	soGetInfo    = 64 // IPT_SO_GET_INFO, IP6T_SO_GET_INFO
	soGetEntries = 65 // IPT_SO_GET_ENTRIES, IP6T_SO_GET_ENTRIES
)

// entriesAttempts bounds the retries when a table changes between GET_INFO and GET_ENTRIES
// (the kernel answers EAGAIN when the sizes no longer agree): istio-init may be writing.
const entriesAttempts = 5

// RawTable is one legacy table exactly as the kernel returned it: the IPT_SO_GET_INFO reply and
// the entries of the IPT_SO_GET_ENTRIES reply. DecodeInfo and DecodeEntries turn it into rules;
// tests keep it as a capture.
type RawTable struct {
	Family  rules.Family
	Name    string
	Info    []byte
	Entries []byte
}

// Decode decodes the raw table.
func (t RawTable) Decode() (*rules.Table, error) {
	info, err := DecodeInfo(t.Info)
	if err != nil {
		return nil, err
	}
	return DecodeEntries(t.Family, t.Name, info, t.Entries)
}

// Read returns the legacy rules of the network namespace at netnsPath: one RuleSet per IP family
// that has legacy tables (IPv4 first), with every table that exists, empty ones included. A
// family without tables, or a kernel without the ip_tables / ip6_tables module, yields no set.
//
// Only tables the kernel already lists in the namespace are asked for (see the package doc), so
// Read creates nothing; it never takes /run/xtables.lock. A namespace that has gone away gives an
// error wrapping innetns.ErrNetnsGone.
func Read(ctx context.Context, netnsPath string) ([]*rules.RuleSet, error) {
	raws, err := ReadRaw(ctx, netnsPath)
	if err != nil {
		return nil, err
	}
	return decodeRaw(raws, netnsPath)
}

func decodeRaw(raws []RawTable, where string) ([]*rules.RuleSet, error) {
	var sets []*rules.RuleSet
	for _, raw := range raws {
		if len(sets) == 0 || sets[len(sets)-1].Family != raw.Family {
			sets = append(sets, &rules.RuleSet{Backend: rules.BackendLegacy, Family: raw.Family})
		}
		t, err := raw.Decode()
		if err != nil {
			return nil, fmt.Errorf("reading legacy %s table %s in %s: %w", raw.Family, raw.Name, where, err)
		}
		set := sets[len(sets)-1]
		set.Tables = append(set.Tables, t)
	}
	return sets, nil
}

// ReadRaw fetches the legacy tables of the namespace without decoding them, IPv4 tables first,
// each family's in the order the kernel lists them (iptables-legacy-save's order). Only the
// system calls run inside the namespace; decoding happens back on an ordinary thread.
func ReadRaw(ctx context.Context, netnsPath string) ([]RawTable, error) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		// The layouts in layout.go are those of a 64-bit kernel ABI.
		return nil, errors.New("reading legacy iptables needs a 64-bit build")
	}
	var raws []RawTable
	err := innetns.Do(ctx, netnsPath, func() error {
		var err error
		raws, err = readRawHere(ctx, netnsPath)
		return err
	})
	if err != nil {
		return nil, err
	}
	return raws, nil
}

// ReadHere is Read for the network namespace the calling thread is in: for a caller that has
// already entered a pod's namespace (innetns.Do) to read several things at once. where names the
// namespace in errors.
func ReadHere(ctx context.Context, where string) ([]*rules.RuleSet, error) {
	raws, err := readRawHere(ctx, where)
	if err != nil {
		return nil, err
	}
	return decodeRaw(raws, where)
}

// readRawHere runs on a thread inside the namespace.
func readRawHere(ctx context.Context, netnsPath string) ([]RawTable, error) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		// The layouts in layout.go are those of a 64-bit kernel ABI.
		return nil, errors.New("reading legacy iptables needs a 64-bit build")
	}
	var raws []RawTable
	for _, l := range []*entryLayout{&ipv4Layout, &ipv6Layout} {
		family := rules.IPv4
		if l == &ipv6Layout {
			family = rules.IPv6
		}
		// /proc/thread-self, not /proc/self: only this locked thread is in the namespace.
		names, err := tableNames("/proc/thread-self/net/" + l.namesFileName)
		if err != nil {
			return nil, fmt.Errorf("listing legacy %s tables in %s: %w", family, netnsPath, err)
		}
		if len(names) == 0 {
			continue
		}
		tables, err := fetchTables(ctx, l, family, names, netnsPath)
		if err != nil {
			return nil, err
		}
		raws = append(raws, tables...)
	}
	return raws, nil
}

// tableNames reads an ip_tables_names file: the tables that exist in the namespace, one a line.
// The file is missing when the module is not loaded, and then no legacy table can exist.
func tableNames(path string) ([]string, error) {
	b, err := procfile.Read(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if n := string(bytes.TrimSpace(sc.Bytes())); n != "" {
			names = append(names, n)
		}
	}
	return names, sc.Err()
}

// fetchTables reads the named tables over one raw socket. The socket is opened inside the
// namespace, which binds it there: getsockopt on it sees that namespace's tables.
func fetchTables(ctx context.Context, l *entryLayout, family rules.Family, names []string, netnsPath string) ([]RawTable, error) {
	fd, err := unix.Socket(l.socketFamily, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("opening a raw %s socket to read legacy tables in %s: %w", family, netnsPath, err)
	}
	defer unix.Close(fd)
	out := make([]RawTable, 0, len(names))
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t, err := fetchTable(fd, l, name)
		if err != nil {
			return nil, fmt.Errorf("reading legacy %s table %s in %s: %w", family, name, netnsPath, err)
		}
		t.Family = family
		out = append(out, t)
	}
	return out, nil
}

func fetchTable(fd int, l *entryLayout, name string) (RawTable, error) {
	if len(name) >= tableNameLen {
		return RawTable{}, fmt.Errorf("table name %q is too long", name)
	}
	for attempt := 1; ; attempt++ {
		info := encodeInfo(Info{Name: name})
		if err := getsockopt(fd, l.optLevel, soGetInfo, info); err != nil {
			return RawTable{}, fmt.Errorf("getsockopt GET_INFO: %w", err)
		}
		size := ne.Uint32(info[infoSize-4:])
		// struct ipt_get_entries: name, size, padding, then the entries.
		buf := make([]byte, getEntriesHeaderSize+int(size))
		copy(buf, name)
		ne.PutUint32(buf[tableNameLen:], size)
		err := getsockopt(fd, l.optLevel, soGetEntries, buf)
		if errors.Is(err, unix.EAGAIN) && attempt < entriesAttempts {
			continue // the table was replaced between the two calls
		}
		if err != nil {
			return RawTable{}, fmt.Errorf("getsockopt GET_ENTRIES: %w", err)
		}
		return RawTable{Name: name, Info: info, Entries: buf[getEntriesHeaderSize:]}, nil
	}
}

// getsockopt calls getsockopt(2) with buf as both request and reply, which x/sys/unix has no
// helper for. The kernel insists that the length is exactly the struct's.
func getsockopt(fd, level, opt int, buf []byte) error {
	n := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return errno
	}
	if int(n) != len(buf) {
		return fmt.Errorf("kernel returned %d bytes, expected %d", n, len(buf))
	}
	return nil
}
