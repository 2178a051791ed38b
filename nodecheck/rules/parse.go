package rules

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// ParseSave reads iptables-save output (as printed by iptables-nft-save or iptables-legacy-save,
// with or without counters) into a RuleSet. Errors name the line.
func ParseSave(r io.Reader, backend Backend, family Family) (*RuleSet, error) {
	set := &RuleSet{Backend: backend, Family: family}
	var table *Table
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		// Tabs separate words as spaces do (iptables' own tokenizer treats them alike).
		line := strings.TrimSpace(strings.ReplaceAll(sc.Text(), "\t", " "))
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "*"):
			name := strings.TrimSpace(line[1:])
			if !validName(name) {
				return nil, fmt.Errorf("line %d: %q is not a table name", lineNo, name)
			}
			table = set.AddTable(name)
			if table.Origin == "" {
				table.Origin = string(backend) + " " + table.Name
			}
		case line == "COMMIT":
			table = nil
		case table == nil:
			return nil, fmt.Errorf("line %d: %q outside a table (no *TABLE line before it)", lineNo, line)
		case strings.HasPrefix(line, ":"):
			fields := strings.Fields(line[1:])
			if len(fields) == 0 {
				return nil, fmt.Errorf("line %d: chain declaration without a name", lineNo)
			}
			if !validName(fields[0]) {
				return nil, fmt.Errorf("line %d: %q is not a chain name", lineNo, fields[0])
			}
			c := table.AddChain(fields[0])
			if len(fields) > 1 && fields[1] != "-" {
				c.Policy = fields[1]
				c.Builtin = true
			}
		case strings.HasPrefix(line, "-A ") || strings.HasPrefix(line, "[") || strings.HasPrefix(line, "-N "):
			if strings.HasPrefix(line, "[") { // "[pkts:bytes] -A CHAIN …" from iptables-save -c
				_, rest, ok := strings.Cut(line, "]")
				if !ok {
					return nil, fmt.Errorf("line %d: unterminated counters", lineNo)
				}
				line = strings.TrimSpace(rest)
			}
			verb, rest, _ := strings.Cut(line, " ")
			chainName, spec, _ := strings.Cut(strings.TrimSpace(rest), " ")
			if !validName(chainName) {
				return nil, fmt.Errorf("line %d: %s without a valid chain name (%q)", lineNo, verb, chainName)
			}
			c := table.AddChain(chainName)
			if verb == "-N" {
				continue
			}
			rule, err := ParseRuleSpec(spec)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", lineNo, err)
			}
			c.Rules = append(c.Rules, rule)
		default:
			return nil, fmt.Errorf("line %d: unrecognised %q", lineNo, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading iptables-save text: %w", err)
	}
	return set, nil
}

// validName accepts what the kernel accepts as a table or chain name: up to 31 printable,
// non-blank ASCII characters.
func validName(s string) bool {
	if s == "" || len(s) > 31 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// isWord reports whether v is one non-empty word without blanks, quotes or control characters:
// the shape of every value iptables accepts for the options meshdoctor understands.
func isWord(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c == '"' || c == 0x7f {
			return false
		}
	}
	return true
}

// MustParseRuleSpec is ParseRuleSpec for rule text written in the program itself; it panics on an
// error, which is a bug in that text.
func MustParseRuleSpec(spec string) Rule {
	r, err := ParseRuleSpec(spec)
	if err != nil {
		panic(err)
	}
	return r
}

// ParseRuleSpec reads one rule's options as iptables accepts them ("-p tcp -m tcp --dport 15008 -j
// RETURN"), normalized: implied modules (`-m tcp`), option order, counters and comments do not
// change the result. Options it does not understand are kept as MatchOther, verbatim.
func ParseRuleSpec(spec string) (Rule, error) {
	toks, err := tokenize(spec)
	if err != nil {
		return Rule{}, err
	}
	p := specParser{toks: toks}
	return p.parse()
}

type specParser struct {
	toks   []string
	pos    int
	module string
	rule   Rule
	other  []string // unknown options of the current module, flushed as one MatchOther
}

func (p *specParser) next() (string, bool) {
	if p.pos >= len(p.toks) {
		return "", false
	}
	t := p.toks[p.pos]
	p.pos++
	return t, true
}

func (p *specParser) value(opt string) (string, error) {
	v, ok := p.next()
	if !ok {
		return "", fmt.Errorf("option %s needs a value", opt)
	}
	return v, nil
}

func (p *specParser) add(kind MatchKind, not bool, value string) {
	p.rule.Matches = append(p.rule.Matches, Match{Kind: kind, Not: not, Value: value})
}

func (p *specParser) flushOther() {
	if len(p.other) > 0 {
		words := make([]string, len(p.other))
		for i, w := range p.other {
			words[i] = quoteWord(w)
		}
		p.add(MatchOther, false, strings.Join(words, " "))
		p.other = nil
	}
}

// quoteWord quotes a word that would not survive tokenize as one word again.
func quoteWord(w string) string {
	if w != "" && isWord(w) && !strings.Contains(w, `\`) {
		return w
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(w) + `"`
}

func (p *specParser) parse() (Rule, error) {
	for {
		tok, ok := p.next()
		if !ok {
			break
		}
		not := false
		if tok == "!" {
			not = true
			if tok, ok = p.next(); !ok {
				return Rule{}, fmt.Errorf("'!' at the end of the rule")
			}
		}
		switch tok {
		case "-j", "--jump", "-g", "--goto", "-m", "--match", "-c", "--set-counters":
			if not {
				return Rule{}, fmt.Errorf("'!' cannot negate %s", tok)
			}
		}
		switch tok {
		case "-j", "--jump", "-g", "--goto":
			p.flushOther()
			name, err := p.value(tok)
			if err != nil {
				return Rule{}, err
			}
			if !validName(name) {
				return Rule{}, fmt.Errorf("%s %q: not a target or chain name", tok, name)
			}
			p.rule.Target = Target{Name: name, Goto: tok == "-g" || tok == "--goto"}
			args, err := targetArgs(name, p.toks[p.pos:])
			if err != nil {
				return Rule{}, fmt.Errorf("target %s: %w", name, err)
			}
			p.rule.Target.Args = args
			p.pos = len(p.toks)
		case "-m", "--match":
			p.flushOther()
			mod, err := p.value(tok)
			if err != nil {
				return Rule{}, err
			}
			p.module = mod
			if mod == "socket" {
				p.add(MatchSocket, false, "")
			}
		case "-c", "--set-counters":
			if _, err := p.value(tok); err != nil {
				return Rule{}, err
			}
			if _, err := p.value(tok); err != nil {
				return Rule{}, err
			}
		default:
			if err := p.option(tok, not); err != nil {
				return Rule{}, err
			}
		}
	}
	p.flushOther()
	p.rule.Normalize()
	return p.rule, nil
}

func (p *specParser) option(opt string, not bool) error {
	if !strings.HasPrefix(opt, "-") || opt == "-" {
		return fmt.Errorf("unexpected %q where an option was expected", opt)
	}
	if !understood(opt) {
		p.unknownWords(opt, not)
		return nil
	}
	v, err := p.valueFor(opt)
	if err != nil {
		return err
	}
	if valued(opt) && opt != "--comment" && !isWord(v) {
		return fmt.Errorf("option %s: %q is not a value (empty, or blanks or quotes inside)", opt, v)
	}
	switch opt {
	case "-s", "--source", "--src", "-d", "--destination", "--dst":
		pfx, err := ParsePrefix(v)
		if err != nil {
			return err
		}
		kind := MatchSource
		if opt == "-d" || opt == "--destination" || opt == "--dst" {
			kind = MatchDestination
		}
		p.add(kind, not, PrefixValue(pfx))
	case "-i", "--in-interface":
		p.add(MatchInInterface, not, v)
	case "-o", "--out-interface":
		p.add(MatchOutInterface, not, v)
	case "-p", "--protocol":
		p.add(MatchProtocol, not, protocolName(v))
	case "--sport", "--source-port", "--dport", "--destination-port":
		if p.module == "multiport" {
			return p.ports(opt, not, v)
		}
		lo, hi, err := ParsePortRange(v)
		if err != nil {
			return err
		}
		kind := MatchSourcePort
		if opt == "--dport" || opt == "--destination-port" {
			kind = MatchDestinationPort
		}
		p.add(kind, not, PortRangeValue(lo, hi))
	case "--sports", "--source-ports", "--dports", "--destination-ports":
		return p.ports(opt, not, v)
	case "--ports":
		// Either direction: no canonical kind of its own, kept whole.
		p.add(MatchOther, false, "-m multiport "+bang(not)+"--ports "+v)
	case "--uid-owner", "--gid-owner":
		kind := MatchUIDOwner
		if opt == "--gid-owner" {
			kind = MatchGIDOwner
		}
		id, err := normalizeIDRange(v)
		if err != nil {
			return fmt.Errorf("%s: %w", opt, err)
		}
		p.add(kind, not, id)
	case "--mark":
		val, mask, err := ParseMark(v)
		if err != nil {
			return err
		}
		kind := MatchMark
		if p.module == "connmark" {
			kind = MatchConnMark
		}
		p.add(kind, not, MarkValue(val, mask))
	case "--ctstate", "--state":
		states := strings.Split(v, ",")
		if slices.Contains(states, "") {
			return fmt.Errorf("%s %q: empty state name", opt, v)
		}
		p.add(MatchCTState, not, CTStateValue(states))
	case "--comment":
		// A comment changes nothing about what a rule does.
	case "--transparent", "--nowildcard", "--restore-skmark":
		p.setSocketOption(opt)
	}
	return nil
}

// unknownWords keeps an option meshdoctor does not understand, with every word after it up to the
// next option it does understand: whether an unknown option takes values, and how many, cannot be
// known, and taking them all makes a rule read the same when its rendering is read again.
func (p *specParser) unknownWords(opt string, not bool) {
	if not {
		p.other = append(p.other, "!")
	}
	p.other = append(p.other, opt)
	for p.pos < len(p.toks) {
		t := p.toks[p.pos]
		if understood(t) || (t == "!" && p.pos+1 < len(p.toks) && understood(p.toks[p.pos+1])) {
			return
		}
		p.other = append(p.other, t)
		p.pos++
	}
}

// understood reports whether tok is an option or keyword the parser handles itself.
func understood(tok string) bool {
	switch tok {
	case "-j", "--jump", "-g", "--goto", "-m", "--match", "-c", "--set-counters",
		"--transparent", "--nowildcard", "--restore-skmark":
		return true
	}
	return valued(tok)
}

func bang(not bool) string {
	if not {
		return "! "
	}
	return ""
}

// valueFor takes the value of opt; flag-only options take none.
func (p *specParser) valueFor(opt string) (string, error) {
	switch opt {
	case "--transparent", "--nowildcard", "--restore-skmark":
		return "", nil
	}
	return p.value(opt)
}

// valued reports whether opt is an option meshdoctor understands that must have a value.
func valued(opt string) bool {
	switch opt {
	case "-s", "--source", "--src", "-d", "--destination", "--dst", "-i", "--in-interface",
		"-o", "--out-interface", "-p", "--protocol", "--sport", "--source-port", "--dport",
		"--destination-port", "--sports", "--source-ports", "--dports", "--destination-ports",
		"--ports", "--uid-owner", "--gid-owner", "--mark", "--ctstate", "--state", "--comment":
		return true
	}
	return false
}

func (p *specParser) setSocketOption(opt string) {
	for i := range p.rule.Matches {
		if p.rule.Matches[i].Kind == MatchSocket {
			p.rule.Matches[i].Value = strings.TrimSpace(p.rule.Matches[i].Value + " " + opt)
			return
		}
	}
	p.add(MatchSocket, false, opt)
}

func (p *specParser) ports(opt string, not bool, v string) error {
	var parts []string
	for _, s := range strings.Split(v, ",") {
		lo, hi, err := ParsePortRange(s)
		if err != nil {
			return err
		}
		parts = append(parts, PortRangeValue(lo, hi))
	}
	kind := MatchDestinationPorts
	if opt == "--sports" || opt == "--source-ports" {
		kind = MatchSourcePorts
	}
	p.add(kind, not, strings.Join(parts, ","))
	return nil
}

// targetArgs normalizes the options of the extension targets Istio uses; others stay verbatim.
func targetArgs(name string, toks []string) (string, error) {
	opts := map[string]string{}
	var flags []string
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if targetValued(name, t) && i+1 < len(toks) {
			if _, dup := opts[t]; dup {
				return verbatim(toks), nil
			}
			opts[t] = toks[i+1]
			i++
			continue
		}
		if !targetFlag(name, t) {
			// Not a form meshdoctor normalizes: keep the words as they are.
			return verbatim(toks), nil
		}
		flags = append(flags, t)
	}
	switch name {
	case "REDIRECT":
		v, ok := opts["--to-ports"]
		if !ok {
			v, ok = opts["--to-port"]
		}
		if !ok {
			return strings.Join(flags, " "), nil
		}
		lo, hi, err := ParsePortRange(v)
		if err != nil {
			return "", err
		}
		return joinNonEmpty(append([]string{RedirectArgs(lo, hi)}, flags...)), nil
	case "TPROXY":
		port, err := strconv.ParseUint(opts["--on-port"], 10, 16)
		if err != nil {
			return "", fmt.Errorf("--on-port: %w", err)
		}
		var ip netip.Addr
		if s, ok := opts["--on-ip"]; ok {
			if ip, err = netip.ParseAddr(s); err != nil {
				return "", fmt.Errorf("--on-ip: %w", err)
			}
		}
		mark, mask := uint32(0), uint32(0)
		if s, ok := opts["--tproxy-mark"]; ok {
			if mark, mask, err = ParseMark(s); err != nil {
				return "", err
			}
		}
		return TProxyArgs(uint16(port), ip, mark, mask), nil
	case "MARK":
		for _, o := range []string{"--set-xmark", "--set-mark"} {
			if s, ok := opts[o]; ok {
				v, m, err := ParseMark(s)
				if err != nil {
					return "", err
				}
				return SetMarkArgs(v, m), nil
			}
		}
	case "CONNMARK":
		nf, ct := uint32(0xffffffff), uint32(0xffffffff)
		for _, pair := range []struct {
			opt string
			dst *uint32
		}{{"--nfmask", &nf}, {"--ctmask", &ct}, {"--mask", &nf}} {
			if s, ok := opts[pair.opt]; ok {
				v, err := strconv.ParseUint(s, 0, 32)
				if err != nil {
					return "", fmt.Errorf("%s: %w", pair.opt, err)
				}
				*pair.dst = uint32(v)
				if pair.opt == "--mask" {
					ct = uint32(v)
				}
			}
		}
		for _, f := range flags {
			switch f {
			case "--save-mark":
				return ConnMarkArgs("save", nf, ct), nil
			case "--restore-mark":
				return ConnMarkArgs("restore", nf, ct), nil
			}
		}
	case "CT":
		if s, ok := opts["--zone"]; ok && len(opts) == 1 && len(flags) == 0 {
			z, err := strconv.ParseUint(s, 10, 16)
			if err != nil {
				return "", fmt.Errorf("--zone: %w", err)
			}
			return CTZoneArgs(uint16(z)), nil
		}
	}
	return verbatim(toks), nil
}

func verbatim(toks []string) string {
	words := make([]string, len(toks))
	for i, t := range toks {
		words[i] = quoteWord(t)
	}
	return strings.Join(words, " ")
}

// targetValued reports whether opt is an option of target that takes a value and that
// meshdoctor normalizes.
func targetValued(target, opt string) bool {
	switch target {
	case "REDIRECT":
		return opt == "--to-ports" || opt == "--to-port"
	case "TPROXY":
		return opt == "--on-port" || opt == "--on-ip" || opt == "--tproxy-mark"
	case "MARK":
		return opt == "--set-xmark" || opt == "--set-mark"
	case "CONNMARK":
		return opt == "--nfmask" || opt == "--ctmask" || opt == "--mask"
	case "CT":
		return opt == "--zone"
	}
	return false
}

// targetFlag reports whether flag is a value-less option of target that meshdoctor keeps.
func targetFlag(target, flag string) bool {
	switch target {
	case "REDIRECT":
		return flag == "--random" || flag == "--random-fully"
	case "CONNMARK":
		return flag == "--save-mark" || flag == "--restore-mark"
	case "CT":
		return flag == "--notrack"
	}
	return false
}

// normalizeIDRange reads a uid/gid or a range of them ("1337", "1000-2000").
func joinNonEmpty(parts []string) string {
	out := parts[:0:0]
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, " ")
}

func normalizeIDRange(v string) (string, error) {
	a, b, isRange := strings.Cut(v, "-")
	lo, err := strconv.ParseUint(a, 10, 32)
	if err != nil {
		return "", fmt.Errorf("owner id %q: %w", v, err)
	}
	hi := lo
	if isRange {
		if hi, err = strconv.ParseUint(b, 10, 32); err != nil || hi < lo {
			return "", fmt.Errorf("owner id range %q is not LOW-HIGH", v)
		}
	}
	return IDRangeValue(uint32(lo), uint32(hi)), nil
}

// protocolName maps protocol numbers to the names iptables-save prints.
func protocolName(p string) string {
	switch strings.ToLower(p) {
	case "6", "tcp":
		return "tcp"
	case "17", "udp":
		return "udp"
	case "1", "icmp":
		return "icmp"
	case "58", "icmpv6", "ipv6-icmp":
		return "ipv6-icmp"
	case "132", "sctp":
		return "sctp"
	}
	return strings.ToLower(p)
}

// tokenize splits a rule into words, keeping double-quoted strings (comments) whole.
func tokenize(s string) ([]string, error) {
	var toks []string
	var cur strings.Builder
	inQuote, escaped, have := false, false, false
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\' && inQuote:
			escaped = true
		case r == '"':
			inQuote = !inQuote
			have = true
		case (r == ' ' || r == '\t') && !inQuote:
			if have {
				toks = append(toks, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if have {
		toks = append(toks, cur.String())
	}
	return toks, nil
}
