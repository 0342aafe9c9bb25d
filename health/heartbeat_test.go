package health

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vigilha/vigil/deploy/lab/pglab"
)

// The write-path check (write_stall_after) against the shared lab
// cluster. A lock on vigil.heartbeat blocks the heartbeat exactly as a
// frozen file system blocks the commit, without needing root.

const (
	hbTimeout    = 300 * time.Millisecond
	hbStallAfter = time.Second
)

// hbProbe is a probe of n with the write check on, keyed by id.
func hbProbe(n *pglab.Node, id string) Prober {
	return NewPostgresProbe(PostgresProbeConfig{
		Address: n.Addr(), User: "postgres", Database: "postgres", SSLMode: "disable",
		Timeout: hbTimeout, WriteStallAfter: hbStallAfter, HeartbeatID: id, ApplicationName: "vigil-hb-" + id,
	})
}

// probeBounded probes as the Runner does: under a deadline of the timeout.
func probeBounded(p Prober) Result {
	ctx, cancel := context.WithTimeout(context.Background(), hbTimeout)
	defer cancel()
	return p.Probe(ctx)
}

func connect(t *testing.T, n *pglab.Node) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := n.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// wantWritable checks an up primary whose heartbeat committed.
func wantWritable(t *testing.T, what string, r Result) {
	t.Helper()
	if r.Verdict != VerdictUp || r.Role != RolePrimary || r.Err != "" || r.CurrentLSN == 0 ||
		!r.Heartbeat.Attempted || r.Heartbeat.Err != "" || r.Heartbeat.Stalling || r.Heartbeat.StalledFor != 0 {
		t.Fatalf("%s: %+v", what, r)
	}
}

func TestPostgresProbeHeartbeat(t *testing.T) {
	c := sharedCluster(t)
	primary, standby := c.Primary(), c.Standbys()[0]
	conn := connect(t, primary)

	before := time.Now()
	wantWritable(t, "primary", probeBounded(hbProbe(primary, "hb-ok")))
	// The probe created the table and committed its row, keyed by its id.
	var at time.Time
	if err := conn.QueryRow(context.Background(), "SELECT at FROM vigil.heartbeat WHERE observer = $1", "hb-ok").Scan(&at); err != nil {
		t.Fatal(err)
	}
	if at.Before(before.Add(-time.Second)) {
		t.Fatalf("heartbeat at %v, probe began at %v", at, before)
	}
	// Again, now that the table exists: an update of the same row.
	wantWritable(t, "primary, second probe", probeBounded(hbProbe(primary, "hb-ok")))

	// A standby is not written to.
	if r := probeBounded(hbProbe(standby, "hb-ok")); r.Verdict != VerdictUp || r.Role != RoleStandby || r.Heartbeat.Attempted || r.Err != "" {
		t.Fatalf("standby: %+v", r)
	}

	// The heartbeat must not wait for the synchronous standby: with it
	// hung, ordinary commits wait forever, the heartbeat does not.
	if err := standby.Stop(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := standby.Cont(); err != nil {
			t.Errorf("Cont: %v", err)
		}
	}()
	wantWritable(t, "primary with its synchronous standby hung", probeBounded(hbProbe(primary, "hb-ok")))
}

func TestPostgresProbeWriteStall(t *testing.T) {
	c := sharedCluster(t)
	primary := c.Primary()
	p := hbProbe(primary, "hb-stall")
	// The last success ends after this: the stall clock cannot start
	// earlier.
	lastOK := time.Now()
	wantWritable(t, "before the stall", probeBounded(p)) // creates the table

	locker := connect(t, primary)
	ctx := context.Background()
	tx, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	locked := true
	release := func() {
		if locked {
			locked = false
			if err := tx.Rollback(ctx); err != nil {
				t.Errorf("rollback: %v", err)
			}
		}
	}
	defer release()
	if _, err := tx.Exec(ctx, "LOCK TABLE vigil.heartbeat IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}

	// Up while the stall is shorter than write_stall_after, then down.
	stallStart := time.Now()
	var r Result
	for i := 0; ; i++ {
		start := time.Now()
		r = probeBounded(p)
		if took := time.Since(start); took > hbTimeout+500*time.Millisecond {
			t.Fatalf("probe %d with the heartbeat blocked took %v (timeout %v)", i, took, hbTimeout)
		}
		if r.Verdict == VerdictDown {
			break
		}
		if r.Verdict != VerdictUp || r.Role != RolePrimary || !r.Heartbeat.Stalling || r.Heartbeat.ErrKind != KindTimeout ||
			r.Heartbeat.StalledFor >= hbStallAfter || !strings.Contains(r.Err, "heartbeat write timed out") {
			t.Fatalf("probe %d, writes blocked for %v: %+v", i, time.Since(stallStart), r)
		}
		if time.Since(stallStart) > hbStallAfter+2*time.Second {
			t.Fatalf("still up %v after writes stalled: %+v", time.Since(stallStart), r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if elapsed := time.Since(lastOK); elapsed < hbStallAfter {
		t.Fatalf("down after %v, before write_stall_after %v: %+v", elapsed, hbStallAfter, r)
	}
	if r.ErrKind != KindWriteStalled || r.Role != RolePrimary || r.CurrentLSN == 0 || r.Heartbeat.StalledFor < hbStallAfter ||
		!strings.HasPrefix(r.Err, "writes stalled for ") || !strings.HasSuffix(r.Err, "(heartbeat write timed out)") {
		t.Fatalf("stalled primary: %+v", r)
	}
	t.Logf("stalled: %s", r.Err)

	// statement_timeout ends the server side of every abandoned write:
	// blocked heartbeats do not pile up on the server.
	var waiting int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE application_name = 'vigil-hb-hb-stall' AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
		t.Fatal(err)
	}
	if waiting > 1 {
		t.Fatalf("%d abandoned heartbeat writes still wait for the lock", waiting)
	}

	release()
	wantWritable(t, "after the lock is released", probeBounded(p))

	// The clock starts afresh: one more blocked write is up again.
	tx, err = locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	locked = true
	if _, err := tx.Exec(ctx, "LOCK TABLE vigil.heartbeat IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	if r := probeBounded(p); r.Verdict != VerdictUp || !r.Heartbeat.Stalling || r.Heartbeat.StalledFor >= hbStallAfter {
		t.Fatalf("first blocked write after a success: %+v", r)
	}
}

func TestPostgresProbeReadOnlyPrimaryNotStalled(t *testing.T) {
	c := sharedCluster(t)
	primary := c.Primary()
	conn := connect(t, primary)
	p := hbProbe(primary, "hb-ro")
	wantWritable(t, "before", probeBounded(p))

	// What vigil's fence does.
	exec(t, conn, "ALTER SYSTEM SET default_transaction_read_only = on")
	exec(t, conn, "SELECT pg_reload_conf()")
	defer func() {
		exec(t, conn, "ALTER SYSTEM RESET default_transaction_read_only")
		exec(t, conn, "SELECT pg_reload_conf()")
		waitFor(t, 10*time.Second, "primary writable again", func() bool { return !probeBounded(p).ReadOnly })
	}()
	waitFor(t, 10*time.Second, "probe seeing the primary read-only", func() bool { return probeBounded(p).ReadOnly })

	// Probed for longer than write_stall_after: up, read-only, no write.
	deadline := time.Now().Add(hbStallAfter + 300*time.Millisecond)
	for time.Now().Before(deadline) {
		r := probeBounded(p)
		if r.Verdict != VerdictUp || r.Role != RolePrimary || !r.ReadOnly || r.Err != "" || r.Heartbeat.Attempted {
			t.Fatalf("read-only primary: %+v", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The monitor role needs no CREATE privilege once the table exists, only
// what docs/operations.md grants; without the grants the heartbeat fails
// as an answered error, never as a stall.
func TestPostgresProbeHeartbeatPrivileges(t *testing.T) {
	c := sharedCluster(t)
	primary := c.Primary()
	conn := connect(t, primary)
	wantWritable(t, "as postgres", probeBounded(hbProbe(primary, "hb-priv"))) // creates the table
	exec(t, conn, "DROP ROLE IF EXISTS vigil_hb_granted")
	exec(t, conn, "DROP ROLE IF EXISTS vigil_hb_plain")
	exec(t, conn, "CREATE ROLE vigil_hb_granted LOGIN IN ROLE pg_monitor")
	exec(t, conn, "CREATE ROLE vigil_hb_plain LOGIN IN ROLE pg_monitor")
	exec(t, conn, "GRANT USAGE ON SCHEMA vigil TO vigil_hb_granted")
	exec(t, conn, "GRANT SELECT, INSERT, UPDATE ON vigil.heartbeat TO vigil_hb_granted")
	defer func() {
		exec(t, conn, "DROP OWNED BY vigil_hb_granted")
		exec(t, conn, "DROP ROLE vigil_hb_granted")
		exec(t, conn, "DROP ROLE vigil_hb_plain")
	}()

	probeAs := func(user string) Result {
		return probeBounded(NewPostgresProbe(PostgresProbeConfig{
			Address: primary.Addr(), User: user, Database: "postgres", SSLMode: "disable",
			Timeout: hbTimeout, WriteStallAfter: hbStallAfter, HeartbeatID: user,
		}))
	}
	wantWritable(t, "role with the documented grants", probeAs("vigil_hb_granted"))

	for i := 0; i < 2; i++ { // repeatedly: it never turns into a stall
		r := probeAs("vigil_hb_plain")
		if r.Verdict != VerdictUp || !r.Heartbeat.Attempted || r.Heartbeat.Stalling || r.Heartbeat.ErrKind != KindAuth ||
			r.ErrKind != KindAuth || !strings.HasPrefix(r.Err, "heartbeat write: ") || !strings.Contains(r.Err, "permission denied") {
			t.Fatalf("role without grants: %+v", r)
		}
	}
}

// judgeHeartbeat, without a server: the stall clock and what counts.
func TestJudgeHeartbeat(t *testing.T) {
	p := &PostgresProbe{writeStallAfter: time.Second}
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	timeout := fmt.Errorf("heartbeat: %w", context.DeadlineExceeded)
	judge := func(begin, end time.Duration, err error) Result {
		r := Result{Verdict: VerdictUp, Role: RolePrimary, CurrentLSN: 42, At: at(begin)}
		p.judgeHeartbeat(&r, at(begin), at(end), err, err != nil && (errors.Is(err, context.DeadlineExceeded) || isSQLState(err, "57014")))
		return r
	}

	// Never succeeded: the clock starts with the first failed write.
	if r := judge(0, 300*time.Millisecond, timeout); r.Verdict != VerdictUp || r.Heartbeat.StalledFor != 300*time.Millisecond ||
		r.Err != "writes stalled for 300ms (heartbeat write timed out)" || r.ErrKind != KindTimeout {
		t.Fatalf("first failure: %+v", r)
	}
	// statement_timeout counts as a timeout too.
	canceled := &pgconn.PgError{Severity: "ERROR", Code: "57014", Message: "canceling statement due to statement timeout"}
	if r := judge(500*time.Millisecond, 800*time.Millisecond, canceled); r.Verdict != VerdictUp || r.Heartbeat.ErrKind != KindTimeout {
		t.Fatalf("statement_timeout: %+v", r)
	}
	r := judge(time.Second, 1300*time.Millisecond, timeout)
	if r.Verdict != VerdictDown || r.ErrKind != KindWriteStalled || r.Role != RolePrimary || r.CurrentLSN != 42 ||
		r.Err != "writes stalled for 1.3s (heartbeat write timed out)" {
		t.Fatalf("stalled for 1.3s: %+v", r)
	}
	// The vote says down since the first failed write began (1 s before
	// this probe began): ODOWN need not wait down_after again.
	if r.Heartbeat.FailingFor != time.Second {
		t.Fatalf("failing for %s, want 1s (first failed write at 0, this probe at 1s)", r.Heartbeat.FailingFor)
	}
	if v := VoteFromResult("a", "g", "m", r, 1); v.DownFor != time.Second {
		t.Fatalf("stall vote down for %s, want 1s", v.DownFor)
	}

	// A success resets; the next stall counts from that success.
	if r := judge(2*time.Second, 2100*time.Millisecond, nil); r.Verdict != VerdictUp || r.Err != "" || r.Heartbeat.StalledFor != 0 {
		t.Fatalf("success: %+v", r)
	}
	if r := judge(3*time.Second, 3300*time.Millisecond, timeout); r.Verdict != VerdictDown || r.Heartbeat.StalledFor != 1200*time.Millisecond {
		t.Fatalf("failure 1.2s after the last success: %+v", r)
	}

	// A read-only answer is no failure and stops the clock; it reports
	// nothing (the server answered, as a fenced primary does).
	readOnly := &pgconn.PgError{Severity: "ERROR", Code: "25006", Message: "cannot execute INSERT in a read-only transaction"}
	if r := judge(4*time.Second, 4010*time.Millisecond, readOnly); r.Verdict != VerdictUp || r.Err != "" || r.Heartbeat.Stalling {
		t.Fatalf("read-only answer: %+v", r)
	}
	if r := judge(5*time.Second, 5300*time.Millisecond, timeout); r.Verdict != VerdictUp || r.Heartbeat.StalledFor != 300*time.Millisecond {
		t.Fatalf("first failure after a read-only answer: %+v", r)
	}

	// Missing privileges: reported, up, and the clock stopped.
	denied := &pgconn.PgError{Severity: "ERROR", Code: "42501", Message: "permission denied for table heartbeat"}
	if r := judge(6*time.Second, 6010*time.Millisecond, denied); r.Verdict != VerdictUp || r.ErrKind != KindAuth || r.Heartbeat.Stalling ||
		r.Err != "heartbeat write: ERROR: permission denied for table heartbeat (SQLSTATE 42501)" {
		t.Fatalf("permission denied: %+v", r)
	}
	// A read-side error already in Err is kept; the stall is in Heartbeat.
	r = Result{Verdict: VerdictUp, Role: RolePrimary, Err: "replication rows: denied", ErrKind: KindAuth}
	p.judgeHeartbeat(&r, at(7*time.Second), at(7300*time.Millisecond), timeout, true)
	if r.Err != "replication rows: denied" || r.Heartbeat.Err == "" || !r.Heartbeat.Stalling {
		t.Fatalf("read error and a failed heartbeat: %+v", r)
	}
}
