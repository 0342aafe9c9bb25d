package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Duration is a time.Duration that reads and writes YAML as a Go duration
// string such as "500ms" or "5m".
//
// A bare number is rejected (except 0): "5" could mean seconds or
// milliseconds depending on who wrote it, and guessing wrong on a failover
// timer is exactly the kind of mistake a config file must not allow.
// Range checks (such as "must be > 0") are done by Config.Validate so they
// can be reported against the field that holds the value.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats d like time.Duration.String, e.g. "1m30s".
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalYAML writes d as a duration string so a marshalled Config can be
// parsed again.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// UnmarshalYAML reads a duration string. Errors are returned as
// *yaml.TypeError so the decoder keeps going and reports every bad value,
// not only the first one.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeError(n, "expected a duration string such as \"500ms\"")
	}
	v, err := parseDuration(n.Value)
	if err != nil {
		return typeError(n, fmt.Sprintf("%q: %v", n.Value, err))
	}
	*d = v
	return nil
}

// parseDuration parses s as a Duration, refusing unit-less numbers other
// than 0.
func parseDuration(s string) (Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("empty duration; remove the key to use the default")
	}
	if isPlainNumber(s) {
		if strings.Trim(s, "+-0.") == "" {
			return 0, nil // zero needs no unit
		}
		return 0, fmt.Errorf("duration needs a unit, e.g. %q or %q", s+"s", s+"ms")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New("not a duration; use a number with a unit (ns, us, ms, s, m, h), e.g. \"500ms\"")
	}
	return Duration(v), nil
}

// ByteSize is a size in bytes. In YAML it is either a plain integer
// (bytes) or an integer followed by a unit: B, KB, MB, GB (powers of 1000)
// or KiB, MiB, GiB (powers of 1024), e.g. "16MiB".
type ByteSize int64

// Int64 returns b as a number of bytes.
func (b ByteSize) Int64() int64 { return int64(b) }

// byteUnits lists accepted suffixes, largest first so String picks the
// most compact exact spelling.
var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"GiB", 1 << 30},
	{"MiB", 1 << 20},
	{"KiB", 1 << 10},
	{"GB", 1e9},
	{"MB", 1e6},
	{"KB", 1e3},
	{"B", 1},
}

// String formats b with the largest unit that represents it exactly, e.g.
// "16MiB", "1500KB" or "123" (bytes).
func (b ByteSize) String() string {
	if b > 0 {
		for _, u := range byteUnits[:len(byteUnits)-1] {
			if int64(b)%u.mult == 0 {
				return strconv.FormatInt(int64(b)/u.mult, 10) + u.suffix
			}
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// MarshalYAML writes b in the form String returns, which parses back to
// the same value.
func (b ByteSize) MarshalYAML() (any, error) {
	if s := b.String(); strings.IndexFunc(s, isLetter) >= 0 {
		return s, nil
	}
	return int64(b), nil
}

// UnmarshalYAML reads a byte size; see ByteSize for the syntax.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeError(n, "expected a byte size such as 16MiB")
	}
	v, err := parseByteSize(n.Value)
	if err != nil {
		return typeError(n, fmt.Sprintf("%q: %v", n.Value, err))
	}
	*b = v
	return nil
}

// parseByteSize parses an optionally signed decimal integer with an
// optional unit suffix (one space allowed before it). Negative values parse
// so that Validate can report them as out of range against their field.
func parseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	num, unit := s, ""
	if i := strings.IndexFunc(s, isLetter); i >= 0 {
		num, unit = strings.TrimSuffix(s[:i], " "), s[i:]
	}
	if num == "" || strings.ContainsAny(num, "+_ ") {
		return 0, errBadByteSize
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, errors.New("byte size out of range")
		}
		return 0, errBadByteSize
	}
	if unit == "" {
		return ByteSize(n), nil
	}
	for _, u := range byteUnits {
		if u.suffix == unit {
			if n > math.MaxInt64/u.mult || n < math.MinInt64/u.mult {
				return 0, errors.New("byte size out of range")
			}
			return ByteSize(n * u.mult), nil
		}
	}
	return 0, fmt.Errorf("unknown unit %q; use B, KB, MB, GB (x1000) or KiB, MiB, GiB (x1024)", unit)
}

var errBadByteSize = errors.New("not a byte size; use an integer number of bytes or an integer with a unit, e.g. 16MiB")

// isPlainNumber reports whether s is a decimal number without unit, such as
// "5", "-1" or "0.5".
func isPlainNumber(s string) bool {
	s = strings.TrimLeft(s, "+-")
	digits, dots := 0, 0
	for _, r := range s {
		switch {
		case r >= '0' && r <= '9':
			digits++
		case r == '.':
			dots++
		default:
			return false
		}
	}
	return digits > 0 && dots <= 1
}

func isLetter(r rune) bool { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' }

// typeError builds the error form yaml.v3 collects instead of aborting.
func typeError(n *yaml.Node, msg string) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %s", n.Line, msg)}}
}
