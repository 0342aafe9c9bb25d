package config

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// GossipKey returns the primary gossip encryption key (the one new
// messages are encrypted with): gossip.key, or the first key of
// gossip.key_file as read by Load.
func (c *Config) GossipKey() ([]byte, error) {
	keys, err := c.GossipKeys()
	if err != nil {
		return nil, err
	}
	return keys[0], nil
}

// GossipKeys returns every gossip key, primary first. A key_file may hold
// several keys, one per line (blank lines and lines starting with # are
// skipped): the first encrypts, all decrypt. That is how the key is
// rotated without a partition: add the new key second on every observer,
// then make it first everywhere, then drop the old one (docs/security.md).
func (c *Config) GossipKeys() ([][]byte, error) {
	g := &c.Gossip
	switch {
	case g.Key != "" && g.KeyFile != "":
		return nil, errors.New("gossip.key and gossip.key_file are both set")
	case g.Key != "":
		k, err := decodeGossipKey(g.Key)
		if err != nil {
			return nil, fmt.Errorf("gossip.key: %w", err)
		}
		return [][]byte{k}, nil
	case g.KeyFile != "":
		data, err := g.keyFileContent()
		if err != nil {
			return nil, fmt.Errorf("gossip.key_file %q: %w", g.KeyFile, err)
		}
		var keys [][]byte
		lines := strings.Split(data, "\n")
		for i, line := range lines {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			k, err := decodeGossipKey(line)
			if err != nil {
				if len(lines) > 1 {
					return nil, fmt.Errorf("gossip.key_file %q: line %d: %w", g.KeyFile, i+1, err)
				}
				return nil, fmt.Errorf("gossip.key_file %q: %w", g.KeyFile, err)
			}
			keys = append(keys, k)
		}
		if len(keys) == 0 {
			return nil, fmt.Errorf("gossip.key_file %q: %w", g.KeyFile, errors.New("empty key"))
		}
		return keys, nil
	default:
		return nil, errors.New("neither gossip.key nor gossip.key_file is set")
	}
}

// loadKeyFile reads KeyFile once, at load time.
func (g *Gossip) loadKeyFile() {
	if g.KeyFile == "" {
		return
	}
	data, err := readKeyFile(g.KeyFile)
	g.keyFile = &fileContent{data: data, err: err}
}

// keyFileContent returns the key file content read by Load, or reads it
// now for a Config that was not built by Load or Parse.
func (g *Gossip) keyFileContent() (string, error) {
	if g.keyFile != nil {
		return g.keyFile.data, g.keyFile.err
	}
	return readKeyFile(g.KeyFile)
}

func readKeyFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		// The path is reported by the caller; keep only the cause.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", fmt.Errorf("cannot read: %w", err)
	}
	// Editors and `vigil keygen > file` leave a trailing newline.
	return strings.TrimSpace(string(b)), nil
}

// decodeGossipKey decodes a base64 key and checks that its length is one
// memberlist accepts (AES-128, -192 or -256). Errors never include the
// key material.
func decodeGossipKey(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("empty key")
	}
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		var ce base64.CorruptInputError
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("not valid base64 (standard encoding): bad data at byte %d", int64(ce))
		}
		return nil, errors.New("not valid base64 (standard encoding)")
	}
	switch len(k) {
	case 16, 24, 32:
		return k, nil
	}
	return nil, fmt.Errorf("decoded length %d bytes: must be 16, 24 or 32", len(k))
}

// GenerateGossipKey returns a new random 32-byte gossip key, base64
// encoded, suitable for gossip.key or a key_file.
func GenerateGossipKey() (string, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return "", fmt.Errorf("generate gossip key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(k), nil
}
