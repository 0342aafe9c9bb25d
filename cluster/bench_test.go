package cluster_test

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/cluster/clustertest"
	"github.com/vigilha/vigil/deploy/lab/pglab"
	"github.com/vigilha/vigil/health"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// BenchmarkRaftCommit measures the time to commit and apply one command on
// a real three-observer cluster over loopback TCP, one proposal at a time
// (each waits for the previous), as the failover controller does.
func BenchmarkRaftCommit(b *testing.B) {
	c := clustertest.Start(b, clustertest.Options{})
	leader := c.WaitForLeader(30 * time.Second)
	clustertest.Eventually(b, 30*time.Second, "groups synced", func() bool {
		_, ok := c.Nodes[leader].Obs.FSM().Group("pg-main")
		return ok
	})
	obs := c.Nodes[leader].Obs
	n := b.N
	if n < 1000 {
		n = 1000
	}
	lat := make([]time.Duration, 0, n)
	b.ResetTimer()
	for i := 0; i < n; i++ {
		start := time.Now()
		_, err := obs.Propose(context.Background(), &vigilv1.Command{Actor: "bench",
			Cmd: &vigilv1.Command_SetPaused{SetPaused: &vigilv1.SetPaused{Group: "pg-main", Paused: i%2 == 0}}})
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	at := func(p float64) time.Duration { return lat[int(float64(len(lat)-1)*p)] }
	b.ReportMetric(float64(at(0.5).Microseconds()), "p50-µs")
	b.ReportMetric(float64(at(0.99).Microseconds()), "p99-µs")
	fmt.Printf("\nraft commit latency, 3 observers on loopback, %d sequential commands\n%-6s %10s\n%-6s %10s\n%-6s %10s\n%-6s %10s\n",
		len(lat), "stat", "latency", "p50", at(0.5).Round(time.Microsecond), "p99", at(0.99).Round(time.Microsecond), "max", lat[len(lat)-1].Round(time.Microsecond))
}

// BenchmarkTimeToODOWN kills -9 a real PostgreSQL primary watched by three
// in-process observers (probe interval 500ms, timeout 400ms, down_after 2s)
// and measures until every observer reports it ODOWN, over
// VIGIL_BENCH_RUNS runs (default 20). The floor is down_after plus up to
// one probe interval plus one probe timeout.
func BenchmarkTimeToODOWN(b *testing.B) {
	runs := benchRuns(20)
	pg := pglab.StartForTest(b, pglab.Options{Standbys: 1})
	groups := strings.Replace(pgGroups(pg), "down_after: 1s", "down_after: 2s", 1)
	c := clustertest.Start(b, clustertest.Options{ConfigOptions: clustertest.ConfigOptions{Groups: groups}})
	c.WaitForLeader(30 * time.Second)
	state := func(want string) func() (bool, string) {
		return func() (bool, string) {
			for _, i := range c.Running() {
				if h := memberHealth(c, i, "db1"); h.GetState() != want {
					return false, c.Nodes[i].ID + ": " + h.GetSummary()
				}
			}
			return true, ""
		}
	}
	var took []time.Duration
	b.ResetTimer()
	for r := 0; r < runs; r++ {
		clustertest.WaitFor(b, 30*time.Second, "db1 up everywhere", state(health.StateUp))
		if err := pg.Primary().Kill(); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for ok, why := state(health.StateODown)(); !ok; ok, why = state(health.StateODown)() {
			if time.Since(start) > 30*time.Second {
				b.Fatalf("run %d: no ODOWN after 30s: %s", r, why)
			}
			time.Sleep(5 * time.Millisecond)
		}
		took = append(took, time.Since(start))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := pg.Primary().Start(ctx)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	report(b, fmt.Sprintf("primary killed → ODOWN on all 3 observers (%d runs, interval 500ms, timeout 400ms, down_after 2s)", runs), took)
}

func benchRuns(def int) int {
	if v, err := strconv.Atoi(os.Getenv("VIGIL_BENCH_RUNS")); err == nil && v > 0 {
		return v
	}
	return def
}

// quantiles sorts a copy of d and returns it with a nearest-rank
// quantile function over it (q in 0..1), for the benchmarks' tables.
func quantiles(d []time.Duration) ([]time.Duration, func(q float64) time.Duration) {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s, func(q float64) time.Duration {
		i := int(float64(len(s))*q+0.999999) - 1
		return s[max(0, min(i, len(s)-1))]
	}
}

// report prints min/p50/p99/max of d and reports p50/p99 to the benchmark.
func report(b *testing.B, title string, d []time.Duration) {
	s, at := quantiles(d)
	b.ReportMetric(float64(at(0.5).Milliseconds()), "p50-ms")
	b.ReportMetric(float64(at(0.99).Milliseconds()), "p99-ms")
	fmt.Printf("\n%s\n%-5s %10s\n%-5s %10s\n%-5s %10s\n%-5s %10s\n%-5s %10s\n", title, "stat", "time",
		"min", s[0].Round(time.Millisecond), "p50", at(0.5).Round(time.Millisecond), "p99", at(0.99).Round(time.Millisecond), "max", s[len(s)-1].Round(time.Millisecond))
}
