package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/vigilha/vigil/cluster/clustertest"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// BenchmarkObserverScale runs three real observer processes watching 1,000
// groups of 2 members (2,000 members) with TCP probes every second, and
// measures one observer's CPU and resident memory over 30 s once the
// cluster is steady. The targets are a fake TCP server in this process
// that accepts and closes connections: this measures vigil, not a
// database.
func BenchmarkObserverScale(b *testing.B) {
	const groups = 1000
	window := 30 * time.Second
	if v, err := time.ParseDuration(os.Getenv("VIGIL_BENCH_WINDOW")); err == nil {
		window = v
	}
	// Listen on every loopback address so the two members of a group
	// (which need distinct addresses) can be 127.0.0.1 and 127.0.0.2.
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	var g strings.Builder
	for i := 0; i < groups; i++ {
		fmt.Fprintf(&g, "\n  - name: g%04d\n    kind: generic\n    primary: a\n    probe: {type: tcp, interval: 1s, timeout: 800ms}\n    members:\n      - {name: a, address: \"127.0.0.1:%d\"}\n      - {name: b, address: \"127.0.0.2:%d\"}", i, port, port)
	}
	g.WriteString("\n")
	dir := b.TempDir()
	vigil, ctl := clustertest.BuildBinaries(b, dir)
	pc := clustertest.StartProcs(b, vigil, dir, clustertest.ConfigOptions{Groups: g.String(), LogLevel: "warn"})
	clustertest.WaitFor(b, time.Minute, "leader", func() (bool, string) {
		_, err := pc.AgreedLeader(context.Background(), []int{0, 1, 2})
		return err == nil, fmt.Sprint(err)
	})
	// Steady: the last group is probed and voted on by all three.
	clustertest.WaitFor(b, 2*time.Minute, "all groups probed", func() (bool, string) {
		out, err := runCmd(ctl, "--addr", pc.GRPCAddr(0), "group", fmt.Sprintf("g%04d", groups-1), "-o", "json")
		if err != nil {
			return false, string(out)
		}
		var r vigilv1.GetGroupResponse
		if err := protojson.Unmarshal(out, &r); err != nil {
			return false, err.Error()
		}
		up := 0
		for _, h := range r.GetHealth() {
			if h.GetState() == "up" && h.GetUpVotes() == 3 {
				up++
			}
		}
		return up == 2, fmt.Sprintf("%d of 2 members up on all 3 observers", up)
	})
	pid := pc.PID(0)
	cpu0, _ := procCPU(pid)
	start := time.Now()
	b.ResetTimer()
	time.Sleep(window) // measuring a steady window, not waiting for a state
	b.StopTimer()
	cpu1, _ := procCPU(pid)
	elapsed := time.Since(start)
	rss := procRSS(pid)
	cores := (cpu1 - cpu0).Seconds() / elapsed.Seconds()
	b.ReportMetric(cores, "cores")
	b.ReportMetric(float64(rss)/(1<<20), "RSS-MiB")
	fmt.Printf("\none observer of 3, %d groups / %d members, TCP probes every 1s (fake TCP target), %s window\n%-6s %8.3f\n%-6s %8.1f MiB\n",
		groups, 2*groups, window, "cores", cores, "RSS", float64(rss)/(1<<20))
}

// procCPU returns the user+system CPU time of a process.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) start after ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100, nil // USER_HZ = 100
}

// procRSS returns the resident set size of a process in bytes.
func procRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
