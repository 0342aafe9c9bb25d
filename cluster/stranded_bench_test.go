package cluster_test

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkStrandedClientWindow measures, for async and then synchronous
// replication (ANY 1 of the two standbys), VIGIL_BENCH_RUNS runs (default
// 10) of the stranded-writer scenario of TestFenceLabPartitionStrandedWriter,
// each in a fresh network-namespace lab (three database hosts with node
// agents and a database_fence, a client host, three observers; probe
// 300ms/250ms, down_after 2s, lease_timeout 1s):
//
//   - a writer inside db0's namespace writes, one row at a time, to db0's
//     own address; a client on the client host writes through the VIP;
//   - db0 is cut off from everyone (netlab CutAll); T is when CutAll
//     returned (its last rule cuts db0 off from the observers; how long
//     CutAll took is in its own column, not in the window);
//   - measured: stranded window = the stranded writer's last acknowledged
//     write − T; the stranded
//     writer's acknowledged writes missing on the new primary (and those
//     of the VIP client); T → first write acknowledged through the VIP by
//     the new primary.
//
// Each run also asserts the safety checks of the test (never two servers
// writable-and-routed, never the VIP on two hosts, the failover
// completes). It does not include: the test's 5 s after healing db0 (no
// heal here: the lab is torn down), clients on db0 over loopback or the
// unix socket (not fenced by design), concurrent or pipelined writers
// (one connection, one statement at a time, 300 ms statement budget),
// writes that committed on db0 without an acknowledgement (they cannot
// be "lost"), a real network (veth on one machine), other lease_timeout
// or probe settings, and the Raft timing: the observers run with
// heartbeat/election 2 s and leader lease 1 s instead of the defaults
// (see fenceLabOptions).
//
// Each run counts once whatever b.N is: the results of a mode are kept,
// so a second call of the same sub-benchmark (a larger b.N) reports them
// again instead of running the lab again.
func BenchmarkStrandedClientWindow(b *testing.B) {
	runs := benchRuns(10)
	for _, mode := range []struct {
		name string
		sync bool
	}{{"async", false}, {"sync", true}} {
		b.Run(mode.name, func(b *testing.B) {
			strandedBench.Lock()
			res, done := strandedBench.results[b.Name()]
			strandedBench.Unlock()
			if !done {
				for r := 0; r < runs; r++ {
					res = append(res, strandedBenchRun(b, mode.sync))
				}
				strandedBench.Lock()
				strandedBench.results[b.Name()] = res
				strandedBench.Unlock()
			}
			reportStranded(b, mode.name, res)
		})
	}
}

var strandedBench = struct {
	sync.Mutex
	results map[string][]strandedResult
}{results: map[string][]strandedResult{}}

// strandedBenchRun runs one lab under a scope whose cleanups (the lab's
// teardown) run when the run ends, not at the end of the benchmark.
func strandedBenchRun(b *testing.B, syncRep bool) strandedResult {
	tb := &runScope{TB: b}
	defer tb.done()
	return strandedRun(tb, syncRep, false)
}

func reportStranded(b *testing.B, mode string, res []strandedResult) {
	var window, firstVIP, cutTook []time.Duration
	var lost []int
	var rows strings.Builder
	fmt.Fprintf(&rows, "%-4s %9s %7s %6s %6s %8s %10s %12s %5s\n", "run", "stranded", "acks>T", "lost", "lostV", "cutAll", "T→promoted", "T→VIP write", "new")
	for i, r := range res {
		window, firstVIP, cutTook = append(window, r.window), append(firstVIP, r.firstVIP), append(cutTook, r.cutTook)
		lost = append(lost, r.lost)
		fmt.Fprintf(&rows, "%-4d %9s %7d %6d %6d %8s %10s %12s %5s\n", i, r.window.Round(time.Millisecond), r.afterCut, r.lost, r.vipLost,
			r.cutTook.Round(time.Millisecond), r.promoted.Round(time.Millisecond), r.firstVIP.Round(time.Millisecond), r.newPrimary)
	}
	wMed, wMax := medianMax(window)
	vMed, vMax := medianMax(firstVIP)
	lostD := make([]time.Duration, len(lost))
	for i, l := range lost {
		lostD[i] = time.Duration(l)
	}
	lm, lx := medianMax(lostD)
	lostP50, lostMax := float64(lm), int(lx)
	fmt.Fprintf(&rows, "%-4s %9s %7s %6.1f %6s %8s %10s %12s\n", "p50", wMed.Round(time.Millisecond), "", lostP50, "", "", "", vMed.Round(time.Millisecond))
	fmt.Fprintf(&rows, "%-4s %9s %7s %6d %6s %8s %10s %12s\n", "max", wMax.Round(time.Millisecond), "", lostMax, "", "", "", vMax.Round(time.Millisecond))
	// The table goes to stdout like the other benchmarks' tables: the
	// testing package trims a benchmark's log to its first 10 lines.
	fmt.Printf("\nstranded writer on db0's own address, %s replication, %d runs, lease_timeout 1s\n"+
		"(T = CutAll returned; stranded = the stranded writer's last ack − T, negative when it stopped while CutAll ran;\n"+
		" acks>T = its acks after T; lost = its acked writes missing on the new primary; lostV = same for the client\n"+
		" through the VIP; cutAll = how long CutAll took, before T; T→promoted = the leader's promoted step)\n%s", mode, len(res), rows.String())
	b.Logf("%s, %d runs: stranded window median %s max %s; acked writes lost median %.1f max %d; T → first write through the VIP median %s max %s",
		mode, len(res), wMed.Round(time.Millisecond), wMax.Round(time.Millisecond), lostP50, lostMax, vMed.Round(time.Millisecond), vMax.Round(time.Millisecond))
	b.ReportMetric(float64(wMed.Milliseconds()), "stranded_p50_ms")
	b.ReportMetric(float64(wMax.Milliseconds()), "stranded_max_ms")
	b.ReportMetric(lostP50, "lost_writes_p50")
	b.ReportMetric(float64(lostMax), "lost_writes_max")
	b.ReportMetric(float64(vMed.Milliseconds()), "vip_write_p50_ms")
	b.ReportMetric(float64(vMax.Milliseconds()), "vip_write_max_ms")
}

// medianMax returns the median (the mean of the two middle values for an
// even count) and the maximum of d.
func medianMax(d []time.Duration) (time.Duration, time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2], s[n-1]
	}
	return (s[n/2-1] + s[n/2]) / 2, s[n-1]
}

// runScope is a testing.TB whose Cleanup and TempDir belong to one run:
// done runs the cleanups (last registered first) and removes the
// directories. Everything else goes to the embedded TB.
// Its log lines are kept and written to the benchmark only if the run
// failed: the table is the benchmark's output.
type runScope struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	logs     []string
}

func (r *runScope) Logf(format string, args ...any) {
	r.mu.Lock()
	r.logs = append(r.logs, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

func (r *runScope) Log(args ...any) {
	r.mu.Lock()
	r.logs = append(r.logs, fmt.Sprintln(args...))
	r.mu.Unlock()
}

func (r *runScope) Cleanup(f func()) {
	r.mu.Lock()
	r.cleanups = append(r.cleanups, f)
	r.mu.Unlock()
}

func (r *runScope) TempDir() string {
	d, err := os.MkdirTemp("", "vigil-stranded-")
	if err != nil {
		r.Fatal(err)
	}
	r.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

func (r *runScope) done() {
	defer func() {
		if r.Failed() {
			r.mu.Lock()
			logs := r.logs
			r.mu.Unlock()
			r.TB.Log(strings.Join(logs, "\n"))
		}
	}()
	for {
		r.mu.Lock()
		n := len(r.cleanups)
		if n == 0 {
			r.mu.Unlock()
			return
		}
		f := r.cleanups[n-1]
		r.cleanups = r.cleanups[:n-1]
		r.mu.Unlock()
		f()
	}
}
