package logscan

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestJournalNoLossNoDup: a journal appended to, rotated by renaming (as journald archives a
// file) with a new file started, and the agent restarted at each step: every line once. Then a
// first start on a journal spanning three hours reads the look-back only.
func TestJournalNoLossNoDup(t *testing.T) {
	f := newFixture(t, evidenceRules)
	dir := filepath.Join(f.root, "var/log/journal/3d1219c7c4c5404aaa1f6d2a48adfda4")
	system := filepath.Join(dir, "system.journal")
	id := 0
	batch := func(n int) []journalIn {
		var out []journalIn
		for i := 0; i < n; i++ {
			out = append(out,
				journalIn{Time: f.now, Unit: "kubelet.service", Identifier: "kubelet", Message: "I0827 syncing pod"},
				journalIn{Time: f.now, Unit: "kubelet.service", Identifier: "kubelet", Message: fmt.Sprintf("E0827 EVIDENCE id=%d pod=shop/cart-7d9", id)})
			id++
		}
		return out
	}
	writeJournal(t, system, batch(40), true)
	f.scan()
	f.exactlyOnce(id)
	writeJournal(t, system, batch(25), true)
	f.restart()
	f.scan()
	f.exactlyOnce(id)
	// journald archives the file under a new name and starts a new one.
	writeJournal(t, system, batch(5), true)
	must(t, os.Rename(system, filepath.Join(dir, "system@5e9f3c2a1b0d4c8e9f7a6b5c4d3e2f10-0000000000000001-0006052a1b2c3d4e.journal")))
	writeJournal(t, system, batch(30), true)
	f.restart()
	f.scan()
	f.exactlyOnce(id)
	f.scan()
	f.exactlyOnce(id)

	// A first start (new state dir) on a three-hour journal: only the last hour (Since).
	g := newFixture(t, evidenceRules)
	var old []journalIn
	inWindow := 0
	for i := 0; i < 180; i++ {
		ts := g.now.Add(-3 * time.Hour).Add(time.Duration(i) * time.Minute)
		n := -1
		if !ts.Before(g.now.Add(-time.Hour)) {
			n = inWindow
			inWindow++
		}
		old = append(old, journalIn{Time: ts, Unit: "containerd.service", Identifier: "containerd", Message: fmt.Sprintf("EVIDENCE id=%d", n)})
	}
	writeJournal(t, filepath.Join(g.root, "var/log/journal/m/system.journal"), old, true)
	st := g.scan()
	delete(g.seen, -1)
	g.exactlyOnce(inWindow)
	if st.Journal.Entries != int64(inWindow) {
		t.Errorf("looked at %d entries for %d in the look-back", st.Journal.Entries, inWindow)
	}
}
