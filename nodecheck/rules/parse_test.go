package rules

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Rules that mean the same thing must render to the same canonical text, however iptables-save,
// iptables-nft or a person wrote them.
func TestParseRuleSpecSameMeaning(t *testing.T) {
	cases := []struct {
		name string
		a, b string
	}{
		{"implied tcp module", "-p tcp -m tcp --dport 15008 -j RETURN", "-p tcp --dport 15008 -j RETURN"},
		{"option order", "! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
			"-o lo -p tcp ! --dport 15008 ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"},
		{"host address without mask", "-s 127.0.0.6 -o lo -j RETURN", "-o lo -s 127.0.0.6/32 -j RETURN"},
		{"protocol number", "-p 6 -j ISTIO_INBOUND", "-p tcp -j ISTIO_INBOUND"},
		{"to-port spelling", "-p udp --dport 53 -j REDIRECT --to-port 15053", "-p udp --dport 53 -j REDIRECT --to-ports 15053"},
		{"set-mark is set-xmark with full mask", "-j MARK --set-mark 1337", "-j MARK --set-xmark 0x539/0xffffffff"},
		{"tproxy options order", "! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff",
			"! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006"},
		{"connmark save defaults", "-p tcp -m mark --mark 0x539 -j CONNMARK --save-mark", "-p tcp -m mark --mark 1337 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff"},
		{"ctstate order", "-p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT", "-p tcp -m conntrack --ctstate ESTABLISHED,RELATED -j ISTIO_DIVERT"},
		{"comment changes nothing", `-p tcp -m comment --comment "istio capture" -j ISTIO_INBOUND`, "-p tcp -j ISTIO_INBOUND"},
		{"multiport", "-o lo -p tcp -m multiport ! --dports 53,15008 -j RETURN", "-p tcp -o lo -m multiport ! --dports 53,15008 -j RETURN"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := ParseRuleSpec(c.a)
			if err != nil {
				t.Fatalf("ParseRuleSpec(%q): %v", c.a, err)
			}
			b, err := ParseRuleSpec(c.b)
			if err != nil {
				t.Fatalf("ParseRuleSpec(%q): %v", c.b, err)
			}
			if a.Spec() != b.Spec() {
				t.Errorf("same meaning, different text:\n  %s\n  %s", a.Spec(), b.Spec())
			}
		})
	}
}

func TestParseRuleSpecDifferentMeaning(t *testing.T) {
	cases := [][2]string{
		{"-p tcp -j REDIRECT --to-ports 15001", "-p tcp -j REDIRECT --to-ports 15002"},
		{"-o lo -m owner ! --uid-owner 1337 -j RETURN", "-o lo -m owner --uid-owner 1337 -j RETURN"},
		{"-d 127.0.0.1/32 -j RETURN", "! -d 127.0.0.1/32 -j RETURN"},
		{"-j ISTIO_REDIRECT", "-g ISTIO_REDIRECT"},
		{"-p tcp -m mark --mark 0x539 -j RETURN", "-p tcp -m connmark --mark 0x539 -j RETURN"},
	}
	for _, c := range cases {
		a, b := MustParseRuleSpec(c[0]), MustParseRuleSpec(c[1])
		if a.Spec() == b.Spec() {
			t.Errorf("%q and %q mean different things but render the same: %s", c[0], c[1], a.Spec())
		}
	}
}

// Canonical text renders negations where iptables puts them, so it can be fed back to iptables.
func TestSpecRendersNegationAfterModule(t *testing.T) {
	got := MustParseRuleSpec("-m owner ! --uid-owner 1337 -o lo -j RETURN").Spec()
	want := "-o lo -m owner ! --uid-owner 1337 -j RETURN"
	if got != want {
		t.Errorf("Spec() = %q, want %q", got, want)
	}
}

func TestParseRuleSpecErrors(t *testing.T) {
	for _, spec := range []string{
		"-p tcp --dport", "-s 300.1.1.1 -j RETURN", "-p tcp --dport 70000 -j RETURN", "!",
		`-m comment --comment "unterminated`, "-j TPROXY --on-port x", "-p tcp --dport 10:5 -j RETURN",
		"-m mark --mark 0xzz -j RETURN", "stray -j RETURN", "! -m owner --uid-owner 1337 -j RETURN",
	} {
		if _, err := ParseRuleSpec(spec); err == nil {
			t.Errorf("ParseRuleSpec(%q): no error", spec)
		}
	}
}

// Unknown matches are kept verbatim, never dropped: a rule we do not understand must not compare
// equal to a shorter one.
func TestParseRuleSpecKeepsUnknownMatches(t *testing.T) {
	r := MustParseRuleSpec("-p tcp -m limit --limit 5/sec -j RETURN")
	if !r.Has(MatchOther) {
		t.Fatalf("limit match dropped: %s", r.Spec())
	}
	if r.Spec() == MustParseRuleSpec("-p tcp -j RETURN").Spec() {
		t.Errorf("rule with an unknown match compares equal to the rule without it")
	}
}

// Golden test over real captures written by Istio's own pilot-agent (test/cmd/capture-testdata):
// each capture parses, and Save() of the parse is stable (parsing it again gives the same text).
func TestParseSaveRealCaptures(t *testing.T) {
	files, _ := filepath.Glob("testdata/captures/*/*-save.txt")
	if len(files) == 0 {
		t.Fatal("no captures under testdata/captures: run test/cmd/capture-testdata")
	}
	for _, f := range files {
		t.Run(filepath.Base(filepath.Dir(f))+"/"+filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			fam := IPv4
			if strings.HasPrefix(filepath.Base(f), "ip6") {
				fam = IPv6
			}
			set, err := ParseSave(strings.NewReader(string(data)), BackendNft, fam)
			if err != nil {
				t.Fatalf("parsing %s: %v", f, err)
			}
			again, err := ParseSave(strings.NewReader(set.Save()), BackendNft, fam)
			if err != nil {
				t.Fatalf("parsing our own Save(): %v\n%s", err, set.Save())
			}
			if set.Save() != again.Save() {
				t.Errorf("Save() is not stable:\n%s\n---\n%s", set.Save(), again.Save())
			}
			if n := strings.Count(string(data), "\n-A "); set.RuleCount() != n {
				t.Errorf("parsed %d rules, file has %d", set.RuleCount(), n)
			}
		})
	}
}

func TestParseSaveErrorsNameTheLine(t *testing.T) {
	_, err := ParseSave(strings.NewReader("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp --dport nope -j RETURN\nCOMMIT\n"), BackendNft, IPv4)
	if err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("error %v does not name line 3", err)
	}
	if _, err := ParseSave(strings.NewReader("-A OUTPUT -j RETURN\n"), BackendNft, IPv4); err == nil {
		t.Errorf("a rule outside a table parsed without error")
	}
}

func FuzzParseSave(f *testing.F) {
	files, _ := filepath.Glob("testdata/captures/*/*-save.txt")
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(string(data))
		}
	}
	f.Add("*nat\n-A OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT\nCOMMIT\n")
	f.Fuzz(func(t *testing.T, text string) {
		set, err := ParseSave(strings.NewReader(text), BackendNft, IPv4)
		if err != nil {
			return
		}
		// Whatever parsed must render to text that parses again to the same rules.
		again, err := ParseSave(strings.NewReader(set.Save()), BackendNft, IPv4)
		if err != nil {
			t.Fatalf("Save() output does not parse: %v\n%s", err, set.Save())
		}
		if again.Save() != set.Save() {
			t.Fatalf("Save() not stable:\n%s\n---\n%s", set.Save(), again.Save())
		}
	})
}

// Options Istio does not write still parse, and keep what makes them differ.
func TestParseRuleSpecRareOptions(t *testing.T) {
	cases := []struct{ spec, want string }{
		{"-p tcp -m tcp --tcp-flags SYN,RST SYN -j RETURN", "-p tcp --tcp-flags SYN,RST SYN -j RETURN"},
		{"-p tcp -m multiport --ports 80,443 -j RETURN", "-p tcp -m multiport --ports 80,443 -j RETURN"},
		{"-p tcp -j REDIRECT --to-ports 15001 --random", "-p tcp -j REDIRECT --to-ports 15001 --random"},
		{"-j CT --notrack --zone 2", "-j CT --notrack --zone 2"},
		{"-m conntrack --ctstate ZZZ,NEW,AAA -j RETURN", "-m conntrack --ctstate NEW,AAA,ZZZ -j RETURN"},
	}
	for _, c := range cases {
		r, err := ParseRuleSpec(c.spec)
		if err != nil {
			t.Errorf("ParseRuleSpec(%q): %v", c.spec, err)
			continue
		}
		if r.Spec() != c.want {
			t.Errorf("ParseRuleSpec(%q).Spec() = %q, want %q", c.spec, r.Spec(), c.want)
		}
	}
}
