// Package config loads and validates the YAML configuration of one vigil
// observer.
//
// Load and Parse decode strictly (unknown keys are errors), apply defaults
// and validate; every problem found is reported at once as a *FieldError
// naming the YAML path of the offending field, so an operator can fix a
// broken file in one pass instead of one error per restart.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Config is the configuration of one observer.
type Config struct {
	// NodeID is this observer's id; it must match one entry of Observers.
	NodeID string `yaml:"node_id"`
	// DataDir holds the Raft log, stable store and snapshots.
	DataDir string `yaml:"data_dir"`
	// Quorum overrides the number of observers that must agree; 0 means a
	// majority of Observers. Use QuorumSize to read the effective value.
	Quorum int `yaml:"quorum,omitempty"`
	// Log configures logging.
	Log Log `yaml:"log"`
	// Raft configures the consensus layer.
	Raft Raft `yaml:"raft"`
	// Gossip configures membership and failure detection between observers.
	Gossip Gossip `yaml:"gossip"`
	// GRPC configures the admin API.
	GRPC GRPC `yaml:"grpc"`
	// HTTP configures the metrics and health endpoint.
	HTTP HTTP `yaml:"http"`
	// Observers is the static observer set, identical on all observers.
	Observers []Observer `yaml:"observers"`
	// TLS enables mutual TLS on the admin API, Raft and agent calls.
	TLS TLS `yaml:"tls,omitempty"`
	// Admin configures roles on the admin API.
	Admin Admin `yaml:"admin,omitempty"`
	// Groups are the replicated services to monitor.
	Groups []Group `yaml:"groups,omitempty"`
}

// Log configures the process logger.
type Log struct {
	// Level is one of debug, info, warn, error.
	Level string `yaml:"level"`
	// Format is text or json.
	Format string `yaml:"format"`
}

// Raft configures the consensus layer (hashicorp/raft).
type Raft struct {
	// Bind is the host:port the Raft transport listens on.
	Bind string `yaml:"bind"`
	// Advertise is the IP:port other observers dial; defaults to Bind.
	Advertise string `yaml:"advertise"`
	// HeartbeatTimeout is how long a follower waits for the leader before
	// starting an election.
	HeartbeatTimeout Duration `yaml:"heartbeat_timeout"`
	// ElectionTimeout is how long a candidate waits for votes; it must be
	// at least HeartbeatTimeout.
	ElectionTimeout Duration `yaml:"election_timeout"`
	// LeaderLeaseTimeout is how long a leader stays leader without
	// reaching a quorum; at most HeartbeatTimeout.
	LeaderLeaseTimeout Duration `yaml:"leader_lease_timeout"`
	// CommitTimeout bounds how long log entries are batched before being
	// sent.
	CommitTimeout Duration `yaml:"commit_timeout"`
	// SnapshotInterval is how often Raft checks whether to snapshot.
	SnapshotInterval Duration `yaml:"snapshot_interval"`
	// SnapshotThreshold is how many log entries trigger a snapshot.
	SnapshotThreshold uint64 `yaml:"snapshot_threshold"`
	// ApplyTimeout bounds how long a write waits to be committed.
	ApplyTimeout Duration `yaml:"apply_timeout"`
}

// Gossip configures the memberlist layer.
type Gossip struct {
	// Bind is the host:port memberlist listens on (TCP and UDP).
	Bind string `yaml:"bind"`
	// Advertise is the IP:port other observers reach; defaults to Bind.
	Advertise string `yaml:"advertise"`
	// Key is the base64 (standard encoding) gossip encryption key. Exactly
	// one of Key and KeyFile is set. Use GossipKey to get the bytes.
	Key string `yaml:"key,omitempty"`
	// KeyFile names a file holding the base64 key. Load reads it, and
	// resolves a relative path against the config file's directory.
	KeyFile string `yaml:"key_file,omitempty"`
	// Label is the memberlist cluster label; nodes with different labels
	// never merge, which keeps two vigil clusters on one network apart.
	Label string `yaml:"label"`
	// ProbeInterval is the memberlist failure-detector probe interval.
	ProbeInterval Duration `yaml:"probe_interval"`

	// keyFile caches the content of KeyFile read at load time, so that the
	// key validated is the key used even if the file changes later.
	keyFile *fileContent
}

// fileContent is the result of reading a file once.
type fileContent struct {
	data string
	err  error
}

// GRPC configures the admin API server.
type GRPC struct {
	// Listen is the host:port to listen on; a wildcard host is allowed.
	Listen string `yaml:"listen"`
}

// HTTP configures the /metrics and /health server.
type HTTP struct {
	// Listen is the host:port to listen on; a wildcard host is allowed.
	Listen string `yaml:"listen"`
	// TLS serves /metrics, /health and the role endpoints over mutual TLS
	// with the observer's certificate (needs the tls section): scrapers
	// and load balancers then present a certificate of the CA.
	TLS bool `yaml:"tls,omitempty"`
}

// Observer is one entry of the static observer set, which must be
// identical on every observer.
type Observer struct {
	// ID is the observer's node id (its Raft server id).
	ID string `yaml:"id"`
	// Raft is the advertised Raft IP:port of the observer.
	Raft string `yaml:"raft"`
	// Gossip is the advertised memberlist IP:port of the observer.
	Gossip string `yaml:"gossip"`
	// GRPC is the host:port of the admin API (a hostname is allowed).
	GRPC string `yaml:"grpc"`
}

// Group kinds.
const (
	// KindPostgres is a PostgreSQL primary with streaming replicas.
	KindPostgres = "postgres"
	// KindGeneric is any other primary/standby service.
	KindGeneric = "generic"
)

// Probe types.
const (
	// ProbeTCP checks that the member accepts TCP connections.
	ProbeTCP = "tcp"
	// ProbeHTTP checks the status code of an HTTP request.
	ProbeHTTP = "http"
	// ProbePostgres connects to PostgreSQL with the PostgresProbe settings.
	ProbePostgres = "postgres"
)

// Group is a replicated service: one primary and its standbys.
type Group struct {
	// Name identifies the group; unique.
	Name string `yaml:"name"`
	// Kind is postgres or generic.
	Kind string `yaml:"kind"`
	// Primary names the member that is primary when the cluster first
	// starts; afterwards the primary is tracked in Raft state.
	Primary string `yaml:"primary"`
	// DownAfter is how long the primary must look dead before failover.
	DownAfter Duration `yaml:"down_after"`
	// MaxLag is the largest replication lag a standby may have to be
	// promoted.
	MaxLag ByteSize `yaml:"max_lag"`
	// Cooldown is the minimum time between two failovers of the group.
	Cooldown Duration `yaml:"cooldown"`
	// StaleAfter is how old an observer's vote may be and still count.
	// Zero in the file means 3*Probe.Interval + Probe.Timeout.
	StaleAfter Duration `yaml:"stale_after"`
	// WriteStallAfter enables stalled-disk detection (postgres groups with
	// the postgres probe only): every probe of a writable primary also
	// commits a heartbeat row in vigil.heartbeat, and a primary whose
	// heartbeat writes have been failing (timing out) for this long while
	// it still answers reads is voted down, so that down_after and the
	// usual failover follow. A frozen file system otherwise looks
	// healthy: reads come from memory, only writes hang. Zero (the
	// default) disables the check and the write.
	WriteStallAfter Duration `yaml:"write_stall_after,omitempty"`
	// Probe says how members are health-checked.
	Probe Probe `yaml:"probe"`
	// Members are the instances of the group, at least two.
	Members []Member `yaml:"members"`
	// Failover configures fencing, promotion and hooks.
	Failover Failover `yaml:"failover"`
}

// Probe describes how observers check a member's health.
type Probe struct {
	// Type is tcp, http or postgres.
	Type string `yaml:"type"`
	// Interval is the time between two probes of a member.
	Interval Duration `yaml:"interval"`
	// Timeout bounds one probe; zero in the file means 80% of Interval.
	Timeout Duration `yaml:"timeout"`
	// HTTP is required for type http and not allowed otherwise.
	HTTP *HTTPProbe `yaml:"http,omitempty"`
	// Postgres is set (with defaults) for type postgres and not allowed
	// otherwise.
	Postgres *PostgresProbe `yaml:"postgres,omitempty"`
}

// HTTPProbe is the configuration of an http probe.
type HTTPProbe struct {
	// Scheme is http or https.
	Scheme string `yaml:"scheme"`
	// Port is the port probed on the member's host.
	Port int `yaml:"port"`
	// Path is the request path; it starts with "/".
	Path string `yaml:"path"`
	// ExpectStatus is the status code that means healthy.
	ExpectStatus int `yaml:"expect_status"`
}

// PostgresProbe is the configuration of a postgres probe.
type PostgresProbe struct {
	// User is the role the probe connects as.
	User string `yaml:"user"`
	// Database is the database the probe connects to.
	Database string `yaml:"database"`
	// PasswordFile is optional; Load resolves a relative path against the
	// config file's directory. Validate requires it to be a readable
	// regular file; its content is read (ReadSecret) when the probe is
	// built, not here, so that password rotation needs no restart.
	PasswordFile string `yaml:"password_file,omitempty"`
	// SSLMode is a libpq sslmode.
	SSLMode string `yaml:"sslmode"`
}

// Member is one database (or service) instance of a group.
type Member struct {
	// Name identifies the member within its group.
	Name string `yaml:"name"`
	// Address is the host:port probes connect to.
	Address string `yaml:"address"`
	// Priority ranks promotion candidates (higher wins); 0 means never
	// promoted automatically.
	Priority int `yaml:"priority"`
	// Datacenter is a free-form label.
	Datacenter string `yaml:"datacenter,omitempty"`
	// Agent is the host:port of the node agent (vigil node) on the
	// member's host, used with failover.vip.
	Agent string `yaml:"agent,omitempty"`
}

// Defaults that do not depend on other fields. Group and Member defaults
// are pre-filled before decoding (see UnmarshalYAML), so that a value
// written explicitly, even zero, is kept: "priority: 0" means "never
// promote" and must not turn into 100.
const (
	defaultLogLevel           = "info"
	defaultLogFormat          = "text"
	defaultHeartbeatTimeout   = 500 * time.Millisecond
	defaultElectionTimeout    = 500 * time.Millisecond
	defaultLeaderLeaseTimeout = 250 * time.Millisecond
	defaultCommitTimeout      = 50 * time.Millisecond
	defaultSnapshotInterval   = 30 * time.Second
	defaultSnapshotThreshold  = 1024
	defaultApplyTimeout       = 5 * time.Second
	defaultGossipLabel        = "vigil"
	defaultGossipProbe        = 500 * time.Millisecond
	defaultDownAfter          = 2 * time.Second
	defaultMaxLag             = 16 << 20
	defaultCooldown           = 5 * time.Minute
	defaultProbeInterval      = time.Second
	defaultPriority           = 100
	defaultHTTPScheme         = "http"
	defaultHTTPPath           = "/"
	defaultHTTPStatus         = 200
	defaultPGUser             = "postgres"
	defaultPGDatabase         = "postgres"
	defaultPGSSLMode          = "disable"
)

// newConfig returns a Config holding the static defaults; decoding on top
// of it overwrites only the keys present in the file.
func newConfig() *Config {
	return &Config{
		Log: Log{Level: defaultLogLevel, Format: defaultLogFormat},
		Raft: Raft{
			HeartbeatTimeout:   Duration(defaultHeartbeatTimeout),
			ElectionTimeout:    Duration(defaultElectionTimeout),
			LeaderLeaseTimeout: Duration(defaultLeaderLeaseTimeout),
			CommitTimeout:      Duration(defaultCommitTimeout),
			SnapshotInterval:   Duration(defaultSnapshotInterval),
			SnapshotThreshold:  defaultSnapshotThreshold,
			ApplyTimeout:       Duration(defaultApplyTimeout),
		},
		Gossip: Gossip{Label: defaultGossipLabel, ProbeInterval: Duration(defaultGossipProbe)},
	}
}

// UnmarshalYAML pre-fills the group defaults before decoding. It uses the
// yaml.v2-style signature on purpose: yaml.v3 runs that callback with the
// caller's decoder, so KnownFields(true) still applies inside groups,
// whereas yaml.Node.Decode would silently accept unknown keys.
func (g *Group) UnmarshalYAML(unmarshal func(any) error) error {
	type plain Group // no methods, so no recursion
	*g = Group{
		Kind:      KindPostgres,
		DownAfter: Duration(defaultDownAfter),
		MaxLag:    defaultMaxLag,
		Cooldown:  Duration(defaultCooldown),
		Probe:     Probe{Interval: Duration(defaultProbeInterval)},
	}
	return unmarshal((*plain)(g))
}

// UnmarshalYAML pre-fills the member defaults before decoding; see
// Group.UnmarshalYAML for why this signature.
func (m *Member) UnmarshalYAML(unmarshal func(any) error) error {
	type plain Member
	*m = Member{Priority: defaultPriority}
	return unmarshal((*plain)(m))
}

// applyDefaults fills the defaults that depend on other fields. Zero means
// "not set" for all of them.
func (c *Config) applyDefaults() {
	if c.Raft.Advertise == "" {
		c.Raft.Advertise = c.Raft.Bind
	}
	if c.Gossip.Advertise == "" {
		c.Gossip.Advertise = c.Gossip.Bind
	}
	for i := range c.Groups {
		g := &c.Groups[i]
		if g.Kind == "" {
			g.Kind = KindPostgres
		}
		g.Failover.applyDefaults(g.Kind)
		p := &g.Probe
		if p.Type == "" {
			p.Type = ProbeTCP
			if g.Kind == KindPostgres {
				p.Type = ProbePostgres
			}
		}
		if p.Interval == 0 {
			p.Interval = Duration(defaultProbeInterval)
		}
		if p.Timeout == 0 {
			// 80% of the interval leaves room to start the next probe on
			// time; subtracting avoids overflow for huge intervals.
			p.Timeout = p.Interval - p.Interval/5
		}
		if g.StaleAfter == 0 && p.Interval > 0 && p.Timeout > 0 {
			// Tolerate two missed probe rounds plus one in flight before
			// an observer's opinion stops counting.
			g.StaleAfter = satAdd(satAdd(satAdd(p.Interval, p.Interval), p.Interval), p.Timeout)
		}
		if h := p.HTTP; h != nil {
			if h.Scheme == "" {
				h.Scheme = defaultHTTPScheme
			}
			if h.Path == "" {
				h.Path = defaultHTTPPath
			}
			if h.ExpectStatus == 0 {
				h.ExpectStatus = defaultHTTPStatus
			}
		}
		if p.Type == ProbePostgres && p.Postgres == nil {
			p.Postgres = &PostgresProbe{}
		}
		if pg := p.Postgres; pg != nil {
			if pg.User == "" {
				pg.User = defaultPGUser
			}
			if pg.Database == "" {
				pg.Database = defaultPGDatabase
			}
			if pg.SSLMode == "" {
				pg.SSLMode = defaultPGSSLMode
			}
		}
	}
}

// satAdd adds two non-negative durations, saturating instead of wrapping.
func satAdd(a, b Duration) Duration {
	if s := a + b; s >= a {
		return s
	}
	return Duration(1<<63 - 1)
}

// Load reads the config file at path, applies defaults and validates it.
// Relative gossip.key_file and password_file paths are resolved against
// the directory of path. Errors name path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	c, err := parse(data, filepath.Dir(path))
	if err != nil {
		return nil, &loadError{path: path, err: err}
	}
	return c, nil
}

// Parse decodes a config document, applies defaults and validates it. A
// relative gossip.key_file is read relative to the working directory.
func Parse(data []byte) (*Config, error) {
	return parse(data, "")
}

// loadError prefixes parse errors with the file name and lists multiple
// problems one per line, while keeping them reachable via errors.As.
type loadError struct {
	path string
	err  error
}

func (e *loadError) Error() string {
	var errs []error
	if j, ok := e.err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	if len(errs) < 2 {
		return e.path + ": " + e.err.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problems:", e.path, len(errs))
	for _, err := range errs {
		b.WriteString("\n  ")
		b.WriteString(err.Error())
	}
	return b.String()
}

func (e *loadError) Unwrap() error { return e.err }

// Self returns the entry of Observers whose ID is NodeID, or the zero
// Observer if there is none (which Validate reports).
func (c *Config) Self() Observer {
	o, _ := c.ObserverByID(c.NodeID)
	return o
}

// QuorumSize returns how many observers must agree: Quorum if set,
// otherwise a majority of Observers.
func (c *Config) QuorumSize() int {
	if c.Quorum > 0 {
		return c.Quorum
	}
	return majority(len(c.Observers))
}

func majority(n int) int { return n/2 + 1 }

// Group returns the group called name.
func (c *Config) Group(name string) (Group, bool) {
	for _, g := range c.Groups {
		if g.Name == name {
			return g, true
		}
	}
	return Group{}, false
}

// ObserverByID returns the observer with the given id.
func (c *Config) ObserverByID(id string) (Observer, bool) {
	for _, o := range c.Observers {
		if o.ID == id {
			return o, true
		}
	}
	return Observer{}, false
}

// resolvePaths makes relative file references relative to dir, the
// directory of the config file, so the daemon's working directory (often
// "/" under systemd) does not matter.
func (c *Config) resolvePaths(dir string) {
	abs := func(p string) string {
		if p == "" || dir == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	c.Gossip.KeyFile = abs(c.Gossip.KeyFile)
	c.TLS.resolvePaths(abs)
	for i := range c.Groups {
		if pg := c.Groups[i].Probe.Postgres; pg != nil {
			pg.PasswordFile = abs(pg.PasswordFile)
		}
		c.Groups[i].Failover.resolvePaths(dir)
	}
}

// errEmpty is returned for a document without any settings.
var errEmpty = errors.New("empty configuration")
