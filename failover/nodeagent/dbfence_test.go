package nodeagent

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/vigilha/vigil/failover/nodeagent/nodeagenttest"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

const tDBDesc = "postgres port 5432"

// dbHarness is a harness whose group has a database fence, faked.
type dbHarness struct {
	*harness
	db *nodeagenttest.DatabaseFence
}

func withDBFence(c *Config) {
	c.Groups[0].DatabaseFence = &DatabaseFence{Kind: DatabaseFenceKindPostgres, Port: 5432, AllowFrom: []string{"10.0.0.12", "10.0.0.0/28"}}
}

// newDBHarness is newHarness with a fake database fence (prepared by
// prep before the agent is built, e.g. a fence left by a previous run).
func newDBHarness(t *testing.T, mutate func(*Config), prep func(*nodeagenttest.DatabaseFence)) *dbHarness {
	t.Helper()
	script, marker, exit := fenceScript(t)
	h := &harness{fake: nodeagenttest.New(), clock: newFakeClock(), reg: prometheus.NewRegistry(), marker: marker, exit: exit, dir: t.TempDir()}
	db := nodeagenttest.NewDatabaseFence(tDBDesc)
	db.SetSessions(3)
	if prep != nil {
		prep(db)
	}
	cfg := testConfig(h.dir, []string{script})
	withDBFence(cfg)
	if mutate != nil {
		mutate(cfg)
	}
	var gotCfg DatabaseFence
	before := *cfg.Groups[0].DatabaseFence
	a, err := New(cfg, nil, h.reg, WithAddrs(h.fake), withClock(h.clock.now), withoutStartupFence(),
		WithDatabaseFencer(func(group string, c DatabaseFence) (DatabaseFencer, error) {
			if group != tGroup {
				t.Errorf("database fence built for group %q", group)
			}
			gotCfg = c
			return db, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	if gotCfg.Port != 5432 || gotCfg.Timeout == 0 || gotCfg.Host != DefaultDatabaseFenceHost || gotCfg.User != DefaultDatabaseFenceUser {
		t.Errorf("factory got %+v, want the section with defaults", gotCfg)
	}
	if after := *cfg.Groups[0].DatabaseFence; after.Host != before.Host || after.Timeout != before.Timeout {
		t.Error("New applied defaults to the caller's database_fence section")
	}
	h.a = a
	t.Cleanup(a.Close)
	return &dbHarness{harness: h, db: db}
}

func (h *dbHarness) fence(t *testing.T, epoch uint64) *vigilv1.AgentFenceResponse {
	t.Helper()
	r, err := h.a.Fence(context.Background(), &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: epoch, Observer: "obs2"})
	if err != nil {
		t.Fatalf("Fence(epoch %d): %v", epoch, err)
	}
	return r
}

// fenceWait is fence with wait_sql (a switchover's): the answer carries
// the outcomes of the session termination and the read-only switch.
func (h *dbHarness) fenceWait(t *testing.T, epoch uint64) *vigilv1.AgentFenceResponse {
	t.Helper()
	r, err := h.a.Fence(context.Background(), &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: epoch, Observer: "obs2", WaitSql: true})
	if err != nil {
		t.Fatalf("Fence(epoch %d, wait_sql): %v", epoch, err)
	}
	return r
}

func (h *dbHarness) dbMetric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	l := map[string]string{"group": tGroup}
	for k, v := range labels {
		l[k] = v
	}
	return h.metric(t, name, l)
}

func wantDetail(t *testing.T, detail string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(detail, p) {
			t.Errorf("detail %q does not contain %q", detail, p)
		}
	}
}

func TestFenceConfirmsOnlyWithDatabaseFence(t *testing.T) {
	h := newDBHarness(t, nil, nil)
	h.add(t, 1)
	// Order: VIP removed, then the database fence, then the command.
	h.db.OnInstall = func() {
		if h.holds() {
			t.Error("database fence installed while the VIP was still on the interface")
		}
		if n := len(markerLines(t, h.marker)); n != h.db.Calls("Install") {
			t.Errorf("fence command ran before the database fence (%d runs, %d installs before this one)", n, h.db.Calls("Install"))
		}
	}

	h.db.Fail("Install", errors.New("netlink: operation not permitted"))
	r := h.fence(t, 2)
	if r.Confirmed || !r.TrafficFenced || r.DatabaseFenced || h.holds() {
		t.Fatalf("Fence with a failing database fence: %+v", r)
	}
	wantDetail(t, r.Detail, "VIP 10.0.0.100/32 removed", "database fence (postgres port 5432) NOT in force", "operation not permitted", "fence command succeeded")
	if st := h.status(t); st.DatabaseFenced || st.Fenced || st.DatabaseFence != tDBDesc {
		t.Errorf("status after an unconfirmed database fence: %+v", st)
	}
	if v := h.dbMetric(t, "vigil_agent_database_fence_failures_total", map[string]string{"step": "install"}); v != 1 {
		t.Errorf("install failures = %v", v)
	}

	h.db.Fail("Install", nil)
	r = h.fenceWait(t, 2)
	if !r.Confirmed || !r.TrafficFenced || !r.DatabaseFenced || !h.db.IsInstalled() {
		t.Fatalf("Fence: %+v", r)
	}
	wantDetail(t, r.Detail, "VIP 10.0.0.100/32 not on eth0", "database fence (postgres port 5432) in force", "3 client sessions terminated",
		"database read-only", "fence command succeeded")
	if !h.db.IsReadOnly() {
		t.Error("database not switched read-only")
	}
	if st := h.status(t); !st.DatabaseFenced || !st.Fenced || st.DatabaseFence != tDBDesc {
		t.Errorf("status: %+v", st)
	}
	if v := h.dbMetric(t, "vigil_agent_database_fenced", nil); v != 1 {
		t.Errorf("vigil_agent_database_fenced = %v", v)
	}
	if v := h.dbMetric(t, "vigil_agent_database_fences_total", map[string]string{"trigger": "fence"}); v != 1 {
		t.Errorf("database fences (fence) = %v", v)
	}

	// Sessions that cannot be terminated do not un-confirm the fence.
	h.db.Fail("TerminateSessions", errors.New("connection refused"))
	r = h.fenceWait(t, 2)
	if !r.Confirmed || !r.DatabaseFenced {
		t.Fatalf("Fence with failing session termination: %+v", r)
	}
	wantDetail(t, r.Detail, "terminating client sessions failed: connection refused")
	if v := h.dbMetric(t, "vigil_agent_database_fence_failures_total", map[string]string{"step": "sessions"}); v != 1 {
		t.Errorf("sessions failures = %v", v)
	}
	// Neither does a failing read-only switch.
	h.db.Fail("SetReadOnly", errors.New("could not write postgresql.auto.conf"))
	r = h.fenceWait(t, 2)
	if !r.Confirmed {
		t.Fatalf("Fence with failing read-only: %+v", r)
	}
	wantDetail(t, r.Detail, "read-only failed: could not write")

	// A failing command still un-confirms it, with the database fenced.
	h.db.Fail("SetReadOnly", nil)
	h.db.Fail("TerminateSessions", nil)
	if err := os.WriteFile(h.exit, []byte("3"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = h.fence(t, 2)
	if r.Confirmed || !r.DatabaseFenced || !r.TrafficFenced {
		t.Fatalf("Fence with a failing command: %+v", r)
	}
}

func TestFenceWithoutDatabaseFence(t *testing.T) {
	h := newHarness(t, nil)
	h.add(t, 1)
	r, err := h.a.Fence(context.Background(), &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: 1})
	if err != nil || !r.Confirmed || !r.TrafficFenced || r.DatabaseFenced {
		t.Fatalf("Fence: %+v %v", r, err)
	}
	wantDetail(t, r.Detail, "no database fence configured")
	if st := h.status(t); st.DatabaseFence != "" || st.DatabaseFenced {
		t.Errorf("status: %+v", st)
	}
	lr := h.mustLease(t, "obs1", 1, "db1")
	if lr.DatabaseFence || lr.LeaseTimeoutMs != 1000 {
		t.Errorf("lease response %+v", lr)
	}
}

func TestLeaseResponseReportsDatabaseFence(t *testing.T) {
	h := newDBHarness(t, func(c *Config) { c.LeaseTimeout = Duration(750 * time.Millisecond) }, nil)
	lr := h.mustLease(t, "obs1", 1, "db1")
	if !lr.DatabaseFence || lr.LeaseTimeoutMs != 750 {
		t.Errorf("lease response %+v", lr)
	}
}

// TestFenceNotHeldUpByStalledReadOnly: ALTER SYSTEM writes a file; on a
// stalled disk the read-only switch hangs, and the fence must not.
func TestFenceNotHeldUpByStalledReadOnly(t *testing.T) {
	h := newDBHarness(t, func(c *Config) { c.Groups[0].DatabaseFence.Timeout = Duration(time.Second) }, nil)
	h.db.Stall("SetReadOnly", true)
	start := time.Now()
	r := h.fence(t, 1)
	took := time.Since(start)
	if !r.Confirmed || !r.DatabaseFenced {
		t.Fatalf("Fence: %+v", r)
	}
	if took >= 600*time.Millisecond {
		t.Fatalf("Fence took %s with a stalled read-only switch (timeout 1s)", took)
	}
	wantDetail(t, r.Detail, "read-only not done yet")
	// The switch gives up at its timeout.
	waitFor(t, 5*time.Second, "the stalled read-only switch to time out", func() bool {
		return h.dbMetric(t, "vigil_agent_database_fence_failures_total", map[string]string{"step": "read_only"}) == 1
	})
}

// TestFenceNotHeldUpByHungDatabase: a hung database (SIGSTOP, stalled
// disk) can neither terminate sessions nor switch read-only before the
// timeout; the VIP removal and the verified network fence confirm the
// fence without them, and Fence answers at once, the SQL steps going on
// in the background.
func TestFenceNotHeldUpByHungDatabase(t *testing.T) {
	const timeout = 5 * time.Second
	h := newDBHarness(t, func(c *Config) { c.Groups[0].DatabaseFence.Timeout = Duration(timeout) }, nil)
	h.add(t, 1)
	h.db.Stall("TerminateSessions", true)
	h.db.Stall("SetReadOnly", true)
	start := time.Now()
	r := h.fence(t, 2)
	took := time.Since(start)
	if !r.Confirmed || !r.DatabaseFenced || !r.TrafficFenced || h.holds() || !h.db.IsInstalled() {
		t.Fatalf("Fence with a hung database: %+v", r)
	}
	// A condition, not a benchmark: without waiting for the SQL steps.
	if took >= timeout/2 {
		t.Fatalf("Fence took %s with a hung database (SQL timeout %s)", took, timeout)
	}
	wantDetail(t, r.Detail, "VIP 10.0.0.100/32 removed", "database fence (postgres port 5432) in force", "fence command succeeded",
		"client sessions being terminated in the background", "read-only not done yet")
	if st := h.status(t); !st.DatabaseFenced || !st.Fenced {
		t.Errorf("status after the fence: %+v", st)
	}
	// The termination was started and is still running; the read-only
	// switch waits for it (the termination would end its connection).
	waitFor(t, 5*time.Second, "the session termination started", func() bool { return h.db.Calls("TerminateSessions") == 1 })
	if n := h.db.Calls("SetReadOnly"); n != 0 {
		t.Errorf("read-only switch started %d times while the session termination runs", n)
	}
	if v := h.dbMetric(t, "vigil_agent_database_fence_failures_total", map[string]string{"step": "sessions"}); v != 0 {
		t.Errorf("sessions failures = %v before the timeout", v)
	}
}

// A session termination that fails in the background is logged and
// counted as before, once it times out.
func TestFenceBackgroundSessionsFailureCounted(t *testing.T) {
	h := newDBHarness(t, func(c *Config) { c.Groups[0].DatabaseFence.Timeout = Duration(300 * time.Millisecond) }, nil)
	h.db.Stall("TerminateSessions", true)
	if r := h.fence(t, 1); !r.Confirmed || !strings.Contains(r.Detail, sessionsPending) {
		t.Fatalf("Fence: %+v", r)
	}
	waitFor(t, 5*time.Second, "the stalled session termination to time out", func() bool {
		return h.dbMetric(t, "vigil_agent_database_fence_failures_total", map[string]string{"step": "sessions"}) == 1
	})
}

// The read-only switches wait for the session termination in flight (it
// ends every client backend, their connections included): an AddVIP right
// after a Fence whose termination still runs lifts read-only after it,
// and the Fence's own switch, superseded, never runs.
func TestReadOnlySwitchWaitsForSessionTermination(t *testing.T) {
	h := newDBHarness(t, func(c *Config) { c.Groups[0].DatabaseFence.Timeout = Duration(300 * time.Millisecond) }, nil)
	h.add(t, 1)
	h.db.Stall("TerminateSessions", true)
	if r := h.fence(t, 2); !r.Confirmed {
		t.Fatalf("Fence: %+v", r)
	}
	h.add(t, 2) // e.g. the failover was aborted: this host is the primary again
	log := strings.Join(h.db.Log(), ", ")
	if !strings.HasSuffix(log, "TerminateSessions error, ResetReadOnly ok") || h.db.Calls("SetReadOnly") != 0 {
		t.Fatalf("fence calls: %s; want the reset after the termination, and no read-only switch", log)
	}
	if h.db.IsReadOnly() || h.db.IsInstalled() {
		t.Fatalf("after AddVIP: read-only %v, fence installed %v", h.db.IsReadOnly(), h.db.IsInstalled())
	}
}

// With wait_sql (a switchover, which reads the final WAL position next)
// Fence answers only once the SQL steps finished or timed out, with their
// outcomes.
func TestFenceWaitSQLWaitsForSQLSteps(t *testing.T) {
	const timeout = 500 * time.Millisecond
	h := newDBHarness(t, func(c *Config) { c.Groups[0].DatabaseFence.Timeout = Duration(timeout) }, nil)
	h.add(t, 1)
	r := h.fenceWait(t, 2)
	if !r.Confirmed {
		t.Fatalf("Fence: %+v", r)
	}
	wantDetail(t, r.Detail, "3 client sessions terminated", "database read-only")
	if !h.db.IsReadOnly() || h.db.Calls("TerminateSessions") != 1 {
		t.Fatalf("answered before the SQL steps were done: read-only %v, sessions %d", h.db.IsReadOnly(), h.db.Calls("TerminateSessions"))
	}

	h.db.Stall("TerminateSessions", true)
	h.db.Stall("SetReadOnly", true)
	start := time.Now()
	r = h.fenceWait(t, 2)
	took := time.Since(start)
	if !r.Confirmed || !r.DatabaseFenced {
		t.Fatalf("Fence: %+v", r)
	}
	if took < timeout*9/10 {
		t.Fatalf("Fence with wait_sql answered after %s, before the stalled SQL steps timed out (%s)", took, timeout)
	}
	wantDetail(t, r.Detail, "terminating client sessions failed", "read-only failed", "deadline exceeded")
}

func TestSelfFenceOnLeaseLossInstallsDatabaseFenceWithoutVIP(t *testing.T) {
	h := newDBHarness(t, nil, nil)
	// Leased as the primary, but the VIP was never added (e.g. HAProxy
	// routes by the observers' /primary endpoint).
	h.mustLease(t, "obs1", 1, "db1")
	h.mustLease(t, "obs2", 1, "db1")
	h.clock.advance(999 * time.Millisecond)
	h.reconcile()
	if h.db.Calls("Install") != 0 {
		t.Fatal("fenced while the leases were current")
	}
	h.clock.advance(time.Millisecond)
	h.reconcile()
	if !h.db.IsInstalled() || h.db.Calls("Install") != 1 {
		t.Fatalf("database fence not installed after the lease quorum expired (installs: %d)", h.db.Calls("Install"))
	}
	if h.fake.Calls("Del") != 0 || h.fake.Calls("Add") != 0 {
		t.Error("touched the VIP that was not held")
	}
	// Both in the background, never waited for.
	waitFor(t, 5*time.Second, "sessions terminated", func() bool { return h.db.Calls("TerminateSessions") == 1 })
	waitFor(t, 5*time.Second, "read-only", h.db.IsReadOnly)
	if lines := markerLines(t, h.marker); len(lines) != 1 || lines[0] != "self_fence group=pg-main epoch=1 member=db1" {
		t.Fatalf("fence command runs: %q", lines)
	}
	st := h.status(t)
	if !st.DatabaseFenced || !st.Fenced || st.Holding {
		t.Errorf("status after the self-fence: %+v", st)
	}
	if v := h.dbMetric(t, "vigil_agent_database_fences_total", map[string]string{"trigger": "self_fence"}); v != 1 {
		t.Errorf("database fences (self_fence) = %v", v)
	}
	if v := h.dbMetric(t, "vigil_agent_self_fences_total", nil); v != 1 {
		t.Errorf("self fences = %v", v)
	}
	// The episode is over: nothing more happens on later ticks.
	h.clock.advance(time.Minute)
	h.reconcile()
	if h.db.Calls("Install") != 1 || h.db.Calls("TerminateSessions") != 1 || len(markerLines(t, h.marker)) != 1 {
		t.Error("the self-fence was repeated")
	}
	// Leases do not lift the fence.
	for _, o := range []string{"obs1", "obs2", "obs3"} {
		h.mustLease(t, o, 1, "db1")
	}
	h.reconcile()
	if !h.db.IsInstalled() || h.db.Calls("Remove") != 0 {
		t.Fatal("leases lifted the database fence")
	}
	// But losing that support again is a new episode.
	h.clock.advance(time.Second)
	h.reconcile()
	if h.db.Calls("Install") != 2 || len(markerLines(t, h.marker)) != 2 {
		t.Errorf("second lease loss: %d installs, %d command runs", h.db.Calls("Install"), len(markerLines(t, h.marker)))
	}
}

func TestSelfFenceWithVIPRetriesDatabaseFence(t *testing.T) {
	h := newDBHarness(t, nil, nil)
	h.add(t, 1)
	h.db.Fail("Install", errors.New("netlink: busy"))
	h.clock.advance(1001 * time.Millisecond)
	h.reconcile()
	if h.holds() {
		t.Fatal("VIP kept")
	}
	if st := h.status(t); st.Fenced || st.DatabaseFenced {
		t.Fatalf("self-fence complete although the database fence failed: %+v", st)
	}
	// Sessions and read-only are tried once, right away, even so.
	waitFor(t, 5*time.Second, "read-only", h.db.IsReadOnly)
	waitFor(t, 5*time.Second, "sessions terminated", func() bool { return h.db.Calls("TerminateSessions") == 1 })
	h.db.Fail("Install", nil)
	h.reconcile()
	if !h.db.IsInstalled() || !h.status(t).Fenced || !h.status(t).DatabaseFenced {
		t.Fatal("database fence not retried")
	}
	if h.db.Calls("TerminateSessions") != 1 || h.db.Calls("SetReadOnly") != 1 {
		t.Errorf("sessions %d, read-only %d times", h.db.Calls("TerminateSessions"), h.db.Calls("SetReadOnly"))
	}
}

func TestStandbyAgentNeverFences(t *testing.T) {
	h := newDBHarness(t, nil, nil)
	for e := uint64(1); e <= 3; e++ {
		for _, o := range []string{"obs1", "obs2", "obs3"} {
			h.mustLease(t, o, e, "db2")
		}
		h.clock.advance(300 * time.Millisecond)
		h.reconcile()
	}
	// One observer naming this member is not support as the primary.
	h.mustLease(t, "obs1", 3, "db1")
	h.reconcile()
	h.clock.advance(time.Hour)
	h.reconcile()
	h.mustLease(t, "obs2", 4, "db3")
	h.reconcile()
	if n := h.db.Calls("Install") + h.db.Calls("TerminateSessions") + h.db.Calls("SetReadOnly"); n != 0 {
		t.Fatalf("a standby's agent fenced: %v", h.db.Log())
	}
	if len(markerLines(t, h.marker)) != 0 || h.dbMetric(t, "vigil_agent_self_fences_total", nil) != 0 {
		t.Fatal("a standby's agent self-fenced")
	}
	if st := h.status(t); st.DatabaseFenced || st.Fenced {
		t.Errorf("status %+v", st)
	}
}

func TestAddVIPLiftsDatabaseFence(t *testing.T) {
	h := newDBHarness(t, nil, nil)
	h.add(t, 1)
	if h.db.Calls("ResetReadOnly") != 0 {
		t.Error("read-only reset although nothing was fenced")
	}
	if r := h.fence(t, 2); !r.Confirmed {
		t.Fatalf("Fence: %+v", r)
	}
	waitFor(t, 5*time.Second, "read-only", h.db.IsReadOnly)

	// The table cannot be removed: AddVIP fails and adds nothing.
	h.db.Fail("Remove", errors.New("netlink: busy"))
	_, err := h.a.AddVIP(context.Background(), &vigilv1.VIPRequest{Group: tGroup, Epoch: 2, Observer: "obs1"})
	wantCode(t, err, codes.Internal, "cannot lift the database fence", "busy")
	if h.holds() || !h.status(t).DatabaseFenced {
		t.Fatal("AddVIP acted although the fence could not be lifted")
	}

	h.db.Fail("Remove", nil)
	h.add(t, 2) // e.g. the failover was aborted: this host is the primary again
	if h.db.IsInstalled() || h.db.IsReadOnly() || !h.holds() {
		t.Fatalf("after AddVIP: installed=%v read-only=%v holds=%v", h.db.IsInstalled(), h.db.IsReadOnly(), h.holds())
	}
	if st := h.status(t); st.DatabaseFenced || st.Fenced {
		t.Errorf("status: %+v", st)
	}
	if v := h.dbMetric(t, "vigil_agent_database_fenced", nil); v != 0 {
		t.Errorf("vigil_agent_database_fenced = %v", v)
	}
	log := strings.Join(h.db.Log(), ", ")
	if !strings.HasSuffix(log, "Remove ok, ResetReadOnly ok") {
		t.Errorf("fence calls: %s", log)
	}
	// The grant counts as support as the primary: losing it self-fences.
	h.clock.advance(1001 * time.Millisecond)
	h.reconcile()
	if !h.db.IsInstalled() || h.holds() {
		t.Fatal("no self-fence after AddVIP's grant expired")
	}
}

func TestRecoveryCheckLiftsDatabaseFence(t *testing.T) {
	h := newDBHarness(t, func(c *Config) { c.Groups[0].DatabaseFence.Timeout = Duration(200 * time.Millisecond) }, nil)
	g := h.a.groups[tGroup]
	if r := h.fence(t, 1); !r.Confirmed {
		t.Fatalf("Fence: %+v", r)
	}
	// A primary, or a database that cannot be reached: the fence stays.
	h.a.checkRecovery(g)
	h.db.Fail("InRecovery", errors.New("connection refused"))
	h.a.checkRecovery(g)
	h.db.Fail("InRecovery", nil)
	h.db.Stall("InRecovery", true)
	h.a.checkRecovery(g) // bounded by the timeout
	h.db.Stall("InRecovery", false)
	if !h.db.IsInstalled() || !h.status(t).DatabaseFenced || h.db.Calls("InRecovery") != 3 {
		t.Fatalf("fence lifted without a standby (%v)", h.db.Log())
	}
	// The old primary was rejoined as a standby: the fence goes.
	h.db.SetInRecovery(true)
	h.a.checkRecovery(g)
	if h.db.IsInstalled() || h.status(t).DatabaseFenced {
		t.Fatal("fence kept on a standby")
	}
	waitFor(t, 5*time.Second, "read-only reset", func() bool { return h.db.Calls("ResetReadOnly") == 1 && !h.db.IsReadOnly() })
	// Nothing to do once lifted.
	h.a.checkRecovery(g)
	if h.db.Calls("InRecovery") != 4 {
		t.Errorf("InRecovery calls %d", h.db.Calls("InRecovery"))
	}
}

func TestRecoveryCheckNotWhileHoldingVIP(t *testing.T) {
	h := newDBHarness(t, nil, func(db *nodeagenttest.DatabaseFence) { db.SetInstalled(true); db.SetInRecovery(true) })
	h.fake.Set(tIface, tVIP, true)
	g := h.a.groups[tGroup]
	g.mu.Lock()
	g.holding = true
	g.mu.Unlock()
	h.a.maybeCheckRecovery(g)
	h.a.checkRecovery(g)
	if !h.db.IsInstalled() {
		t.Fatal("fence lifted while the host holds the VIP")
	}
}

// TestDatabaseFenceFoundAtStart: the fence is kernel state; an agent
// restarted while it is in force reports it and keeps it.
func TestDatabaseFenceFoundAtStart(t *testing.T) {
	h := newDBHarness(t, nil, func(db *nodeagenttest.DatabaseFence) { db.SetInstalled(true) })
	if st := h.status(t); !st.DatabaseFenced || st.DatabaseFence != tDBDesc {
		t.Fatalf("status at start: %+v", st)
	}
	if v := h.dbMetric(t, "vigil_agent_database_fenced", nil); v != 1 {
		t.Errorf("vigil_agent_database_fenced = %v", v)
	}
	h.clock.advance(time.Hour)
	h.reconcile()
	h.a.checkRecovery(h.a.groups[tGroup]) // a primary: kept
	if !h.db.IsInstalled() || h.db.Calls("Remove") != 0 || h.db.Calls("Install") != 0 {
		t.Fatalf("fence changed: %v", h.db.Log())
	}
}

func TestNewFailsWhenDatabaseFenceUnusable(t *testing.T) {
	cfg := testConfig(t.TempDir(), nil)
	withDBFence(cfg)
	db := nodeagenttest.NewDatabaseFence(tDBDesc)
	db.Fail("Installed", errors.New("netlink: operation not permitted"))
	_, err := New(cfg, nil, nil, WithAddrs(nodeagenttest.New()),
		WithDatabaseFencer(func(string, DatabaseFence) (DatabaseFencer, error) { return db, nil }))
	if err == nil || !strings.Contains(err.Error(), "operation not permitted") || !strings.Contains(err.Error(), `group "pg-main"`) {
		t.Fatalf("New: %v", err)
	}
	_, err = New(cfg, nil, nil, WithAddrs(nodeagenttest.New()),
		WithDatabaseFencer(func(string, DatabaseFence) (DatabaseFencer, error) { return nil, errors.New("no password") }))
	if err == nil || !strings.Contains(err.Error(), "no password") {
		t.Fatalf("New: %v", err)
	}
}

// TestLoopFencesDatabaseWhenSupportExpires runs the real loop (real
// clock): a host leased as the primary, without the VIP, gets no more
// leases; the database fence must be in force right when the support
// ends, and the recovery check later lifts it once the database is a
// standby.
func TestLoopFencesDatabaseWhenSupportExpires(t *testing.T) {
	const L = 200 * time.Millisecond
	db := nodeagenttest.NewDatabaseFence(tDBDesc)
	cfg := testConfig(t.TempDir(), nil)
	cfg.LeaseTimeout = Duration(L)
	withDBFence(cfg)
	a, err := New(cfg, nil, nil, WithAddrs(nodeagenttest.New()), withoutStartupFence(),
		WithDatabaseFencer(func(string, DatabaseFence) (DatabaseFencer, error) { return db, nil }))
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	defer a.Close()
	lease := func(obs string) {
		t.Helper()
		if _, err := a.Lease(context.Background(), &vigilv1.LeaseRequest{Group: tGroup, Epoch: 1, Observer: obs, Primary: "db1"}); err != nil {
			t.Fatal(err)
		}
	}
	// With a quorum of 2, the support ends L after the older of the two
	// leases was received: between before and after its call.
	before := time.Now()
	lease("obs1")
	after := time.Now()
	lease("obs2")
	waitFor(t, 5*time.Second, "database fence installed by the loop", db.IsInstalled)
	at := db.InstallTimes()[0]
	t.Logf("database fence installed %s to %s after the support ended (lease_timeout %s)", at.Sub(after.Add(L)), at.Sub(before.Add(L)), L)
	if at.Before(before.Add(L)) {
		t.Fatalf("database fence installed %s before the support ended", before.Add(L).Sub(at))
	}
	if late := at.Sub(after.Add(L)); late > 100*time.Millisecond {
		t.Fatalf("database fence installed %s after the support ended", late)
	}
	// The old primary becomes a standby: lifted within a lease_timeout or two.
	db.SetInRecovery(true)
	waitFor(t, 5*time.Second, "fence lifted by the recovery check", func() bool { return !db.IsInstalled() })
}

func TestHigherEpochLeaseFencesDatabaseAtOnce(t *testing.T) {
	h := newDBHarness(t, nil, nil)
	h.mustLease(t, "obs1", 4, "db1")
	h.mustLease(t, "obs2", 4, "db1")
	if h.db.Calls("Install") != 0 {
		t.Fatal("fenced while supported")
	}
	// A failover away from this host (no clock advance: the leases are
	// fresh, but of an older epoch now).
	r := h.mustLease(t, "obs3", 5, "db2")
	if !h.db.IsInstalled() || r.Holding || !r.DatabaseFence {
		t.Fatalf("a higher-epoch lease naming db2 did not fence the database at once: %+v installs=%d", r, h.db.Calls("Install"))
	}
	if lines := markerLines(t, h.marker); len(lines) != 1 || lines[0] != "self_fence group=pg-main epoch=5 member=db1" {
		t.Fatalf("fence command: %q", lines)
	}
}

// startAgentWith starts a real-loop agent on db with addrs (a fake
// interface, maybe holding the VIP already).
func startAgentWith(t *testing.T, db *nodeagenttest.DatabaseFence, addrs *nodeagenttest.Addrs) (*Agent, *harness) {
	t.Helper()
	cfg := testConfig(t.TempDir(), nil)
	cfg.LeaseTimeout = Duration(200 * time.Millisecond)
	withDBFence(cfg)
	reg := prometheus.NewRegistry()
	a, err := New(cfg, nil, reg, WithAddrs(addrs),
		WithDatabaseFencer(func(string, DatabaseFence) (DatabaseFencer, error) { return db, nil }))
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	t.Cleanup(a.Close)
	return a, &harness{a: a, reg: reg}
}

// TestStartupFenceOnReturningPrimary: an agent that starts without the
// VIP next to a database answering as a primary (a host back from a power
// loss, maybe after another member was promoted) fences it before it
// serves anything, keeps it fenced while the database stays a primary,
// and the leader's AddVIP lifts it.
func TestStartupFenceOnReturningPrimary(t *testing.T) {
	db := nodeagenttest.NewDatabaseFence(tDBDesc)
	a, h := startAgentWith(t, db, nodeagenttest.New())
	if !db.IsInstalled() {
		t.Fatal("a database answering as a primary, no VIP: not fenced at start")
	}
	if v := h.metric(t, "vigil_agent_database_fences_total", map[string]string{"group": tGroup, "trigger": "startup"}); v != 1 {
		t.Errorf("startup fences counted %v, want 1", v)
	}
	// Several recovery checks later it is still a primary: still fenced.
	waitFor(t, 5*time.Second, "recovery checks", func() bool { return db.Calls("InRecovery") >= 3 })
	if !db.IsInstalled() {
		t.Fatal("the fence of a database still answering as a primary was lifted")
	}
	if _, err := a.AddVIP(context.Background(), &vigilv1.VIPRequest{Group: tGroup, Epoch: 1, Observer: "obs1"}); err != nil {
		t.Fatalf("AddVIP: %v", err)
	}
	if db.IsInstalled() {
		t.Fatal("AddVIP left the startup fence in force")
	}
}

// TestStartupFenceUnreachableDatabaseLiftedAsStandby: a database that
// does not answer at start (PostgreSQL still starting) is fenced; once it
// answers as a standby the recovery check lifts the fence.
func TestStartupFenceUnreachableDatabaseLiftedAsStandby(t *testing.T) {
	db := nodeagenttest.NewDatabaseFence(tDBDesc)
	db.Fail("InRecovery", errors.New("connection refused"))
	startAgentWith(t, db, nodeagenttest.New())
	if !db.IsInstalled() {
		t.Fatal("an unreachable database, no VIP: not fenced at start")
	}
	db.Fail("InRecovery", nil)
	db.SetInRecovery(true)
	waitFor(t, 5*time.Second, "the recovery check lifts the startup fence", func() bool { return !db.IsInstalled() })
}

// TestNoStartupFenceOnStandbyOrWithVIP: a standby's database is never
// fenced at start (its readers keep their replica), nor is a primary
// whose VIP is already on the interface (the agent was restarted on the
// primary: the startup grace keeps it, leases take over).
func TestNoStartupFenceOnStandbyOrWithVIP(t *testing.T) {
	db := nodeagenttest.NewDatabaseFence(tDBDesc)
	db.SetInRecovery(true)
	startAgentWith(t, db, nodeagenttest.New())
	if db.Calls("Install") != 0 {
		t.Fatal("a standby's database was fenced at start")
	}

	db2 := nodeagenttest.NewDatabaseFence(tDBDesc)
	addrs := nodeagenttest.New()
	addrs.Set(tIface, tVIP, true)
	startAgentWith(t, db2, addrs)
	if db2.Calls("Install") != 0 {
		t.Fatal("the primary's database (VIP already here) was fenced at start")
	}
}
