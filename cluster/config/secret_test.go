package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const (
	probePasswordField    = "groups[0].probe.postgres.password_file"
	failoverPasswordField = "groups[0].failover.postgres.password_file"
)

// writeSecret writes content to a new file in a temporary directory.
func writeSecret(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// unusableSecrets are password_file values that must fail validation,
// with the reason each must give. Tests run as root, which reads any
// file whatever its mode, so read errors come from a path below a regular
// file (ENOTDIR); a chmod 000 file is added when not root.
func unusableSecrets(t *testing.T) map[string]struct{ path, reason string } {
	t.Helper()
	dir := t.TempDir()
	file := writeSecret(t, "pg.pass", "secret\n")
	cases := map[string]struct{ path, reason string }{
		"missing":            {filepath.Join(dir, "no-such.pass"), "does not exist"},
		"directory":          {dir, "is a directory, not a regular file"},
		"below a plain file": {filepath.Join(file, "pg.pass"), "cannot read: not a directory"},
	}
	fifo := filepath.Join(dir, "pg.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err == nil {
		// Opening it for reading would block: it must be refused unopened.
		cases["fifo"] = struct{ path, reason string }{fifo, "not a regular file"}
	}
	if os.Geteuid() != 0 {
		locked := writeSecret(t, "locked.pass", "secret\n")
		if err := os.Chmod(locked, 0); err != nil {
			t.Fatal(err)
		}
		cases["mode 000"] = struct{ path, reason string }{locked, "cannot read: permission denied"}
	}
	return cases
}

func TestPasswordFileMustBeReadable(t *testing.T) {
	for name, c := range unusableSecrets(t) {
		for _, field := range []string{probePasswordField, failoverPasswordField} {
			t.Run(name+"/"+field, func(t *testing.T) {
				cfg, err := Parse(mutate(t, set(field, c.path)))
				if cfg != nil || err == nil {
					t.Fatalf("Parse accepted %s = %q", field, c.path)
				}
				fe := fieldError(t, err, field)
				if fe.Value != c.path || !strings.HasPrefix(fe.Reason, c.reason) {
					t.Fatalf("got %q, want value %q and reason %q", fe, c.path, c.reason)
				}
				if want := field + ": " + `"` + c.path + `": ` + fe.Reason; fe.Error() != want {
					t.Errorf("error %q, want %q", fe.Error(), want)
				}
			})
		}
	}
}

func TestPasswordFilesAllReported(t *testing.T) {
	dir := t.TempDir()
	probe, act := filepath.Join(dir, "monitor.pass"), filepath.Join(dir, "pg.pass")
	_, err := Parse(mutate(t, set(probePasswordField, probe), set(failoverPasswordField, act)))
	if fe := fieldError(t, err, probePasswordField); fe.Value != probe {
		t.Errorf("probe: %v", fe)
	}
	if fe := fieldError(t, err, failoverPasswordField); fe.Value != act {
		t.Errorf("failover: %v", fe)
	}
}

func TestPasswordFileThatExistsPasses(t *testing.T) {
	probe := writeSecret(t, "monitor.pass", "m0nitor\n")
	act := writeSecret(t, "pg.pass", "")
	c, err := Parse(mutate(t, set(probePasswordField, probe), set(failoverPasswordField, act)))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if c.Groups[0].Probe.Postgres.PasswordFile != probe || c.Groups[0].Failover.Postgres.PasswordFile != act {
		t.Fatalf("password files %q, %q", c.Groups[0].Probe.Postgres.PasswordFile, c.Groups[0].Failover.Postgres.PasswordFile)
	}

	// Relative paths are resolved against the config file's directory,
	// and checked there, whatever the working directory is.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "monitor.pass"), []byte("m0nitor\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "obs1.yaml")
	if err := os.WriteFile(cfgPath, mutate(t, set(probePasswordField, "monitor.pass")), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err = Load(cfgPath)
	if err != nil {
		t.Fatalf("Load with a relative password_file next to the config: %v", err)
	}
	if got := c.Groups[0].Probe.Postgres.PasswordFile; got != filepath.Join(dir, "monitor.pass") {
		t.Fatalf("password_file resolved to %q", got)
	}
	if err := os.Remove(filepath.Join(dir, "monitor.pass")); err != nil {
		t.Fatal(err)
	}
	_, err = Load(cfgPath)
	if fe := fieldError(t, err, probePasswordField); fe.Value != filepath.Join(dir, "monitor.pass") {
		t.Fatalf("after removing the file: %v", fe)
	}
	if !strings.Contains(err.Error(), cfgPath) {
		t.Errorf("Load error %q does not name the config file", err)
	}
}

func TestReadSecret(t *testing.T) {
	if s, err := ReadSecret(""); s != "" || err != nil {
		t.Fatalf(`ReadSecret("") = %q, %v`, s, err)
	}
	path := writeSecret(t, "pg.pass", "  s3cret \n")
	if s, err := ReadSecret(path); s != "s3cret" || err != nil {
		t.Fatalf("ReadSecret = %q, %v; want s3cret", s, err)
	}
	if s, err := ReadSecret(writeSecret(t, "empty.pass", "\n")); s != "" || err != nil {
		t.Fatalf("empty file: %q, %v", s, err)
	}
	for name, c := range unusableSecrets(t) {
		t.Run(name, func(t *testing.T) {
			s, err := ReadSecret(c.path)
			if err == nil || s != "" {
				t.Fatalf("ReadSecret(%q) = %q, %v; want an error", c.path, s, err)
			}
			if !strings.Contains(err.Error(), c.path) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("error %q should name %q and say %q", err, c.path, c.reason)
			}
		})
	}
	_, err := ReadSecret(filepath.Join(t.TempDir(), "gone"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing file's error %v is not fs.ErrNotExist", err)
	}
	big := writeSecret(t, "big.pass", strings.Repeat("x", maxSecretBytes+1))
	if _, err := ReadSecret(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: %v", err)
	}
}
