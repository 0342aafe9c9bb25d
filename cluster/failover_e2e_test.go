package cluster_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilha/vigil/cluster"
	"github.com/vigilha/vigil/cluster/clustertest"
	"github.com/vigilha/vigil/deploy/lab/pglab"
	"github.com/vigilha/vigil/fsm"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// labOptions shape a failover lab.
type labOptions struct {
	standbys  int
	priority  map[string]int // member -> priority (default 100)
	failover  string         // YAML of the group's failover section (indented 4)
	cooldown  string
	sync      bool   // synchronous_standby_names = ANY 1 (…)
	downAfter string // default 1s
	customize func(i int, o *cluster.Options)
}

// failoverLab starts a real primary with standbys (members pg0, pg1, …,
// named like the servers' application_name) and three observers.
func failoverLab(t testing.TB, lo labOptions) (*pglab.Cluster, *clustertest.Cluster) {
	t.Helper()
	if lo.standbys == 0 {
		lo.standbys = 2
	}
	if lo.cooldown == "" {
		lo.cooldown = "10m"
	}
	if lo.downAfter == "" {
		lo.downAfter = "1s"
	}
	pg := pglab.StartForTest(t, pglab.Options{Standbys: lo.standbys, Sync: lo.sync})
	var b strings.Builder
	fmt.Fprintf(&b, `
  - name: pg-main
    kind: postgres
    primary: pg0
    down_after: %s
    cooldown: %s
    max_lag: 1MiB
    probe: {type: postgres, interval: 300ms, timeout: 250ms}
    failover:
      step_timeout: 10s
      veto_backoff: 1m
%s
    members:`, lo.downAfter, lo.cooldown, lo.failover)
	for _, n := range pg.Nodes {
		prio, ok := lo.priority[n.Name]
		if !ok {
			prio = 100
		}
		fmt.Fprintf(&b, "\n      - {name: %s, address: %q, priority: %d}", n.Name, n.Addr(), prio)
	}
	b.WriteString("\n")
	c := clustertest.Start(t, clustertest.Options{ConfigOptions: clustertest.ConfigOptions{Groups: b.String()}, Customize: lo.customize})
	c.WaitForLeader(waitLong)
	clustertest.WaitFor(t, 60*time.Second, "every member up on all three observers", func() (bool, string) {
		for _, i := range c.Running() {
			hs := c.Nodes[i].Obs.Monitor().Health("pg-main")
			if len(hs) != len(pg.Nodes) {
				return false, fmt.Sprintf("%s judges %d members", c.Nodes[i].ID, len(hs))
			}
			for _, h := range hs {
				if h.GetUpVotes() != 3 {
					return false, c.Nodes[i].ID + ": " + h.GetMember() + " " + h.GetSummary()
				}
			}
		}
		return true, ""
	})
	return pg, c
}

// group returns the group as the given observer (any running when -1) holds it.
func group(c *clustertest.Cluster) *vigilv1.Group {
	g, _ := c.Nodes[c.Running()[0]].Obs.FSM().Group("pg-main")
	return g
}

func node(pg *pglab.Cluster, name string) *pglab.Node {
	for _, n := range pg.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// query runs one statement on a node and returns the first column.
func query(t testing.TB, n *pglab.Node, sql string, args ...any) string {
	t.Helper()
	out, err := tryQuery(n, sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func tryQuery(n *pglab.Node, sql string, args ...any) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := n.Connect(ctx)
	if err != nil {
		return "", fmt.Errorf("connect %s: %w", n.Name, err)
	}
	defer conn.Close(context.Background())
	var out any
	if err := conn.QueryRow(ctx, sql, args...).Scan(&out); err != nil {
		return "", fmt.Errorf("%s on %s: %w", sql, n.Name, err)
	}
	return fmt.Sprint(out), nil
}

// exec runs a statement that returns no rows.
func execSQL(t testing.TB, n *pglab.Node, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := n.Connect(ctx)
	if err != nil {
		t.Fatalf("connect %s: %v", n.Name, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s on %s: %v", sql, n.Name, err)
	}
}

func waitFailovers(t testing.TB, c *clustertest.Cluster, n int, outcome string) *vigilv1.Failover {
	t.Helper()
	var f *vigilv1.Failover
	clustertest.WaitFor(t, 60*time.Second, fmt.Sprintf("%d finished failover(s), last %s", n, outcome), func() (bool, string) {
		g := group(c)
		fs := g.GetFailovers()
		if len(fs) < n {
			return false, fmt.Sprintf("%d finished, active %v, controller: %s", len(fs), g.GetActiveFailover(), leaderStatus(c))
		}
		f = fs[n-1]
		return f.GetOutcome() == outcome, fmt.Sprintf("outcome %s: %s", f.GetOutcome(), f.GetOutcomeDetail())
	})
	return f
}

func leaderStatus(c *clustertest.Cluster) string {
	for _, i := range c.Running() {
		if c.Nodes[i].Obs.IsLeader() {
			return c.Nodes[i].Obs.Controller().Status("pg-main")
		}
	}
	return "(no leader)"
}

// assertFollows checks standby streams from primary and replays its writes.
func assertFollows(t testing.TB, primary, standby *pglab.Node) {
	t.Helper()
	clustertest.WaitFor(t, 30*time.Second, standby.Name+" streaming from "+primary.Name, func() (bool, string) {
		port, err := tryQuery(standby, "SELECT coalesce((SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'), 0)")
		return err == nil && port == fmt.Sprint(primary.Port), fmt.Sprintf("sender_port %s, err %v", port, err)
	})
	marker := fmt.Sprint(time.Now().UnixNano())
	execSQL(t, primary, "CREATE TABLE IF NOT EXISTS follow_check (v text)")
	query(t, primary, "INSERT INTO follow_check VALUES ($1) RETURNING v", marker)
	clustertest.WaitFor(t, 30*time.Second, "write on "+primary.Name+" replayed on "+standby.Name, func() (bool, string) {
		n, err := tryQuery(standby, "SELECT count(*) FROM follow_check WHERE v = $1", marker)
		return err == nil && n == "1", fmt.Sprintf("rows %s, err %v", n, err)
	})
}

func assertOnePrimary(t testing.TB, pg *pglab.Cluster, want string) {
	t.Helper()
	for _, n := range pg.Nodes {
		if !n.Running() {
			continue
		}
		rec := query(t, n, "SELECT pg_is_in_recovery()")
		if (n.Name == want) != (rec == "false") {
			t.Fatalf("%s: in recovery = %s; want exactly %s as the only primary", n.Name, rec, want)
		}
	}
}

// assertOneWritable checks that only want accepts a write transaction.
func assertOneWritable(t testing.TB, pg *pglab.Cluster, want string) {
	t.Helper()
	for _, n := range pg.Nodes {
		if !n.Running() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := n.Connect(ctx)
		if err != nil {
			cancel()
			t.Fatalf("connect %s: %v", n.Name, err)
		}
		// DDL is refused both in recovery and in a read-only transaction.
		tbl := fmt.Sprintf("write_check_%d", time.Now().UnixNano())
		_, err = conn.Exec(ctx, "CREATE TABLE "+tbl+" (x int)")
		if err == nil {
			_, _ = conn.Exec(ctx, "DROP TABLE "+tbl)
		}
		conn.Close(context.Background())
		cancel()
		if (err == nil) != (n.Name == want) {
			t.Fatalf("%s: write transaction err = %v; want only %s writable", n.Name, err, want)
		}
	}
}

// roleCode asks observer i's HTTP role endpoint.
func roleCode(t testing.TB, c *clustertest.Cluster, i int, path string) int {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + c.Nodes[i].Obs.HTTPAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitRoles waits until every running observer answers each path with its code.
func waitRoles(t testing.TB, c *clustertest.Cluster, want map[string]int) {
	t.Helper()
	clustertest.WaitFor(t, waitLong, fmt.Sprint("role endpoints ", want), func() (bool, string) {
		for _, i := range c.Running() {
			for path, code := range want {
				if got := roleCode(t, c, i, path); got != code {
					return false, fmt.Sprintf("%s: %s = %d", c.Nodes[i].ID, path, got)
				}
			}
		}
		return true, ""
	})
}

func TestFailoverKillPrimary(t *testing.T) {
	t.Parallel()
	pg, c := failoverLab(t, labOptions{})
	waitRoles(t, c, map[string]int{"/primary/pg-main/pg0": 200, "/primary/pg-main/pg1": 503, "/replica/pg-main/pg1": 200,
		"/replica/pg-main/pg0": 503, "/primary/nope/pg0": 404})
	execSQL(t, pg.Primary(), "CREATE TABLE t (id int)")
	if err := pg.Primary().Kill(); err != nil {
		t.Fatal(err)
	}
	f := waitFailovers(t, c, 1, fsm.OutcomeCompleted)
	g := group(c)
	if g.GetEpoch() != 1 || f.GetEpoch() != 1 || g.GetPrimary() != f.GetNewPrimary() || f.GetOldPrimary() != "pg0" || f.GetKind() != fsm.KindFailover {
		t.Fatalf("group after failover: epoch %d primary %s, failover %v", g.GetEpoch(), g.GetPrimary(), f)
	}
	var steps []string
	for _, s := range f.GetSteps() {
		steps = append(steps, s.GetName())
	}
	if strings.Join(steps, ",") != strings.Join(fsm.StepOrder, ",") {
		t.Fatalf("steps = %v", steps)
	}
	if !strings.Contains(f.GetSteps()[0].GetDetail(), "refused") {
		t.Fatalf("fence detail = %q, want confirmation by refused connections", f.GetSteps()[0].GetDetail())
	}
	newP := node(pg, f.GetNewPrimary())
	other := pg.Nodes[1]
	if other == newP {
		other = pg.Nodes[2]
	}
	assertOnePrimary(t, pg, newP.Name)
	assertFollows(t, newP, other)
	query(t, newP, "INSERT INTO t VALUES (1) RETURNING id")
	waitRoles(t, c, map[string]int{"/primary/pg-main/" + newP.Name: 200, "/primary/pg-main/pg0": 503, "/replica/pg-main/" + other.Name: 200})
	// Every observer serves the same outcome.
	c.WaitForApplied(waitLong, c.Nodes[c.Running()[0]].Obs.FSM().AppliedIndex())
	for _, i := range c.Running() {
		gi, _ := c.Nodes[i].Obs.FSM().Group("pg-main")
		if gi.GetPrimary() != newP.Name || gi.GetEpoch() != 1 {
			t.Fatalf("%s: primary %s epoch %d", c.Nodes[i].ID, gi.GetPrimary(), gi.GetEpoch())
		}
	}
}

func TestFailoverLeaderKilledMidFailover(t *testing.T) {
	t.Parallel()
	var paused atomic.Bool
	pausedAt := make(chan int, 1)
	pg, c := failoverLab(t, labOptions{customize: func(i int, o *cluster.Options) {
		o.AfterFailoverStep = func(ctx context.Context, group string, epoch uint64, step string) {
			// The first leader to commit "fenced" stops right there, as if
			// it crashed, until the test kills it.
			if step == fsm.StepFenced && paused.CompareAndSwap(false, true) {
				pausedAt <- i
				<-ctx.Done()
			}
		}
	}})
	if err := pg.Primary().Kill(); err != nil {
		t.Fatal(err)
	}
	var first int
	select {
	case first = <-pausedAt:
	case <-time.After(60 * time.Second):
		t.Fatalf("no leader reached the fenced step; controller: %s", leaderStatus(c))
	}
	c.StopNode(first)
	f := waitFailovers(t, c, 1, fsm.OutcomeCompleted)
	g := group(c)
	if g.GetEpoch() != 1 || len(g.GetFailovers()) != 1 {
		t.Fatalf("a second failover was started: epoch %d, failovers %d", g.GetEpoch(), len(g.GetFailovers()))
	}
	fencedBy, promotedBy := f.GetSteps()[0].GetObserver(), f.GetSteps()[1].GetObserver()
	if fencedBy != c.Nodes[first].ID || promotedBy == fencedBy {
		t.Fatalf("fenced by %s, promoted by %s: want the stopped leader %s then another", fencedBy, promotedBy, c.Nodes[first].ID)
	}
	assertOnePrimary(t, pg, f.GetNewPrimary())
	if tl := query(t, node(pg, f.GetNewPrimary()), "SELECT timeline_id FROM pg_control_checkpoint()"); tl == "3" {
		t.Fatalf("new primary on timeline %s: promoted twice", tl)
	}
}

func TestFailoverSkipsLaggingStandbyAndPriorityZero(t *testing.T) {
	t.Parallel()
	pg, c := failoverLab(t, labOptions{priority: map[string]int{"pg2": 0}})
	// pg1 stops replaying: it receives WAL but falls behind by > max_lag.
	query(t, pg.Nodes[1], "SELECT pg_wal_replay_pause()::text")
	execSQL(t, pg.Primary(), "CREATE TABLE bulk AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")
	clustertest.WaitFor(t, waitLong, "pg1 seen lagging", func() (bool, string) {
		for _, h := range c.Nodes[0].Obs.Monitor().Health("pg-main") {
			if h.GetMember() == "pg1" {
				for _, v := range h.GetVotes() {
					if v.GetLagBytes() > 1<<20 {
						return true, ""
					}
				}
				return false, fmt.Sprint(h.GetVotes())
			}
		}
		return false, "no pg1"
	})
	if err := pg.Primary().Kill(); err != nil {
		t.Fatal(err)
	}
	clustertest.WaitFor(t, waitLong, "leader to refuse both standbys", func() (bool, string) {
		s := leaderStatus(c)
		return strings.Contains(s, "pg1: lag") && strings.Contains(s, "pg2: priority 0"), s
	})
	if g := group(c); g.GetEpoch() != 0 || g.GetActiveFailover() != nil {
		t.Fatalf("failover started without an eligible candidate: %v", g)
	}
	// pg1 catches up: now it is eligible, and it is the one promoted.
	query(t, pg.Nodes[1], "SELECT pg_wal_replay_resume()::text")
	f := waitFailovers(t, c, 1, fsm.OutcomeCompleted)
	if f.GetNewPrimary() != "pg1" {
		t.Fatalf("promoted %s; priority 0 must never be chosen", f.GetNewPrimary())
	}
	assertOnePrimary(t, pg, "pg1")
}

func TestFailoverPausedThenResumed(t *testing.T) {
	t.Parallel()
	pg, c := failoverLab(t, labOptions{})
	leader := c.WaitForLeader(waitLong)
	if _, err := c.Nodes[leader].Obs.Propose(context.Background(), pauseCmd("pg-main", "maintenance")); err != nil {
		t.Fatal(err)
	}
	if err := pg.Primary().Kill(); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, "pg0", "odown", waitLong)
	clustertest.WaitFor(t, waitLong, "controller to report the pause", func() (bool, string) {
		s := leaderStatus(c)
		return strings.HasPrefix(s, "paused"), s
	})
	if g := group(c); g.GetEpoch() != 0 {
		t.Fatalf("paused group failed over: %v", g)
	}
	leader = c.WaitForLeader(waitLong)
	if _, err := c.Nodes[leader].Obs.Propose(context.Background(), &vigilv1.Command{Actor: "test",
		Cmd: &vigilv1.Command_SetPaused{SetPaused: &vigilv1.SetPaused{Group: "pg-main", Paused: false}}}); err != nil {
		t.Fatal(err)
	}
	f := waitFailovers(t, c, 1, fsm.OutcomeCompleted)
	assertOnePrimary(t, pg, f.GetNewPrimary())
}

func TestFailoverCooldownStopsFlapping(t *testing.T) {
	t.Parallel()
	pg, c := failoverLab(t, labOptions{})
	if err := pg.Primary().Kill(); err != nil {
		t.Fatal(err)
	}
	f := waitFailovers(t, c, 1, fsm.OutcomeCompleted)
	// The new primary dies too, soon after: cooldown holds.
	if err := node(pg, f.GetNewPrimary()).Kill(); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, f.GetNewPrimary(), "odown", waitLong)
	clustertest.WaitFor(t, waitLong, "controller to report the cooldown", func() (bool, string) {
		s := leaderStatus(c)
		return strings.HasPrefix(s, "cooldown"), s
	})
	if g := group(c); g.GetEpoch() != 1 || g.GetActiveFailover() != nil || len(g.GetFailovers()) != 1 {
		t.Fatalf("second failover within cooldown: %v", g)
	}
}

func TestFailoverPreFailoverHookVetoes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	script := filepath.Join(dir, "veto.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"no failover for $VIGIL_GROUP epoch $VIGIL_EPOCH\"\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	pg, c := failoverLab(t, labOptions{failover: fmt.Sprintf("      hooks: {pre_failover: {command: [%q], timeout: 5s}}", script)})
	if err := pg.Primary().Kill(); err != nil {
		t.Fatal(err)
	}
	clustertest.WaitFor(t, waitLong, "the hook's veto", func() (bool, string) {
		s := leaderStatus(c)
		return strings.Contains(s, "vetoed") && strings.Contains(s, "no failover for pg-main epoch 1"), s
	})
	if g := group(c); g.GetEpoch() != 0 || g.GetActiveFailover() != nil {
		t.Fatalf("vetoed failover started: %v", g)
	}
}

func TestFailoverStrictFenceTimeoutLeavesGroupUnfailed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	script := filepath.Join(dir, "fence.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nsleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	pg, c := failoverLab(t, labOptions{failover: fmt.Sprintf("      hooks: {fence: {command: [%q], timeout: 500ms}}", script)})
	// Hung, not dead: SQL fencing times out and so does the fence hook.
	if err := pg.Primary().Stop(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.Primary().Cont() })
	f := waitFailovers(t, c, 1, fsm.OutcomeAborted)
	if !strings.Contains(f.GetOutcomeDetail(), "fence: strict") || !strings.Contains(f.GetOutcomeDetail(), "timed out") {
		t.Fatalf("abort detail = %q", f.GetOutcomeDetail())
	}
	g := group(c)
	if g.GetPrimary() != "pg0" || len(f.GetSteps()) != 0 {
		t.Fatalf("group changed although fencing failed: primary %s, steps %v", g.GetPrimary(), f.GetSteps())
	}
	for _, n := range pg.Standbys() {
		if rec := query(t, n, "SELECT pg_is_in_recovery()"); rec != "true" {
			t.Fatalf("%s was promoted although the old primary was not fenced", n.Name)
		}
	}
	leader := c.WaitForLeader(waitLong)
	if v := counterValue(t, c.Nodes[leader].Obs, "vigil_fence_failures_total", map[string]string{"group": "pg-main"}); v < 1 {
		t.Fatalf("vigil_fence_failures_total = %v on the leader", v)
	}
}

// TestSwitchoverUnderWriteLoad runs a planned switchover while a client
// keeps writing to whichever member the state says is primary, and checks
// every acknowledged write is on the new primary.
func TestSwitchoverUnderWriteLoad(t *testing.T) {
	t.Parallel()
	// The rejoin hook reports what vigil asked; the lab's stand-in for the
	// operator's ssh + pg_rewind script then does the host-side work.
	dir := t.TempDir()
	asked := filepath.Join(dir, "rejoin.env")
	script := filepath.Join(dir, "rejoin.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nenv | grep ^VIGIL_ > "+asked+".tmp && mv "+asked+".tmp "+asked+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	pg, c := failoverLab(t, labOptions{failover: fmt.Sprintf("      hooks: {rejoin: {command: [%q], timeout: 5s}}", script)})
	execSQL(t, pg.Primary(), "CREATE TABLE acked (id bigint PRIMARY KEY)")

	var (
		mu    sync.Mutex
		acked []int64
	)
	stop := make(chan struct{})
	var stopOnce sync.Once
	var wg sync.WaitGroup
	// Stop the writer before the cluster is shut down, also on failure.
	t.Cleanup(func() { stopOnce.Do(func() { close(stop) }); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		cur := ""
		for id := int64(1); ; id++ {
			select {
			case <-stop:
				return
			default:
			}
			p := group(c).GetPrimary()
			if p != cur && conn != nil {
				conn.Close(context.Background())
				conn = nil
			}
			if conn == nil {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				var err error
				conn, err = node(pg, p).Connect(ctx)
				cancel()
				if err != nil {
					conn = nil
					continue
				}
				cur = p
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := conn.Exec(ctx, "INSERT INTO acked VALUES ($1)", id)
			cancel()
			if err != nil {
				conn.Close(context.Background())
				conn = nil
				continue
			}
			mu.Lock()
			acked = append(acked, id)
			mu.Unlock()
		}
	}()
	clustertest.Eventually(t, waitLong, "some writes", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) > 50 })

	leader := c.WaitForLeader(waitLong)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	f, err := c.Nodes[leader].Obs.Controller().Request(ctx, "pg-main", fsm.KindSwitchover, "pg1")
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if f.GetOutcome() != fsm.OutcomeCompleted || f.GetNewPrimary() != "pg1" {
		t.Fatalf("switchover: %v", f)
	}
	// Keep writing on the new primary for a moment, then stop.
	mu.Lock()
	n0 := len(acked)
	mu.Unlock()
	clustertest.Eventually(t, waitLong, "writes on the new primary", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) > n0+50 })
	stopOnce.Do(func() { close(stop) })
	wg.Wait()

	newP := node(pg, "pg1")
	mu.Lock()
	defer mu.Unlock()
	have := query(t, newP, "SELECT count(*) FROM acked WHERE id = ANY($1)", acked)
	if have != fmt.Sprint(len(acked)) {
		t.Fatalf("%d acknowledged writes, %s on the new primary: writes lost", len(acked), have)
	}
	if ro := query(t, pg.Nodes[0], "SHOW default_transaction_read_only"); ro != "on" {
		t.Fatalf("old primary not fenced read-only after switchover: %s", ro)
	}
	assertOneWritable(t, pg, "pg1")
	assertFollows(t, newP, pg.Nodes[2])

	// vigil asks for the old primary to rejoin as a standby of the new one.
	var env []byte
	clustertest.WaitFor(t, waitLong, "the rejoin hook", func() (bool, string) {
		var err error
		env, err = os.ReadFile(asked)
		return err == nil, fmt.Sprint(err)
	})
	for _, want := range []string{"VIGIL_STEP=rejoin", "VIGIL_OLD_MEMBER=pg0", "VIGIL_NEW_MEMBER=pg1", "VIGIL_EPOCH=1", "VIGIL_KIND=switchover"} {
		if !strings.Contains(string(env), want) {
			t.Fatalf("rejoin hook environment lacks %s:\n%s", want, env)
		}
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer rcancel()
	if err := pg.Nodes[0].Rejoin(rctx, newP); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("pg0 log:\n%s", pg.Nodes[0].LogTail(40))
		}
	}()
	assertFollows(t, newP, pg.Nodes[0])
	assertOnePrimary(t, pg, "pg1")
	t.Logf("%d acknowledged writes, all on the new primary; switchover steps: %v", len(acked), f.GetSteps())
}
