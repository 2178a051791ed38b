package capture_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/capture"
)

// TestAmbientNftablesGolden replays, case by case, what meshdoctor's reader saw after istio-cni's
// native nftables writer ran (testdata/ambient-native-nftables/<case>/snapshot.json) and compares
// the check's capture and findings with want.json beside it; -update rewrites want.json.
func TestAmbientNftablesGolden(t *testing.T) {
	update := flag.Lookup("update").Value.(flag.Getter).Get().(bool)
	for _, c := range ambientNftCases() {
		t.Run(c.name, func(t *testing.T) {
			snap, err := loadStoredSnapshot(c.name)
			if err != nil {
				t.Fatalf("%v (go test -run TestAmbientNftablesFromIstiosWriter -capture-ambient-nft stores it, as root)", err)
			}
			res, err := (&capture.Check{Reader: storedReader{snap}}).Check(t.Context(), nodecheck.Target{Annotations: c.annotations})
			if err != nil {
				t.Fatal(err)
			}
			checkAmbientNftResult(t, c, res)
			got, err := json.MarshalIndent(struct {
				Capture  *nodecheck.Capture  `json:"capture"`
				Findings []nodecheck.Finding `json:"findings"`
			}{res.Capture, res.Findings}, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			want := filepath.Join(ambientNftDir, c.name, "want.json")
			if update {
				if err := os.WriteFile(want, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			exp, err := os.ReadFile(want)
			if err != nil {
				t.Fatalf("%v (go test -run TestAmbientNftablesGolden -update writes it)", err)
			}
			if !bytes.Equal(got, exp) {
				t.Errorf("result differs from %s:\n--- got\n%s--- want\n%s", want, got, exp)
			}
		})
	}
}
