package health

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vigilha/vigil/deploy/lab/pglab"
)

// One lab cluster (primary pg0 + synchronous standby pg1) serves every
// PostgreSQL test of this package; tests that kill or hang a node put it
// back before they return. TestMain tears it down.
var lab struct {
	once sync.Once
	c    *pglab.Cluster
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if lab.c != nil {
		if err := lab.c.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "pglab close:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// sharedCluster returns the package's cluster, starting it on first use.
// It skips when PostgreSQL cannot run here unless VIGIL_REQUIRE_PG=1.
func sharedCluster(t *testing.T) *pglab.Cluster {
	t.Helper()
	pglab.SkipUnlessAvailable(t)
	lab.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		lab.c, lab.err = pglab.Start(ctx, pglab.Options{Standbys: 1, Sync: true})
	})
	if lab.err != nil {
		t.Fatalf("starting the PostgreSQL lab: %v", lab.err)
	}
	return lab.c
}

const pgTimeout = time.Second

func pgProbe(n *pglab.Node) Prober {
	return NewPostgresProbe(PostgresProbeConfig{
		Address: n.Addr(), User: "postgres", Database: "postgres", SSLMode: "disable", Timeout: pgTimeout,
	})
}

func probeNow(p Prober) Result { return p.Probe(context.Background()) }

func TestPostgresProbeRoles(t *testing.T) {
	c := sharedCluster(t)
	primary, standby := c.Primary(), c.Standbys()[0]

	var r Result
	waitFor(t, 10*time.Second, "primary reporting pg1 as synchronous", func() bool {
		r = probeNow(pgProbe(primary))
		return slices.Contains(r.SyncStandbys, standby.Name)
	})
	if r.Verdict != VerdictUp || r.Role != RolePrimary || r.Err != "" || r.CurrentLSN == 0 || r.Timeline != 1 {
		t.Fatalf("primary: %+v", r)
	}
	if r.ReceiveLSN != 0 || r.ReplayLSN != 0 || r.Streaming || r.Upstream != "" {
		t.Fatalf("primary has standby fields: %+v", r)
	}
	i := slices.IndexFunc(r.Replicas, func(ri ReplicaInfo) bool { return ri.ApplicationName == standby.Name })
	if i < 0 {
		t.Fatalf("standby missing from replicas: %+v", r.Replicas)
	}
	if ri := r.Replicas[i]; ri.ClientAddr != "127.0.0.1" || ri.State != "streaming" || ri.SyncState != "quorum" || ri.ReplayLSN == 0 {
		t.Fatalf("replica row: %+v", ri)
	}

	s := probeNow(pgProbe(standby))
	if s.Verdict != VerdictUp || s.Role != RoleStandby || s.Err != "" {
		t.Fatalf("standby: %+v", s)
	}
	if !s.Streaming || s.Upstream != primary.Addr() || s.ReplayLSN == 0 || s.ReceiveLSN == 0 || s.Timeline != 1 {
		t.Fatalf("standby replication state: %+v (primary at %s)", s, primary.Addr())
	}
	if s.CurrentLSN != 0 || len(s.Replicas) != 0 || s.LagBytes < 0 || s.LagSeconds < 0 {
		t.Fatalf("standby has primary fields or negative lag: %+v", s)
	}
}

func TestPostgresProbeReplicationCatchUp(t *testing.T) {
	c := sharedCluster(t)
	primary, standby := c.Primary(), c.Standbys()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	before := probeNow(pgProbe(primary)).CurrentLSN
	conn, err := primary.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS catchup (id serial, pad text);
INSERT INTO catchup (pad) SELECT repeat('x', 200) FROM generate_series(1, 5000)`); err != nil {
		t.Fatal(err)
	}
	after := probeNow(pgProbe(primary))
	if after.Verdict != VerdictUp || after.CurrentLSN <= before {
		t.Fatalf("primary LSN did not advance: before %s, after %+v", FormatLSN(before), after)
	}

	var s Result
	waitFor(t, 20*time.Second, "standby replaying up to the primary's LSN", func() bool {
		s = probeNow(pgProbe(standby))
		return s.Verdict == VerdictUp && s.ReplayLSN >= after.CurrentLSN
	})
	if s.ReceiveLSN < s.ReplayLSN || s.LagBytes != int64(s.ReceiveLSN-s.ReplayLSN) {
		t.Fatalf("lag inconsistent: %+v", s)
	}
	waitFor(t, 20*time.Second, "standby lag back to zero", func() bool {
		s = probeNow(pgProbe(standby))
		return s.LagBytes == 0 && s.LagSeconds == 0
	})
}

func TestPostgresProbeUnknownDatabase(t *testing.T) {
	c := sharedCluster(t)
	r := NewPostgresProbe(PostgresProbeConfig{
		Address: c.Primary().Addr(), User: "postgres", Database: "no_such_db", SSLMode: "disable", Timeout: pgTimeout,
	}).Probe(context.Background())
	if r.Verdict != VerdictDown || r.ErrKind != KindOther {
		t.Fatalf("unknown database: %+v", r)
	}
}

func TestPostgresProbeKilledPrimaryAndRestart(t *testing.T) {
	c := sharedCluster(t)
	primary, standby := c.Primary(), c.Standbys()[0]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t.Cleanup(func() {
		// Leave the shared cluster as we found it, even on failure.
		if !primary.Running() {
			if err := primary.Start(ctx); err != nil {
				t.Errorf("restarting primary: %v", err)
			}
		}
	})

	if err := primary.Kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := probeNow(pgProbe(primary))
	if elapsed := time.Since(start); elapsed > pgTimeout+3*time.Second {
		t.Fatalf("probe of a killed primary took %v", elapsed)
	}
	if r.Verdict != VerdictDown || r.ErrKind != KindRefused {
		t.Fatalf("killed primary: %+v", r)
	}
	// The standby is still up, still a standby, but no longer streaming.
	waitFor(t, 10*time.Second, "standby noticing the primary is gone", func() bool {
		s := probeNow(pgProbe(standby))
		return s.Verdict == VerdictUp && s.Role == RoleStandby && !s.Streaming && s.Upstream == ""
	})

	// The same probe is correct after the server restarts.
	if err := primary.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if r := probeNow(pgProbe(primary)); r.Verdict != VerdictUp || r.Role != RolePrimary {
		t.Fatalf("restarted primary: %+v", r)
	}
	if err := primary.WaitStreaming(ctx, standby); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "standby streaming again", func() bool {
		s := probeNow(pgProbe(standby))
		return s.Streaming && s.Upstream == primary.Addr()
	})
}

func TestPostgresProbeHungPrimary(t *testing.T) {
	c := sharedCluster(t)
	primary, standby := c.Primary(), c.Standbys()[0]

	col := newCollector(t)
	const (
		interval = 100 * time.Millisecond
		timeout  = 500 * time.Millisecond
	)
	r := NewRunner([]Target{
		{Group: "pg", Member: primary.Name, Interval: interval, Timeout: timeout, Prober: pgProbe(primary)},
		{Group: "pg", Member: standby.Name, Interval: interval, Timeout: timeout, Prober: pgProbe(standby)},
	}, col.sink, nil)
	stop := startRunner(t, r, col)
	upNow := func(m string) bool { res, ok := col.last(m); return ok && res.Verdict == VerdictUp }
	waitFor(t, 10*time.Second, "both members up", func() bool { return upNow(primary.Name) && upNow(standby.Name) })

	if err := primary.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := true
	cont := func() {
		if stopped {
			stopped = false
			if err := primary.Cont(); err != nil {
				t.Errorf("Cont: %v", err)
			}
		}
	}
	t.Cleanup(cont)
	standbyAtStop := col.count(standby.Name)

	// A direct probe: down, timeout, bounded by its timeout.
	start := time.Now()
	res := probeNow(pgProbe(primary))
	if elapsed := time.Since(start); elapsed > pgTimeout+3*time.Second {
		t.Fatalf("probe of a hung primary took %v (timeout %v)", elapsed, pgTimeout)
	}
	if res.Verdict != VerdictDown || res.ErrKind != KindTimeout {
		t.Fatalf("hung primary: %+v", res)
	}

	// Meanwhile the Runner keeps probing the standby.
	waitFor(t, 10*time.Second, "runner: primary down (timeout) and 5 more standby results", func() bool {
		res, ok := col.last(primary.Name)
		return ok && res.Verdict == VerdictDown && res.ErrKind == KindTimeout &&
			col.count(standby.Name) >= standbyAtStop+5
	})
	if res, _ := col.last(standby.Name); res.Verdict != VerdictUp || res.Role != RoleStandby {
		t.Fatalf("standby during the hang: %+v", res)
	}

	cont()
	waitFor(t, 10*time.Second, "primary up again after SIGCONT", func() bool { return upNow(primary.Name) })
	stop()
}

func TestPostgresProbeTimelineAfterPromotion(t *testing.T) {
	// Its own cluster: promotion is not reversible.
	c := pglab.StartForTest(t, pglab.Options{Standbys: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	standby := c.Standbys()[0]

	conn, err := standby.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var promoted bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(wait => true, wait_seconds => 30)").Scan(&promoted); err != nil || !promoted {
		t.Fatalf("pg_promote: %v %v", promoted, err)
	}

	// pg_control_checkpoint() may still say timeline 1 until the first
	// checkpoint after promotion (it depends on timing); the probe reads
	// the timeline from the current WAL file name and must say 2.
	var ckptTLI int
	if err := conn.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&ckptTLI); err != nil {
		t.Fatal(err)
	}
	t.Logf("pg_control_checkpoint() timeline right after promotion: %d", ckptTLI)
	r := probeNow(pgProbe(standby))
	if r.Verdict != VerdictUp || r.Role != RolePrimary || r.Timeline != 2 || r.CurrentLSN == 0 {
		t.Fatalf("promoted standby (checkpoint timeline %d): %+v", ckptTLI, r)
	}
	// The old primary still runs: both report Up as primary; telling
	// which one is wrong is the caller's business, not the probe's.
	if old := probeNow(pgProbe(c.Primary())); old.Verdict != VerdictUp || old.Role != RolePrimary || old.Timeline != 1 {
		t.Fatalf("old primary: %+v", old)
	}
}
