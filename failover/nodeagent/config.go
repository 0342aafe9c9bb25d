package nodeagent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Defaults for zero (or absent) configuration values.
const (
	DefaultLeaseTimeout = time.Second
	DefaultFenceTimeout = 10 * time.Second
	DefaultGARPCount    = 3
	DefaultGARPInterval = 100 * time.Millisecond
)

// Bounds checked by Validate.
const (
	minLeaseTimeout = 20 * time.Millisecond
	maxLeaseTimeout = time.Minute
	maxFenceTimeout = 10 * time.Minute
	maxGARPCount    = 100
	maxGARPInterval = 10 * time.Second
)

// Config is the node agent's configuration (`vigil node --config FILE`).
// A zero duration or count means its default.
type Config struct {
	// Node is this host's name, for logs and Status.
	Node string `yaml:"node"`
	// Listen is the gRPC listen address (host:port) the observers call.
	Listen string `yaml:"listen"`
	// DataDir holds the highest epoch seen per group. A relative path in a
	// file loaded with Load is relative to the file's directory.
	DataDir string `yaml:"data_dir"`
	// Observers are the configured observer ids. Only leases from these
	// count.
	Observers []string `yaml:"observers"`
	// Quorum is how many distinct observers' fresh leases keep the VIP;
	// 0 means a majority of Observers. It may not be below a majority.
	Quorum int `yaml:"quorum"`
	// LeaseTimeout is how long a lease (and an AddVIP grant) is valid.
	LeaseTimeout Duration `yaml:"lease_timeout"`
	// FenceTimeout bounds one run of a group's fence command (default
	// for groups that do not set their own).
	FenceTimeout Duration `yaml:"fence_timeout"`
	// GARP is the gratuitous ARP burst sent after adding a VIP.
	GARP GARP `yaml:"garp"`
	// Groups are the groups this host has a member in.
	Groups []Group `yaml:"groups"`
	// TLS, when set, makes the agent serve mutual TLS: only observer
	// certificates signed by the CA may call it, and each call's observer
	// field must be the caller's certificate name. Unset: plaintext, for a
	// network only the observers reach.
	TLS TLS `yaml:"tls,omitempty"`
}

// TLS names the agent's mutual-TLS files (PEM): the CA certificate(s) it
// trusts, its certificate (of kind "agent", from `vigil certs`) and its
// key. All three or none. Relative paths in a file loaded with Load are
// relative to the file's directory. SIGHUP reloads them.
type TLS struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Enabled reports whether any TLS file is configured (Validate requires
// all three then).
func (t TLS) Enabled() bool { return t.CA != "" || t.Cert != "" || t.Key != "" }

// GARP configures the gratuitous ARP burst (like keepalived's
// garp_master_repeat / garp_master_delay).
type GARP struct {
	Count    int      `yaml:"count"`
	Interval Duration `yaml:"interval"`
}

// Group is one group whose member runs on this host.
type Group struct {
	Name string `yaml:"name"`
	// Member is the group member this host runs.
	Member string `yaml:"member"`
	// VIP is the virtual IPv4 address in CIDR form, e.g. 10.0.0.100/32.
	VIP string `yaml:"vip"`
	// Interface is the network interface the VIP is added to.
	Interface string `yaml:"interface"`
	// FenceCommand, if set, is run (directly, no shell) on Fence and when
	// the agent fences itself after losing the observers' quorum, with
	// VIGIL_GROUP, VIGIL_EPOCH and VIGIL_MEMBER in its environment.
	FenceCommand []string `yaml:"fence_command"`
	// FenceTimeout overrides the top-level fence_timeout for this group.
	FenceTimeout Duration `yaml:"fence_timeout"`
}

// Duration is a time.Duration read from YAML as a string such as "500ms".
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalYAML writes d as a duration string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// UnmarshalYAML reads a duration string; a number needs a unit unless it
// is 0.
// Errors are *yaml.TypeError so that decoding goes on and every problem
// is reported.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return posError(n, "expected a duration such as \"500ms\"")
	}
	s := strings.TrimSpace(n.Value)
	if s == "0" {
		*d = 0
		return nil
	}
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return posError(n, fmt.Sprintf("%q: a duration needs a unit, e.g. %q", s, s+"ms"))
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return posError(n, fmt.Sprintf("%q: not a duration such as \"500ms\" or \"1s\"", s))
	}
	*d = Duration(v)
	return nil
}

// posError is a decode error at n, in the form decodeErrors rewrites.
func posError(n *yaml.Node, msg string) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d column %d: %s", n.Line, n.Column, msg)}}
}

var (
	linePrefix   = regexp.MustCompile(`^line (\d+)(?: column (\d+))?: (.*)$`)
	unknownField = regexp.MustCompile(`^field (\S+) not found in type `)
)

// decodeErrors turns yaml.v3's decode errors, which name only a line,
// into errors naming the field path ("groups[0].fence_timeout: ..."),
// found in the document's node tree.
func decodeErrors(data []byte, te *yaml.TypeError) error {
	var root yaml.Node
	_ = yaml.Unmarshal(data, &root)
	type pos struct{ line, col int }
	keys := map[pos]string{}   // key node -> path
	values := map[pos]string{} // value node -> path
	lineValues := map[int][]string{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				keys[pos{k.Line, k.Column}] = p
				values[pos{v.Line, v.Column}] = p
				lineValues[v.Line] = append(lineValues[v.Line], p)
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				values[pos{c.Line, c.Column}] = p
				lineValues[c.Line] = append(lineValues[c.Line], p)
				walk(c, p)
			}
		}
	}
	walk(&root, "")
	errs := make([]error, 0, len(te.Errors))
	for _, msg := range te.Errors {
		m := linePrefix.FindStringSubmatch(msg)
		if m == nil {
			errs = append(errs, errors.New(msg))
			continue
		}
		line, _ := strconv.Atoi(m[1])
		rest := m[3]
		if u := unknownField.FindStringSubmatch(rest); u != nil {
			field := u[1]
			for p, path := range keys {
				if p.line == line && (path == field || strings.HasSuffix(path, "."+field)) {
					field = path
					break
				}
			}
			errs = append(errs, fmt.Errorf("%s: unknown key (line %d)", field, line))
			continue
		}
		path := ""
		if m[2] != "" {
			col, _ := strconv.Atoi(m[2])
			path = values[pos{line, col}]
		} else if ps := lineValues[line]; len(ps) == 1 {
			path = ps[0]
		}
		if path == "" {
			errs = append(errs, fmt.Errorf("line %d: %s", line, rest))
		} else {
			errs = append(errs, fmt.Errorf("%s: %s (line %d)", path, rest, line))
		}
	}
	return errors.Join(errs...)
}

// FieldError is one problem in a configuration, naming the field and its
// value: `groups[0].vip: "10.0.0.300/32": not an IPv4 address in CIDR form`.
type FieldError struct {
	Field  string
	Value  any // nil: absent or not worth printing
	Reason string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.Field)
	b.WriteString(": ")
	switch v := e.Value.(type) {
	case nil:
	case string:
		fmt.Fprintf(&b, "%q: ", v)
	default:
		fmt.Fprintf(&b, "%v: ", v)
	}
	b.WriteString(e.Reason)
	return b.String()
}

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("nodeagent config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("nodeagent config %s: %w", path, err)
	}
	if c.DataDir != "" && !filepath.IsAbs(c.DataDir) {
		abs, err := filepath.Abs(filepath.Join(filepath.Dir(path), c.DataDir))
		if err != nil {
			return nil, fmt.Errorf("nodeagent config %s: data_dir: %w", path, err)
		}
		c.DataDir = abs
	}
	for _, f := range []struct {
		name string
		p    *string
	}{{"tls.ca", &c.TLS.CA}, {"tls.cert", &c.TLS.Cert}, {"tls.key", &c.TLS.Key}} {
		if *f.p == "" || filepath.IsAbs(*f.p) {
			continue
		}
		abs, err := filepath.Abs(filepath.Join(filepath.Dir(path), *f.p))
		if err != nil {
			return nil, fmt.Errorf("nodeagent config %s: %s: %w", path, f.name, err)
		}
		*f.p = abs
	}
	return c, nil
}

// Parse decodes a configuration strictly (unknown keys are errors),
// applies defaults and validates it; all problems are reported together.
func Parse(data []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		var te *yaml.TypeError
		switch {
		case errors.Is(err, io.EOF):
			return nil, errors.New("empty configuration")
		case errors.As(err, &te):
			return nil, decodeErrors(data, te)
		}
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("line %d: a second YAML document; the configuration must be a single document", extra.Line)
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// ApplyDefaults replaces zero values with their defaults.
func (c *Config) ApplyDefaults() {
	if c.LeaseTimeout == 0 {
		c.LeaseTimeout = Duration(DefaultLeaseTimeout)
	}
	if c.FenceTimeout == 0 {
		c.FenceTimeout = Duration(DefaultFenceTimeout)
	}
	if c.GARP.Count == 0 {
		c.GARP.Count = DefaultGARPCount
	}
	if c.GARP.Interval == 0 {
		c.GARP.Interval = Duration(DefaultGARPInterval)
	}
	for i := range c.Groups {
		if c.Groups[i].FenceTimeout == 0 {
			c.Groups[i].FenceTimeout = c.FenceTimeout
		}
	}
}

// QuorumSize is the number of distinct observers whose fresh leases keep
// the VIP: Quorum, or a majority of Observers when Quorum is 0.
func (c *Config) QuorumSize() int {
	if c.Quorum > 0 {
		return c.Quorum
	}
	return len(c.Observers)/2 + 1
}

var (
	namePattern  = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	labelPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,255}$`)
)

const nameRule = "must be 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"

type validator struct{ errs []error }

func (v *validator) add(field string, value any, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Field: field, Value: value, Reason: fmt.Sprintf(format, args...)})
}

// Validate checks c (after ApplyDefaults) and returns every problem found,
// joined; each is a *FieldError.
func (c *Config) Validate() error {
	var v validator
	if c.Node == "" {
		v.add("node", nil, "required: this host's name")
	} else if !labelPattern.MatchString(c.Node) {
		v.add("node", c.Node, "must be 1-255 characters of A-Z, a-z, 0-9, '.', '_' and '-'")
	}
	if c.Listen == "" {
		v.add("listen", nil, "required: the gRPC listen address, host:port")
	} else if _, port, err := net.SplitHostPort(c.Listen); err != nil {
		v.add("listen", c.Listen, "not host:port: %v", err)
	} else if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		v.add("listen", c.Listen, "port must be a number from 1 to 65535")
	}
	if c.DataDir == "" {
		v.add("data_dir", nil, "required: the directory where the highest epoch per group is kept")
	}

	seenObs := map[string]int{}
	for i, o := range c.Observers {
		f := fmt.Sprintf("observers[%d]", i)
		if !namePattern.MatchString(o) {
			v.add(f, o, "%s", nameRule)
		} else if j, dup := seenObs[o]; dup {
			v.add(f, o, "duplicate observer id (also observers[%d])", j)
		} else {
			seenObs[o] = i
		}
	}
	if len(c.Observers) == 0 {
		v.add("observers", nil, "required: the ids of the configured observers")
	}
	if n := len(c.Observers); n > 0 {
		majority := n/2 + 1
		switch {
		case c.Quorum < 0:
			v.add("quorum", c.Quorum, "must not be negative (0 means a majority of observers)")
		case c.Quorum > 0 && c.Quorum < majority:
			v.add("quorum", c.Quorum, "must be at least a majority of the %d observers (%d): a smaller quorum lets two sides of a partition both keep a primary", n, majority)
		case c.Quorum > n:
			v.add("quorum", c.Quorum, "cannot exceed the number of observers (%d)", n)
		}
	}
	if d := c.LeaseTimeout.D(); d < minLeaseTimeout || d > maxLeaseTimeout {
		v.add("lease_timeout", c.LeaseTimeout, "must be between %s and %s", minLeaseTimeout, maxLeaseTimeout)
	}
	if d := c.FenceTimeout.D(); d <= 0 || d > maxFenceTimeout {
		v.add("fence_timeout", c.FenceTimeout, "must be positive and at most %s", maxFenceTimeout)
	}
	if c.GARP.Count < 1 || c.GARP.Count > maxGARPCount {
		v.add("garp.count", c.GARP.Count, "must be between 1 and %d", maxGARPCount)
	}
	if d := c.GARP.Interval.D(); d <= 0 || d > maxGARPInterval {
		v.add("garp.interval", c.GARP.Interval, "must be positive and at most %s", maxGARPInterval)
	}

	if c.TLS.Enabled() {
		for _, f := range []struct{ name, path string }{{"tls.ca", c.TLS.CA}, {"tls.cert", c.TLS.Cert}, {"tls.key", c.TLS.Key}} {
			if f.path == "" {
				v.add(f.name, nil, "required when any of tls.ca, tls.cert, tls.key is set")
			}
		}
	}

	if len(c.Groups) == 0 {
		v.add("groups", nil, "required: at least one group")
	}
	seenGroup := map[string]int{}
	seenVIP := map[netip.Addr]int{}
	for i, g := range c.Groups {
		f := fmt.Sprintf("groups[%d]", i)
		if !namePattern.MatchString(g.Name) {
			v.add(f+".name", g.Name, "%s", nameRule)
		} else if j, dup := seenGroup[g.Name]; dup {
			v.add(f+".name", g.Name, "duplicate group (also groups[%d])", j)
		} else {
			seenGroup[g.Name] = i
		}
		if !namePattern.MatchString(g.Member) {
			v.add(f+".member", g.Member, "%s", nameRule)
		}
		if g.VIP == "" {
			v.add(f+".vip", nil, "required: the virtual IPv4 address in CIDR form, e.g. 10.0.0.100/32")
		} else if p, err := parseVIP(g.VIP); err != nil {
			v.add(f+".vip", g.VIP, "%v", err)
		} else if j, dup := seenVIP[p.Addr()]; dup {
			v.add(f+".vip", g.VIP, "same address as groups[%d].vip", j)
		} else {
			seenVIP[p.Addr()] = i
		}
		if err := checkIfName(g.Interface); err != nil {
			v.add(f+".interface", g.Interface, "%v", err)
		}
		if len(g.FenceCommand) > 0 {
			prog := g.FenceCommand[0]
			switch {
			case prog == "":
				v.add(f+".fence_command", nil, "the program (first element) is empty")
			case strings.ContainsRune(prog, os.PathSeparator) && !filepath.IsAbs(prog):
				v.add(f+".fence_command", prog, "a relative path; use an absolute path or a name in PATH")
			default:
				if _, err := exec.LookPath(prog); err != nil {
					v.add(f+".fence_command", prog, "not an executable file or a program found in PATH")
				}
			}
		}
		if d := g.FenceTimeout.D(); d < 0 || d > maxFenceTimeout {
			v.add(f+".fence_timeout", g.FenceTimeout, "must be positive and at most %s", maxFenceTimeout)
		}
	}
	return errors.Join(v.errs...)
}

// parseVIP parses an IPv4 address with its prefix length, keeping the
// address bits (10.0.0.100/24 is the address 10.0.0.100 on a /24).
func parseVIP(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, errors.New("not an IPv4 address in CIDR form, e.g. 10.0.0.100/32")
	}
	a := p.Addr()
	switch {
	case !a.Is4():
		return netip.Prefix{}, errors.New("only IPv4 VIPs are supported (the VIP is announced with gratuitous ARP)")
	case a.IsUnspecified(), a.IsMulticast(), a.IsLoopback(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return netip.Prefix{}, errors.New("not a unicast address usable as a VIP")
	}
	return p, nil
}

// checkIfName checks a Linux network interface name.
func checkIfName(s string) error {
	switch {
	case s == "":
		return errors.New("required: the network interface the VIP is added to")
	case len(s) > 15:
		return errors.New("longer than 15 characters, the Linux limit for interface names")
	case s == "." || s == ".." || strings.ContainsAny(s, "/: \t\n"):
		return errors.New("not a valid interface name")
	}
	return nil
}
