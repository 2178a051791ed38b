package logscan

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// stateFileName is the scanner's file in the agent's --state-dir.
const stateFileName = "logscan-state.json"

const stateVersion = 1

// scanState is everything the scanner must remember across restarts to lose nothing and repeat
// nothing: where it stopped in every file and journal, and the conditions built so far (offsets
// without conditions would skip past evidence and forget it).
type scanState struct {
	Version int `json:"version"`
	// Streams are the tracked log files, by stream (one container's log directory, one syslog file
	// with its rotated copies).
	Streams map[string]*streamState `json:"streams"`
	// Journal is where reading stopped in each journal file, by file ID.
	Journal map[string]*journalCursor `json:"journal"`
	// JournalSeen says the journal was read before: a journal file not in Journal is then new and
	// read from its start, not from the look-back.
	JournalSeen bool                  `json:"journalSeen"`
	Conditions  map[string]*condition `json:"conditions"`
	SavedAt     time.Time             `json:"savedAt"`
}

type streamState struct {
	Files []*fileState `json:"files"`
}

// fileState identifies one file by inode and by a fingerprint of its first bytes (so a reused
// inode, a copy made by copytruncate and a compressed rotation are all told apart), and says how
// far it was read.
type fileState struct {
	Path  string `json:"path"`
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	FP    string `json:"fp"`
	FPLen int    `json:"fpLen"`
	// Offset is where the next read starts; Done is the end of what was evaluated. They differ
	// when a message being joined from partial lines must be read again from its first part.
	Offset   int64 `json:"offset"`
	Done     int64 `json:"done"`
	Complete bool  `json:"complete,omitempty"`
}

type journalCursor struct {
	Path   string `json:"path"`
	Seqnum uint64 `json:"seqnum"`
}

func newScanState() *scanState {
	return &scanState{
		Version:    stateVersion,
		Streams:    map[string]*streamState{},
		Journal:    map[string]*journalCursor{},
		Conditions: map[string]*condition{},
	}
}

// loadState reads the state file; a missing one is a first start. A damaged one is reported and
// replaced by a first start: the look-back bounds what is read again.
func loadState(dir string) (*scanState, error) {
	st := newScanState()
	if dir == "" {
		return st, nil
	}
	data, err := os.ReadFile(filepath.Join(dir, stateFileName))
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("reading log scan state: %w", err)
	}
	var loaded scanState
	if err := json.Unmarshal(data, &loaded); err != nil {
		return st, fmt.Errorf("log scan state %s is damaged, starting over from the look-back: %w",
			filepath.Join(dir, stateFileName), err)
	}
	if loaded.Version != stateVersion {
		return st, fmt.Errorf("log scan state version %d, want %d: starting over from the look-back", loaded.Version, stateVersion)
	}
	if loaded.Streams == nil {
		loaded.Streams = map[string]*streamState{}
	}
	if loaded.Journal == nil {
		loaded.Journal = map[string]*journalCursor{}
	}
	if loaded.Conditions == nil {
		loaded.Conditions = map[string]*condition{}
	}
	return &loaded, nil
}

// save writes the state atomically: a temporary file in the same directory, synced, renamed.
// A crash leaves the old state or the new one, never half of one.
func (st *scanState) save(dir string, now time.Time) error {
	if dir == "" {
		return nil
	}
	st.SavedAt = now
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encoding log scan state: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating state dir: %w", err)
	}
	tmp, err := os.CreateTemp(dir, stateFileName+".*")
	if err != nil {
		return fmt.Errorf("writing log scan state: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename this fails harmlessly
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing log scan state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("syncing log scan state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing log scan state: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFileName)); err != nil {
		return fmt.Errorf("replacing log scan state: %w", err)
	}
	return nil
}
