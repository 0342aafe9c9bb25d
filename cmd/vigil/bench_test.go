package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/vigilha/vigil/cluster/clustertest"
)

// BenchmarkLeaderReelection kills -9 the leader process of a real
// three-observer cluster and measures the time until both survivors agree
// on a new leader, over VIGIL_BENCH_RUNS runs (default 20). Polling adds up
// to ~10 ms to each figure.
func BenchmarkLeaderReelection(b *testing.B) {
	runs := 20
	if v, err := strconv.Atoi(os.Getenv("VIGIL_BENCH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	dir := b.TempDir()
	vigil, _ := clustertest.BuildBinaries(b, dir)
	pc := clustertest.StartProcs(b, vigil, dir, clustertest.ConfigOptions{LogLevel: "warn"})
	all := []int{0, 1, 2}
	ctx := context.Background()
	agreed := func(among []int) string {
		var id string
		clustertest.WaitFor(b, 30*time.Second, "leader agreement", func() (bool, string) {
			var err error
			id, err = pc.AgreedLeader(ctx, among)
			if err != nil {
				return false, err.Error()
			}
			return true, ""
		})
		return id
	}
	b.ResetTimer()
	var took []time.Duration
	for r := 0; r < runs; r++ {
		leaderID := agreed(all)
		leader := pc.Index(leaderID)
		var rest []int
		for _, i := range all {
			if i != leader {
				rest = append(rest, i)
			}
		}
		pc.Kill(leader)
		start := time.Now()
		for {
			id, err := pc.AgreedLeader(ctx, rest)
			if err == nil && id != leaderID {
				break
			}
			if time.Since(start) > 30*time.Second {
				b.Fatalf("run %d: no new leader after 30s: %v", r, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		took = append(took, time.Since(start))
		pc.Start(leader)
	}
	b.StopTimer()
	p50, p99 := percentile(took, 50), percentile(took, 99)
	b.ReportMetric(float64(p50.Milliseconds()), "p50-ms")
	b.ReportMetric(float64(p99.Milliseconds()), "p99-ms")
	fmt.Printf("\nleader re-election after kill -9 of the leader process (%d runs, heartbeat/election timeout 500ms)\n", runs)
	fmt.Printf("%-8s %10s\n%-8s %10s\n%-8s %10s\n%-8s %10s\n", "stat", "time", "min", took0(took), "p50", p50.Round(time.Millisecond), "p99", p99.Round(time.Millisecond))
}

func took0(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[0].Round(time.Millisecond)
}

// percentile returns the p-th percentile (nearest rank) of d.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := int(float64(len(s))*p/100+0.999999) - 1
	if rank < 0 {
		rank = 0
	}
	if rank >= len(s) {
		rank = len(s) - 1
	}
	return s[rank]
}
