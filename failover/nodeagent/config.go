package nodeagent

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/vigilha/vigil/cluster/config"
)

// Defaults for zero (or absent) configuration values.
const (
	DefaultLeaseTimeout = time.Second
	DefaultFenceTimeout = 10 * time.Second
	DefaultGARPCount    = 3
	DefaultGARPInterval = 100 * time.Millisecond

	DefaultDatabaseFenceHost     = "/var/run/postgresql"
	DefaultDatabaseFenceUser     = "postgres"
	DefaultDatabaseFenceDatabase = "postgres"
	DefaultDatabaseFenceTimeout  = 2 * time.Second
)

// DatabaseFenceKindPostgres is the only database fence kind for now.
const DatabaseFenceKindPostgres = "postgres"

// Bounds checked by Validate.
const (
	minLeaseTimeout = 20 * time.Millisecond
	maxLeaseTimeout = time.Minute
	maxFenceTimeout = 10 * time.Minute
	maxGARPCount    = 100
	maxGARPInterval = 10 * time.Second

	maxDatabaseFenceTimeout = time.Minute
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
	// TLS, when set, makes the agent serve mutual TLS: only certificates
	// of configured observers signed by the CA may call it, and each
	// call's observer field must be the caller's certificate name. Unset:
	// plaintext, for a network only the observers reach; every caller is
	// trusted then.
	TLS TLS `yaml:"tls,omitempty"`
	// MetricsListen, if set, is the host:port where the agent serves its
	// Prometheus metrics (GET /metrics). With the tls section it is
	// served over mutual TLS to any certificate of the CA (give
	// Prometheus a viewer certificate); without it, plaintext.
	MetricsListen string `yaml:"metrics_listen,omitempty"`
	// MaxConnections caps the connections open at once on the gRPC port
	// (default 64); connections beyond it are closed at once and
	// counted (vigil_agent_connections_refused_total{reason="limit"}).
	MaxConnections int `yaml:"max_connections,omitempty"`
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
	// DatabaseFence, if set, is the agent's own database fence for the
	// group (see DatabaseFence): applied on Fence and when the agent
	// fences itself, lifted on AddVIP or once the database is a standby.
	DatabaseFence *DatabaseFence `yaml:"database_fence,omitempty"`
}

// DatabaseFence configures the node agent's built-in database fence of a
// group: a per-group nftables table in the agent's network namespace that
// drops TCP traffic to and from the database port except for AllowFrom
// and loopback, then the termination of the client sessions and, when the
// database manages it in time, read-only mode. It needs no shell script
// and writes nothing to disk (see the package comment).
type DatabaseFence struct {
	// Kind is the database: "postgres" (the only kind for now). Required.
	Kind string `yaml:"kind"`
	// Port is the database's TCP port on this host. Required.
	Port int `yaml:"port"`
	// AllowFrom are the addresses or CIDRs (IPv4 or IPv6) that may still
	// reach the port while the fence is in force: the group's standbys
	// (replication) and the observers (probes, their SQL fence).
	// Loopback (127.0.0.0/8, ::1) is always allowed.
	AllowFrom []string `yaml:"allow_from"`
	// Host is the local connection used to terminate sessions and to
	// switch read-only: a unix socket directory (absolute path) or a
	// loopback address (127.0.0.1, ::1). Default /var/run/postgresql.
	Host string `yaml:"host"`
	// User is the database user for that connection (a superuser or a
	// member of pg_signal_backend that may ALTER SYSTEM). Default postgres.
	User string `yaml:"user"`
	// PasswordFile, if set, holds the password (first line). It is read
	// when the agent starts (New), never while fencing. A relative path in
	// a file loaded with Load is relative to the file's directory.
	PasswordFile string `yaml:"password_file"`
	// Database is the database to connect to. Default postgres.
	Database string `yaml:"database"`
	// Timeout bounds each SQL step (connect + statement). Default 2s.
	Timeout Duration `yaml:"timeout"`
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

// Load reads and validates the configuration file at path. Relative
// paths in it (data_dir, the tls files, password_file) are relative to the
// file's directory.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("nodeagent config: %w", err)
	}
	c, problems, covers, err := decode(data)
	if err != nil {
		return nil, fmt.Errorf("nodeagent config %s: %w", path, err)
	}
	paths := []struct {
		name string
		p    *string
	}{{"data_dir", &c.DataDir}, {"tls.ca", &c.TLS.CA}, {"tls.cert", &c.TLS.Cert}, {"tls.key", &c.TLS.Key}}
	for i := range c.Groups {
		if df := c.Groups[i].DatabaseFence; df != nil {
			paths = append(paths, struct {
				name string
				p    *string
			}{fmt.Sprintf("groups[%d].database_fence.password_file", i), &df.PasswordFile})
		}
	}
	for _, f := range paths {
		if *f.p == "" || filepath.IsAbs(*f.p) {
			continue
		}
		abs, err := filepath.Abs(filepath.Join(filepath.Dir(path), *f.p))
		if err != nil {
			return nil, fmt.Errorf("nodeagent config %s: %s: %w", path, f.name, err)
		}
		*f.p = abs
	}
	if err := c.finish(problems, covers); err != nil {
		return nil, fmt.Errorf("nodeagent config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a configuration strictly (unknown keys are errors),
// applies defaults and validates it; all problems are reported together.
// Relative paths stay relative to the working directory.
func Parse(data []byte) (*Config, error) {
	c, problems, covers, err := decode(data)
	if err != nil {
		return nil, err
	}
	if err := c.finish(problems, covers); err != nil {
		return nil, err
	}
	return c, nil
}

// decode decodes a single YAML document strictly, the way the observer's
// config is decoded (config.DecodeChecked): every unknown key (with "did
// you mean"), wrong type or repeated key is a problem naming its path,
// and the rest is decoded all the same so that finish can validate it.
func decode(data []byte) (*Config, []error, func(string) bool, error) {
	var c Config
	problems, covers, err := config.DecodeChecked(data, &c)
	if err != nil {
		return nil, nil, nil, err
	}
	return &c, problems, covers, nil
}

// finish applies the defaults and validates, and returns every problem
// at once: the decode problems, then the validation errors except those
// about a field that already had a decode problem (it holds its zero
// value now, and a complaint about that would mislead).
func (c *Config) finish(problems []error, covers func(string) bool) error {
	c.ApplyDefaults()
	errs := problems
	if err := c.Validate(); err != nil {
		list := []error{err}
		if u, ok := err.(interface{ Unwrap() []error }); ok {
			list = u.Unwrap()
		}
		for _, e := range list {
			var fe *FieldError
			if errors.As(e, &fe) && covers(fe.Field) {
				continue
			}
			errs = append(errs, e)
		}
	}
	return errors.Join(errs...)
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
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	for i := range c.Groups {
		if c.Groups[i].FenceTimeout == 0 {
			c.Groups[i].FenceTimeout = c.FenceTimeout
		}
		if df := c.Groups[i].DatabaseFence; df != nil {
			df.ApplyDefaults()
		}
	}
}

// ApplyDefaults replaces zero values with their defaults.
func (d *DatabaseFence) ApplyDefaults() {
	if d.Host == "" {
		d.Host = DefaultDatabaseFenceHost
	}
	if d.User == "" {
		d.User = DefaultDatabaseFenceUser
	}
	if d.Database == "" {
		d.Database = DefaultDatabaseFenceDatabase
	}
	if d.Timeout == 0 {
		d.Timeout = Duration(DefaultDatabaseFenceTimeout)
	}
}

// clone returns a deep copy of d (nil for nil).
func (d *DatabaseFence) clone() *DatabaseFence {
	if d == nil {
		return nil
	}
	c := *d
	c.AllowFrom = slices.Clone(d.AllowFrom)
	return &c
}

// Describe names the fence for Status and logs, e.g. "postgres port 5432".
func (d *DatabaseFence) Describe() string {
	if d == nil {
		return ""
	}
	return fmt.Sprintf("%s port %d", d.Kind, d.Port)
}

// AllowedPrefixes returns AllowFrom parsed, as prefixes with their host
// bits cleared (a bare address is a /32 or /128). Validate reports the
// entries it cannot parse; they are skipped here.
func (d *DatabaseFence) AllowedPrefixes() []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range d.AllowFrom {
		if p, err := parseAllow(s); err == nil {
			ps = append(ps, p)
		}
	}
	return ps
}

// parseAllow parses one allow_from entry: an IPv4 or IPv6 address or CIDR
// (host bits are cleared; an IPv4-mapped IPv6 address is taken as IPv4).
func parseAllow(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "%") {
		return netip.Prefix{}, errors.New("an address with a zone is not supported; give the address or CIDR alone")
	}
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, errors.New("not an IPv4 or IPv6 address or CIDR, e.g. 10.0.0.11 or 10.0.0.0/28")
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, errors.New("not an IPv4 or IPv6 address or CIDR, e.g. 10.0.0.11 or 10.0.0.0/28")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if a := p.Addr(); a.Is4In6() {
		bits := p.Bits() - 96
		if bits < 0 {
			return netip.Prefix{}, errors.New("an IPv4-mapped IPv6 prefix shorter than /96 is not supported")
		}
		p = netip.PrefixFrom(a.Unmap(), bits)
	}
	return p.Masked(), nil
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
	if c.MetricsListen != "" {
		if _, port, err := net.SplitHostPort(c.MetricsListen); err != nil {
			v.add("metrics_listen", c.MetricsListen, "not host:port: %v", err)
		} else if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			v.add("metrics_listen", c.MetricsListen, "port must be a number from 1 to 65535")
		} else if c.MetricsListen == c.Listen {
			v.add("metrics_listen", c.MetricsListen, "must differ from listen (the gRPC port)")
		}
	}
	if c.MaxConnections < 1 || c.MaxConnections > maxMaxConnections {
		v.add("max_connections", c.MaxConnections, "must be between 1 and %d (0 means %d)", maxMaxConnections, DefaultMaxConnections)
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
	seenTable := map[string]int{}
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
		if g.DatabaseFence != nil {
			g.DatabaseFence.validate(&v, f+".database_fence")
			if namePattern.MatchString(g.Name) {
				t := fenceTableName(g.Name)
				if j, dup := seenTable[t]; dup && c.Groups[j].Name != g.Name {
					v.add(f+".name", g.Name, "its database fence table %s is also that of groups[%d] (%q): group names must differ in more than '-' and '_'", t, j, c.Groups[j].Name)
				} else if !dup {
					seenTable[t] = i
				}
			}
		}
	}
	return errors.Join(v.errs...)
}

// validate checks a database_fence section (after ApplyDefaults); f is
// its field path.
func (d *DatabaseFence) validate(v *validator, f string) {
	switch d.Kind {
	case "":
		v.add(f+".kind", nil, "required: the database kind (%q)", DatabaseFenceKindPostgres)
	case DatabaseFenceKindPostgres:
	default:
		v.add(f+".kind", d.Kind, "unknown database kind; the only kind is %q", DatabaseFenceKindPostgres)
	}
	if d.Port < 1 || d.Port > 65535 {
		v.add(f+".port", nil, "%d is not a port (1..65535)", d.Port)
	}
	for i, s := range d.AllowFrom {
		if _, err := parseAllow(s); err != nil {
			v.add(fmt.Sprintf("%s.allow_from[%d]", f, i), s, "%v", err)
		}
	}
	if filepath.IsAbs(d.Host) {
		if strings.ContainsRune(d.Host, 0) {
			v.add(f+".host", d.Host, "not a valid path")
		}
	} else if a, err := netip.ParseAddr(d.Host); err != nil || !a.IsLoopback() || a.Zone() != "" {
		// A non-local address would be cut off by the fence itself.
		v.add(f+".host", d.Host, "must be a unix socket directory (an absolute path) or a loopback address (127.0.0.1, ::1): the fence cuts every other address off")
	}
	if d.User == "" || strings.ContainsRune(d.User, 0) {
		v.add(f+".user", d.User, "not a valid user name")
	}
	if d.Database == "" || strings.ContainsRune(d.Database, 0) {
		v.add(f+".database", d.Database, "not a valid database name")
	}
	if d.PasswordFile != "" {
		if err := checkReadable(d.PasswordFile); err != nil {
			v.add(f+".password_file", d.PasswordFile, "cannot be read: %v", err)
		}
	}
	if t := d.Timeout.D(); t <= 0 || t > maxDatabaseFenceTimeout {
		v.add(f+".timeout", d.Timeout, "must be positive and at most %s", maxDatabaseFenceTimeout)
	}
}

// checkReadable opens path and reads a byte of it.
func checkReadable(path string) error {
	fh, err := os.Open(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return pe.Err
		}
		return err
	}
	defer fh.Close()
	if _, err := fh.Read(make([]byte, 1)); err != nil && !errors.Is(err, io.EOF) {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return pe.Err
		}
		return err
	}
	return nil
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
