package haproxy

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/failover"
)

// lab is a real haproxy with backend pg (srv1..srv3, name servers behind
// them) and a frontend on 127.0.0.1.
type lab struct {
	sock     string // unix Runtime API socket
	tcpSock  string // TCP Runtime API socket (host:port)
	frontend string // host:port
	servers  map[string]*nameServer
}

func startLab(t *testing.T) *lab {
	t.Helper()
	haproxyBin(t)
	l := &lab{
		sock:     filepath.Join(t.TempDir(), "admin.sock"),
		tcpSock:  hostPort(freePort(t)),
		frontend: hostPort(freePort(t)),
		servers:  map[string]*nameServer{},
	}
	var lines []string
	for i, name := range []string{"srv1", "srv2", "srv3"} {
		s := startNameServer(t, name)
		l.servers[name] = s
		disabled := ""
		if i > 0 {
			disabled = " disabled"
		}
		lines = append(lines, fmt.Sprintf("    server %s %s check%s", name, s.addr, disabled))
	}
	cfg := fmt.Sprintf(`global
    stats socket %s mode 600 level admin
    stats socket %s level admin
    stats timeout 10s

defaults
    mode tcp
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    timeout check 500ms

frontend fe
    bind %s
    default_backend pg

backend pg
    balance first
    default-server inter 200ms fall 1 rise 1 on-marked-down shutdown-sessions
%s
`, l.sock, l.tcpSock, l.frontend, strings.Join(lines, "\n"))
	startHAProxy(t, cfg, l.sock)
	return l
}

func action(epoch uint64, old, new string) failover.Action {
	return failover.Action{Group: "pg", Epoch: epoch, Kind: "failover",
		Old: failover.Member{Name: old}, New: failover.Member{Name: new}}
}

func (r *Router) setCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sets
}

// wantAdmin fails unless HAProxy reports exactly these ready/maint states.
func wantAdmin(t *testing.T, r *Router, ready, maint []string) map[string]ServerState {
	t.Helper()
	st, err := r.State(context.Background())
	mustf(t, err, "State")
	for _, n := range ready {
		if s, ok := st[n]; !ok || !s.Ready() {
			t.Fatalf("server %s: want ready, got %+v (all: %v)", n, s, st)
		}
	}
	for _, n := range maint {
		if s, ok := st[n]; !ok || !s.Maint() {
			t.Fatalf("server %s: want maint, got %+v", n, s)
		}
	}
	return st
}

func TestRouteThroughRealHAProxy(t *testing.T) {
	l := startLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := New(Config{Socket: l.sock, Backend: "pg"}, nil)

	st := wantAdmin(t, r, []string{"srv1"}, []string{"srv2", "srv3"})
	if len(st) != 3 {
		t.Fatalf("State: want 3 servers, got %v", st)
	}
	if st["srv2"].AdminState&AdminConfigMaint == 0 {
		t.Fatalf("srv2 is 'disabled' in the config, want AdminConfigMaint: %+v", st["srv2"])
	}
	waitAnswer(t, l.frontend, "srv1", 10*time.Second)
	allAnswer(t, l.frontend, "srv1", 5)

	// Failover srv1 -> srv2 at epoch 5: srv1 to maint, srv2 (in
	// maintenance, so not up) to ready and its health forced up.
	mustf(t, r.Route(ctx, action(5, "srv1", "srv2")), "Route epoch 5 srv1->srv2")
	if got := r.setCount(); got != 3 {
		t.Fatalf("Route sent %d set commands, want 3 (maint, ready, health up)", got)
	}
	if st, err := r.State(ctx); err != nil || !st["srv2"].Up() {
		t.Fatalf("srv2 not up right after the route: %+v, %v", st["srv2"], err)
	}
	st = wantAdmin(t, r, []string{"srv2"}, []string{"srv1", "srv3"})
	if st["srv2"].AdminState&AdminConfigMaint == 0 {
		t.Logf("note: HAProxy cleared AdminConfigMaint on ready: %+v", st["srv2"])
	}
	waitAnswer(t, l.frontend, "srv2", 5*time.Second)
	before1, before3 := l.servers["srv1"].accepted.Load(), l.servers["srv3"].accepted.Load()
	allAnswer(t, l.frontend, "srv2", 30)
	if d1, d3 := l.servers["srv1"].accepted.Load()-before1, l.servers["srv3"].accepted.Load()-before3; d1 != 0 || d3 != 0 {
		t.Fatalf("after the route, srv1 got %d and srv3 %d connections (health checks included?), want 0", d1, d3)
	}
	if r.HighestEpoch() != 5 {
		t.Fatalf("HighestEpoch = %d, want 5", r.HighestEpoch())
	}

	// A replay of the same epoch changes nothing and sends nothing.
	mustf(t, r.Route(ctx, action(5, "srv1", "srv2")), "replay of epoch 5")
	if got := r.setCount(); got != 3 {
		t.Fatalf("replay sent %d more set commands, want none", got-3)
	}
	wantAdmin(t, r, []string{"srv2"}, []string{"srv1", "srv3"})

	// A lower epoch (a deposed leader moving traffic back) is refused.
	err := r.Route(ctx, action(4, "srv2", "srv1"))
	if !errors.Is(err, ErrStaleEpoch) || !strings.Contains(err.Error(), "epoch 4") {
		t.Fatalf("Route epoch 4 after 5: want ErrStaleEpoch naming epoch 4, got %v", err)
	}
	// So is the same epoch naming other servers.
	if err := r.Route(ctx, action(5, "srv2", "srv3")); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("Route epoch 5 srv2->srv3 after epoch 5 srv1->srv2: want ErrStaleEpoch, got %v", err)
	}
	if got := r.setCount(); got != 3 {
		t.Fatalf("refused routes sent %d set commands", got-3)
	}
	wantAdmin(t, r, []string{"srv2"}, []string{"srv1", "srv3"})
	allAnswer(t, l.frontend, "srv2", 10)

	// An unknown server is reported before anything changes: srv2 stays ready.
	err = r.Route(ctx, action(6, "srv2", "srv9"))
	if err == nil || !strings.Contains(err.Error(), "srv9") || !strings.Contains(err.Error(), "backend pg") {
		t.Fatalf("Route to srv9: want an error naming backend pg and srv9, got %v", err)
	}
	wantAdmin(t, r, []string{"srv2"}, []string{"srv1", "srv3"})
	if r.HighestEpoch() != 5 {
		t.Fatalf("a failed route moved the epoch to %d", r.HighestEpoch())
	}

	// HAProxy's own answer is in the error of a rejected command.
	r.mu.Lock()
	err = r.setState(ctx, "srv9", "ready")
	r.mu.Unlock()
	if err == nil || !strings.Contains(err.Error(), "No such server") || !strings.Contains(err.Error(), "srv9") {
		t.Fatalf("set state of srv9: want HAProxy's 'No such server.' naming srv9, got %v", err)
	}

	// A newer epoch moves on (switchover srv2 -> srv3); a drifted state is
	// repaired by a replay.
	mustf(t, r.Route(ctx, action(6, "srv2", "srv3")), "Route epoch 6 srv2->srv3")
	wantAdmin(t, r, []string{"srv3"}, []string{"srv1", "srv2"})
	waitAnswer(t, l.frontend, "srv3", 5*time.Second)
	allAnswer(t, l.frontend, "srv3", 10)
	if out, err := Command(ctx, r.cfg, "set server pg/srv3 state maint"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("drift srv3 to maint: %q %v", out, err)
	}
	mustf(t, r.Route(ctx, action(6, "srv2", "srv3")), "replay of epoch 6 after drift")
	wantAdmin(t, r, []string{"srv3"}, []string{"srv1", "srv2"})
	waitAnswer(t, l.frontend, "srv3", 5*time.Second)
	if err := r.Route(ctx, action(5, "srv1", "srv2")); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("replay of epoch 5 after epoch 6: want ErrStaleEpoch, got %v", err)
	}
}

func TestStateOverTCPSocketAndErrors(t *testing.T) {
	l := startLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	st, err := New(Config{Socket: l.tcpSock, Backend: "pg"}, nil).State(ctx)
	mustf(t, err, "State over TCP socket %s", l.tcpSock)
	if len(st) != 3 || !st["srv1"].Ready() || !st["srv3"].Maint() {
		t.Fatalf("State over TCP: %+v", st)
	}
	if st["srv1"].Port == 0 || st["srv1"].Addr != "127.0.0.1" {
		t.Fatalf("srv1 address: %+v", st["srv1"])
	}

	// Unknown backend: HAProxy's answer is in the error.
	_, err = New(Config{Socket: l.sock, Backend: "nope"}, nil).State(ctx)
	if err == nil || !strings.Contains(err.Error(), "Can't find backend") || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("State of an unknown backend: %v", err)
	}
	// Member names mapped to server names.
	r := New(Config{Socket: l.sock, Backend: "pg"}, func(m string) string { return "srv" + strings.TrimPrefix(m, "db") })
	mustf(t, r.Route(ctx, action(1, "db1", "db3")), "Route db1->db3 mapped to srv1->srv3")
	wantAdmin(t, r, []string{"srv3"}, []string{"srv1", "srv2"})
	waitAnswer(t, l.frontend, "srv3", 5*time.Second)

	// A socket that does not exist, and a cancelled context, fail quickly.
	_, err = New(Config{Socket: filepath.Join(t.TempDir(), "none.sock"), Backend: "pg"}, nil).State(ctx)
	if err == nil {
		t.Fatal("State on a missing socket succeeded")
	}
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if err := New(Config{Socket: l.sock, Backend: "pg"}, nil).Route(cctx, action(9, "srv3", "srv1")); err == nil {
		t.Fatal("Route with a cancelled context succeeded")
	}
	wantAdmin(t, r, []string{"srv3"}, []string{"srv1", "srv2"})
}

// checkLab is a real haproxy with backend pgc whose checks run every 30s
// (longer than the test): new's check port is closed, so its first check
// (at once: it is the first server) marks it DOWN and it would stay DOWN
// for the rest of the test; old has no check (always up); trk tracks new.
type checkLab struct {
	sock, frontend string
}

func startCheckLab(t *testing.T) *checkLab {
	t.Helper()
	haproxyBin(t)
	l := &checkLab{sock: filepath.Join(t.TempDir(), "admin.sock"), frontend: hostPort(freePort(t))}
	closed := freePort(t)
	srvNew, srvOld, srvTrk := startNameServer(t, "new"), startNameServer(t, "old"), startNameServer(t, "trk")
	cfg := fmt.Sprintf(`global
    stats socket %s mode 600 level admin

defaults
    mode tcp
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    timeout check 500ms

frontend fe
    bind %s
    default_backend pgc

backend pgc
    balance first
    default-server inter 30s fall 1 rise 1
    server new %s check port %d
    server old %s
    server trk %s track pgc/new
`, l.sock, l.frontend, srvNew.addr, closed, srvOld.addr, srvTrk.addr)
	startHAProxy(t, cfg, l.sock)
	return l
}

// A new primary whose server is ready but DOWN by its health check is
// forced up by Route and takes the traffic at once, not at its next check
// (30s away here); a server whose health cannot be forced (it tracks
// another) is left to "ready" without failing the route.
func TestRouteForcesNewPrimaryUp(t *testing.T) {
	l := startCheckLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := New(Config{Socket: l.sock, Backend: "pgc"}, nil)
	waitFor(t, 10*time.Second, "new DOWN by its first (failing) check", func() bool {
		st, err := r.State(ctx)
		return err == nil && !st["new"].Up() && st["new"].Ready() && !st["trk"].Up()
	})
	waitAnswer(t, l.frontend, "old", 5*time.Second)

	// HAProxy refuses to force a tracking server's health: Route relies
	// on "ready" (and the tracked server's checks) and does not fail.
	mustf(t, r.Route(ctx, action(1, "old", "trk")), "Route old->trk")
	st := wantAdmin(t, r, []string{"trk"}, []string{"old"})
	if st["trk"].Up() {
		t.Fatalf("trk up although it tracks new, which is DOWN: %+v", st["trk"])
	}
	if got := r.setCount(); got != 2 {
		t.Fatalf("Route sent %d set commands, want 2 (maint, health up refused)", got)
	}

	start := time.Now()
	mustf(t, r.Route(ctx, action(2, "trk", "new")), "Route trk->new")
	st = wantAdmin(t, r, []string{"new"}, []string{"old", "trk"})
	if !st["new"].Up() {
		t.Fatalf("new not up after Route (srv_op_state %d)", st["new"].OpState)
	}
	if got := r.setCount(); got != 4 {
		t.Fatalf("Route sent %d set commands, want 2 (maint, health up; new was ready)", got-2)
	}
	// Well before new's next check, 30s after the first.
	waitAnswer(t, l.frontend, "new", 5*time.Second)
	allAnswer(t, l.frontend, "new", 10)
	t.Logf("new answered through HAProxy %s after Route began", time.Since(start).Round(time.Millisecond))

	// A replay finds everything in place and sends nothing.
	mustf(t, r.Route(ctx, action(2, "trk", "new")), "replay of epoch 2")
	if got := r.setCount(); got != 4 {
		t.Fatalf("replay sent %d set commands, want none", got-4)
	}
}

func TestHealthNotForceable(t *testing.T) {
	for ans, want := range map[string]bool{
		"cannot change health on a tracking server.":                     true,
		"health checks are not enabled on this server.":                  true,
		"Server health check disabled.":                                  true,
		"No such server.":                                                false,
		"Permission denied":                                              false,
		"'set server <srv> health' expects 'up', 'stopping', or 'down'.": false,
	} {
		if got := healthNotForceable(ans); got != want {
			t.Errorf("healthNotForceable(%q) = %v, want %v", ans, got, want)
		}
	}
}
