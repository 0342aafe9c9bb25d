package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// FieldError is one problem with one field of the configuration.
type FieldError struct {
	// Field is the YAML path of the field, e.g. "groups[0].members[2].address".
	Field string
	// Value is the offending value, or nil when it is absent or must not
	// be printed (the gossip key).
	Value any
	// Reason says what is wrong and, where useful, what would be right.
	Reason string
}

// Error formats e as `field: value: reason`, quoting string values, e.g.
// `observers[1].id: "obs1": duplicate id (also observers[0])`.
func (e *FieldError) Error() string {
	var b strings.Builder
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
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

// Names of nodes, groups and members end up in file paths, metric labels
// and Raft state, hence the conservative alphabet.
var (
	namePattern  = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	labelPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,255}$`)
	dcPattern    = regexp.MustCompile(`^[A-Za-z0-9._-]{0,63}$`)
)

const nameRule = "must be 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"

var (
	logLevels   = []string{"debug", "info", "warn", "error"}
	logFormats  = []string{"text", "json"}
	groupKinds  = []string{KindPostgres, KindGeneric}
	probeTypes  = []string{ProbeTCP, ProbeHTTP, ProbePostgres}
	httpSchemes = []string{"http", "https"}
	sslModes    = []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
)

// Limits on observers and members.
const (
	minObservers = 3
	maxObservers = 7
	minMembers   = 2
	maxPriority  = 1000
)

// raftMinTimeout mirrors the lower bounds hashicorp/raft's ValidateConfig
// enforces, so a bad value fails at load time with its field name rather
// than later inside raft.NewRaft.
const (
	raftMinTimeout       = 5 * time.Millisecond
	raftMinCommitTimeout = time.Millisecond
)

// validator accumulates problems so Validate can report all of them.
type validator struct {
	errs []error
}

func (v *validator) add(field string, value any, reason string, args ...any) {
	if len(args) > 0 {
		reason = fmt.Sprintf(reason, args...)
	}
	v.errs = append(v.errs, &FieldError{Field: field, Value: value, Reason: reason})
}

// hostPort checks a required address and reports whether it is valid.
func (v *validator) hostPort(field, s string, requireIP bool) bool {
	if s == "" {
		v.add(field, nil, "required (host:port)")
		return false
	}
	if err := ValidateHostPort(s, requireIP); err != nil {
		v.add(field, s, err.Error())
		return false
	}
	return true
}

func (v *validator) oneOf(field, s string, allowed []string) {
	if !slices.Contains(allowed, s) {
		v.add(field, s, "must be one of %s", strings.Join(allowed, ", "))
	}
}

// name checks a required name against namePattern.
func (v *validator) name(field, s string) bool {
	switch {
	case s == "":
		v.add(field, nil, "required")
		return false
	case !namePattern.MatchString(s):
		v.add(field, s, nameRule)
		return false
	}
	return true
}

// atLeast checks d >= min, where min > 0 rules out zero and negatives.
func (v *validator) atLeast(field string, d Duration, min time.Duration, why string) bool {
	if d.D() < min {
		if min == 0 {
			v.add(field, d, "must be >= 0")
		} else {
			v.add(field, d, "must be at least %s%s", min, why)
		}
		return false
	}
	return true
}

// positive checks d > 0.
func (v *validator) positive(field string, d Duration) bool {
	if d <= 0 {
		v.add(field, d, "must be > 0")
		return false
	}
	return true
}

// Validate checks a Config whose defaults have been applied (as Load and
// Parse do) and returns nil or an errors.Join of *FieldError, one per
// problem, in file order.
func (c *Config) Validate() error {
	var v validator
	if v.name("node_id", c.NodeID) {
		if _, ok := c.ObserverByID(c.NodeID); !ok && len(c.Observers) > 0 {
			ids := make([]string, len(c.Observers))
			for i, o := range c.Observers {
				ids[i] = o.ID
			}
			v.add("node_id", c.NodeID, "not one of observers[].id (%s)", strings.Join(ids, ", "))
		}
	}
	if c.DataDir == "" {
		v.add("data_dir", nil, "required")
	}
	c.validateQuorum(&v)
	v.oneOf("log.level", c.Log.Level, logLevels)
	v.oneOf("log.format", c.Log.Format, logFormats)
	c.validateRaft(&v)
	c.validateGossip(&v)
	v.hostPort("grpc.listen", c.GRPC.Listen, false)
	v.hostPort("http.listen", c.HTTP.Listen, false)
	c.validateListeners(&v)
	c.validateObservers(&v)
	c.TLS.validate(&v)
	c.Admin.validate(&v, c.TLS.Enabled())
	if c.HTTP.TLS && !c.TLS.Enabled() {
		v.add("http.tls", true, "needs the tls section (ca, cert, key)")
	}
	groups := map[string]int{}
	for i := range c.Groups {
		g := &c.Groups[i]
		f := fmt.Sprintf("groups[%d]", i)
		if j, dup := groups[g.Name]; dup && g.Name != "" {
			v.add(f+".name", g.Name, "duplicate group name (also groups[%d])", j)
		} else {
			groups[g.Name] = i
		}
		g.validate(&v, f)
	}
	return errors.Join(v.errs...)
}

func (c *Config) validateQuorum(v *validator) {
	n := len(c.Observers)
	switch {
	case c.Quorum == 0:
	case c.Quorum < 0:
		v.add("quorum", c.Quorum, "must be >= 0 (0 means a majority of observers)")
	case n > 0 && (c.Quorum < majority(n) || c.Quorum > n):
		// Below a majority, two partitions could each reach "quorum" and
		// fail over independently: split brain.
		v.add("quorum", c.Quorum, "must be between %d (a majority of %d observers) and %d, or 0 for a majority", majority(n), n, n)
	}
}

func (c *Config) validateRaft(v *validator) {
	r := &c.Raft
	bindOK := v.hostPort("raft.bind", r.Bind, false)
	advertise(v, "raft", r.Advertise, r.Bind, bindOK)

	const why = " (hashicorp/raft minimum)"
	hbOK := v.atLeast("raft.heartbeat_timeout", r.HeartbeatTimeout, raftMinTimeout, why)
	if v.atLeast("raft.election_timeout", r.ElectionTimeout, raftMinTimeout, why) && hbOK &&
		r.ElectionTimeout < r.HeartbeatTimeout {
		v.add("raft.election_timeout", r.ElectionTimeout, "must be >= raft.heartbeat_timeout (%s)", r.HeartbeatTimeout)
	}
	if v.atLeast("raft.leader_lease_timeout", r.LeaderLeaseTimeout, raftMinTimeout, why) && hbOK &&
		r.LeaderLeaseTimeout > r.HeartbeatTimeout {
		// A lease longer than the heartbeat would let a deposed leader
		// keep acting after followers have stopped hearing from it.
		v.add("raft.leader_lease_timeout", r.LeaderLeaseTimeout, "must be <= raft.heartbeat_timeout (%s)", r.HeartbeatTimeout)
	}
	v.atLeast("raft.commit_timeout", r.CommitTimeout, raftMinCommitTimeout, why)
	v.atLeast("raft.snapshot_interval", r.SnapshotInterval, raftMinTimeout, why)
	if r.SnapshotThreshold < 1 {
		v.add("raft.snapshot_threshold", r.SnapshotThreshold, "must be >= 1")
	}
	v.positive("raft.apply_timeout", r.ApplyTimeout)
}

// advertise checks an advertised address, which other observers dial and
// therefore must be a concrete IP. When it was defaulted from an invalid
// bind address the bind error is enough.
func advertise(v *validator, section, adv, bind string, bindOK bool) {
	field := section + ".advertise"
	if adv == bind && !bindOK {
		return
	}
	if adv == "" {
		v.add(field, nil, "required (IP:port)")
		return
	}
	if err := ValidateHostPort(adv, true); err != nil {
		reason := err.Error()
		if adv == bind {
			reason += fmt.Sprintf("; %s defaults to %s.bind, set it explicitly", field, section)
		}
		v.add(field, adv, reason)
	}
}

func (c *Config) validateGossip(v *validator) {
	g := &c.Gossip
	bindOK := v.hostPort("gossip.bind", g.Bind, false)
	advertise(v, "gossip", g.Advertise, g.Bind, bindOK)

	switch {
	case g.Key != "" && g.KeyFile != "":
		v.add("gossip.key", nil, "gossip.key and gossip.key_file are mutually exclusive; set only one")
	case g.Key == "" && g.KeyFile == "":
		v.add("gossip.key", nil, `required: set gossip.key or gossip.key_file (create a key with "vigil keygen")`)
	case g.Key != "":
		if _, err := decodeGossipKey(g.Key); err != nil {
			// Never echo the key: it is a secret even when malformed.
			v.add("gossip.key", nil, err.Error())
		}
	default:
		if _, err := c.GossipKeys(); err != nil {
			// The message already names gossip.key_file and its path.
			msg := strings.TrimPrefix(err.Error(), fmt.Sprintf("gossip.key_file %q: ", g.KeyFile))
			v.add("gossip.key_file", g.KeyFile, msg)
		}
	}
	if !labelPattern.MatchString(g.Label) {
		v.add("gossip.label", g.Label, "must be 1-255 characters of A-Z, a-z, 0-9, '.', '_' and '-'")
	}
	v.positive("gossip.probe_interval", g.ProbeInterval)
}

// validateListeners catches two local listeners on the same port, which
// would otherwise surface as a bind error at startup. A wildcard host
// conflicts with any host on the same port.
func (c *Config) validateListeners(v *validator) {
	type listener struct{ field, addr string }
	ls := []listener{
		{"raft.bind", c.Raft.Bind},
		{"gossip.bind", c.Gossip.Bind},
		{"grpc.listen", c.GRPC.Listen},
		{"http.listen", c.HTTP.Listen},
	}
	for i, a := range ls {
		ha, pa, err := net.SplitHostPort(a.addr)
		if err != nil || ValidateHostPort(a.addr, false) != nil {
			continue
		}
		for _, b := range ls[:i] {
			hb, pb, err := net.SplitHostPort(b.addr)
			if err != nil || ValidateHostPort(b.addr, false) != nil || pa != pb {
				continue
			}
			if isWildcard(ha) || isWildcard(hb) || hostKey(ha) == hostKey(hb) {
				v.add(a.field, a.addr, "port conflicts with %s (%s)", b.field, b.addr)
				break
			}
		}
	}
}

func isWildcard(host string) bool {
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsUnspecified()
}

// hostKey normalises a host for comparison: IPs in canonical form (IPv4
// mapped addresses unmapped), hostnames lower-cased.
func hostKey(host string) string {
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.Unmap().String()
	}
	return strings.ToLower(strings.TrimSuffix(host, "."))
}

// addrKey normalises a valid host:port for duplicate detection, so that
// "[::ffff:10.0.0.1]:80" and "10.0.0.1:80" are recognised as the same.
func addrKey(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return s
	}
	p, _ := strconv.Atoi(port)
	return net.JoinHostPort(hostKey(host), strconv.Itoa(p))
}

func (c *Config) validateObservers(v *validator) {
	n := len(c.Observers)
	switch {
	case n == 0:
		v.add("observers", nil, "required: list every observer of the cluster (3 or 5)")
		return
	case n < minObservers || n > maxObservers || n%2 == 0:
		// An even count tolerates no more failures than the odd count
		// below it, and a 2-2 partition leaves no side with a majority.
		v.add("observers", nil, "%d configured: need an odd number between %d and %d", n, minObservers, maxObservers)
	}
	ids := map[string]int{}
	addrs := map[string]map[string]int{"raft": {}, "gossip": {}, "grpc": {}}
	dup := func(kind, field, value string, i int) {
		key := addrKey(value)
		if j, ok := addrs[kind][key]; ok {
			v.add(field, value, "duplicate %s address (also observers[%d])", kind, j)
			return
		}
		addrs[kind][key] = i
	}
	for i, o := range c.Observers {
		f := fmt.Sprintf("observers[%d]", i)
		if v.name(f+".id", o.ID) {
			if j, ok := ids[o.ID]; ok {
				v.add(f+".id", o.ID, "duplicate id (also observers[%d])", j)
			} else {
				ids[o.ID] = i
			}
		}
		raftOK := v.hostPort(f+".raft", o.Raft, true)
		if raftOK {
			dup("raft", f+".raft", o.Raft, i)
		}
		gossipOK := v.hostPort(f+".gossip", o.Gossip, true)
		if gossipOK {
			dup("gossip", f+".gossip", o.Gossip, i)
			if raftOK && addrKey(o.Gossip) == addrKey(o.Raft) {
				v.add(f+".gossip", o.Gossip, "same address as %s.raft", f)
			}
		}
		if v.hostPort(f+".grpc", o.GRPC, false) {
			dup("grpc", f+".grpc", o.GRPC, i)
		}

		// The local entry is what the other observers dial, so it must be
		// what this observer advertises; otherwise Raft and memberlist
		// would see the node under two identities.
		if j, ok := ids[o.ID]; !ok || j != i || o.ID != c.NodeID {
			continue
		}
		if raftOK && ValidateHostPort(c.Raft.Advertise, true) == nil && addrKey(o.Raft) != addrKey(c.Raft.Advertise) {
			v.add(f+".raft", o.Raft, "differs from raft.advertise %q of this node (node_id %q)", c.Raft.Advertise, c.NodeID)
		}
		if gossipOK && ValidateHostPort(c.Gossip.Advertise, true) == nil && addrKey(o.Gossip) != addrKey(c.Gossip.Advertise) {
			v.add(f+".gossip", o.Gossip, "differs from gossip.advertise %q of this node (node_id %q)", c.Gossip.Advertise, c.NodeID)
		}
	}
}

func (g *Group) validate(v *validator, f string) {
	v.name(f+".name", g.Name)
	v.oneOf(f+".kind", g.Kind, groupKinds)
	intervalOK := g.Probe.validate(v, f+".probe")
	g.Failover.validate(v, f+".failover", g.Kind, g)
	interval := g.Probe.Interval

	if v.positive(f+".down_after", g.DownAfter) && intervalOK && g.DownAfter < interval {
		// Declaring a member down before it has even been probed again
		// would turn a single slow probe into a failover.
		v.add(f+".down_after", g.DownAfter, "must be >= probe.interval (%s)", interval)
	}
	if g.MaxLag < 0 {
		v.add(f+".max_lag", g.MaxLag, "must be >= 0")
	}
	v.atLeast(f+".cooldown", g.Cooldown, 0, "")
	if v.positive(f+".stale_after", g.StaleAfter) && intervalOK && g.StaleAfter < interval {
		// Votes would expire before the next probe could refresh them,
		// so the observers could never agree.
		v.add(f+".stale_after", g.StaleAfter, "must be >= probe.interval (%s)", interval)
	}

	g.validateWriteStall(v, f, intervalOK)

	if len(g.Members) < minMembers {
		v.add(f+".members", nil, "%d configured: need at least %d (a primary and a standby)", len(g.Members), minMembers)
	}
	names, addrs := map[string]int{}, map[string]int{}
	for i, m := range g.Members {
		mf := fmt.Sprintf("%s.members[%d]", f, i)
		if v.name(mf+".name", m.Name) {
			if j, ok := names[m.Name]; ok {
				v.add(mf+".name", m.Name, "duplicate member name (also %s.members[%d])", f, j)
			} else {
				names[m.Name] = i
			}
		}
		if v.hostPort(mf+".address", m.Address, false) {
			key := addrKey(m.Address)
			if j, ok := addrs[key]; ok {
				v.add(mf+".address", m.Address, "duplicate member address (also %s.members[%d])", f, j)
			} else {
				addrs[key] = i
			}
		}
		if m.Priority < 0 || m.Priority > maxPriority {
			v.add(mf+".priority", m.Priority, "must be between 0 and %d (0 = never promoted automatically)", maxPriority)
		}
		if m.Agent != "" {
			v.hostPort(mf+".agent", m.Agent, false)
		}
		if !dcPattern.MatchString(m.Datacenter) {
			v.add(mf+".datacenter", m.Datacenter, "must be at most 63 characters of A-Z, a-z, 0-9, '.', '_' and '-'")
		}
	}

	switch _, isMember := names[g.Primary]; {
	case g.Primary == "":
		v.add(f+".primary", nil, "required: name the member that is primary initially")
	case !isMember && len(g.Members) > 0:
		ms := make([]string, len(g.Members))
		for i, m := range g.Members {
			ms[i] = m.Name
		}
		v.add(f+".primary", g.Primary, "not one of the members (%s)", strings.Join(ms, ", "))
	}
}

// maxWriteStallAfter bounds write_stall_after: a primary whose writes
// have hung for an hour is long past any point where waiting helps, and a
// larger value is more likely a unit mistake ("90m" meant as seconds).
const maxWriteStallAfter = time.Hour

// validateWriteStall checks write_stall_after; zero disables the check.
func (g *Group) validateWriteStall(v *validator, f string, intervalOK bool) {
	field, d := f+".write_stall_after", g.WriteStallAfter
	switch {
	case d == 0:
		return
	case d < 0:
		v.add(field, d, "must be >= 0 (0 disables the write check)")
		return
	case g.Kind != KindPostgres || g.Probe.Type != ProbePostgres:
		// Only the postgres probe can write a heartbeat row.
		v.add(field, d, "only allowed for kind postgres with probe.type postgres (this group: kind %s, probe.type %s)", g.Kind, g.Probe.Type)
		return
	case d.D() > maxWriteStallAfter:
		v.add(field, d, "must be at most %s", maxWriteStallAfter)
		return
	}
	if intervalOK && d <= g.Probe.Interval {
		// A single failed heartbeat would already be a stall: one slow
		// checkpoint must not turn into a failover.
		v.add(field, d, "must be > probe.interval (%s)", g.Probe.Interval)
	} else if g.Probe.Timeout > 0 && d < g.Probe.Timeout {
		// A write is given up only after the probe timeout, so a shorter
		// stall could never be measured.
		v.add(field, d, "must be >= probe.timeout (%s)", g.Probe.Timeout)
	}
}

// validate checks the probe and reports whether Interval is usable for
// the comparisons the group makes against it.
func (p *Probe) validate(v *validator, f string) bool {
	v.oneOf(f+".type", p.Type, probeTypes)
	intervalOK := v.positive(f+".interval", p.Interval)
	if v.positive(f+".timeout", p.Timeout) && intervalOK && p.Timeout > p.Interval {
		// Probes run once per interval; a longer timeout would let them
		// pile up against a hung member.
		v.add(f+".timeout", p.Timeout, "must be <= probe.interval (%s)", p.Interval)
	}

	switch h := p.HTTP; {
	case h == nil && p.Type == ProbeHTTP:
		v.add(f+".http", nil, "required for probe type http (at least http.port)")
	case h != nil && p.Type != ProbeHTTP:
		v.add(f+".http", nil, "only allowed with probe type http (type is %q)", p.Type)
	case h != nil:
		v.oneOf(f+".http.scheme", h.Scheme, httpSchemes)
		switch {
		case h.Port == 0:
			v.add(f+".http.port", nil, "required for probe type http")
		case h.Port < 1 || h.Port > 65535:
			v.add(f+".http.port", h.Port, "must be between 1 and 65535")
		}
		if !strings.HasPrefix(h.Path, "/") {
			v.add(f+".http.path", h.Path, `must start with "/"`)
		}
		if h.ExpectStatus < 100 || h.ExpectStatus > 599 {
			v.add(f+".http.expect_status", h.ExpectStatus, "must be an HTTP status between 100 and 599")
		}
	}

	switch pg := p.Postgres; {
	case pg != nil && p.Type != ProbePostgres:
		v.add(f+".postgres", nil, "only allowed with probe type postgres (type is %q)", p.Type)
	case pg != nil:
		if pg.User == "" {
			v.add(f+".postgres.user", nil, "required")
		}
		if pg.Database == "" {
			v.add(f+".postgres.database", nil, "required")
		}
		v.oneOf(f+".postgres.sslmode", pg.SSLMode, sslModes)
	}
	if pg := p.Postgres; pg != nil {
		v.secretFile(f+".postgres.password_file", pg.PasswordFile)
	}
	return intervalOK
}

// ValidateHostPort checks that s is host:port with a numeric port in
// 1..65535 and a non-empty host. With requireIP the host must be an IP
// address and not a wildcard (0.0.0.0 or ::), as needed for addresses
// other nodes dial. The error does not repeat s.
func ValidateHostPort(s string, requireIP bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return fmt.Errorf("not host:port: %s", ae.Err)
		}
		return errors.New("not host:port")
	}
	switch {
	case host == "":
		return errors.New("missing host")
	case port == "":
		return errors.New("missing port")
	case strings.Trim(port, "0123456789") != "":
		return fmt.Errorf("port %q is not a number", port)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("port %s out of range 1..65535", port)
	}
	ip, ipErr := netip.ParseAddr(host)
	switch {
	case requireIP && ipErr != nil:
		return fmt.Errorf("host %q is not an IP address (a hostname is not allowed here)", host)
	case requireIP && ip.IsUnspecified():
		return fmt.Errorf("host %s is a wildcard address; use an IP the other observers can reach", host)
	case ipErr != nil && !validHostname(host):
		return fmt.Errorf("host %q is not a valid IP address or hostname", host)
	}
	return nil
}

// validHostname accepts DNS names made of 1-63 character labels of
// letters, digits, '-' and '_' (seen in container environments), with an
// optional trailing dot.
func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}
