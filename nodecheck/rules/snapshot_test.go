package rules

import "testing"

func TestRedirectsUDP(t *testing.T) {
	set := func(specs ...string) []*RuleSet {
		c := &Chain{Name: "OUTPUT", Builtin: true}
		for _, s := range specs {
			c.Rules = append(c.Rules, MustParseRuleSpec(s))
		}
		return []*RuleSet{{Backend: BackendNft, Family: IPv4, Tables: []*Table{{Name: "nat", Chains: []*Chain{c}}}}}
	}
	for _, c := range []struct {
		name string
		sets []*RuleSet
		want bool
	}{
		{"no rules", nil, false},
		{"TCP capture only", set("-p tcp -j ISTIO_OUTPUT", "-p tcp -j REDIRECT --to-ports 15001"), false},
		{"DNS capture", set("-p tcp -j ISTIO_OUTPUT", "-p udp --dport 53 -j REDIRECT --to-ports 15053"), true},
		{"UDP excluded only", set("! -p udp -j RETURN"), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := RedirectsUDP(c.sets); got != c.want {
				t.Errorf("RedirectsUDP = %v, want %v", got, c.want)
			}
		})
	}
}
