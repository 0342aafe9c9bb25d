package cluster_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/cluster/clustertest"
	"github.com/vigilha/vigil/deploy/lab/pglab"
	"github.com/vigilha/vigil/fsm"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// BenchmarkFailover measures, over VIGIL_BENCH_RUNS runs (default 20), the
// time from kill -9 of a real PostgreSQL primary to the first write
// acknowledged by the new primary, with three in-process observers
// (probe interval 500ms, timeout 400ms, down_after 2s) and two streaming
// standbys. Each run starts a fresh lab so every run is a first failover.
// The total is split into detect (kill → ODOWN), decide (ODOWN → intent
// committed), fence, promote, reroute, repoint (each step's own duration)
// and the client's reconnect-and-write.
func BenchmarkFailover(b *testing.B) {
	runs := benchRuns(20)
	phases := []string{"detect", "decide", "fence", "promote", "reroute", "repoint", "total"}
	got := map[string][]time.Duration{}
	b.ResetTimer()
	for r := 0; r < runs; r++ {
		res := oneFailoverRun(b)
		for _, p := range phases {
			got[p] = append(got[p], res[p])
		}
	}
	b.StopTimer()
	fmt.Printf("\nkill -9 primary → first acknowledged write on the new primary (%d runs; probe 500ms/400ms, down_after 2s, 3 observers, 2 standbys)\n", runs)
	fmt.Printf("%-9s %9s %9s %9s\n", "phase", "p50", "p99", "max")
	for _, p := range phases {
		s, at := quantiles(got[p])
		fmt.Printf("%-9s %9s %9s %9s\n", p, at(0.5).Round(time.Millisecond), at(0.99).Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
		if p == "total" {
			b.ReportMetric(float64(at(0.5).Milliseconds()), "p50-ms")
			b.ReportMetric(float64(at(0.99).Milliseconds()), "p99-ms")
		}
	}
}

func oneFailoverRun(b *testing.B) map[string]time.Duration {
	pg := pglab.StartForTest(b, pglab.Options{Standbys: 2})
	var g strings.Builder
	g.WriteString(`
  - name: pg-main
    kind: postgres
    primary: pg0
    down_after: 2s
    probe: {type: postgres, interval: 500ms, timeout: 400ms}
    members:`)
	for _, n := range pg.Nodes {
		fmt.Fprintf(&g, "\n      - {name: %s, address: %q}", n.Name, n.Addr())
	}
	g.WriteString("\n")
	c := clustertest.Start(b, clustertest.Options{ConfigOptions: clustertest.ConfigOptions{Groups: g.String()}})
	defer func() { c.Shutdown(); _ = pg.Close() }()
	c.WaitForLeader(30 * time.Second)
	clustertest.WaitFor(b, 30*time.Second, "all members up everywhere", func() (bool, string) {
		for _, i := range c.Running() {
			for _, h := range c.Nodes[i].Obs.Monitor().Health("pg-main") {
				if h.GetState() != "up" || h.GetUpVotes() != 3 {
					return false, h.GetSummary()
				}
			}
		}
		return true, ""
	})
	if err := pg.Primary().Kill(); err != nil {
		b.Fatal(err)
	}
	killed := time.Now()
	var wrote time.Time
	var f *vigilv1.Failover
	for wrote.IsZero() {
		if time.Since(killed) > time.Minute {
			b.Fatalf("no write on a new primary within a minute")
		}
		gr, _ := c.Nodes[0].Obs.FSM().Group("pg-main")
		target := node(pg, gr.GetPrimary())
		if gr.GetPrimary() == "pg0" || target == nil {
			time.Sleep(2 * time.Millisecond)
			continue
		}
		// The client follows the state: connect to the new primary and write.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := target.Connect(ctx)
		if err == nil {
			_, err = conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS bench_write (x int)")
			conn.Close(context.Background())
		}
		cancel()
		if err == nil {
			wrote = time.Now()
		}
	}
	clustertest.WaitFor(b, time.Minute, "failover record", func() (bool, string) {
		gr, _ := c.Nodes[0].Obs.FSM().Group("pg-main")
		if n := len(gr.GetFailovers()); n > 0 && gr.GetFailovers()[n-1].GetOutcome() == fsm.OutcomeCompleted {
			f = gr.GetFailovers()[n-1]
			return true, ""
		}
		return false, "in progress"
	})
	step := func(name string) time.Duration {
		for _, s := range f.GetSteps() {
			if s.GetName() == name {
				return time.Duration(s.GetDurationMs()) * time.Millisecond
			}
		}
		return 0
	}
	return map[string]time.Duration{
		"detect":  f.GetOdownAt().AsTime().Sub(killed),
		"decide":  f.GetStartedAt().AsTime().Sub(f.GetOdownAt().AsTime()),
		"fence":   step(fsm.StepFenced),
		"promote": step(fsm.StepPromoted),
		"reroute": step(fsm.StepRerouted),
		"repoint": step(fsm.StepStandbysRepointed),
		"total":   wrote.Sub(killed),
	}
}
