package config

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Fencing policies.
const (
	// FenceStrict stops a failover when no fence method confirms that the
	// old primary can no longer take writes.
	FenceStrict = "strict"
	// FenceBestEffort fails over even then (after lease_timeout).
	FenceBestEffort = "best_effort"
)

var fencePolicies = []string{FenceStrict, FenceBestEffort}

const (
	defaultPromoteTimeout = 30 * time.Second
	defaultStepTimeout    = 30 * time.Second
	defaultHookTimeout    = 10 * time.Second
	defaultNotifyRetries  = 3
	defaultVetoBackoff    = 30 * time.Second
	defaultLeaseTimeout   = time.Second
)

// Failover configures how a group is failed over.
type Failover struct {
	// Fence is strict (default) or best_effort.
	Fence string `yaml:"fence"`
	// PromoteTimeout bounds promotion of the candidate.
	PromoteTimeout Duration `yaml:"promote_timeout"`
	// StepTimeout bounds every other step (fence, re-route, re-point).
	StepTimeout Duration `yaml:"step_timeout"`
	// AllowedDatacenters, when set, limits automatic promotion to members
	// in these datacenters.
	AllowedDatacenters []string `yaml:"allowed_datacenters,omitempty"`
	// AnyStandby allows promoting an asynchronous standby although the
	// primary uses synchronous replication (by default only a synchronous
	// standby is a candidate then).
	AnyStandby bool `yaml:"any_standby,omitempty"`
	// VetoBackoff is how long to wait after a pre_failover hook vetoed
	// before asking it again.
	VetoBackoff Duration `yaml:"veto_backoff"`
	// Postgres is how vigil connects to members to fence, promote and
	// re-point them (postgres groups).
	Postgres *PostgresActuator `yaml:"postgres,omitempty"`
	Hooks    Hooks             `yaml:"hooks"`
	// VIP moves the group's virtual IP through the node agents of the
	// members (members[].agent), which also fence their host locally and
	// drop the VIP on their own when they lose the observers' leases.
	VIP bool `yaml:"vip,omitempty"`
	// LeaseTimeout is how long a node agent keeps the VIP without leases
	// from a quorum of observers; it must be shorter than down_after so an
	// isolated primary drops the VIP before a failover can start.
	LeaseTimeout Duration `yaml:"lease_timeout"`
	// HAProxy re-points an HAProxy backend through its Runtime API.
	HAProxy *HAProxyRouter `yaml:"haproxy,omitempty"`
}

// HAProxyRouter is an HAProxy backend vigil re-points on failover.
type HAProxyRouter struct {
	// Socket is the Runtime API socket: a unix socket path or host:port.
	Socket string `yaml:"socket"`
	// Backend is the backend whose servers are named like the members.
	Backend string `yaml:"backend"`
}

// PostgresActuator is how vigil acts on PostgreSQL members.
type PostgresActuator struct {
	User     string `yaml:"user"`
	Database string `yaml:"database"`
	// PasswordFile is optional, resolved like probe.postgres.password_file
	// and, like it, must be a readable regular file (Validate).
	PasswordFile string `yaml:"password_file,omitempty"`
	SSLMode      string `yaml:"sslmode"`
	// ReplicationUser is written into re-pointed standbys' primary_conninfo.
	ReplicationUser string `yaml:"replication_user"`
}

// Hooks are commands run at failover steps.
type Hooks struct {
	// PreFailover vetoes a failover by exiting non-zero.
	PreFailover *Hook `yaml:"pre_failover,omitempty"`
	// Fence runs after the built-in fence (IPMI, cloud API, ssh).
	Fence *Hook `yaml:"fence,omitempty"`
	// Notify is told about every step; fire-and-forget with retries.
	Notify *Hook `yaml:"notify,omitempty"`
	// Rejoin turns the old primary into a standby of the new one after a
	// completed failover or switchover (e.g. ssh + pg_rewind + restart);
	// fire-and-forget with retries, VIGIL_STEP=rejoin.
	Rejoin *Hook `yaml:"rejoin,omitempty"`
}

// Hook is one command, run without a shell.
type Hook struct {
	Command []string `yaml:"command"`
	Timeout Duration `yaml:"timeout"`
	Retries int      `yaml:"retries,omitempty"`
}

func (f *Failover) applyDefaults(kind string) {
	if f.Fence == "" {
		f.Fence = FenceStrict
	}
	if f.PromoteTimeout == 0 {
		f.PromoteTimeout = Duration(defaultPromoteTimeout)
	}
	if f.StepTimeout == 0 {
		f.StepTimeout = Duration(defaultStepTimeout)
	}
	if f.VetoBackoff == 0 {
		f.VetoBackoff = Duration(defaultVetoBackoff)
	}
	if f.LeaseTimeout == 0 {
		f.LeaseTimeout = Duration(defaultLeaseTimeout)
	}
	if kind == KindPostgres && f.Postgres == nil {
		f.Postgres = &PostgresActuator{}
	}
	if p := f.Postgres; p != nil {
		if p.User == "" {
			p.User = defaultPGUser
		}
		if p.Database == "" {
			p.Database = defaultPGDatabase
		}
		if p.SSLMode == "" {
			p.SSLMode = defaultPGSSLMode
		}
		if p.ReplicationUser == "" {
			p.ReplicationUser = p.User
		}
	}
	for _, h := range []*Hook{f.Hooks.PreFailover, f.Hooks.Fence, f.Hooks.Notify, f.Hooks.Rejoin} {
		if h != nil && h.Timeout == 0 {
			h.Timeout = Duration(defaultHookTimeout)
		}
	}
	for _, h := range []*Hook{f.Hooks.Notify, f.Hooks.Rejoin} {
		if h != nil && h.Retries == 0 {
			h.Retries = defaultNotifyRetries
		}
	}
}

func (f *Failover) resolvePaths(dir string) {
	if p := f.Postgres; p != nil && p.PasswordFile != "" && dir != "" && !filepath.IsAbs(p.PasswordFile) {
		p.PasswordFile = filepath.Join(dir, p.PasswordFile)
	}
}

func (f *Failover) validate(v *validator, field, kind string, g *Group) {
	if v.positive(field+".lease_timeout", f.LeaseTimeout) && f.VIP && f.LeaseTimeout >= g.DownAfter {
		v.add(field+".lease_timeout", f.LeaseTimeout, "must be shorter than down_after (%s): an isolated primary must drop its VIP before a failover can start", g.DownAfter)
	}
	if f.VIP {
		for i, m := range g.Members {
			if m.Agent == "" {
				v.add(fmt.Sprintf("%s.members[%d].agent", strings.TrimSuffix(field, ".failover"), i), nil, "required with failover.vip: the node agent's host:port on %s", m.Name)
			}
		}
	}
	if h := f.HAProxy; h != nil {
		if h.Socket == "" {
			v.add(field+".haproxy.socket", nil, "required: the Runtime API socket (unix path or host:port)")
		}
		if h.Backend == "" {
			v.add(field+".haproxy.backend", nil, "required: the backend to re-point")
		}
	}
	v.oneOf(field+".fence", f.Fence, fencePolicies)
	v.positive(field+".promote_timeout", f.PromoteTimeout)
	v.positive(field+".step_timeout", f.StepTimeout)
	v.positive(field+".veto_backoff", f.VetoBackoff)
	if f.Postgres != nil {
		if kind != KindPostgres {
			v.add(field+".postgres", nil, "only allowed for kind postgres (kind is %q)", kind)
		} else {
			v.oneOf(field+".postgres.sslmode", f.Postgres.SSLMode, sslModes)
		}
		v.secretFile(field+".postgres.password_file", f.Postgres.PasswordFile)
	}
	for i, dc := range f.AllowedDatacenters {
		if dc == "" || !dcPattern.MatchString(dc) {
			v.add(fmt.Sprintf("%s.allowed_datacenters[%d]", field, i), dc, "must be 1 to 63 characters of A-Z, a-z, 0-9, '.', '_' and '-'")
		}
	}
	for name, h := range map[string]*Hook{"pre_failover": f.Hooks.PreFailover, "fence": f.Hooks.Fence, "notify": f.Hooks.Notify, "rejoin": f.Hooks.Rejoin} {
		if h == nil {
			continue
		}
		hf := field + ".hooks." + name
		if len(h.Command) == 0 || h.Command[0] == "" {
			v.add(hf+".command", nil, "required: the program and its arguments")
		} else if !filepath.IsAbs(h.Command[0]) {
			if _, err := exec.LookPath(h.Command[0]); err != nil {
				v.add(hf+".command", h.Command[0], "not an absolute path and not found in PATH")
			}
		}
		v.positive(hf+".timeout", h.Timeout)
		if h.Retries < 0 || h.Retries > 20 {
			v.add(hf+".retries", h.Retries, "must be between 0 and 20")
		}
	}
}
