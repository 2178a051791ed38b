package netfilter

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// testdata holds real captures of this test bed's kernel (6.18, built without modules): the
// netfilter lines of /proc/config.gz, and /proc/net/ip_tables_targets and _matches. The module
// lists of the modules cases are written in /proc/modules' and modules.dep's formats by the
// cases themselves: the test bed's kernel has none. testdata/sys/module is a copy of the test
// bed's own /sys/module entries of two built-in modules with parameters (nf_conntrack, ip_set),
// laid under the fake root's sys by the cases that set sys.
func TestRead(t *testing.T) {
	realConfig := readFile(t, "testdata/config-6.18-firecracker.netfilter")
	without := func(opts ...string) string {
		s := realConfig
		for _, o := range opts {
			s = strings.ReplaceAll(s, "CONFIG_"+o+"=y\n", "# CONFIG_"+o+" is not set\n")
		}
		return s
	}
	modulesNoConntrack := "nf_nat 57344 2 xt_REDIRECT,iptable_nat, Live 0x0000000000000000\n"
	modulesLoaded := "nf_conntrack 180224 3 xt_REDIRECT,nf_nat,xt_conntrack, Live 0x0000000000000000\n" +
		"nf_nat 57344 2 xt_REDIRECT,iptable_nat, Live 0x0000000000000000\n"
	modulePaths := []string{"net/netfilter/xt_REDIRECT", "net/netfilter/xt_owner", "net/ipv4/netfilter/iptable_nat",
		"net/netfilter/nf_tables", "net/netfilter/nft_compat", "net/netfilter/nft_chain_nat", "net/netfilter/nft_redir",
		"net/netfilter/nft_ct", "net/netfilter/xt_TPROXY", "net/ipv4/netfilter/iptable_mangle", "net/netfilter/xt_mark",
		"net/netfilter/xt_connmark", "net/netfilter/xt_CT", "net/netfilter/xt_set", "net/netfilter/ipset/ip_set_hash_ip"}
	// Every module but nf_conntrack loaded, in /proc/modules' format.
	modulesAllButConntrack := modulesNoConntrack
	for _, m := range modulePaths {
		modulesAllButConntrack += filepath.Base(m) + " 16384 0 - Live 0x0000000000000000\n"
	}
	modulesDep := func(omit string) string {
		var b strings.Builder
		for _, m := range modulePaths {
			if !strings.HasSuffix(m, "/"+omit) {
				b.WriteString("kernel/" + m + ".ko.zst: kernel/net/netfilter/x_tables.ko.zst\n")
			}
		}
		return b.String()
	}
	cases := []struct {
		name           string
		files          map[string]string // path under the fake root ("proc/..." is the kernel's /proc) → content
		sys            bool              // testdata/sys copied to the fake root's sys
		source         string
		missing        []string
		severity       nodecheck.Severity // of the finding, "" for none
		notJudged, err string
	}{
		{name: "the test bed's kernel config", files: map[string]string{"proc/config.gz": gz(realConfig)}, source: "kernel config"},
		{name: "no REDIRECT target", files: map[string]string{"proc/config.gz": gz(without("NETFILTER_XT_TARGET_REDIRECT"))},
			missing: []string{"xtables REDIRECT target"}, severity: nodecheck.SeverityError},
		{name: "no TPROXY, no nft redirect", files: map[string]string{"proc/config.gz": gz(without("NETFILTER_XT_TARGET_TPROXY", "NFT_REDIR"))},
			missing: []string{"nf_tables redirect", "xtables TPROXY target"}, severity: nodecheck.SeverityWarning},
		{name: "REDIRECT as a module", files: map[string]string{"proc/config.gz": gz(strings.Replace(realConfig, "CONFIG_NETFILTER_XT_TARGET_REDIRECT=y", "CONFIG_NETFILTER_XT_TARGET_REDIRECT=m", 1))}},
		{name: "the distribution's /boot config", files: map[string]string{"host/boot/config-6.18.0-test": without("NF_CONNTRACK")},
			source: "/boot/config-6.18.0-test", missing: []string{"connection tracking"}, severity: nodecheck.SeverityError},
		{name: "modules: everything installed", files: map[string]string{"proc/modules": modulesLoaded,
			"host/lib/modules/6.18.0-test/modules.builtin": "kernel/net/netfilter/nf_nat.ko\n",
			"host/lib/modules/6.18.0-test/modules.dep":     modulesDep("")}, source: "modules"},
		{name: "modules: no owner match", files: map[string]string{"proc/modules": modulesLoaded,
			"host/lib/modules/6.18.0-test/modules.builtin": "",
			"host/lib/modules/6.18.0-test/modules.dep":     modulesDep("xt_owner")},
			missing: []string{"xtables owner match"}, severity: nodecheck.SeverityError},
		{name: "modules loaded, no index", files: map[string]string{"proc/modules": modulesLoaded}, notJudged: "no module index"},
		{name: "modules: conntrack neither loaded nor indexed", files: map[string]string{"proc/modules": modulesNoConntrack,
			"host/lib/modules/6.18.0-test/modules.builtin": "",
			"host/lib/modules/6.18.0-test/modules.dep":     modulesDep("")},
			missing: []string{"connection tracking"}, severity: nodecheck.SeverityError},
		{name: "modules: conntrack built in, shown by /sys/module alone", sys: true, files: map[string]string{"proc/modules": modulesNoConntrack,
			"host/lib/modules/6.18.0-test/modules.builtin": "",
			"host/lib/modules/6.18.0-test/modules.dep":     modulesDep("")},
			source: "present in " + "SYS/module: nf_conntrack"},
		{name: "modules: /sys/module tells no absence", sys: true, files: map[string]string{"proc/modules": modulesNoConntrack,
			"host/lib/modules/6.18.0-test/modules.builtin": "",
			"host/lib/modules/6.18.0-test/modules.dep":     modulesDep("xt_owner")},
			missing: []string{"xtables owner match"}, severity: nodecheck.SeverityError},
		{name: "a stale /boot config, conntrack shown by /sys/module", sys: true, files: map[string]string{"host/boot/config-6.18.0-test": without("NF_CONNTRACK")},
			source: "/boot/config-6.18.0-test; present in SYS/module: nf_conntrack"},
		{name: "no index, every module loaded but conntrack, shown by /sys/module", sys: true, files: map[string]string{"proc/modules": modulesAllButConntrack},
			source: "modules: /proc/modules, SYS/module (present there: nf_conntrack)"},
		{name: "no index, /sys/module shows only some", sys: true, files: map[string]string{"proc/modules": modulesNoConntrack}, notJudged: "no module index"},
		{name: "a kernel without modules", files: map[string]string{"proc/net/ip_tables_targets": readFile(t, "testdata/ip_tables_targets"),
			"proc/net/ip_tables_matches": readFile(t, "testdata/ip_tables_matches")}, source: "kernel without modules"},
		{name: "a kernel without modules nor TPROXY", files: map[string]string{
			"proc/net/ip_tables_targets": strings.ReplaceAll(readFile(t, "testdata/ip_tables_targets"), "TPROXY\n", ""),
			"proc/net/ip_tables_matches": readFile(t, "testdata/ip_tables_matches")},
			missing: []string{"xtables TPROXY target"}, severity: nodecheck.SeverityWarning},
		{name: "a config that is not gzip", files: map[string]string{"proc/config.gz": realConfig}, err: "gzip"},
		{name: "a config without options", files: map[string]string{"host/boot/config-6.18.0-test": "# nothing\n"}, err: "not a kernel config"},
		{name: "nothing readable", files: map[string]string{}, err: "registered xtables extensions"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			c.files["proc/sys/kernel/osrelease"] = "6.18.0-test\n"
			for p, content := range c.files {
				full := filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if c.sys {
				if err := os.CopyFS(filepath.Join(root, "sys"), os.DirFS("testdata/sys")); err != nil {
					t.Fatal(err)
				}
			}
			c.source = strings.ReplaceAll(c.source, "SYS", filepath.Join(root, "sys"))
			inv, err := Reader{HostRoot: filepath.Join(root, "host"), ProcDir: filepath.Join(root, "proc"), SysDir: filepath.Join(root, "sys")}.Read(t.Context())
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one saying %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, f := range inv.Missing {
				got = append(got, f.Name)
			}
			slices.Sort(got)
			if !slices.Equal(got, c.missing) {
				t.Errorf("missing %q, want %q (source %s)", got, c.missing, inv.Source)
			}
			if !strings.Contains(inv.Source, c.source) || !strings.Contains(inv.NotJudged, c.notJudged) {
				t.Errorf("source %q, not judged %q; want %q, %q", inv.Source, inv.NotJudged, c.source, c.notJudged)
			}
			f, ok := Finding(inv)
			if ok != (c.severity != "") || f.Severity != c.severity {
				t.Errorf("finding %v %s, want severity %q", ok, f.Severity, c.severity)
			}
			if ok && (f.Code != nodecheck.NetfilterFeatureMissing || f.Remedy == "" || f.Evidence["source"] != inv.Source) {
				t.Errorf("finding lacks its code, remedy or evidence: %+v", f)
			}
		})
	}
}

// The test bed's own kernel, read as the agent reads it: it has every feature (Istio's rules are
// written on it by the other tests), so nothing is missing, and something was read.
func TestReadThisKernel(t *testing.T) {
	inv, err := Reader{HostRoot: "/"}.Read(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("source %s, not judged %q", inv.Source, inv.NotJudged)
	if inv.Source == "" && os.Getenv("CI") == "true" {
		t.Errorf("nothing could be read on the test bed: %s", inv.NotJudged)
	}
	if len(inv.Missing) > 0 {
		t.Errorf("the test bed's kernel writes Istio's rules, yet lacks %+v", inv.Missing)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func gz(s string) string {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write([]byte(s))
	w.Close()
	return b.String()
}
