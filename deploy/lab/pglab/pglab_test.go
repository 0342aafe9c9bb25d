package pglab

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := poll(ctx, 20*time.Millisecond, func() (bool, error) { return cond(), nil })
	if err != nil {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

func inRecovery(ctx context.Context, n *Node) (bool, error) {
	conn, err := n.Connect(ctx)
	if err != nil {
		return false, err
	}
	defer conn.Close(ctx)
	var rec bool
	err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec)
	return rec, err
}

func TestClusterLifecycle(t *testing.T) {
	c := StartForTest(t, Options{Standbys: 1, Sync: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	p, s := c.Primary(), c.Standbys()[0]
	if p.Name != "pg0" || s.Name != "pg1" || p.Port == 0 || s.Port == 0 || p.Port == s.Port {
		t.Fatalf("unexpected nodes: %+v %+v", p, s)
	}
	if rec, err := inRecovery(ctx, p); err != nil || rec {
		t.Fatalf("primary in recovery=%v err=%v", rec, err)
	}
	if rec, err := inRecovery(ctx, s); err != nil || !rec {
		t.Fatalf("standby in recovery=%v err=%v", rec, err)
	}

	// A synchronous write on the primary shows up on the standby.
	conn, err := p.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	waitFor(t, 10*time.Second, "row replicated", func() bool {
		sc, err := s.Connect(ctx)
		if err != nil {
			return false
		}
		defer sc.Close(ctx)
		var v int
		return sc.QueryRow(ctx, "SELECT v FROM t").Scan(&v) == nil && v == 42
	})

	// Stop hangs the whole server: every process is stopped and a new
	// connection cannot complete.
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	kids := children(s.PID())
	if len(kids) < 3 { // checkpointer, background writer, startup, walreceiver
		t.Fatalf("standby has only %d children", len(kids))
	}
	for _, pid := range append(kids, s.PID()) {
		if state, _, _ := procStat(pid); state != 'T' {
			t.Errorf("process %d in state %q after Stop, want stopped", pid, state)
		}
	}
	hctx, hcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = inRecovery(hctx, s)
	hcancel()
	if err == nil {
		t.Fatal("query on a stopped standby succeeded")
	}
	if err := s.Cont(); err != nil {
		t.Fatal(err)
	}
	if _, err := inRecovery(ctx, s); err != nil {
		t.Fatalf("standby after Cont: %v", err)
	}

	// Kill, then Start again on the same data directory.
	tree := append(children(s.PID()), s.PID())
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if s.Running() || s.PID() != 0 {
		t.Fatalf("standby still running after Kill")
	}
	for _, pid := range tree {
		if alive(pid) {
			t.Errorf("process %d survived Kill", pid)
		}
	}
	if err := s.Kill(); err == nil {
		t.Fatal("Kill of a dead node succeeded")
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err == nil {
		t.Fatal("Start of a running node succeeded")
	}
	if err := p.WaitStreaming(ctx, s); err != nil {
		t.Fatal(err)
	}

	// Close stops everything (even a hung node) and removes the dirs.
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	pids := append(append(children(p.PID()), p.PID()), append(children(s.PID()), s.PID())...)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d survived Close", pid)
		}
	}
	for _, n := range c.Nodes {
		if _, err := os.Stat(n.Dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed: %v", n.Dir, err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestStartFailureReportsLogAndCleansUp(t *testing.T) {
	SkipUnlessAvailable(t)
	base := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{BaseDir: base, ExtraConf: []string{"no_such_parameter = 1"}})
	if err == nil {
		c.Close()
		t.Fatal("Start succeeded with a bad configuration")
	}
	t.Logf("expected error: %v", err)
	if !strings.Contains(err.Error(), "no_such_parameter") {
		t.Fatalf("error lacks the log tail: %v", err)
	}
	ents, _ := os.ReadDir(base)
	if len(ents) != 0 {
		t.Fatalf("node dirs left behind: %v", ents)
	}
}

func TestTwoSyncStandbysOwnBaseDir(t *testing.T) {
	SkipUnlessAvailable(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{Standbys: 2, Sync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.Standbys()) != 2 {
		t.Fatalf("%d standbys", len(c.Standbys()))
	}
	conn, err := c.Primary().Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names string
	if err := conn.QueryRow(ctx, "SHOW synchronous_standby_names").Scan(&names); err != nil {
		t.Fatal(err)
	}
	if names != "ANY 1 (pg1, pg2)" {
		t.Fatalf("synchronous_standby_names = %q", names)
	}
	var quorum int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'").Scan(&quorum); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if quorum != 2 {
		t.Fatalf("%d quorum standbys, want 2", quorum)
	}

	base := c.baseDir
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(base); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("base dir %s not removed: %v", base, err)
	}
}

func TestFreePort(t *testing.T) {
	p, err := FreePort()
	if err != nil || p <= 0 || p > 65535 {
		t.Fatalf("FreePort() = %d, %v", p, err)
	}
}
