package nftread

import (
	"context"
	"path/filepath"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// scenario is one namespace as Istio (and, for the feature scenarios, iptables-nft-restore or
// nft -f) leaves it. The same table drives the privileged test, which builds each namespace
// for real, and the unprivileged one, which decodes the dumps stored by `-capture`.
type scenario struct {
	name string
	opts []testbed.Option
	env  []string // proxyMetadata that reaches istio-init as environment
	args []string // pilot-agent istio-iptables ARGS; nil runs nothing
	// after changes the rules once Istio wrote them: breakage, or rules of our own.
	after func(ctx context.Context, ns *testbed.Netns) error
	// native is the expected Save() of the native sets, as the lines of `nft list ruleset` read
	// by hand: rule lines start with the families they belong to ("4 ", "6 " or "46 ").
	native string
	// nft, when set, is the expected Save() of the iptables-nft sets in the same form; when
	// empty those sets must equal what rules.ParseSave makes of iptables-nft-save (and
	// ip6tables-nft-save) run in the same namespace.
	nft   string
	other []string // expected Result.OtherTables
}

var dualStack = []string{"ISTIO_DUAL_STACK=true"}

func sidecarArgs(extra ...string) []string {
	args := testbed.DefaultSidecarArgs()
	logFlag := args[len(args)-1]
	return append(append(args[:len(args)-1], extra...), logFlag)
}

// withArgs returns the default sidecar arguments with some flag values replaced.
func withArgs(replace map[string]string, extra ...string) []string {
	args := sidecarArgs(extra...)
	for i := 0; i+1 < len(args); i++ {
		if v, ok := replace[args[i]]; ok {
			args[i+1] = v
		}
	}
	return args
}

// customArgs exercise every option of Istio's writer that changes the rules: CIDR include and
// exclude lists for both families, inbound and outbound port lists, excluded and virtual
// interfaces, DNS capture and dropping invalid packets.
var customArgs = withArgs(map[string]string{
	"-i": "10.0.0.0/8,fd00:1::/64",
	"-x": "10.96.0.0/12,fd00:2::/64",
	"-b": "8080,9090",
}, "-o", "3306,5432", "-q", "443", "-c", "eth1", "-k", "veth0", "--redirect-dns", "--drop-invalid")

func scenarios() []scenario {
	v4 := []testbed.Option{testbed.IPv4Only()}
	return []scenario{
		{name: "empty", opts: v4},
		{name: "sidecar-default", opts: v4, args: testbed.DefaultSidecarArgs()},
		{name: "sidecar-dual-stack", env: dualStack, args: testbed.DefaultSidecarArgs()},
		{name: "sidecar-ipv6-only", opts: []testbed.Option{testbed.IPv6Only()}, args: testbed.DefaultSidecarArgs()},
		{name: "sidecar-tproxy", env: dualStack, args: withArgs(map[string]string{"-m": "TPROXY"})},
		{name: "sidecar-custom", env: dualStack, args: customArgs},
		{
			name: "broken-redirect-port", opts: v4, args: testbed.DefaultSidecarArgs(),
			after: func(ctx context.Context, ns *testbed.Netns) error {
				return ns.RedirectTo(ctx, testbed.Nft, testbed.IPv4, "ISTIO_REDIRECT", 15999)
			},
		},
		{
			name: "broken-jump-deleted", env: dualStack, args: testbed.DefaultSidecarArgs(),
			after: func(ctx context.Context, ns *testbed.Netns) error {
				if err := ns.DeleteRule(ctx, testbed.Nft, testbed.IPv4, "nat", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND"); err != nil {
					return err
				}
				return ns.DeleteRule(ctx, testbed.Nft, testbed.IPv6, "nat", "OUTPUT", "-j", "ISTIO_OUTPUT")
			},
		},
		{
			name: "native-default", env: dualStack, args: sidecarArgs("--native-nftables"),
			native: nativeNat(false, "15001"),
		},
		{
			name: "native-tproxy", env: dualStack, args: withArgs(map[string]string{"-m": "TPROXY"}, "--native-nftables"),
			native: nativeTproxyMangle + nativeNat(true, "15001"),
		},
		{
			name: "native-custom", env: dualStack, args: append(append([]string(nil), customArgs[:len(customArgs)-1]...), "--native-nftables", customArgs[len(customArgs)-1]),
			native: nativeCustom,
		},
		{
			name: "native-broken", env: dualStack, args: sidecarArgs("--native-nftables"),
			after: func(ctx context.Context, ns *testbed.Netns) error {
				for _, cmd := range [][]string{
					{"flush", "chain", "inet", "istio-proxy-nat", "output"},
					{"flush", "chain", "inet", "istio-proxy-nat", "istio-redirect"},
					{"add", "rule", "inet", "istio-proxy-nat", "istio-redirect", "meta", "l4proto", "tcp", "redirect", "to", ":15999"},
				} {
					if _, err := ns.Nft(ctx, cmd...); err != nil {
						return err
					}
				}
				return nil
			},
			// The jump to istio-output is gone, and the outbound redirect points at a port no
			// proxy listens on.
			native: strings.Replace(nativeNat(false, "15999"), "46 -A OUTPUT -j ISTIO_OUTPUT\n", "", 1),
		},
		{
			name: "features-iptables", opts: v4,
			after: func(ctx context.Context, ns *testbed.Netns) error {
				return restore(ctx, ns, "features-iptables.rules")
			},
		},
		{
			name: "features-iptables-extra", opts: v4,
			after: func(ctx context.Context, ns *testbed.Netns) error {
				return restore(ctx, ns, "features-iptables-extra.rules")
			},
			// rules.ParseSave cannot read --tcp-flags, and names protocol 47 "gre" where the
			// kernel holds the number; what is not decoded is kept, visibly.
			nft: featuresIptablesExtra,
		},
		{
			name: "features-native", opts: v4,
			after: func(ctx context.Context, ns *testbed.Netns) error {
				path, err := filepath.Abs(filepath.Join("testdata", "features.nft"))
				if err != nil {
					return err
				}
				_, err = ns.Nft(ctx, "-f", path)
				return err
			},
			native: featuresNative,
			other:  []string{"inet filter"},
		},
	}
}

func restore(ctx context.Context, ns *testbed.Netns, file string) error {
	path, err := filepath.Abs(filepath.Join("testdata", file))
	if err != nil {
		return err
	}
	_, err = ns.Exec(ctx, "iptables-nft-restore", path)
	return err
}

// familyText picks family f's lines out of an expectation written with family prefixes ("4 ",
// "6 ", "46 "; on a *TABLE line the prefix covers the whole table), and groups each table's
// rules by chain in the order the chains are declared, as Save() prints them: expectations
// are written in the order of `nft list ruleset`, where a chain's rules follow its declaration.
func familyText(text string, f rules.Family) string {
	var b strings.Builder
	var decls []string
	var ruleLines map[string][]string
	skipTable := false
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		fams, rest, ok := strings.Cut(line, " ")
		if ok && (fams == "4" || fams == "6" || fams == "46") {
			if !strings.Contains(fams, string(rune('0'+int(f)))) {
				if strings.HasPrefix(rest, "*") {
					skipTable = true
				}
				continue
			}
			line = rest
		}
		switch {
		case skipTable:
			if line == "COMMIT" {
				skipTable = false
			}
		case strings.HasPrefix(line, "*"):
			decls, ruleLines = nil, map[string][]string{}
			b.WriteString(line + "\n")
		case strings.HasPrefix(line, ":"):
			decls = append(decls, line)
		case strings.HasPrefix(line, "-A "):
			chain, _, _ := strings.Cut(strings.TrimPrefix(line, "-A "), " ")
			ruleLines[chain] = append(ruleLines[chain], line)
		case line == "COMMIT":
			for _, d := range decls {
				b.WriteString(d + "\n")
			}
			for _, d := range decls {
				name, _, _ := strings.Cut(d[1:], " ")
				for _, r := range ruleLines[name] {
					b.WriteString(r + "\n")
				}
			}
			b.WriteString("COMMIT\n")
		}
	}
	return b.String()
}

// nativeNat is table inet istio-proxy-nat as `pilot-agent istio-iptables --native-nftables`
// writes it for a dual-stack pod, read line by line from `nft list ruleset`. In TPROXY mode the
// prerouting chain is absent and istio-inbound keeps only the tunnel port.
func nativeNat(tproxy bool, outboundPort string) string {
	pre, inbound := `:PREROUTING ACCEPT
`, `46 -A PREROUTING -p tcp -j ISTIO_INBOUND
46 -A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
46 -A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
46 -A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
46 -A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
46 -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
`
	if tproxy {
		pre, inbound = "", "46 -A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN\n"
	}
	return `*nat
` + pre + `:OUTPUT ACCEPT
:ISTIO_INBOUND -
:ISTIO_IN_REDIRECT -
:ISTIO_OUTPUT -
:ISTIO_REDIRECT -
46 -A OUTPUT -j ISTIO_OUTPUT
` + inbound + `46 -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports ` + outboundPort + `
46 -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
4 -A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
6 -A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN
4 -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
6 -A ISTIO_OUTPUT ! -d ::1/128 -o lo -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
46 -A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
46 -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
4 -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
6 -A ISTIO_OUTPUT ! -d ::1/128 -o lo -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
46 -A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
46 -A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
4 -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
6 -A ISTIO_OUTPUT -d ::1/128 -j RETURN
46 -A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
`
}

// nativeTproxyMangle is table inet istio-proxy-mangle in TPROXY mode. Note the order of
// istio-inbound: Istio's native writer puts the ip6 loopback rule before the mark rule and the
// ip one after it, where its iptables writer has the loopback rule first.
const nativeTproxyMangle = `*mangle
:PREROUTING ACCEPT
:OUTPUT ACCEPT
:ISTIO_DIVERT -
:ISTIO_INBOUND -
:ISTIO_TPROXY -
46 -A PREROUTING -p tcp -j ISTIO_INBOUND
46 -A PREROUTING -p tcp -m mark --mark 0x539/0xffffffff -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff
46 -A OUTPUT -o lo -p tcp -m mark --mark 0x539/0xffffffff -j RETURN
4 -A OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j MARK --set-xmark 0x53a/0xffffffff
6 -A OUTPUT ! -d ::1/128 -o lo -p tcp -m owner --uid-owner 1337 -j MARK --set-xmark 0x53a/0xffffffff
4 -A OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner 1337 -j MARK --set-xmark 0x53a/0xffffffff
6 -A OUTPUT ! -d ::1/128 -o lo -p tcp -m owner --gid-owner 1337 -j MARK --set-xmark 0x53a/0xffffffff
46 -A OUTPUT -p tcp -m connmark --mark 0x539/0xffffffff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
46 -A ISTIO_DIVERT -j MARK --set-xmark 0x539/0xffffffff
46 -A ISTIO_DIVERT -j ACCEPT
4 -A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff
6 -A ISTIO_TPROXY ! -d ::1/128 -p tcp -j TPROXY --on-port 15006 --on-ip :: --tproxy-mark 0x539/0xffffffff
46 -A ISTIO_INBOUND -p tcp -m mark --mark 0x539/0xffffffff -j RETURN
6 -A ISTIO_INBOUND -s ::6/128 -i lo -p tcp -j RETURN
46 -A ISTIO_INBOUND -i lo -p tcp -m mark ! --mark 0x53a/0xffffffff -j RETURN
4 -A ISTIO_INBOUND -s 127.0.0.6/32 -i lo -p tcp -j RETURN
46 -A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
46 -A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
46 -A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
46 -A ISTIO_INBOUND -p tcp -m conntrack --ctstate ESTABLISHED,RELATED -j ISTIO_DIVERT
46 -A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY
COMMIT
`

// nativeCustom is what customArgs make of the three native tables. The multiport exclusion
// of DNS and the tunnel port is an anonymous set (`tcp dport != { 53, 15008 }`); the DNS
// rules name the namespace's nameserver (testbed.DefaultNameserver), an IPv4 address, so
// they are in the IPv4 set only.
const nativeCustom = `*mangle
:PREROUTING ACCEPT
:ISTIO_DROP -
46 -A PREROUTING -p tcp -m conntrack --ctstate INVALID -j ISTIO_DROP
46 -A ISTIO_DROP -j DROP
COMMIT
*raw
:PREROUTING ACCEPT
:OUTPUT ACCEPT
:ISTIO_INBOUND -
:ISTIO_OUTPUT_DNS -
46 -A PREROUTING -j ISTIO_INBOUND
46 -A OUTPUT -j ISTIO_OUTPUT_DNS
4 -A ISTIO_INBOUND -s 10.96.0.10/32 -p udp --sport 53 -j CT --zone 1
46 -A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1
46 -A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner 1337 -j CT --zone 2
46 -A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --gid-owner 1337 -j CT --zone 1
46 -A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --gid-owner 1337 -j CT --zone 2
4 -A ISTIO_OUTPUT_DNS -d 10.96.0.10/32 -p udp --dport 53 -j CT --zone 2
COMMIT
*nat
:PREROUTING ACCEPT
:OUTPUT ACCEPT
:ISTIO_INBOUND -
:ISTIO_IN_REDIRECT -
:ISTIO_OUTPUT -
:ISTIO_OUTPUT_DNS -
:ISTIO_REDIRECT -
6 -A PREROUTING -d fd00:1::/64 -i veth0 -j ISTIO_REDIRECT
4 -A PREROUTING -d 10.0.0.0/8 -i veth0 -j ISTIO_REDIRECT
46 -A PREROUTING -i veth0 -j RETURN
46 -A PREROUTING -i eth1 -j RETURN
46 -A PREROUTING -p tcp -j ISTIO_INBOUND
46 -A OUTPUT -o eth1 -j RETURN
46 -A OUTPUT -j ISTIO_OUTPUT
46 -A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
46 -A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT
46 -A ISTIO_INBOUND -p tcp --dport 9090 -j ISTIO_IN_REDIRECT
46 -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
46 -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
46 -A ISTIO_OUTPUT -p tcp --dport 3306 -j RETURN
46 -A ISTIO_OUTPUT -p udp --dport 3306 -j RETURN
46 -A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN
46 -A ISTIO_OUTPUT -p udp --dport 5432 -j RETURN
4 -A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
6 -A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN
4 -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
6 -A ISTIO_OUTPUT ! -d ::1/128 -o lo -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
46 -A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --uid-owner 1337 -j RETURN
46 -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
4 -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
6 -A ISTIO_OUTPUT ! -d ::1/128 -o lo -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
46 -A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --gid-owner 1337 -j RETURN
46 -A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
46 -A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS
4 -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
6 -A ISTIO_OUTPUT -d ::1/128 -j RETURN
4 -A ISTIO_OUTPUT -d 10.96.0.0/12 -j RETURN
6 -A ISTIO_OUTPUT -d fd00:2::/64 -j RETURN
46 -A ISTIO_OUTPUT -p tcp --dport 443 -j ISTIO_REDIRECT
4 -A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT
6 -A ISTIO_OUTPUT -d fd00:1::/64 -j ISTIO_REDIRECT
4 -A ISTIO_OUTPUT_DNS -d 10.96.0.10/32 -p tcp --dport 53 -j REDIRECT --to-ports 15053
4 -A ISTIO_OUTPUT_DNS -d 10.96.0.10/32 -p udp --dport 53 -j REDIRECT --to-ports 15053
COMMIT
`

// featuresIptablesExtra is testdata/features-iptables-extra.rules as read: the extensions this
// package does not decode are kept as MatchOther with their raw info and a "?" target.
const featuresIptablesExtra = `4 *filter
:INPUT ACCEPT
:FORWARD ACCEPT
:OUTPUT ACCEPT
4 -A INPUT -p tcp --tcp-flags FIN,SYN,RST,ACK SYN -j ACCEPT
4 -A INPUT -p tcp ! --tcp-flags SYN,ACK ACK -j DROP
4 -A INPUT -p 47 -j ACCEPT
4 -A INPUT -p tcp -m multiport --ports 22,80:90 -j ACCEPT
4 -A INPUT -p udp --dport 53 -j LOG (revision 0, not decoded) 0400646e7320 -j ?LOG
4 -A INPUT nft limit 0c00010000000000000000010c0002000000000000000001080003000000000508000400000000000800050000000000 -j ACCEPT
4 -A INPUT -m addrtype (revision 1, not decoded) 000004 -j ACCEPT
4 -A OUTPUT -p tcp --dport 80 -m owner --uid-owner 1337 -j REJECT (revision 0, not decoded) 07 -j ?REJECT
COMMIT
4 *nat
:PREROUTING ACCEPT
:INPUT ACCEPT
:OUTPUT ACCEPT
:POSTROUTING ACCEPT
4 -A OUTPUT -d 10.0.0.1/32 -p tcp -j DNAT (revision 2, not decoded) 030000000a0000020000000000000000000000000a0000020000000000000000000000001f901f90 -j ?DNAT
4 -A POSTROUTING -o eth0 -j MASQUERADE (revision 0, not decoded) 01 -j ?MASQUERADE
COMMIT
`

// featuresNative is testdata/features.nft as read, line by line: every native match and
// statement the decoder knows, and some it does not (log, an address set), kept visibly.
const featuresNative = `*filter
:PREROUTING ACCEPT
:ISTIO_SUB -
46 -A PREROUTING -i eth+ -p tcp --dport 1000:2000 -j ACCEPT
46 -A PREROUTING -p tcp ! --sport 1024:65535 -j DROP
46 -A PREROUTING -p tcp --dport 1024:65535 -j ACCEPT
46 -A PREROUTING -m owner --uid-owner 1000-2000 -j RETURN
46 -A PREROUTING -m connmark --mark 0x1/0xff -j ACCEPT
46 -A PREROUTING -m mark ! --mark 0x10000/0xffff0000 -j ACCEPT
46 -A PREROUTING -m conntrack --ctstate NEW,UNTRACKED -j ACCEPT
46 -A PREROUTING -m conntrack ! --ctstate ESTABLISHED -j DROP
4 -A PREROUTING -s 10.0.0.0/12 ! -d 192.168.0.0/16 -j ACCEPT
6 -A PREROUTING -s fd00::/8 -j ACCEPT
46 -A PREROUTING -m socket --transparent -j ACCEPT
46 -A PREROUTING -p tcp -m multiport --dports 80,8000:8080 -j ACCEPT
46 -A PREROUTING -p tcp -m multiport --dports 22,443 -g ISTIO_SUB
46 -A PREROUTING -p udp --dport 53
4 -A PREROUTING -p tcp -j ACCEPT
46 -A PREROUTING -j MARK --set-xmark 0x10000/0xffff0000
46 -A PREROUTING -j CONNMARK --save-mark --nfmask 0xff --ctmask 0xffffffff
46 -A PREROUTING -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xff
46 -A PREROUTING nft log 06000200780000000800050000000004 -j ACCEPT
4 -A PREROUTING payload network+16/4 @__set1 {10.0.0.1,10.0.0.2} -j ACCEPT
46 -A PREROUTING -j CT --zone 5
46 -A PREROUTING also -j MARK --set-xmark 0x1/0xffffffff -j ACCEPT
4 -A PREROUTING -p tcp --dport 80 -j TPROXY --on-port 15006 --on-ip 127.0.0.1 --tproxy-mark 0x0/0x0
4 -A PREROUTING -p tcp --dport 81 -j TPROXY --on-port 15007 --on-ip 0.0.0.0 --tproxy-mark 0x2/0xffffffff
6 -A PREROUTING -p tcp --dport 81 -j TPROXY --on-port 15007 --on-ip :: --tproxy-mark 0x2/0xffffffff
46 -A PREROUTING -j CT --notrack
46 -A ISTIO_SUB -j RETURN
COMMIT
*nat
:OUTPUT ACCEPT
46 -A OUTPUT -p tcp -j REDIRECT --to-ports 15001-15002
46 -A OUTPUT -p tcp -j REDIRECT
4 -A OUTPUT -d 127.0.0.1/32 -o lo -p tcp --dport 15001 -j DNAT --to-destination 127.0.0.1:15006
COMMIT
`
