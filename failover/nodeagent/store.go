package nodeagent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sync"
)

// epochFile is the name of the file in data_dir holding the highest epoch
// seen per group.
const epochFile = "epochs.json"

const epochFileVersion = 1

type epochFileData struct {
	Version int               `json:"version"`
	Epochs  map[string]uint64 `json:"epochs"`
}

// epochStore persists the highest epoch seen per group: the agent's
// fencing tokens. Losing them would let a deposed leader's late request
// (a lower epoch) act after a restart, so a file that cannot be read is an
// error, never a reset to zero. Groups no longer configured are kept, so
// removing and re-adding a group does not reset its epoch.
type epochStore struct {
	mu     sync.Mutex
	dir    string
	epochs map[string]uint64 // as persisted
}

func openEpochStore(dir string) (*epochStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	s := &epochStore{dir: dir, epochs: map[string]uint64{}}
	path := filepath.Join(dir, epochFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the highest epochs: %w", err)
	}
	var f epochFileData
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%s is not a valid epoch file (%v); it holds the fencing epochs, so the agent will not start without it: restore it, or remove it only if no observer can still send a request of an old epoch", path, err)
	}
	if f.Version != epochFileVersion {
		return nil, fmt.Errorf("%s: unsupported version %d (want %d)", path, f.Version, epochFileVersion)
	}
	if f.Epochs != nil {
		s.epochs = f.Epochs
	}
	return s, nil
}

func (s *epochStore) get(group string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epochs[group]
}

// raise makes sure the persisted epoch of group is at least e. It writes
// the file (temp file, fsync, rename, fsync of the directory) only when e
// is higher than what is persisted, so calling it with the current epoch
// is cheap.
func (s *epochStore) raise(group string, e uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e <= s.epochs[group] {
		return nil
	}
	next := maps.Clone(s.epochs)
	next[group] = e
	if err := s.write(next); err != nil {
		return fmt.Errorf("persisting epoch %d of group %q: %w", e, group, err)
	}
	s.epochs = next
	return nil
}

func (s *epochStore) write(epochs map[string]uint64) error {
	data, err := json.MarshalIndent(epochFileData{Version: epochFileVersion, Epochs: epochs}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, epochFile+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename this fails harmlessly
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(s.dir, epochFile)); err != nil {
		return err
	}
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
