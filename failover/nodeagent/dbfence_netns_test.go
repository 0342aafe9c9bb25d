package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/vishvananda/netns"

	"github.com/vigilha/vigil/deploy/lab/netlab"
	"github.com/vigilha/vigil/deploy/lab/pglab"
	"github.com/vigilha/vigil/failover/nodeagent/nodeagenttest"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// dialIn returns a pgx dialer whose sockets are created in the named
// network namespace.
func dialIn(ns string) pgconn.DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := netlab.RunInNetNS(ns, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// connectFrom connects to dsn from the named namespace ("" = the test's
// own), bounded by timeout.
func connectFrom(ns, dsn string, timeout time.Duration) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	if ns != "" {
		cfg.DialFunc = dialIn(ns)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

// timedFence records, for each successful Install, when it began, when
// its netlink transaction was acknowledged (the rules in force: the
// "fence time") and when it returned (after reading the table back).
type timedFence struct {
	DatabaseFencer
	mu        sync.Mutex
	committed time.Time
	installs  [][3]time.Time
}

func (f *timedFence) commit(at time.Time) {
	f.mu.Lock()
	f.committed = at
	f.mu.Unlock()
}

func (f *timedFence) Install() error {
	t0 := time.Now()
	err := f.DatabaseFencer.Install()
	t2 := time.Now()
	if err == nil {
		f.mu.Lock()
		f.installs = append(f.installs, [3]time.Time{t0, f.committed, t2})
		f.mu.Unlock()
	}
	return err
}

// installed returns the n-th successful install (from 1): begin, commit,
// return.
func (f *timedFence) installed(n int) ([3]time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.installs) < n {
		return [3]time.Time{}, false
	}
	return f.installs[n-1], true
}

// writer is a client that holds a session and inserts in a loop,
// reconnecting when a statement or a connection attempt fails (each
// bounded by 300ms), and records when each insert was acknowledged.
type writer struct {
	dsn string

	mu       sync.Mutex
	acks     int
	lastAck  time.Time
	failures []time.Time
	lastErr  error
}

func (w *writer) run(ctx context.Context) {
	var c *pgx.Conn
	defer func() {
		if c != nil {
			c.Close(context.Background())
		}
	}()
	fail := func(err error) {
		w.mu.Lock()
		w.failures = append(w.failures, time.Now())
		w.lastErr = err
		w.mu.Unlock()
		select { // pacing after a refusal, not a wait for a condition
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
	for ctx.Err() == nil {
		if c == nil {
			var err error
			if c, err = connectFrom("", w.dsn, 300*time.Millisecond); err != nil {
				c = nil
				fail(err)
				continue
			}
		}
		sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := c.Exec(sctx, "INSERT INTO writes(at) VALUES (clock_timestamp())")
		cancel()
		if err != nil {
			c.Close(context.Background())
			c = nil
			fail(err)
			continue
		}
		at := time.Now()
		w.mu.Lock()
		w.acks++
		w.lastAck = at
		w.mu.Unlock()
	}
}

func (w *writer) state() (acks int, last time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acks, w.lastAck
}

func (w *writer) failuresSince(t time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, f := range w.failures {
		if f.After(t) {
			n++
		}
	}
	return n
}

// requireNFTables skips the test when nf_tables cannot be used in a fresh
// namespace (or fails it with VIGIL_REQUIRE_NETNS=1).
func requireNFTables(t *testing.T, f DatabaseFencer) {
	t.Helper()
	if _, err := f.Installed(); err != nil {
		if os.Getenv("VIGIL_REQUIRE_NETNS") == "1" {
			t.Fatalf("VIGIL_REQUIRE_NETNS=1 but nf_tables is unusable: %v", err)
		}
		t.Skipf("nf_tables unusable here: %v", err)
	}
}

// TestDatabaseFencePostgresInNetns runs the real fence (nftables through
// netlink, pgx) on a real PostgreSQL primary (with a streaming standby)
// in a network namespace "db": a client outside holding a session and
// writing in a loop gets no acknowledgement after the fence is in force,
// the allow_from host (the observer) still gets in, the standby keeps
// streaming, a client on the db host itself using its eth0 address is cut
// too (loopback is not); the fence survives an agent restart, AddVIP
// lifts it and the client writes again; and losing the lease quorum
// fences the database within moments of the support's end.
func TestDatabaseFencePostgresInNetns(t *testing.T) {
	netlab.Require(t)
	pglab.SkipUnlessAvailable(t)
	lab := netlab.New(t, "vdbf", []string{"db", "standby", "obs"})
	dbNS, obsNS := lab.Hosts["db"].NS, lab.Hosts["obs"].NS
	cl := pglab.StartForTest(t, pglab.Options{Standbys: 1, Hosts: []pglab.Host{
		{NetNS: dbNS, IP: lab.IP("db")}, {NetNS: lab.Hosts["standby"].NS, IP: lab.IP("standby")},
	}})
	pg := cl.Primary()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pg.WaitStreaming(ctx, cl.Standbys()...); err != nil {
		t.Fatal(err)
	}

	nsh, err := netns.GetFromName(dbNS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nsh.Close() })
	dfCfg := DatabaseFence{Kind: DatabaseFenceKindPostgres, Port: pg.Port, Host: "127.0.0.1",
		AllowFrom: []string{lab.IP("obs"), lab.IP("standby") + "/32", "fd00:1::/64"}, Timeout: Duration(2 * time.Second)}
	fence := &timedFence{}
	real, err := newPostgresFence(tGroup, dfCfg, withNFTNetNS(int(nsh)), withPGDial(dialIn(dbNS)), withCommitHook(fence.commit))
	if err != nil {
		t.Fatal(err)
	}
	fence.DatabaseFencer = real
	requireNFTables(t, real)
	t.Cleanup(func() {
		if _, err := real.Remove(); err != nil {
			t.Errorf("removing the fence table: %v", err)
		}
	})

	// Another table in the db namespace (like a lab's network cut): the
	// fence never touches it.
	nftIn := func(args ...string) (string, error) {
		out, err := exec.Command("ip", append([]string{"netns", "exec", dbNS, "nft"}, args...)...).CombinedOutput()
		return string(out), err
	}
	haveNFT := true
	if out, err := nftIn("add", "table", "inet", "vigil_test_other"); err != nil {
		t.Logf("nft CLI not usable (%v: %s); skipping the independent checks", err, out)
		haveNFT = false
	}

	// The agent (its VIP on a fake interface) with the real fence.
	const L = 400 * time.Millisecond
	cfg := testConfig(t.TempDir(), nil)
	cfg.LeaseTimeout = Duration(L)
	cfg.Groups[0].DatabaseFence = &dfCfg
	fake := nodeagenttest.New()
	newAgent := func() *Agent {
		a, err := New(cfg, nil, nil, WithAddrs(fake), withoutStartupFence(),
			WithDatabaseFencer(func(string, DatabaseFence) (DatabaseFencer, error) { return fence, nil }))
		if err != nil {
			t.Fatal(err)
		}
		a.Start()
		return a
	}
	a := newAgent()
	defer func() { a.Close() }()
	groupStatus := func() *vigilv1.AgentGroupStatus {
		st, err := a.Status(context.Background(), &vigilv1.AgentStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return st.Groups[0]
	}
	if st := groupStatus(); st.DatabaseFenced || st.DatabaseFence != fmt.Sprintf("postgres port %d", pg.Port) {
		t.Fatalf("status at start: %+v", st)
	}

	// The client: from the test's own namespace (the lab's gateway
	// address), not in allow_from.
	admin, err := connectFrom("", pg.DSN(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "CREATE TABLE writes (id bigserial PRIMARY KEY, at timestamptz NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	admin.Close(ctx)
	w := &writer{dsn: pg.DSN()}
	wctx, wcancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { w.run(wctx) })
	defer func() { wcancel(); wg.Wait() }()
	waitFor(t, 10*time.Second, "the client writing", func() bool { n, _ := w.state(); return n >= 50 })

	// 1. The observers' Fence.
	resp, err := a.Fence(context.Background(), &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: 1, Observer: "obs1"})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Confirmed || !resp.DatabaseFenced || !resp.TrafficFenced {
		t.Fatalf("Fence: %+v", resp)
	}
	inst, _ := fence.installed(1)
	t.Logf("Fence: %s (transaction committed %s after Install began, verified %s later)", resp.Detail, inst[1].Sub(inst[0]), inst[2].Sub(inst[1]))
	// The client tries on (its statement times out, its reconnections
	// too), and gets nothing through.
	waitFor(t, 10*time.Second, "the client failing after the fence", func() bool { return w.failuresSince(inst[2]) >= 3 })
	// checkCut: no write acknowledged later than a few ms after the fence
	// time (a reply already on its way may still be read), and the client
	// was writing right up to it.
	checkCut := func(what string, inst [3]time.Time) {
		t.Helper()
		acks, last := w.state()
		t.Logf("%s: last acknowledged write %s after the fence time (%d writes acknowledged in all)", what, last.Sub(inst[1]), acks)
		if last.After(inst[1].Add(5 * time.Millisecond)) {
			t.Fatalf("%s: a write was acknowledged %s after the fence was in force", what, last.Sub(inst[1]))
		}
		if last.Before(inst[0].Add(-300 * time.Millisecond)) {
			t.Fatalf("%s: the client was not writing when the fence came (last write %s before)", what, inst[0].Sub(last))
		}
	}
	checkCut("Fence", inst)
	if st := groupStatus(); !st.DatabaseFenced || !st.Fenced {
		t.Fatalf("status after Fence: %+v", st)
	}

	// The observer (allow_from) still gets in: its session was not open
	// at the fence, the client's was terminated, the standby streams, and
	// the database is read-only.
	obs, err := connectFrom(obsNS, pg.DSN(), 5*time.Second)
	if err != nil {
		t.Fatalf("allow_from host cannot connect while fenced: %v", err)
	}
	defer obs.Close(context.Background())
	waitFor(t, 5*time.Second, "read-only in force", func() bool {
		var ro string
		return obs.QueryRow(ctx, "SHOW default_transaction_read_only").Scan(&ro) == nil && ro == "on"
	})
	_, err = obs.Exec(ctx, "INSERT INTO writes(at) VALUES (now())")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Errorf("write while read-only: %v, want SQLSTATE 25006", err)
	}
	var outside, streaming int
	// Terminated in the background: Fence does not wait for it.
	waitFor(t, 5*time.Second, "no client session from outside", func() bool {
		return obs.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND client_addr = $1::inet",
			lab.Gateway).Scan(&outside) == nil && outside == 0
	})
	if err := obs.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").Scan(&streaming); err != nil || streaming != 1 {
		t.Errorf("streaming standbys after the fence: %d (%v)", streaming, err)
	}

	// A client on the db host itself: through its eth0 address it is cut
	// (matched by source address, although it comes in on lo); through
	// loopback it is not.
	if c, err := connectFrom(dbNS, pg.DSN(), 500*time.Millisecond); err == nil {
		c.Close(ctx)
		t.Error("a client on the db host reached the database through its own eth0 address while fenced")
	}
	local, err := connectFrom(dbNS, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", pg.Port), 5*time.Second)
	if err != nil {
		t.Errorf("loopback client refused while fenced: %v", err)
	} else {
		local.Close(ctx)
	}
	if haveNFT {
		out, err := nftIn("list", "table", "inet", fenceTableName(tGroup))
		if err != nil || !strings.Contains(out, fmt.Sprintf("tcp dport %d drop", pg.Port)) || !strings.Contains(out, fmt.Sprintf("tcp sport %d drop", pg.Port)) ||
			!strings.Contains(out, lab.IP("obs")) || !strings.Contains(out, "127.0.0.0/8") || !strings.Contains(out, "fd00:1::/64") {
			t.Errorf("nft list table inet %s: %v\n%s", fenceTableName(tGroup), err, out)
		}
		t.Logf("nft list table inet %s:\n%s", fenceTableName(tGroup), out)
	}

	// 2. The fence is kernel state: a restarted agent reports it.
	a.Close()
	a = newAgent()
	if st := groupStatus(); !st.DatabaseFenced {
		t.Fatalf("restarted agent does not report the fence: %+v", st)
	}

	// 3. AddVIP (e.g. the failover was aborted) lifts it: the client
	// reconnects and writes again (read-only is off).
	if _, err := a.AddVIP(context.Background(), &vigilv1.VIPRequest{Group: tGroup, Epoch: 1, Observer: "obs1"}); err != nil {
		t.Fatal(err)
	}
	unfenced := time.Now()
	if st := groupStatus(); st.DatabaseFenced {
		t.Fatalf("status after AddVIP: %+v", st)
	}
	if in, err := real.Installed(); err != nil || in {
		t.Fatalf("fence table after AddVIP: %v %v", in, err)
	}
	// Keep the lease quorum meanwhile (obs1 and obs2, every L/4).
	lctx, lcancel := context.WithCancel(context.Background())
	var lastLease sync.Mutex
	var lastLeaseBefore time.Time // start of the older lease call of the latest round
	var lwg sync.WaitGroup
	lwg.Go(func() {
		tk := time.NewTicker(L / 4)
		defer tk.Stop()
		for {
			start := time.Now()
			for _, o := range []string{"obs1", "obs2"} {
				if _, err := a.Lease(context.Background(), &vigilv1.LeaseRequest{Group: tGroup, Epoch: 1, Observer: o, Primary: "db1"}); err != nil {
					t.Errorf("lease: %v", err)
				}
			}
			lastLease.Lock()
			lastLeaseBefore = start
			lastLease.Unlock()
			select {
			case <-lctx.Done():
				return
			case <-tk.C:
			}
		}
	})
	waitFor(t, 10*time.Second, "the client writing again after AddVIP", func() bool { _, last := w.state(); return last.After(unfenced.Add(50 * time.Millisecond)) })

	// 4. Lease quorum lost (the observers stop leasing, as when the host
	// is cut off): the database fence is in force right when the support
	// ends, and the client gets nothing through after that.
	lcancel()
	lwg.Wait()
	lastLease.Lock()
	end := lastLeaseBefore.Add(L) // the support ends by then
	lastLease.Unlock()
	waitFor(t, 10*time.Second, "self-fence", func() bool { _, ok := fence.installed(2); return ok })
	inst, _ = fence.installed(2)
	t.Logf("self-fence: in force at most %s after the support ended (Install began %s after)", inst[1].Sub(end), inst[0].Sub(end))
	// A bound for correctness (the fence follows the support's end, it
	// does not wait for a lease_timeout or a disk), generous for a loaded
	// machine; the speed itself is measured by the stranded-client bench.
	if inst[1].After(end.Add(200 * time.Millisecond)) {
		t.Errorf("database fence in force %s after the support ended", inst[1].Sub(end))
	}
	waitFor(t, 10*time.Second, "the client failing after the self-fence", func() bool { return w.failuresSince(inst[2]) >= 2 })
	checkCut("self-fence", inst)
	if _, last := w.state(); last.After(end.Add(200 * time.Millisecond)) {
		t.Errorf("last acknowledged write %s after the support ended (target: ≤ 200ms)", last.Sub(end))
	}
	if st := groupStatus(); !st.DatabaseFenced || st.Holding {
		t.Fatalf("status after the self-fence: %+v", st)
	}
	// The recovery check runs meanwhile (every L): a primary keeps it.
	if in, err := real.InRecovery(ctx); err != nil || in {
		t.Fatalf("InRecovery on the primary: %v %v", in, err)
	}

	// Removal leaves the other table alone.
	if _, err := real.Remove(); err != nil {
		t.Fatal(err)
	}
	if haveNFT {
		if out, err := nftIn("list", "tables"); err != nil || !strings.Contains(out, "vigil_test_other") || strings.Contains(out, fenceTablePrefix) {
			t.Errorf("nft list tables after removal: %v\n%s", err, out)
		}
	}
}
