package cluster_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/vigilha/vigil/cluster/clustertest"
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
