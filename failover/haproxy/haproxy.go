// Package haproxy is a failover.Router that moves client traffic by
// talking to HAProxy's Runtime API (the "stats socket"): on a failover it
// puts the old primary's server into maintenance, then makes the new
// primary's server ready and forces its health up, and reads "show
// servers state" back to verify.
//
// # What it changes, and what it leaves alone
//
// Route touches exactly two servers of one backend: Old goes to "maint",
// New goes to "ready" and, when HAProxy does not already count it up,
// "health up". Every other server (the standbys) keeps whatever
// administrative state it has; in the shipped configuration
// (deploy/haproxy/haproxy.cfg) they stay out of the primary backend
// because their health checks against the observers' role endpoints
// (/primary/{group}/{member}) answer 503.
//
// "ready" only lifts the administrative block. A standby's server is
// ready already, but DOWN by its health checks, and would stay DOWN until
// its next check passes (up to one check interval, plus rise-1 more):
// time on the failover path, with the new primary promoted and the old
// one fenced and in maintenance. "set server B/S health up" makes it UP at
// once (STARTING with slowstart) until a check says otherwise; by then the
// observers see New as the writable primary and its check passes. HAProxy
// refuses to force the health of a server that tracks another (and,
// depending on the version, of one without checks): such an answer is
// ignored and Route relies on "ready" and the checks, as before.
//
// Maintenance set through the Runtime API survives health checks: the old
// primary stays out even if it comes back and, wrongly, still answers as a
// primary. It is lifted only by a later Route that names it as New (or by
// an operator, or by an HAProxy reload, which forgets runtime state).
//
// # Epochs
//
// HAProxy knows nothing about epochs, so a Router remembers, per backend,
// the highest epoch it has applied and refuses a Route with a lower epoch:
// a deposed leader that is still running cannot move traffic back with an
// old intent through this Router. That memory is per Router (per observer
// process) and is lost on restart; it is a second line of defence only.
// The real guard is upstream: the controller acts only on intents that
// were committed to Raft with the group's epoch. A Route with the same
// epoch as the last one applied is a replay: it must name the same Old and
// New, and it changes nothing if HAProxy is already in that state.
package haproxy

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vigilha/vigil/failover"
)

// DefaultTimeout bounds one Runtime API command when Config.Timeout is 0.
const DefaultTimeout = 2 * time.Second

// Config says which HAProxy and which backend a Router drives.
type Config struct {
	// Socket is the Runtime API socket: a unix socket path
	// ("/run/haproxy/admin.sock", optionally written "unix:PATH") or a
	// TCP stats socket as host:port ("tcp:host:port" also works). It must
	// have "level admin".
	Socket string
	// Backend is the HAProxy backend whose servers are the group's members.
	Backend string
	// Timeout bounds each command (dial, write, read); default DefaultTimeout.
	// The context passed to Route/State bounds them too.
	Timeout time.Duration
}

// ErrStaleEpoch is wrapped by Route's error when the action's epoch is lower
// than one this Router already applied to the backend.
var ErrStaleEpoch = errors.New("stale epoch")

// Router drives one HAProxy backend. It is safe for concurrent use; Route
// calls are serialized.
type Router struct {
	cfg      Config
	serverOf func(member string) string

	mu      sync.Mutex
	applied map[string]applied // backend -> last applied route
	sets    int                // "set server" commands sent (for tests)
}

type applied struct {
	epoch    uint64
	old, new string // server names
}

var _ failover.Router = (*Router)(nil)

// New returns a Router for cfg. serverOf maps a member name to its HAProxy
// server name in cfg.Backend; nil means the server is named like the member.
func New(cfg Config, serverOf func(member string) string) *Router {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if serverOf == nil {
		serverOf = func(m string) string { return m }
	}
	return &Router{cfg: cfg, serverOf: serverOf, applied: map[string]applied{}}
}

// HighestEpoch is the highest epoch this Router has applied to its backend
// (0 if none).
func (r *Router) HighestEpoch() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied[r.cfg.Backend].epoch
}

// Route puts a.Old's server into maintenance and a.New's server into ready,
// in that order, forces a.New's health up when HAProxy does not count it
// up, then verifies all of it with "show servers state". It is
// idempotent: when HAProxy is already in that state it sends no command.
// It refuses (ErrStaleEpoch) an action whose epoch is lower than the
// highest this Router applied to the backend, and a replay of the same
// epoch that names different servers. An empty a.Old.Name (no old primary
// known), or Old equal to New, skips the maintenance step.
//
// Errors name the backend, the server and HAProxy's answer.
func (r *Router) Route(ctx context.Context, a failover.Action) error {
	be := r.cfg.Backend
	if a.New.Name == "" {
		return fmt.Errorf("haproxy: route backend %s epoch %d: no new member", be, a.Epoch)
	}
	newSrv := r.serverOf(a.New.Name)
	oldSrv := ""
	if a.Old.Name != "" {
		oldSrv = r.serverOf(a.Old.Name)
		if oldSrv == newSrv {
			oldSrv = ""
		}
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if last, ok := r.applied[be]; ok {
		switch {
		case a.Epoch < last.epoch:
			return fmt.Errorf("haproxy: route backend %s to %s refused: epoch %d is lower than epoch %d already applied (%w)",
				be, newSrv, a.Epoch, last.epoch, ErrStaleEpoch)
		case a.Epoch == last.epoch && (last.new != newSrv || last.old != oldSrv):
			return fmt.Errorf("haproxy: route backend %s refused: epoch %d was applied as %s -> %s, not %s -> %s (%w)",
				be, a.Epoch, orNone(last.old), last.new, orNone(oldSrv), newSrv, ErrStaleEpoch)
		}
	}

	states, err := r.State(ctx)
	if err != nil {
		return fmt.Errorf("haproxy: route backend %s epoch %d: %w", be, a.Epoch, err)
	}
	for _, s := range []string{oldSrv, newSrv} {
		if _, ok := states[s]; s != "" && !ok {
			return fmt.Errorf("haproxy: route backend %s epoch %d: no server %s in backend %s (servers: %s)",
				be, a.Epoch, s, be, strings.Join(names(states), ", "))
		}
	}
	if oldSrv != "" && !states[oldSrv].Maint() {
		if err := r.setState(ctx, oldSrv, "maint"); err != nil {
			return fmt.Errorf("haproxy: route epoch %d: %w", a.Epoch, err)
		}
	}
	if !states[newSrv].Ready() {
		if err := r.setState(ctx, newSrv, "ready"); err != nil {
			return fmt.Errorf("haproxy: route epoch %d: %w", a.Epoch, err)
		}
	}
	// Read before "ready": a server leaving maintenance is in HAProxy's
	// count at once, but forcing it costs one command and no wait.
	forced := false
	if !states[newSrv].Up() {
		var err error
		if forced, err = r.forceUp(ctx, newSrv); err != nil {
			return fmt.Errorf("haproxy: route epoch %d: %w", a.Epoch, err)
		}
	}

	// Verify what HAProxy now says.
	states, err = r.State(ctx)
	if err != nil {
		return fmt.Errorf("haproxy: route backend %s epoch %d: verify: %w", be, a.Epoch, err)
	}
	if s := states[newSrv]; !s.Ready() {
		return fmt.Errorf("haproxy: route backend %s epoch %d: server %s/%s is not ready after 'state ready' (srv_admin_state %d)",
			be, a.Epoch, be, newSrv, s.AdminState)
	}
	if s := states[newSrv]; forced && !s.Up() && s.OpState != OpStarting {
		// A health check ran in between and failed: the observers do not
		// (yet) see New as the writable primary. The controller retries.
		return fmt.Errorf("haproxy: route backend %s epoch %d: server %s/%s is not up after 'health up' (srv_op_state %d): its health check took it down again",
			be, a.Epoch, be, newSrv, s.OpState)
	}
	if oldSrv != "" {
		if s := states[oldSrv]; !s.Maint() {
			return fmt.Errorf("haproxy: route backend %s epoch %d: server %s/%s is not in maintenance after 'state maint' (srv_admin_state %d)",
				be, a.Epoch, be, oldSrv, s.AdminState)
		}
	}
	if last := r.applied[be]; a.Epoch >= last.epoch {
		r.applied[be] = applied{epoch: a.Epoch, old: oldSrv, new: newSrv}
	}
	return nil
}

func (r *Router) setState(ctx context.Context, server, state string) error {
	cmd := fmt.Sprintf("set server %s/%s state %s", r.cfg.Backend, server, state)
	r.sets++
	out, err := r.command(ctx, cmd)
	if err != nil {
		return fmt.Errorf("backend %s server %s: %q: %w", r.cfg.Backend, server, cmd, err)
	}
	if ans := strings.TrimSpace(out); ans != "" {
		return fmt.Errorf("backend %s server %s: %q: haproxy answered %q", r.cfg.Backend, server, cmd, ans)
	}
	return nil
}

// forceUp sends "set server B/S health up". It reports whether HAProxy
// took it; false with no error when HAProxy refuses to force this server's
// health (it tracks another server, or has no checks): then "ready" and
// its checks decide, as they would without forcing.
func (r *Router) forceUp(ctx context.Context, server string) (bool, error) {
	cmd := fmt.Sprintf("set server %s/%s health up", r.cfg.Backend, server)
	r.sets++
	out, err := r.command(ctx, cmd)
	if err != nil {
		return false, fmt.Errorf("backend %s server %s: %q: %w", r.cfg.Backend, server, cmd, err)
	}
	switch ans := strings.TrimSpace(out); {
	case ans == "":
		return true, nil
	case healthNotForceable(ans):
		return false, nil
	default:
		return false, fmt.Errorf("backend %s server %s: %q: haproxy answered %q", r.cfg.Backend, server, cmd, ans)
	}
}

// healthNotForceable recognises HAProxy's refusals to force a server's
// health that leave "ready" in charge: "cannot change health on a
// tracking server." (HAProxy 1.6 to 3.x) and answers saying the server's
// health checks are not enabled.
func healthNotForceable(answer string) bool {
	a := strings.ToLower(answer)
	return strings.Contains(a, "tracking server") ||
		(strings.Contains(a, "check") && (strings.Contains(a, "not enabled") || strings.Contains(a, "disabled")))
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func names(m map[string]ServerState) []string {
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// HAProxy's srv_admin_state bits (src/server.h).
const (
	AdminForcedMaint    = 0x01 // set server ... state maint
	AdminInheritedMaint = 0x02 // tracks a server in maintenance
	AdminConfigMaint    = 0x04 // "disabled" in the configuration; informational, stays set after "state ready"
	AdminForcedDrain    = 0x08 // set server ... state drain
	AdminInheritedDrain = 0x10
	AdminResolvMaint    = 0x20 // address resolution failed
	AdminFQDNSet        = 0x40 // FQDN changed through the Runtime API; informational

	adminMaintMask = AdminForcedMaint | AdminInheritedMaint | AdminResolvMaint
	adminDrainMask = AdminForcedDrain | AdminInheritedDrain
)

// HAProxy's srv_op_state values.
const (
	OpStopped  = 0 // down (failed checks, or in maintenance)
	OpStarting = 1
	OpRunning  = 2 // up
	OpStopping = 3
)

// ServerState is one line of "show servers state BACKEND".
type ServerState struct {
	Backend    string
	Name       string
	Addr       string
	Port       int
	OpState    int // srv_op_state: OpStopped .. OpStopping
	AdminState int // srv_admin_state bits, Admin*
	CheckPort  int
	CheckAddr  string
	// Fields holds every column by its header name, as HAProxy printed it.
	Fields map[string]string
}

// Maint reports whether the server is in maintenance (forced, inherited or
// by a resolution failure).
func (s ServerState) Maint() bool { return s.AdminState&adminMaintMask != 0 }

// Drain reports whether the server is draining.
func (s ServerState) Drain() bool { return s.AdminState&adminDrainMask != 0 }

// Ready reports whether the server is administratively ready: neither in
// maintenance nor draining. AdminConfigMaint and AdminFQDNSet are only
// informational and do not count: a server declared "disabled" keeps
// AdminConfigMaint (srv_admin_state 4) after "set server ... state ready".
func (s ServerState) Ready() bool { return !s.Maint() && !s.Drain() }

// Up reports whether HAProxy considers the server running (its health
// checks pass, or it has none).
func (s ServerState) Up() bool { return s.OpState == OpRunning }

// State returns the servers of the backend by name, from "show servers
// state BACKEND".
func (r *Router) State(ctx context.Context) (map[string]ServerState, error) {
	cmd := "show servers state " + r.cfg.Backend
	out, err := r.command(ctx, cmd)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %q: %w", r.cfg.Backend, cmd, err)
	}
	states, err := ParseServersState(out)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %q: %w", r.cfg.Backend, cmd, err)
	}
	res := make(map[string]ServerState, len(states))
	for _, s := range states {
		if s.Backend == r.cfg.Backend {
			res[s.Name] = s
		}
	}
	return res, nil
}

// ParseServersState parses the output of "show servers state" (format
// version 1, as printed by HAProxy 1.6 to 3.x). Columns are found by the
// names in the "#" header line. Any other answer (such as "Can't find
// backend.") is returned as an error carrying HAProxy's text.
func ParseServersState(out string) ([]ServerState, error) {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 || strings.TrimSpace(lines[0]) != "1" {
		return nil, fmt.Errorf("haproxy answered %q", strings.TrimSpace(out))
	}
	var header []string
	var res []ServerState
	for _, line := range lines[1:] {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "#") {
			header = strings.Fields(strings.TrimPrefix(line, "#"))
			continue
		}
		if header == nil {
			return nil, fmt.Errorf("server line before the header: %q", line)
		}
		f := strings.Fields(line)
		if len(f) < len(header) {
			return nil, fmt.Errorf("server line has %d fields, header %d: %q", len(f), len(header), line)
		}
		m := make(map[string]string, len(header))
		for i, h := range header {
			m[h] = f[i]
		}
		s := ServerState{Backend: m["be_name"], Name: m["srv_name"], Addr: m["srv_addr"], CheckAddr: m["srv_check_addr"], Fields: m}
		var err error
		if s.OpState, err = atoiField(m, "srv_op_state"); err != nil {
			return nil, err
		}
		if s.AdminState, err = atoiField(m, "srv_admin_state"); err != nil {
			return nil, err
		}
		s.Port, _ = strconv.Atoi(m["srv_port"])
		s.CheckPort, _ = strconv.Atoi(m["srv_check_port"])
		if s.Backend == "" || s.Name == "" {
			return nil, fmt.Errorf("server line without be_name/srv_name: %q", line)
		}
		res = append(res, s)
	}
	return res, nil
}

func atoiField(m map[string]string, k string) (int, error) {
	v, ok := m[k]
	if !ok {
		return 0, fmt.Errorf("no %s column", k)
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("column %s: %w", k, err)
	}
	return n, nil
}
