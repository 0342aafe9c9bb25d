package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// maxSecretBytes bounds what is read from a secret file: a password file
// larger than this is a wrong path, not a password.
const maxSecretBytes = 64 << 10

// ReadSecret returns the trimmed contents of a secret file such as a
// password_file, or "" for an empty path. A file that does not exist, is
// not a regular file (a directory, a FIFO that would block, a device) or
// cannot be read is an error naming the path, never an empty secret.
// Callers read the file when they need it, so a rotated password is
// picked up without a restart; Validate checks the same at load time.
func ReadSecret(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	s, err := readSecretFile(path)
	if err != nil {
		return "", fmt.Errorf("read secret %q: %w", path, err)
	}
	return s, nil
}

// readSecretFile reads path; its errors say what is wrong without
// repeating the path (callers name it).
func readSecretFile(path string) (string, error) {
	// Stat before opening: opening a FIFO would block until a writer came.
	fi, err := os.Stat(path)
	if err != nil {
		return "", secretCause(err)
	}
	if err := regular(fi); err != nil {
		return "", err
	}
	f, err := os.Open(path)
	if err != nil {
		return "", secretCause(err)
	}
	defer f.Close()
	// The file may have been replaced between Stat and Open.
	if fi, err = f.Stat(); err != nil {
		return "", secretCause(err)
	}
	if err := regular(fi); err != nil {
		return "", err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretBytes+1))
	if err != nil {
		return "", secretCause(err)
	}
	if len(b) > maxSecretBytes {
		return "", fmt.Errorf("larger than %d KiB: not a password file", maxSecretBytes>>10)
	}
	// Editors and `echo secret > file` leave a trailing newline.
	return strings.TrimSpace(string(b)), nil
}

func regular(fi fs.FileInfo) error {
	switch {
	case fi.IsDir():
		return errors.New("is a directory, not a regular file")
	case !fi.Mode().IsRegular():
		return fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	return nil
}

// secretCause keeps the cause of a file error, without the path, and
// keeps it reachable for errors.Is (fs.ErrNotExist, fs.ErrPermission).
func secretCause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	if errors.Is(err, fs.ErrNotExist) {
		return &causeError{msg: "does not exist", err: err}
	}
	return fmt.Errorf("cannot read: %w", err)
}

// causeError is a message that stands for its cause, which stays
// reachable through errors.Is and errors.As.
type causeError struct {
	msg string
	err error
}

func (e *causeError) Error() string { return e.msg }
func (e *causeError) Unwrap() error { return e.err }

// secretFile reports a configured secret file that cannot be used.
func (v *validator) secretFile(field, path string) {
	if path == "" {
		return
	}
	if _, err := readSecretFile(path); err != nil {
		v.add(field, path, err.Error())
	}
}
