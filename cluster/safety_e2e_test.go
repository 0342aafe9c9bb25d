package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vigilha/vigil/cluster"
	"github.com/vigilha/vigil/cluster/clustertest"
	"github.com/vigilha/vigil/cluster/config"
	"github.com/vigilha/vigil/deploy/lab/pglab"
	"github.com/vigilha/vigil/fsm"
	"github.com/vigilha/vigil/health"
)

// Safety end-to-end tests on real PostgreSQL: a returning old primary is
// fenced again and never routed, a switchover loses no acknowledged write
// even of a client that writes to the old primary's own address, the role
// endpoint follows the health votes and not only the state, and clock
// offsets between observers cannot shorten the cooldown.

// safetyRoleCode asks one observer's role endpoint; usable from any
// goroutine (it never touches t).
func safetyRoleCode(client *http.Client, addr, path string) (int, error) {
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// safetyGauge reads a gauge from an observer's registry without t.
func safetyGauge(o *cluster.Observer, name string, labels map[string]string) (float64, bool) {
	m, err := lookupMetric(o, name, labels)
	if err != nil || m == nil {
		return 0, false
	}
	return m.GetGauge().GetValue(), true
}

// safetyAllUp waits until every running observer sees every member up on
// all three observers' votes.
func safetyAllUp(t testing.TB, c *clustertest.Cluster, members int) {
	t.Helper()
	clustertest.WaitFor(t, 60*time.Second, "every member up on every observer", func() (bool, string) {
		for _, i := range c.Running() {
			hs := c.Nodes[i].Obs.Monitor().Health("pg-main")
			if len(hs) != members {
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
}

// TestSafetyReturningOldPrimaryRefenced: an old primary killed during a
// failover (fenced only by "connection refused") comes back on its old
// data as a read-write primary. The leader must fence it again within a
// bound, terminate its sessions, count the re-fence, and no observer may
// ever route to it meanwhile.
func TestSafetyReturningOldPrimaryRefenced(t *testing.T) {
	t.Parallel()
	pg, c := failoverLab(t, labOptions{})
	old := pg.Primary()
	execSQL(t, old, "CREATE TABLE t (id int)")
	if err := old.Kill(); err != nil {
		t.Fatal(err)
	}
	f := waitFailovers(t, c, 1, fsm.OutcomeCompleted)
	newP := node(pg, f.GetNewPrimary())
	waitRoles(t, c, map[string]int{"/primary/pg-main/" + newP.Name: 200, "/primary/pg-main/pg0": 503})
	refLabels := map[string]string{"group": "pg-main", "member": "pg0", "result": "confirmed"}
	var obs []*cluster.Observer
	var addrs []string
	for _, i := range c.Running() {
		obs = append(obs, c.Nodes[i].Obs)
		addrs = append(addrs, c.Nodes[i].Obs.HTTPAddr())
		if v := counterValue(t, c.Nodes[i].Obs, "vigil_refences_total", refLabels); v != 0 {
			t.Fatalf("%s counted %v re-fences of pg0 before it came back", c.Nodes[i].ID, v)
		}
	}

	// From before the restart until pg0 is fenced again: every 20 ms, ask
	// every observer whether pg0 is routable, and watch the rogue gauge.
	var (
		smu       sync.Mutex
		routed    []string
		samples   int
		httpErrs  int
		rogueSeen bool
	)
	stopSampling := make(chan struct{})
	var stopOnce sync.Once
	sampled := make(chan struct{})
	t.Cleanup(func() { stopOnce.Do(func() { close(stopSampling) }); <-sampled })
	go func() {
		defer close(sampled)
		client := &http.Client{Timeout: 2 * time.Second}
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			for j, a := range addrs {
				code, err := safetyRoleCode(client, a, "/primary/pg-main/pg0")
				rogue, _ := safetyGauge(obs[j], "vigil_rogue_primary", map[string]string{"group": "pg-main", "member": "pg0"})
				smu.Lock()
				samples++
				if err != nil {
					httpErrs++
				} else if code == http.StatusOK {
					routed = append(routed, fmt.Sprintf("%s at %s", obs[j].ID(), time.Now().Format("15:04:05.000")))
				}
				rogueSeen = rogueSeen || rogue == 1
				smu.Unlock()
			}
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	}()

	// A client session opened the moment pg0 accepts connections again.
	type session struct {
		conn     *pgx.Conn
		pid      int
		readOnly string
		at       time.Time
	}
	sessCh := make(chan session, 1)
	sessCtx, sessCancel := context.WithCancel(context.Background())
	defer sessCancel()
	go func() {
		for sessCtx.Err() == nil {
			ctx, cancel := context.WithTimeout(sessCtx, time.Second)
			conn, err := old.Connect(ctx)
			cancel()
			if err != nil {
				select {
				case <-sessCtx.Done():
					return
				case <-time.After(2 * time.Millisecond):
				}
				continue
			}
			s := session{conn: conn, at: time.Now()}
			ctx, cancel = context.WithTimeout(sessCtx, 5*time.Second)
			err = conn.QueryRow(ctx, "SELECT pg_backend_pid(), current_setting('default_transaction_read_only')").Scan(&s.pid, &s.readOnly)
			cancel()
			if err != nil {
				conn.Close(context.Background())
				continue
			}
			sessCh <- s
			return
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	err := old.Start(ctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	startedAt := time.Now()
	var s session
	select {
	case s = <-sessCh:
	case <-time.After(10 * time.Second):
		t.Fatal("could not open a session on the restarted pg0")
	}
	defer s.conn.Close(context.Background())
	acceptedAt := s.at
	if startedAt.Before(acceptedAt) {
		acceptedAt = startedAt
	}
	// It came back read-write: the session opened before any re-fence can
	// write (this is the danger being tested).
	sessionBeforeFence := s.readOnly == "off"
	if sessionBeforeFence {
		wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, werr := s.conn.Exec(wctx, "INSERT INTO t VALUES (2)")
		wcancel()
		t.Logf("pg0 back at %s read-write; a write on it right after: err=%v", acceptedAt.Format("15:04:05.000"), werr)
	} else {
		t.Logf("pg0 was fenced again before the test's first session (read_only=%s): session termination not observable this run", s.readOnly)
	}

	// Safety bound: fenced again, and the old session gone, within 3 s of
	// pg0 accepting connections.
	bound := 3 * time.Second
	clustertest.WaitFor(t, bound-time.Since(acceptedAt), "pg0 fenced again (read-only, old sessions terminated) within 3s", func() (bool, string) {
		ro, err := tryQuery(old, "SHOW default_transaction_read_only")
		if err != nil || ro != "on" {
			return false, fmt.Sprintf("default_transaction_read_only = %q, err %v; controller: %s", ro, err, leaderStatus(c))
		}
		if !sessionBeforeFence {
			return true, ""
		}
		n, err := tryQuery(old, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", s.pid)
		return err == nil && n == "0", fmt.Sprintf("session %d still there (%s, err %v)", s.pid, n, err)
	})
	fencedAfter := time.Since(acceptedAt)
	stopOnce.Do(func() { close(stopSampling) })
	<-sampled
	if sessionBeforeFence {
		wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, werr := s.conn.Exec(wctx, "INSERT INTO t VALUES (3)")
		wcancel()
		if werr == nil {
			t.Fatal("the session opened on the rogue pg0 still writes after the re-fence")
		}
	}
	smu.Lock()
	if len(routed) > 0 {
		t.Fatalf("/primary/pg-main/pg0 answered 200 while pg0 was a rogue primary (%d of %d samples): %v", len(routed), samples, routed)
	}
	if samples < 3*len(addrs) {
		t.Fatalf("only %d samples of the role endpoint", samples)
	}
	if !rogueSeen {
		t.Fatal("vigil_rogue_primary{member=pg0} was never 1 on any observer while pg0 was writable")
	}
	t.Logf("pg0 fenced again %s after accepting connections; %d role samples, all non-200 (%d request errors)", fencedAfter.Round(time.Millisecond), samples, httpErrs)
	smu.Unlock()

	leader := c.WaitForLeader(waitLong)
	clustertest.WaitFor(t, waitLong, "vigil_refences_total{member=pg0,result=confirmed} on the leader", func() (bool, string) {
		v := counterValue(t, c.Nodes[leader].Obs, "vigil_refences_total", refLabels)
		return v >= 1, fmt.Sprintf("%v on %s", v, c.Nodes[leader].ID)
	})
	clustertest.WaitFor(t, waitLong, "pg0 no longer a rogue primary on every observer", func() (bool, string) {
		for _, i := range c.Running() {
			h := memberHealth(c, i, "pg0")
			g := gaugeValue(t, c.Nodes[i].Obs, "vigil_rogue_primary", map[string]string{"group": "pg-main", "member": "pg0"})
			if h.GetRoguePrimary() || g != 0 || h.GetState() != health.StateUp {
				return false, fmt.Sprintf("%s: %s, gauge %v", c.Nodes[i].ID, h.GetSummary(), g)
			}
		}
		return true, ""
	})
	// Nothing else moved: same primary, same epoch, no second failover.
	g := group(c)
	if g.GetPrimary() != newP.Name || g.GetEpoch() != 1 || len(g.GetFailovers()) != 1 || g.GetActiveFailover() != nil {
		t.Fatalf("group changed by the returning old primary: primary %s epoch %d failovers %d active %v", g.GetPrimary(), g.GetEpoch(), len(g.GetFailovers()), g.GetActiveFailover())
	}
	assertOneWritable(t, pg, newP.Name)
	waitRoles(t, c, map[string]int{"/primary/pg-main/" + newP.Name: 200, "/primary/pg-main/pg0": 503})

	// A rogue that cannot be fenced: a per-database setting overrides
	// ALTER SYSTEM, so new sessions on pg0 start read-write again and the
	// fence's verification fails. vigil keeps trying, says so, and pg0 is
	// still never routed, on any observer.
	func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := old.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		for _, sql := range []string{"SET default_transaction_read_only = off", "ALTER DATABASE postgres SET default_transaction_read_only = off"} {
			if _, err := conn.Exec(ctx, sql); err != nil {
				t.Fatalf("%s on pg0: %v", sql, err)
			}
		}
	}()
	unconfirmed := map[string]string{"group": "pg-main", "member": "pg0", "result": "unconfirmed"}
	clustertest.WaitFor(t, waitLong, "an unconfirmed re-fence of the unfenceable pg0, seen as rogue", func() (bool, string) {
		l := c.WaitForLeader(waitLong)
		v := counterValue(t, c.Nodes[l].Obs, "vigil_refences_total", unconfirmed)
		h := memberHealth(c, l, "pg0")
		return v >= 1 && h.GetRoguePrimary(), fmt.Sprintf("unconfirmed re-fences %v; %s; controller: %s", v, h.GetSummary(), leaderStatus(c))
	})
	rogueLeader := c.WaitForLeader(waitLong)
	tries := counterValue(t, c.Nodes[rogueLeader].Obs, "vigil_refences_total", unconfirmed)
	client := &http.Client{Timeout: 2 * time.Second}
	held := 0
	for until := time.Now().Add(2 * time.Second); time.Now().Before(until); {
		for j, a := range addrs {
			code, err := safetyRoleCode(client, a, "/primary/pg-main/pg0")
			if err != nil {
				t.Fatal(err)
			}
			if code != http.StatusServiceUnavailable {
				t.Fatalf("%s: /primary/pg-main/pg0 = %d while pg0 is an unfenced rogue primary", obs[j].ID(), code)
			}
			held++
		}
		if g := group(c); g.GetPrimary() != newP.Name || g.GetEpoch() != 1 || g.GetActiveFailover() != nil {
			t.Fatalf("group changed by the rogue pg0: primary %s epoch %d active %v", g.GetPrimary(), g.GetEpoch(), g.GetActiveFailover())
		}
		time.Sleep(20 * time.Millisecond) // sampling period of a hold check
	}
	// Still rogue, and vigil keeps trying (each attempt waits up to 5 s
	// for the fence's verification).
	if c.WaitForLeader(waitLong) == rogueLeader {
		o := c.Nodes[rogueLeader].Obs
		if g := gaugeValue(t, o, "vigil_rogue_primary", map[string]string{"group": "pg-main", "member": "pg0"}); g != 1 {
			t.Fatalf("vigil_rogue_primary{member=pg0} = %v while pg0 takes writes", g)
		}
		clustertest.WaitFor(t, waitLong, "another re-fence attempt of the unfenceable pg0", func() (bool, string) {
			v := counterValue(t, o, "vigil_refences_total", unconfirmed)
			return v > tries, fmt.Sprintf("%v unconfirmed", v)
		})
	}
	t.Logf("unfenceable rogue pg0: %d role samples over 2s, all 503", held)
}

// safetyAckLog records one writer's acknowledged writes.
type safetyAckLog struct {
	name          string // also the writer column
	mu            sync.Mutex
	ids           []int64
	lastAckSent   time.Time // when the last acknowledged write was sent
	firstReadOnly time.Time // first refusal because the server is read-only
	fails         int
	lastErr       error
}

func (l *safetyAckLog) ack(id int64, sent time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ids = append(l.ids, id)
	l.lastAckSent = sent
}

func (l *safetyAckLog) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fails++
	l.lastErr = err
	var pgErr *pgconn.PgError
	if l.firstReadOnly.IsZero() && errors.As(err, &pgErr) && pgErr.Code == "25006" { // read_only_sql_transaction
		l.firstReadOnly = time.Now()
	}
}

func (l *safetyAckLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.ids)
}

// safetyWriteLoop inserts ids from base on, into the server target() names,
// reconnecting when the target changes or a write fails, until stop.
// With hold > 0 every write is a transaction of two inserts that stays
// open for hold between them (a client in the middle of a transaction
// when the fence comes).
func safetyWriteLoop(stop <-chan struct{}, target func() *pglab.Node, base int64, hold time.Duration, l *safetyAckLog) {
	writer := l.name
	var conn *pgx.Conn
	var cur *pglab.Node
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	drop := func() {
		if conn != nil {
			conn.Close(context.Background())
			conn = nil
		}
	}
	pause := func() bool {
		select {
		case <-stop:
			return false
		case <-time.After(5 * time.Millisecond):
			return true
		}
	}
	for id := base; ; id++ {
		select {
		case <-stop:
			return
		default:
		}
		n := target()
		if n != cur {
			drop()
		}
		if conn == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			var err error
			conn, err = n.Connect(ctx)
			cancel()
			if err != nil {
				conn = nil
				l.fail(err)
				if !pause() {
					return
				}
				continue
			}
			cur = n
		}
		var sent time.Time
		var err error
		ids := []int64{id}
		if hold > 0 {
			id++
			ids = append(ids, id)
			sent, err = safetyHoldTxn(conn, ids, writer, hold)
		} else {
			sent = time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err = conn.Exec(ctx, "INSERT INTO acked VALUES ($1, $2)", id, writer)
			cancel()
		}
		if err != nil {
			l.fail(err)
			drop()
			if !pause() {
				return
			}
			continue
		}
		for _, i := range ids {
			l.ack(i, sent)
		}
	}
}

// safetyHoldTxn writes ids in one transaction held open for hold; it returns
// when the COMMIT was sent.
func safetyHoldTxn(conn *pgx.Conn, ids []int64, writer string, hold time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), hold+2*time.Second)
	defer cancel()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return time.Time{}, err
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(ctx, "INSERT INTO acked VALUES ($1, $2)", ids[0], writer); err != nil {
		return time.Time{}, err
	}
	if _, err := tx.Exec(ctx, "SELECT pg_sleep($1)", hold.Seconds()); err != nil {
		return time.Time{}, err
	}
	if _, err := tx.Exec(ctx, "INSERT INTO acked VALUES ($1, $2)", ids[1], writer); err != nil {
		return time.Time{}, err
	}
	sent := time.Now()
	return sent, tx.Commit(ctx)
}

// TestSafetySwitchoverDirectWriterLosesNothing: during a switchover, one
// client writes straight to the old primary's own address (it never
// follows the state), another follows the state's primary. No write
// acknowledged to either may be missing on the new primary, and the
// direct writer must be refused (read-only) before the switchover
// completes.
func TestSafetySwitchoverDirectWriterLosesNothing(t *testing.T) {
	t.Parallel()
	for _, sync := range []bool{false, true} {
		name := "async"
		if sync {
			name = "sync"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			safetySwitchoverDirectWriter(t, sync)
		})
	}
}

func safetySwitchoverDirectWriter(t *testing.T, syncRep bool) {
	var stepMu sync.Mutex
	stepAt := map[string]time.Time{}
	pg, c := failoverLab(t, labOptions{sync: syncRep, customize: func(i int, o *cluster.Options) {
		o.AfterFailoverStep = func(ctx context.Context, group string, epoch uint64, step string) {
			stepMu.Lock()
			defer stepMu.Unlock()
			if _, ok := stepAt[step]; !ok {
				stepAt[step] = time.Now()
			}
		}
	}})
	old := pg.Primary()
	execSQL(t, old, "CREATE TABLE acked (id bigint PRIMARY KEY, writer text NOT NULL)")

	// Clients on the old primary's own address: one with short autocommit
	// writes, and txnWriters that keep each transaction open for hold,
	// staggered so that whenever the fence comes some of them are in the
	// middle of a transaction begun read-write. One more client follows
	// the state's primary.
	const txnWriters, hold = 4, 400 * time.Millisecond
	var direct, follow safetyAckLog
	directTxn := make([]*safetyAckLog, txnWriters)
	direct.name, follow.name = "direct", "follow"
	stop := make(chan struct{})
	var stopOnce sync.Once
	var wg sync.WaitGroup
	// Stop the writers before the cluster is shut down, also on failure.
	t.Cleanup(func() { stopOnce.Do(func() { close(stop) }); wg.Wait() })
	wg.Add(2 + txnWriters)
	go func() {
		defer wg.Done()
		safetyWriteLoop(stop, func() *pglab.Node { return old }, 1<<40, 0, &direct)
	}()
	for k := range directTxn {
		directTxn[k] = &safetyAckLog{name: fmt.Sprintf("direct-txn-%d", k)}
		go func() {
			defer wg.Done()
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(k) * hold / txnWriters): // stagger the transactions
			}
			safetyWriteLoop(stop, func() *pglab.Node { return old }, int64(2+k)<<40, hold, directTxn[k])
		}()
	}
	go func() {
		defer wg.Done()
		safetyWriteLoop(stop, func() *pglab.Node { return node(pg, group(c).GetPrimary()) }, 1, 0, &follow)
	}()
	directs := append([]*safetyAckLog{&direct}, directTxn...)
	clustertest.Eventually(t, waitLong, "all writers writing", func() bool {
		for _, l := range directTxn {
			if l.count() < 4 {
				return false
			}
		}
		return direct.count() > 50 && follow.count() > 50
	})

	leader := c.WaitForLeader(waitLong)
	reqAt := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	f, err := c.Nodes[leader].Obs.Controller().Request(ctx, "pg-main", fsm.KindSwitchover, "pg1")
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if f.GetOutcome() == "" {
		// The leader changed mid-switchover (a loaded machine): the next
		// leader finishes it; wait for that in the state.
		f = waitFailovers(t, c, 1, fsm.OutcomeCompleted)
	}
	doneAt := time.Now()
	if f.GetOutcome() != fsm.OutcomeCompleted || f.GetNewPrimary() != "pg1" {
		t.Fatalf("switchover: %v", f)
	}
	nDirect := map[*safetyAckLog]int{}
	for _, l := range directs {
		nDirect[l] = l.count()
	}
	n0 := follow.count()
	// The new primary must take writes; if it does not (with synchronous
	// replication: no standby can follow it, e.g. because one replayed
	// WAL of the old primary beyond the catch-up point), the loss check
	// below still runs first and says more.
	newWrites := false
	for deadline := time.Now().Add(waitLong); !newWrites && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		newWrites = follow.count() > n0+50
	}
	stopOnce.Do(func() { close(stop) })
	wg.Wait()

	stepMu.Lock()
	fencedAt, promotedAt := stepAt[fsm.StepFenced], stepAt[fsm.StepPromoted]
	stepMu.Unlock()
	if fencedAt.IsZero() || promotedAt.IsZero() {
		t.Fatalf("steps not seen committed: %v", stepAt)
	}
	all := append([]*safetyAckLog{&follow}, directs...)
	for _, l := range all {
		l.mu.Lock()
		defer l.mu.Unlock()
	}
	for _, l := range directs {
		name := l.name
		if len(l.ids) != nDirect[l] {
			t.Fatalf("%s writer: %d writes acknowledged by the old primary after the switchover completed", name, len(l.ids)-nDirect[l])
		}
		// A write (a commit) sent after the fence cannot be acknowledged
		// by the old primary, and the fence is done before the fenced step
		// is committed.
		if !l.lastAckSent.Before(fencedAt) {
			t.Fatalf("%s writer: write sent at %s acknowledged by the old primary, after the fenced step was committed at %s",
				name, l.lastAckSent.Format("15:04:05.000"), fencedAt.Format("15:04:05.000"))
		}
		if l.firstReadOnly.IsZero() || l.firstReadOnly.Before(reqAt) || !l.firstReadOnly.Before(doneAt) {
			t.Fatalf("%s writer: first read-only refusal at %v; want between the request (%s) and the completion (%s); last error %v",
				name, l.firstReadOnly, reqAt.Format("15:04:05.000"), doneAt.Format("15:04:05.000"), l.lastErr)
		}
	}

	newP := node(pg, "pg1")
	for _, l := range all {
		name := l.name
		missing := query(t, newP, "SELECT count(*) FROM unnest($1::bigint[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM acked WHERE acked.id = a.id)", l.ids)
		if missing != "0" {
			t.Fatalf("%s writer: %s of %d acknowledged writes missing on the new primary", name, missing, len(l.ids))
		}
	}
	// What the old primary wrote after the catch-up point, if anything,
	// a standby other than the candidate may have replayed: it then
	// cannot follow the new primary.
	walAfter := func() string {
		end, _ := tryQuery(old, "SELECT pg_current_wal_lsn()::text")
		fenced := ""
		for _, st := range f.GetSteps() {
			if st.GetName() == fsm.StepFenced {
				fenced = st.GetDetail()
			}
		}
		return fmt.Sprintf("fence step: %q; the old primary's WAL now ends at %s", fenced, end)
	}
	if !newWrites {
		rep, _ := tryQuery(newP, "SELECT coalesce(string_agg(application_name || ' ' || state || ' ' || sync_state, ', '), 'none') FROM pg_stat_replication")
		t.Fatalf("no writes on the new primary pg1 for %s after the switchover (standbys streaming from it: %s; %s); pg2 log:\n%s",
			waitLong, rep, walAfter(), node(pg, "pg2").LogTail(8))
	}
	if ro := query(t, old, "SHOW default_transaction_read_only"); ro != "on" {
		t.Fatalf("old primary not fenced read-only after switchover: %s", ro)
	}
	assertOneWritable(t, pg, "pg1")
	defer func() {
		if t.Failed() {
			t.Logf("%s; pg2 log:\n%s", walAfter(), node(pg, "pg2").LogTail(8))
		}
	}()
	assertFollows(t, newP, node(pg, "pg2"))
	var report []string
	for _, l := range all {
		report = append(report, fmt.Sprintf("%s: %d acked, read-only refusal at +%s", l.name, len(l.ids), l.firstReadOnly.Sub(reqAt).Round(time.Millisecond)))
	}
	t.Logf("sync=%v: every acknowledged write is on pg1 (%s); after the request: fenced committed at +%s, promoted +%s, completed +%s",
		syncRep, strings.Join(report, "; "), fencedAt.Sub(reqAt).Round(time.Millisecond), promotedAt.Sub(reqAt).Round(time.Millisecond), doneAt.Sub(reqAt).Round(time.Millisecond))
}

// TestSafetyRolePrimaryEndpointFollowsHealth: the role endpoint answers
// 200 for the state's primary only while a quorum of fresh votes sees it
// up as a writable primary: not while it is read-only (fenced), and not
// while it is ODOWN, even when no failover can replace it (paused group).
func TestSafetyRolePrimaryEndpointFollowsHealth(t *testing.T) {
	t.Parallel()
	pg, c := failoverLab(t, labOptions{})
	healthy := map[string]int{"/primary/pg-main/pg0": 200, "/primary/pg-main/pg1": 503, "/primary/pg-main/pg2": 503}
	waitRoles(t, c, healthy)

	leader := c.WaitForLeader(waitLong)
	res, err := c.Nodes[leader].Obs.Propose(context.Background(), pauseCmd("pg-main", "no failover: role endpoint test"))
	if err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(waitLong, res.Index)
	stillPrimary := func(when string) {
		t.Helper()
		for _, i := range c.Running() {
			g, _ := c.Nodes[i].Obs.FSM().Group("pg-main")
			if g.GetPrimary() != "pg0" || g.GetEpoch() != 0 || g.GetActiveFailover() != nil || !g.GetPaused() {
				t.Fatalf("%s, %s: primary %s epoch %d active %v paused %v", when, c.Nodes[i].ID, g.GetPrimary(), g.GetEpoch(), g.GetActiveFailover(), g.GetPaused())
			}
		}
	}

	// Up but read-only (fenced by hand): not routable.
	old := pg.Primary()
	execSQL(t, old, "ALTER SYSTEM SET default_transaction_read_only = on")
	query(t, old, "SELECT pg_reload_conf()::text")
	waitRoles(t, c, map[string]int{"/primary/pg-main/pg0": 503})
	// The aggregate (evaluated every tick) follows the votes: up, but no
	// quorum sees a writable primary; and it is no rogue either.
	clustertest.WaitFor(t, waitLong, "read-only pg0 judged up without a writable-primary quorum", func() (bool, string) {
		for _, i := range c.Running() {
			h := memberHealth(c, i, "pg0")
			if h.GetState() != health.StateUp || h.GetUpVotes() != 3 || h.GetPrimaryQuorum() || h.GetRoguePrimary() {
				return false, fmt.Sprintf("%s: %s, primary quorum %v, rogue %v", c.Nodes[i].ID, h.GetSummary(), h.GetPrimaryQuorum(), h.GetRoguePrimary())
			}
		}
		return true, ""
	})
	// Still not routable once the aggregate agrees.
	for _, i := range c.Running() {
		if code := roleCode(t, c, i, "/primary/pg-main/pg0"); code != http.StatusServiceUnavailable {
			t.Fatalf("%s: /primary/pg-main/pg0 = %d while pg0 is read-only", c.Nodes[i].ID, code)
		}
	}
	stillPrimary("pg0 read-only")
	execSQL(t, old, "ALTER SYSTEM RESET default_transaction_read_only")
	query(t, old, "SELECT pg_reload_conf()::text")
	waitRoles(t, c, healthy)

	// Down (ODOWN everywhere) but still the state's primary: not routable,
	// on any observer, for as long as it stays so.
	if err := old.Kill(); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, "pg0", health.StateODown, waitLong)
	clustertest.WaitFor(t, waitLong, "controller to report the pause", func() (bool, string) {
		s := leaderStatus(c)
		return strings.HasPrefix(s, "paused"), s
	})
	client := &http.Client{Timeout: 2 * time.Second}
	var addrs []string
	for _, i := range c.Running() {
		addrs = append(addrs, c.Nodes[i].Obs.HTTPAddr())
	}
	samples := 0
	for until := time.Now().Add(2 * time.Second); time.Now().Before(until); {
		for j, a := range addrs {
			code, err := safetyRoleCode(client, a, "/primary/pg-main/pg0")
			if err != nil {
				t.Fatal(err)
			}
			if code != http.StatusServiceUnavailable {
				t.Fatalf("%s: /primary/pg-main/pg0 = %d while pg0 is ODOWN", c.Nodes[c.Running()[j]].ID, code)
			}
			samples++
		}
		stillPrimary("pg0 ODOWN")
		time.Sleep(20 * time.Millisecond) // sampling period of a hold check
	}
	for _, p := range []string{"/primary/pg-main/pg1", "/primary/pg-main/pg2"} {
		for _, i := range c.Running() {
			if code := roleCode(t, c, i, p); code != http.StatusServiceUnavailable {
				t.Fatalf("%s: %s = %d while pg0 is the state's primary", c.Nodes[i].ID, p, code)
			}
		}
	}
	t.Logf("%d samples of /primary/pg-main/pg0 while ODOWN, all 503", samples)
}

// TestSafetyClockOffsetObserversFailOverOnce: observers whose clocks are
// off by +2 s and -2 s fail over exactly once, and honour the cooldown on
// every leader, including one that takes over during it and whose clock
// is ahead of the clock that timestamped the failover.
func TestSafetyClockOffsetObserversFailOverOnce(t *testing.T) {
	t.Parallel()
	const cooldown = 15 * time.Second
	offsets := []time.Duration{0, 2 * time.Second, -2 * time.Second}
	pg, c := failoverLab(t, labOptions{cooldown: cooldown.String(), customize: func(i int, o *cluster.Options) {
		off := offsets[i]
		o.Now = func() time.Time { return time.Now().Add(off) }
		// Options.Now does not reach the probes, which timestamp their
		// results with time.Now while the monitor judges freshness (and
		// encodes vote ages) with Options.Now: an offset observer's votes
		// look off by its offset. With the default stale_after (1.15 s)
		// a +2 s observer's votes are stale everywhere and a -2 s one
		// counts none of its own. stale_after > offset + probe period
		// keeps every vote countable; this test is about the cooldown.
		o.Config.Groups[0].StaleAfter = config.Duration(5 * time.Second)
	}})
	// The failover is best committed by the observer whose clock is
	// behind (-2 s): its timestamp then makes the cooldown look 2-4 s
	// shorter to either other observer, which is what a later leader must
	// not fall for. Steer the leadership there by restarting leaders.
	const behind = 2
	leader := c.WaitForLeader(waitLong)
	for attempt := 0; leader != behind && attempt < 8; attempt++ {
		c.StopNode(leader)
		c.WaitForLeader(waitLong)
		c.StartNode(leader)
		leader = c.WaitForLeader(waitLong)
	}
	if leader != behind {
		t.Logf("could not make %s (clock -2s) the leader; going on with %s", c.Nodes[behind].ID, c.Nodes[leader].ID)
	}
	safetyAllUp(t, c, len(pg.Nodes))
	committer := c.Nodes[leader].ID

	if err := pg.Primary().Kill(); err != nil {
		t.Fatal(err)
	}
	f1 := waitFailovers(t, c, 1, fsm.OutcomeCompleted)
	doneAt := time.Now()
	c.WaitForApplied(waitLong, c.Nodes[c.Running()[0]].Obs.FSM().AppliedIndex())
	for _, i := range c.Running() {
		g, _ := c.Nodes[i].Obs.FSM().Group("pg-main")
		if g.GetEpoch() != 1 || len(g.GetFailovers()) != 1 || g.GetActiveFailover() != nil || g.GetPrimary() != f1.GetNewPrimary() {
			t.Fatalf("%s after the failover: epoch %d, failovers %d, active %v, primary %s", c.Nodes[i].ID, g.GetEpoch(), len(g.GetFailovers()), g.GetActiveFailover(), g.GetPrimary())
		}
	}
	newP := node(pg, f1.GetNewPrimary())
	assertOneWritable(t, pg, newP.Name)
	var other *pglab.Node
	for _, n := range pg.Standbys() {
		if n != newP {
			other = n
		}
	}

	// The new primary dies within the cooldown. Until 1 s before the
	// cooldown ends (counted from when the test saw the failover
	// complete, a poll after the observers applied it), no leader may
	// start a failover; a third of the way in, the leader is stopped and
	// another observer, with another clock, takes over.
	if err := newP.Kill(); err != nil {
		t.Fatal(err)
	}
	watchEnd := doneAt.Add(cooldown - time.Second)
	stopAfter := doneAt.Add(cooldown / 3)
	cooldownSeen := map[string]string{}
	var stopped string
	for time.Now().Before(watchEnd) {
		for _, i := range c.Running() {
			o := c.Nodes[i].Obs
			g, _ := o.FSM().Group("pg-main")
			if g.GetEpoch() != 1 || g.GetActiveFailover() != nil || len(g.GetFailovers()) != 1 {
				t.Fatalf("%s: second failover %s after the first completed (cooldown %s): epoch %d, active %v, failovers %d; controller: %s",
					c.Nodes[i].ID, time.Since(doneAt).Round(time.Millisecond), cooldown, g.GetEpoch(), g.GetActiveFailover(), len(g.GetFailovers()), leaderStatus(c))
			}
			if o.IsLeader() {
				if s := o.Controller().Status("pg-main"); strings.HasPrefix(s, "cooldown") {
					cooldownSeen[c.Nodes[i].ID] = s
				}
			}
		}
		if stopped == "" && time.Now().After(stopAfter) {
			l := c.WaitForLeader(waitLong)
			if _, ok := cooldownSeen[c.Nodes[l].ID]; !ok {
				t.Fatalf("leader %s never reported the cooldown: %s", c.Nodes[l].ID, leaderStatus(c))
			}
			stopped = c.Nodes[l].ID
			c.StopNode(l)
			c.WaitForLeader(waitLong)
		}
		time.Sleep(20 * time.Millisecond) // sampling period of a hold check
	}
	if stopped == "" {
		t.Fatal("the leader was not stopped during the cooldown")
	}
	newLeader := c.Nodes[c.WaitForLeader(waitLong)].ID
	s, ok := cooldownSeen[newLeader]
	if !ok {
		t.Fatalf("the new leader %s never reported the cooldown: %s", newLeader, leaderStatus(c))
	}
	t.Logf("failover committed by %s (offsets obs1 0, obs2 +2s, obs3 -2s); leader %s stopped %s into the cooldown; new leader %s: %q",
		committer, stopped, stopAfter.Sub(doneAt), newLeader, s)

	// The cooldown was the only thing holding the second failover back:
	// it happens once the cooldown is over, exactly once.
	f2 := waitFailovers(t, c, 2, fsm.OutcomeCompleted)
	elapsed := time.Since(doneAt)
	g := group(c)
	if g.GetEpoch() != 2 || f2.GetEpoch() != 2 || f2.GetNewPrimary() != other.Name || f2.GetOldPrimary() != newP.Name {
		t.Fatalf("second failover: group epoch %d, %v", g.GetEpoch(), f2)
	}
	assertOneWritable(t, pg, other.Name)
	t.Logf("second failover completed %s after the first (cooldown %s)", elapsed.Round(time.Millisecond), cooldown)
}
