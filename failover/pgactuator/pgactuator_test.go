package pgactuator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vigilha/vigil/deploy/lab/pglab"
	"github.com/vigilha/vigil/failover"
)

// These tests run real PostgreSQL servers (pglab): they skip where
// PostgreSQL is unavailable, and fail instead with VIGIL_REQUIRE_PG=1.

func member(n *pglab.Node) failover.Member {
	return failover.Member{Name: n.Name, Address: n.Addr()}
}

func newTestActuator(t *testing.T, cfg Config) *Actuator {
	t.Helper()
	h := slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})
	return New(cfg, slog.New(h))
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func connect(t *testing.T, ctx context.Context, n *pglab.Node) *pgx.Conn {
	t.Helper()
	conn, err := n.Connect(ctx)
	if err != nil {
		t.Fatalf("connect %s: %v", n.Name, err)
	}
	t.Cleanup(func() { closeConn(conn) })
	return conn
}

// execOn runs sql on a fresh session of n.
func execOn(ctx context.Context, n *pglab.Node, sql string, args ...any) error {
	conn, err := n.Connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

func mustExec(t *testing.T, ctx context.Context, n *pglab.Node, sql string, args ...any) {
	t.Helper()
	if err := execOn(ctx, n, sql, args...); err != nil {
		t.Fatalf("%s: %s: %v", n.Name, sql, err)
	}
}

func queryInt(t *testing.T, ctx context.Context, n *pglab.Node, sql string, args ...any) int {
	t.Helper()
	conn := connect(t, ctx, n)
	var v int
	if err := conn.QueryRow(ctx, sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %s: %v", n.Name, sql, err)
	}
	return v
}

func sqlStateOf(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// waitUntil polls cond every 20ms until it holds or timeout passes.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFenceLivePrimary(t *testing.T) {
	t.Parallel()
	c := pglab.StartForTest(t, pglab.Options{Standbys: 1})
	ctx := testCtx(t, time.Minute)
	pg0, pg1 := c.Nodes[0], c.Nodes[1]
	a := newTestActuator(t, Config{})
	act := failover.Action{Group: "g", Epoch: 2, Kind: "failover", Old: member(pg0), New: member(pg1)}

	mustExec(t, ctx, pg0, "CREATE TABLE t (i int)")
	// A client writing in an open transaction, and an idle one.
	writer := connect(t, ctx, pg0)
	if _, err := writer.Exec(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	tx, err := writer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	idle := connect(t, ctx, pg0)

	res, err := a.Fence(ctx, act)
	if err != nil || !res.Confirmed {
		t.Fatalf("Fence = %+v, %v; want confirmed", res, err)
	}
	t.Logf("Fence: %s", res.Detail)
	if !strings.HasPrefix(res.Detail, "read-only, ") {
		t.Errorf("detail %q", res.Detail)
	}
	var n int
	if _, err := fmt.Sscanf(res.Detail, "read-only, %d sessions terminated", &n); err != nil || n < 2 {
		t.Errorf("detail %q: want at least 2 sessions terminated", res.Detail)
	}

	// The writing session is gone; its open transaction did not commit.
	if err := tx.Commit(ctx); err == nil {
		t.Error("the fenced primary committed an open transaction of a terminated session")
	}
	if _, err := writer.Exec(ctx, "INSERT INTO t VALUES (3)"); err == nil {
		t.Error("a terminated session could still write")
	}
	if err := idle.Ping(ctx); err == nil {
		t.Error("idle session survived the fence")
	}
	// A new session cannot write: read-only transaction (25006).
	err = execOn(ctx, pg0, "INSERT INTO t VALUES (4)")
	if sqlStateOf(err) != "25006" {
		t.Fatalf("INSERT on fenced primary: %v; want SQLSTATE 25006", err)
	}
	if got := queryInt(t, ctx, pg0, "SELECT count(*) FROM t"); got != 1 {
		t.Errorf("fenced primary holds %d rows, want 1", got)
	}
	// Replication survives the fence: walsenders are not client backends.
	if err := pg0.WaitStreaming(ctx, pg1); err != nil {
		t.Errorf("standby lost after fence: %v", err)
	}

	fenced, err := a.IsFenced(ctx, member(pg0))
	if err != nil || !fenced {
		t.Errorf("IsFenced = %v, %v; want true", fenced, err)
	}
	// Idempotent.
	res, err = a.Fence(ctx, act)
	if err != nil || !res.Confirmed {
		t.Fatalf("second Fence = %+v, %v; want confirmed", res, err)
	}
	// A standby counts as fenced.
	res, err = a.Fence(ctx, failover.Action{Old: member(pg1), New: member(pg0)})
	if err != nil || !res.Confirmed || res.Detail != "already a standby" {
		t.Errorf("Fence of a standby = %+v, %v", res, err)
	}

	// Unfence: writable again, idempotently.
	for range 2 {
		if err := a.Unfence(ctx, member(pg0)); err != nil {
			t.Fatalf("Unfence: %v", err)
		}
	}
	mustExec(t, ctx, pg0, "INSERT INTO t VALUES (5)")
	fenced, err = a.IsFenced(ctx, member(pg0))
	if err != nil || fenced {
		t.Errorf("IsFenced after Unfence = %v, %v; want false", fenced, err)
	}
}

func TestFenceKilledPrimary(t *testing.T) {
	t.Parallel()
	c := pglab.StartForTest(t, pglab.Options{})
	ctx := testCtx(t, time.Minute)
	pg0 := c.Nodes[0]
	if err := pg0.Kill(); err != nil {
		t.Fatal(err)
	}
	a := newTestActuator(t, Config{})
	res, err := a.Fence(ctx, failover.Action{Old: member(pg0), New: failover.Member{Name: "pg1", Address: "127.0.0.1:1"}})
	if err != nil || !res.Confirmed || !strings.Contains(res.Detail, "refused") {
		t.Fatalf("Fence of a killed primary = %+v, %v; want confirmed (refused)", res, err)
	}
}

func TestFenceHungPrimary(t *testing.T) {
	t.Parallel()
	c := pglab.StartForTest(t, pglab.Options{})
	pg0 := c.Nodes[0]
	if err := pg0.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg0.Cont() })
	a := newTestActuator(t, Config{})
	act := failover.Action{Old: member(pg0), New: failover.Member{Name: "pg1", Address: "127.0.0.1:1"}}

	// Bounded by ctx (1s, below ConnectTimeout 2s).
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	res, err := a.Fence(ctx, act)
	took := time.Since(start)
	t.Logf("Fence of a hung primary: %+v, %v (took %v)", res, err, took)
	if res.Confirmed || err == nil {
		t.Fatalf("Fence of a hung primary = %+v, %v; want not confirmed with an error", res, err)
	}
	if !strings.Contains(err.Error(), "timed out") || !strings.Contains(err.Error(), pg0.Addr()) {
		t.Errorf("error %q should say it timed out, and name the address", err)
	}
	if took > 5*time.Second {
		t.Errorf("Fence took %v", took)
	}

	// Bounded by ConnectTimeout when ctx has no deadline.
	a = newTestActuator(t, Config{ConnectTimeout: 500 * time.Millisecond})
	start = time.Now()
	res, err = a.Fence(context.Background(), act)
	if took := time.Since(start); res.Confirmed || err == nil || took > 5*time.Second {
		t.Fatalf("Fence without deadline = %+v, %v after %v", res, err, took)
	}
	// The other operations do not hang either.
	start = time.Now()
	if err := a.Promote(context.Background(), failover.Action{New: member(pg0)}); err == nil {
		t.Error("Promote of a hung server succeeded")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Promote of a hung server took %v", took)
	}
}

func TestFailover(t *testing.T) {
	t.Parallel()
	// Synchronous replication: synchronous_standby_names = 'ANY 1 (pg1,
	// pg2)' is copied to the standbys, so the promoted one waits for a
	// synchronous standby on every commit until the other is re-pointed.
	// Promote must not wait for that.
	c := pglab.StartForTest(t, pglab.Options{Standbys: 2, Sync: true})
	ctx := testCtx(t, 90*time.Second)
	pg0 := c.Nodes[0]
	// A password that needs both conninfo and SQL quoting (the lab
	// trusts loopback, so it is sent but not checked).
	const replPassword = `it's a \secret`
	a := newTestActuator(t, Config{ReplicationPassword: replPassword})

	mustExec(t, ctx, pg0, "CREATE TABLE t (i int)")
	mustExec(t, ctx, pg0, "INSERT INTO t VALUES (1)")
	lsn, rec, err := a.CurrentLSN(ctx, member(pg0))
	if err != nil || rec {
		t.Fatalf("CurrentLSN(pg0) = %s, %v, %v", FormatLSN(lsn), rec, err)
	}
	for _, s := range c.Standbys() {
		if err := a.WaitReplayed(ctx, member(s), lsn); err != nil {
			t.Fatal(err)
		}
	}
	if err := pg0.Kill(); err != nil {
		t.Fatal(err)
	}

	// Like the controller: promote the most advanced standby (a record
	// written just before the kill may have reached only one of them).
	cand, other := c.Nodes[1], c.Nodes[2]
	l1, _, err1 := a.CurrentLSN(ctx, member(cand))
	l2, _, err2 := a.CurrentLSN(ctx, member(other))
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	if l2 > l1 {
		cand, other = other, cand
	}
	act := failover.Action{Group: "g", Epoch: 2, Kind: "failover", Old: member(pg0), New: member(cand)}
	t.Logf("promoting %s, re-pointing %s", cand.Name, other.Name)

	res, err := a.Fence(ctx, act)
	if err != nil || !res.Confirmed {
		t.Fatalf("Fence of killed pg0 = %+v, %v", res, err)
	}
	start := time.Now()
	if err := a.Promote(ctx, act); err != nil {
		t.Fatalf("Promote: %v", err)
	}
	t.Logf("Promote took %v", time.Since(start))
	// Writable (without waiting for a synchronous standby that is not
	// there yet).
	func() {
		conn := connect(t, ctx, cand)
		if _, err := conn.Exec(ctx, "SET synchronous_commit = local"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "INSERT INTO t VALUES (2)"); err != nil {
			t.Fatalf("INSERT on promoted %s: %v", cand.Name, err)
		}
	}()
	if err := a.Promote(ctx, act); err != nil {
		t.Fatalf("second Promote: %v", err)
	}

	start = time.Now()
	if err := a.Repoint(ctx, act, member(other)); err != nil {
		t.Fatalf("Repoint: %v", err)
	}
	t.Logf("Repoint took %v", time.Since(start))
	if got := queryInt(t, ctx, other, "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'"); got != cand.Port {
		t.Errorf("%s streams from port %d, want %d", other.Name, got, cand.Port)
	}
	func() {
		conn := connect(t, ctx, other)
		var ci string
		if err := conn.QueryRow(ctx, "SHOW primary_conninfo").Scan(&ci); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf(`host='127.0.0.1' port='%d' user='postgres' application_name='%s' password='it\'s a \\secret'`, cand.Port, other.Name)
		if ci != want {
			t.Errorf("primary_conninfo of %s = %s\nwant %s", other.Name, ci, want)
		}
	}()
	if got := queryInt(t, ctx, cand, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'physical'", "slot_"+other.Name); got != 1 {
		t.Errorf("slot_%s on %s: %d", other.Name, cand.Name, got)
	}
	if names, err := a.SyncStandbyNames(ctx, member(cand)); err != nil || names != "ANY 1 (pg1, pg2)" {
		t.Errorf("SyncStandbyNames(%s) = %q, %v", cand.Name, names, err)
	}
	// A synchronous commit: the re-pointed standby confirms it.
	mustExec(t, ctx, cand, "INSERT INTO t VALUES (3)")
	waitUntil(t, 20*time.Second, "row 3 on "+other.Name, func() bool {
		conn, err := other.Connect(ctx)
		if err != nil {
			return false
		}
		defer closeConn(conn)
		var n int
		return conn.QueryRow(ctx, "SELECT count(*) FROM t WHERE i = 3").Scan(&n) == nil && n == 1
	})
	if err := cand.WaitStreaming(ctx, other); err != nil {
		t.Error(err)
	}

	// Idempotent; the new primary itself is not re-pointed.
	if err := a.Repoint(ctx, act, member(other)); err != nil {
		t.Errorf("second Repoint: %v", err)
	}
	if err := a.Repoint(ctx, act, member(cand)); err != nil {
		t.Errorf("Repoint of the new primary: %v", err)
	}
}

func TestRepointRefusesPrimaryPromoteClearsFence(t *testing.T) {
	t.Parallel()
	c := pglab.StartForTest(t, pglab.Options{Standbys: 1})
	ctx := testCtx(t, time.Minute)
	pg0, pg1 := c.Nodes[0], c.Nodes[1]
	a := newTestActuator(t, Config{})

	// pg0 is a primary: never re-pointed.
	err := a.Repoint(ctx, failover.Action{Old: member(pg0), New: member(pg1)}, member(pg0))
	if !errors.Is(err, ErrNotInRecovery) || !strings.Contains(err.Error(), pg0.Addr()) {
		t.Fatalf("Repoint of a primary: %v; want ErrNotInRecovery naming %s", err, pg0.Addr())
	}
	conn := connect(t, ctx, pg0)
	var ci string
	if err := conn.QueryRow(ctx, "SHOW primary_conninfo").Scan(&ci); err != nil || ci != "" {
		t.Errorf("primary's primary_conninfo = %q, %v; want untouched (empty)", ci, err)
	}

	// Fence pg0, then promote it back (e.g. an aborted switchover):
	// Promote clears the fence.
	res, err := a.Fence(ctx, failover.Action{Old: member(pg0), New: member(pg1)})
	if err != nil || !res.Confirmed {
		t.Fatalf("Fence = %+v, %v", res, err)
	}
	if err := execOn(ctx, pg0, "CREATE TABLE t (i int)"); sqlStateOf(err) != "25006" {
		t.Fatalf("write on fenced pg0: %v; want 25006", err)
	}
	if err := a.Promote(ctx, failover.Action{Kind: "switchover", Old: member(pg1), New: member(pg0)}); err != nil {
		t.Fatalf("Promote of fenced primary: %v", err)
	}
	mustExec(t, ctx, pg0, "CREATE TABLE t (i int)")
	if fenced, err := a.IsFenced(ctx, member(pg0)); err != nil || fenced {
		t.Errorf("IsFenced after Promote = %v, %v; want false", fenced, err)
	}
	if fenced, err := a.IsFenced(ctx, member(pg1)); err != nil || !fenced {
		t.Errorf("IsFenced(standby) = %v, %v; want true", fenced, err)
	}
}

func TestCurrentLSNWaitReplayed(t *testing.T) {
	t.Parallel()
	c := pglab.StartForTest(t, pglab.Options{Standbys: 1, Sync: true})
	ctx := testCtx(t, time.Minute)
	pg0, pg1 := c.Nodes[0], c.Nodes[1]
	a := newTestActuator(t, Config{})

	mustExec(t, ctx, pg0, "CREATE TABLE t AS SELECT generate_series(1, 10000) AS i")
	lsn, rec, err := a.CurrentLSN(ctx, member(pg0))
	if err != nil || rec || lsn == 0 {
		t.Fatalf("CurrentLSN(primary) = %s, %v, %v", FormatLSN(lsn), rec, err)
	}
	if err := a.WaitReplayed(ctx, member(pg1), lsn); err != nil {
		t.Fatalf("WaitReplayed: %v", err)
	}
	l1, rec, err := a.CurrentLSN(ctx, member(pg1))
	if err != nil || !rec || l1 < lsn {
		t.Fatalf("CurrentLSN(standby) = %s, %v, %v; want in recovery, >= %s", FormatLSN(l1), rec, err, FormatLSN(lsn))
	}
	if got := queryInt(t, ctx, pg1, "SELECT count(*) FROM t"); got != 10000 {
		t.Errorf("standby has %d rows after WaitReplayed", got)
	}

	// A primary cannot be waited on; a future LSN times out with ctx.
	if err := a.WaitReplayed(ctx, member(pg0), lsn); !errors.Is(err, ErrNotInRecovery) {
		t.Errorf("WaitReplayed(primary) = %v; want ErrNotInRecovery", err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err = a.WaitReplayed(short, member(pg1), lsn+1<<40)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "pg1") {
		t.Errorf("WaitReplayed(future) = %v; want deadline exceeded naming pg1", err)
	}

	names, err := a.SyncStandbyNames(ctx, member(pg0))
	if err != nil || names != "ANY 1 (pg1)" {
		t.Errorf("SyncStandbyNames = %q, %v", names, err)
	}
}
