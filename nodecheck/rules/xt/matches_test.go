package xt

import "testing"

func TestCTStates(t *testing.T) {
	cases := []struct {
		mask uint16
		bits []stateBit
		want string
	}{
		{0x06, conntrackStates, "ESTABLISHED,RELATED"},
		{0x01, conntrackStates, "INVALID"},
		{0x1c8, conntrackStates, "NEW,UNTRACKED,SNAT,DNAT"},
		{0x48, stateStates, "NEW,UNTRACKED"},
		{0x31, conntrackStates, "INVALID,BIT4+BIT5"},
	}
	for _, c := range cases {
		if got := ctStates(c.mask, c.bits); got != c.want {
			t.Errorf("ctStates(0x%x) = %q, want %q", c.mask, got, c.want)
		}
	}
}
