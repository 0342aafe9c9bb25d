package nodeagent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEpochStorePersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sub", "state") // created on open
	s, err := openEpochStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.get("g") != 0 {
		t.Fatal("fresh store not zero")
	}
	if err := s.raise("g", 7); err != nil {
		t.Fatal(err)
	}
	if err := s.raise("g", 3); err != nil { // lower: no-op
		t.Fatal(err)
	}
	if err := s.raise("other", 2); err != nil {
		t.Fatal(err)
	}
	s2, err := openEpochStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s2.get("g") != 7 || s2.get("other") != 2 {
		t.Fatalf("reloaded epochs: g=%d other=%d", s2.get("g"), s2.get("other"))
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != epochFile {
		t.Errorf("data_dir holds %v, want only %s (no temp files left)", ents, epochFile)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("data_dir mode %v", fi.Mode().Perm())
	}
}

func TestEpochStoreRefusesCorruptFile(t *testing.T) {
	for name, content := range map[string]string{
		"garbage":       "{not json",
		"wrong version": `{"version": 9, "epochs": {"g": 1}}`,
		"unknown field": `{"version": 1, "epochs": {}, "extra": 1}`,
		"negative":      `{"version": 1, "epochs": {"g": -1}}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, epochFile), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := openEpochStore(dir)
			if err == nil || !strings.Contains(err.Error(), epochFile) {
				t.Fatalf("err = %v, want an error naming %s", err, epochFile)
			}
		})
	}
}
