// Package netfilter tells which kernel netfilter features Istio's capture needs the node lacks:
// conntrack and NAT, the xtables extensions istio-init and istio-cni write (REDIRECT, owner,
// TPROXY, mark, connmark, CT, set), the nf_tables expressions of native nftables mode.
//
// It reads, never loads a module or writes a rule: the kernel's build configuration
// (/proc/config.gz, /boot/config-RELEASE), else the module lists (/proc/modules with
// modules.builtin and modules.dep), else, on a kernel built without modules, the xtables
// extensions the kernel registered (/proc/net/ip_tables_targets and _matches). A feature is
// missing only when the source says so; where no source can tell, nothing is judged. /sys/module
// is a source of presence alone: it shows every loaded module and the built-in ones that have
// parameters or a version (nf_conntrack, ip_set), so a module named there is never missing,
// while one not named there tells nothing.
//
// It also reads the node's own nft version from its binary's bytes (hostnft.go): an old one
// crashes on the tables istio-cni's native nftables mode writes in the node's netns.
package netfilter

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Capture kinds: the writers and modes whose rules need a feature.
const (
	SidecarLegacy  = "sidecar, iptables-legacy"
	SidecarNft     = "sidecar, iptables-nft"
	SidecarNative  = "sidecar, native nftables"
	SidecarTProxy  = "sidecar TPROXY (iptables)"
	AmbientIptable = "ambient, iptables"
	AmbientNative  = "ambient, native nftables"
)

// Feature is one thing of the kernel a capture needs. Any one of Config (an option built in or
// as a module) or of Modules (loaded, built in, or installed) provides it; XT names it among
// the kernel's registered xtables targets or matches, where that is the only source.
type Feature struct {
	Name     string   `json:"name"`
	Config   []string `json:"-"`
	Modules  []string `json:"-"`
	XT       xtName   `json:"-"`
	NeededBy []string `json:"neededBy"`
}

type xtName struct{ target, match string }

// iptablesSidecar are the kinds istio-init's iptables rules of a sidecar pod are written as.
var iptablesSidecar = []string{SidecarLegacy, SidecarNft}

// Features is what Istio's writers need, from istio-init's and istio-cni's rules
// (tools/istio-iptables, cni/pkg/iptables, cni/pkg/nftables): option and module names of
// kernels from 4.19 on, older names beside the newer.
func Features() []Feature {
	all := []string{SidecarLegacy, SidecarNft, SidecarNative, SidecarTProxy, AmbientIptable, AmbientNative}
	xtKinds := []string{SidecarLegacy, SidecarNft, SidecarTProxy, AmbientIptable}
	nftKinds := []string{SidecarNft, SidecarNative, AmbientNative}
	return []Feature{
		{Name: "connection tracking", Config: []string{"NF_CONNTRACK"}, Modules: []string{"nf_conntrack"}, NeededBy: all},
		{Name: "NAT", Config: []string{"NF_NAT", "NF_NAT_IPV4"}, Modules: []string{"nf_nat", "nf_nat_ipv4"}, NeededBy: all},
		{Name: "xtables REDIRECT target", Config: []string{"NETFILTER_XT_TARGET_REDIRECT"}, Modules: []string{"xt_REDIRECT", "ipt_REDIRECT"},
			XT: xtName{target: "REDIRECT"}, NeededBy: xtKinds},
		{Name: "xtables owner match", Config: []string{"NETFILTER_XT_MATCH_OWNER"}, Modules: []string{"xt_owner"},
			XT: xtName{match: "owner"}, NeededBy: append(slices.Clone(iptablesSidecar), SidecarTProxy)},
		{Name: "iptables nat table (legacy)", Config: []string{"IP_NF_NAT"}, Modules: []string{"iptable_nat"}, NeededBy: []string{SidecarLegacy}},
		{Name: "nf_tables", Config: []string{"NF_TABLES"}, Modules: []string{"nf_tables"}, NeededBy: nftKinds},
		{Name: "nf_tables xtables compatibility (iptables-nft)", Config: []string{"NFT_COMPAT"}, Modules: []string{"nft_compat"}, NeededBy: []string{SidecarNft}},
		{Name: "nf_tables nat chains", Config: []string{"NFT_NAT", "NFT_CHAIN_NAT_IPV4"}, Modules: []string{"nft_chain_nat", "nft_chain_nat_ipv4"}, NeededBy: nftKinds},
		{Name: "nf_tables redirect", Config: []string{"NFT_REDIR", "NFT_REDIR_IPV4"}, Modules: []string{"nft_redir", "nft_redir_ipv4"}, NeededBy: []string{SidecarNative, AmbientNative}},
		{Name: "nf_tables conntrack expressions", Config: []string{"NFT_CT"}, Modules: []string{"nft_ct"}, NeededBy: []string{SidecarNative, AmbientNative}},
		{Name: "xtables TPROXY target", Config: []string{"NETFILTER_XT_TARGET_TPROXY"}, Modules: []string{"xt_TPROXY"},
			XT: xtName{target: "TPROXY"}, NeededBy: []string{SidecarTProxy}},
		{Name: "iptables mangle table", Config: []string{"IP_NF_MANGLE"}, Modules: []string{"iptable_mangle"}, NeededBy: []string{SidecarTProxy, AmbientIptable}},
		{Name: "xtables mark", Config: []string{"NETFILTER_XT_MARK"}, Modules: []string{"xt_mark"},
			XT: xtName{target: "MARK", match: "mark"}, NeededBy: []string{SidecarTProxy, AmbientIptable}},
		{Name: "xtables connmark", Config: []string{"NETFILTER_XT_CONNMARK"}, Modules: []string{"xt_connmark"},
			XT: xtName{target: "CONNMARK", match: "connmark"}, NeededBy: []string{SidecarTProxy, AmbientIptable}},
		{Name: "xtables CT target", Config: []string{"NETFILTER_XT_TARGET_CT"}, Modules: []string{"xt_CT"},
			XT: xtName{target: "CT"}, NeededBy: []string{AmbientIptable}},
		{Name: "xtables set match (ambient host probe SNAT)", Config: []string{"NETFILTER_XT_SET"}, Modules: []string{"xt_set"},
			XT: xtName{match: "set"}, NeededBy: []string{AmbientIptable}},
		{Name: "ipset hash:ip", Config: []string{"IP_SET_HASH_IP"}, Modules: []string{"ip_set_hash_ip"}, NeededBy: []string{AmbientIptable}},
	}
}

// Inventory is what the node's kernel lacks, and how that was told.
type Inventory struct {
	// Source names what was read: "kernel config /proc/config.gz", "modules", ...
	Source  string    `json:"source,omitempty"`
	Missing []Feature `json:"missing,omitempty"`
	// NotJudged says why nothing could be told, when no source was readable.
	NotJudged string `json:"notJudged,omitempty"`
}

// Reader reads the node's kernel facts. HostRoot is where the node's filesystem is seen (its
// /boot and /lib/modules); ProcDir is the kernel's /proc, "/proc" when empty, and SysDir its
// /sys, "/sys" when empty: the kernel is the same one in a container, and /sys/module belongs to
// no namespace, so the sysfs every runtime mounts in a container shows the node's modules with
// no mount of the host's /sys.
type Reader struct {
	HostRoot string
	ProcDir  string
	SysDir   string
}

func (r Reader) sysModuleDir() string {
	dir := r.SysDir
	if dir == "" {
		dir = "/sys"
	}
	return filepath.Join(dir, "module")
}

func (r Reader) proc(name string) string {
	dir := r.ProcDir
	if dir == "" {
		dir = "/proc"
	}
	return filepath.Join(dir, name)
}

// Read tells the missing features from the first source that can, less those /sys/module shows
// present.
func (r Reader) Read(ctx context.Context) (Inventory, error) {
	inv, loaded, err := r.read(ctx)
	if err != nil || (len(inv.Missing) == 0 && inv.NotJudged == "") {
		return inv, err
	}
	return r.withSysModules(inv, loaded), nil
}

// withSysModules drops from inv's missing features those a module named in /sys/module provides,
// and judges a node the module index could not tell about when loaded and /sys/module modules
// provide every feature. An unreadable /sys/module changes nothing: it can only tell presence.
func (r Reader) withSysModules(inv Inventory, loaded map[string]bool) Inventory {
	dir := r.sysModuleDir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return inv
	}
	sys := map[string]bool{}
	for _, e := range entries {
		sys[moduleName(e.Name())] = true
	}
	var shown []string
	provided := func(f Feature) bool {
		i := slices.IndexFunc(f.Modules, func(m string) bool { return sys[m] })
		if i >= 0 && !slices.Contains(shown, f.Modules[i]) {
			shown = append(shown, f.Modules[i])
		}
		return i >= 0
	}
	if inv.NotJudged != "" {
		for _, f := range Features() {
			if !slices.ContainsFunc(f.Modules, func(m string) bool { return loaded[m] }) && !provided(f) {
				return inv
			}
		}
		src := "modules: /proc/modules, " + dir
		if len(shown) > 0 {
			src += " (present there: " + strings.Join(shown, ", ") + ")"
		}
		return Inventory{Source: src}
	}
	var missing []Feature
	for _, f := range inv.Missing {
		if !provided(f) {
			missing = append(missing, f)
		}
	}
	if len(shown) > 0 {
		inv.Source += fmt.Sprintf("; present in %s: %s", dir, strings.Join(shown, ", "))
	}
	inv.Missing = missing
	return inv
}

// read is Read's first source that can tell, with the loaded modules when it read them.
func (r Reader) read(ctx context.Context) (Inventory, map[string]bool, error) {
	if err := ctx.Err(); err != nil {
		return Inventory{}, nil, err
	}
	release, err := readTrimmed(r.proc("sys/kernel/osrelease"))
	if err != nil {
		return Inventory{}, nil, fmt.Errorf("reading the kernel release: %w", err)
	}
	features := Features()
	var tried []string
	for _, path := range []string{r.proc("config.gz"), filepath.Join(r.HostRoot, "boot", "config-"+release)} {
		cfg, err := readConfig(path)
		if errors.Is(err, fs.ErrNotExist) {
			tried = append(tried, path+" absent")
			continue
		}
		if err != nil {
			return Inventory{}, nil, err
		}
		return Inventory{Source: "kernel config " + path, Missing: missingByConfig(features, cfg)}, nil, nil
	}
	loaded, err := readLoadedModules(r.proc("modules"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// No /proc/modules: a kernel built without modules has everything it has built in,
		// and has registered every xtables extension it has.
		xt, err := readXT(r.proc("net"))
		if err != nil {
			return Inventory{}, nil, err
		}
		return Inventory{Source: "kernel without modules: registered xtables extensions " + r.proc("net/ip_tables_targets") + ", _matches",
			Missing: missingByXT(features, xt)}, nil, nil
	case err != nil:
		return Inventory{}, nil, err
	}
	modDir := filepath.Join(r.HostRoot, "lib", "modules", release)
	builtin, errB := readModuleList(filepath.Join(modDir, "modules.builtin"), false)
	installed, errD := readModuleList(filepath.Join(modDir, "modules.dep"), true)
	if errB != nil || errD != nil {
		tried = append(tried, fmt.Sprintf("no module index under %s (%v)", modDir, errors.Join(errB, errD)))
		return Inventory{NotJudged: "no kernel config and no module index to tell built-in and installed modules from absent ones: " +
			strings.Join(tried, "; ")}, loaded, nil
	}
	have := func(m string) bool { return loaded[m] || builtin[m] || installed[m] }
	var missing []Feature
	for _, f := range features {
		if !slices.ContainsFunc(f.Modules, have) {
			missing = append(missing, f)
		}
	}
	return Inventory{Source: "modules: /proc/modules, " + modDir + "/modules.builtin, modules.dep", Missing: missing}, loaded, nil
}

func readTrimmed(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// readConfig reads a kernel config (gzip-compressed when its name says so) into option → value.
func readConfig(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var in io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		z, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("reading kernel config %s: %w", path, err)
		}
		defer z.Close()
		in = z
	}
	cfg, err := parseConfig(in)
	if err != nil {
		return nil, fmt.Errorf("reading kernel config %s: %w", path, err)
	}
	return cfg, nil
}

// parseConfig reads CONFIG_X=VALUE lines; "# CONFIG_X is not set" and other comments are no value.
func parseConfig(in io.Reader) (map[string]string, error) {
	cfg := map[string]string{}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, value, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(name, "CONFIG_") {
			continue
		}
		cfg[strings.TrimPrefix(name, "CONFIG_")] = value
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(cfg) == 0 {
		return nil, errors.New("no CONFIG_ option in it: not a kernel config")
	}
	return cfg, nil
}

func missingByConfig(features []Feature, cfg map[string]string) []Feature {
	var missing []Feature
	for _, f := range features {
		if !slices.ContainsFunc(f.Config, func(o string) bool { return cfg[o] == "y" || cfg[o] == "m" }) {
			missing = append(missing, f)
		}
	}
	return missing
}

// readLoadedModules reads /proc/modules' first column.
func readLoadedModules(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for line := range bytes.Lines(b) {
		if name, _, _ := bytes.Cut(line, []byte(" ")); len(name) > 0 {
			out[moduleName(string(bytes.TrimSpace(name)))] = true
		}
	}
	return out, nil
}

// readModuleList reads modules.builtin (a path per line) or modules.dep ("path: deps") into
// module names.
func readModuleList(path string, dep bool) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for line := range bytes.Lines(b) {
		p := string(bytes.TrimSpace(line))
		if dep {
			p, _, _ = strings.Cut(p, ":")
		}
		if p == "" {
			continue
		}
		base := filepath.Base(p)
		base, _, _ = strings.Cut(base, ".ko")
		out[moduleName(base)] = true
	}
	return out, nil
}

// moduleName is a module's name as the kernel spells it: dashes are underscores.
func moduleName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// xtRegistered is the xtables targets and matches the kernel registered, any family.
type xtRegistered struct{ targets, matches map[string]bool }

func readXT(netDir string) (xtRegistered, error) {
	xt := xtRegistered{targets: map[string]bool{}, matches: map[string]bool{}}
	read := func(name string, into map[string]bool) error {
		b, err := os.ReadFile(filepath.Join(netDir, name))
		if err != nil {
			return fmt.Errorf("reading the kernel's registered xtables extensions: %w", err)
		}
		for _, f := range strings.Fields(string(b)) {
			into[f] = true
		}
		return nil
	}
	if err := read("ip_tables_targets", xt.targets); err != nil {
		return xt, err
	}
	if err := read("ip_tables_matches", xt.matches); err != nil {
		return xt, err
	}
	return xt, nil
}

// missingByXT judges the features an xtables name tells; the others (conntrack, tables, nf_tables
// expressions) a kernel without modules is not asked about here.
func missingByXT(features []Feature, xt xtRegistered) []Feature {
	var missing []Feature
	for _, f := range features {
		if (f.XT.target != "" && !xt.targets[f.XT.target]) || (f.XT.match != "" && !xt.matches[f.XT.match]) {
			missing = append(missing, f)
		}
	}
	return missing
}
