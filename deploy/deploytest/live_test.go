package deploytest

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/vigilha/vigil/cluster/clustertest"
	"github.com/vigilha/vigil/deploy/lab/pglab"
	"github.com/vigilha/vigil/fsm"
)

const waitLong = 60 * time.Second

// The tests below take every metric name (and label) from the dashboard
// JSON and the rules file and look for it in real scrapes of real
// observers; there is no hand-kept list of metrics.
//
// A labelled vector (CounterVec, HistogramVec, …) appears in a scrape
// only once it has a child, and some children only exist after events a
// test cluster without PostgreSQL cannot produce (a completed failover, a
// fence, a standby's lag). So:
//
//   - TestKitMetricsExistInLiveScrape (always runs) triggers what it can
//     (an ODOWN primary without candidate, malformed gossip packets) and
//     accepts a family absent from the scrape only if the Go source
//     defines it as a labelled vector, prometheus.NewXxxVec(Opts{Name:
//     "vigil_..."}, labels) — with the labels the queries use. It logs
//     which families it accepted that way.
//   - TestKitMetricsExistAfterRealFailover (needs PostgreSQL, like the
//     failover tests; VIGIL_REQUIRE_PG=1 makes it mandatory) runs real
//     failovers — one completed, one stopped by a fence that cannot be
//     confirmed — and then requires every family in the live scrape, with
//     no fallback at all.
//
// Both also run promtool check metrics on every scrape and, when
// Prometheus is installed, scrape the observers with the kit's scrape
// config, evaluate every dashboard query and every alert rule there, and
// fail on any query Prometheus rejects.

func TestKitMetricsExistInLiveScrape(t *testing.T) {
	t.Parallel()
	queries := kitQueries(t)
	// Default group pg-main: db1 (primary) and db2 on ports nothing
	// listens on, probed by TCP.
	c := clustertest.Start(t, clustertest.Options{})
	prom := startPrometheus(t, httpAddrs(c))
	c.WaitForLeader(waitLong)
	waitGossip(t, c)
	sendMalformedVotes(t, c)
	clustertest.WaitFor(t, waitLong, "the leader to find pg-main's primary ODOWN with no eligible standby", func() (bool, string) {
		st := leaderStatus(c, "pg-main")
		return strings.Contains(st, "no eligible candidate"), st
	})

	live, bodies := scrapeCluster(t, c)
	src := sourceVectors(t)
	fromSource := checkQueries(t, queries, live, src)
	for _, name := range sortedKeys(fromSource) {
		t.Logf("not in the scrape yet, accepted as a labelled vector defined at %s: %s (used by %d queries)", src[name].Origin, name, len(fromSource[name]))
	}
	t.Logf("%d metric families used by %d queries; %d found in the live scrape, %d accepted from source",
		len(usedFamilies(queries, live, src)), len(queries), len(usedFamilies(queries, live, src))-len(fromSource), len(fromSource))

	t.Run("promtool check metrics", func(t *testing.T) { promtoolCheckMetrics(t, bodies) })
	t.Run("prometheus evaluates the kit", func(t *testing.T) {
		if prom == nil {
			t.Skip("prometheus not installed")
		}
		prom.waitSamples(t, len(c.Nodes), 12)
		prom.waitSeries(t, queries, live)
		// Panels whose every metric is in the scrape must show data.
		prom.evaluateKit(t, queries, func(q query) bool {
			for _, s := range analyzeExpr(q.Expr).Selectors {
				if live.series(s.Metric) == nil {
					return false
				}
			}
			return true
		})
	})
}

func TestKitMetricsExistAfterRealFailover(t *testing.T) {
	t.Parallel()
	queries := kitQueries(t)
	pg := pglab.StartForTest(t, pglab.Options{Standbys: 2})
	ghost := hangingServer(t)
	// pg-main: a real primary and two standbys; it is failed over below.
	// pg-fence: its primary "ghost" accepts connections but never answers,
	// so it is down for the probes but cannot be confirmed fenced: the
	// failover to pg2 stops at the fence (fence: strict).
	// pg-nocand: nothing answers at all, so there is nobody to promote.
	groups := fmt.Sprintf(`
  - name: pg-main
    kind: postgres
    primary: pg0
    down_after: 1s
    cooldown: 10m
    probe: {type: postgres, interval: 300ms, timeout: 250ms}
    failover: {step_timeout: 10s, veto_backoff: 10m}
    members:
      - {name: pg0, address: %q, priority: 100}
      - {name: pg1, address: %q, priority: 100}
      - {name: pg2, address: %q, priority: 100}
  - name: pg-fence
    kind: postgres
    primary: ghost
    down_after: 1s
    probe: {type: postgres, interval: 300ms, timeout: 250ms}
    failover: {fence: strict, step_timeout: 2s, veto_backoff: 10m}
    members:
      - {name: ghost, address: %q, priority: 100}
      - {name: pg2, address: %q, priority: 100}
  - name: pg-nocand
    kind: postgres
    primary: db1
    down_after: 1s
    probe: {type: tcp, interval: 300ms, timeout: 250ms}
    members:
      - {name: db1, address: "127.0.0.1:1", priority: 100}
      - {name: db2, address: "127.0.0.1:2", priority: 100}
`, pg.Nodes[0].Addr(), pg.Nodes[1].Addr(), pg.Nodes[2].Addr(), ghost, pg.Nodes[2].Addr())
	c := clustertest.Start(t, clustertest.Options{ConfigOptions: clustertest.ConfigOptions{Groups: groups}})
	prom := startPrometheus(t, httpAddrs(c))
	c.WaitForLeader(waitLong)
	waitGossip(t, c)
	sendMalformedVotes(t, c)

	waitOutcome(t, c, "pg-fence", fsm.OutcomeAborted)
	clustertest.WaitFor(t, waitLong, "the leader to find pg-nocand's primary ODOWN with no eligible standby", func() (bool, string) {
		st := leaderStatus(c, "pg-nocand")
		return strings.Contains(st, "no eligible candidate"), st
	})
	if err := pg.Primary().Kill(); err != nil {
		t.Fatal(err)
	}
	waitOutcome(t, c, "pg-main", fsm.OutcomeCompleted)

	live, bodies := scrapeCluster(t, c)
	if fromSource := checkQueries(t, queries, live, nil); len(fromSource) != 0 {
		t.Fatalf("source fallback used: %v", fromSource)
	}
	t.Logf("all %d metric families used by %d queries are in the live scrape", len(usedFamilies(queries, live)), len(queries))

	t.Run("promtool check metrics", func(t *testing.T) { promtoolCheckMetrics(t, bodies) })
	t.Run("prometheus evaluates the kit", func(t *testing.T) {
		if prom == nil {
			t.Skip("prometheus not installed")
		}
		prom.waitSamples(t, len(c.Nodes), 12)
		prom.waitSeries(t, queries, live)
		prom.evaluateKit(t, queries, func(query) bool { return true })
	})
}

// httpAddrs returns the /metrics addresses of the observers.
func httpAddrs(c *clustertest.Cluster) []string {
	var out []string
	for _, n := range c.Nodes {
		out = append(out, n.Obs.HTTPAddr())
	}
	return out
}

func waitGossip(t *testing.T, c *clustertest.Cluster) {
	t.Helper()
	clustertest.WaitFor(t, waitLong, "every observer to see all observers alive by gossip", func() (bool, string) {
		for _, n := range c.Nodes {
			if a := n.Obs.Gossip().AliveMembers(); a != len(c.Nodes) {
				return false, fmt.Sprintf("%s sees %d", n.ID, a)
			}
		}
		return true, ""
	})
}

// sendMalformedVotes makes the peers of observer 0 drop vote packets as
// malformed, until both have counted one.
func sendMalformedVotes(t *testing.T, c *clustertest.Cluster) {
	t.Helper()
	clustertest.WaitFor(t, waitLong, "peers to drop a malformed vote packet", func() (bool, string) {
		c.Nodes[0].Obs.Gossip().SendToPeers([]byte{0xff, 0xff, 0xff})
		for _, n := range c.Nodes[1:] {
			mfs, err := n.Obs.Registry().Gather()
			if err != nil {
				return false, err.Error()
			}
			if !hasChild(mfs, "vigil_gossip_votes_dropped_total", "reason", "malformed") {
				return false, n.ID + " has not counted one yet"
			}
		}
		return true, ""
	})
}

func hasChild(mfs []*dto.MetricFamily, name, label, value string) bool {
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return true
				}
			}
		}
	}
	return false
}

func leaderStatus(c *clustertest.Cluster, group string) string {
	for _, i := range c.Running() {
		if c.Nodes[i].Obs.IsLeader() {
			return c.Nodes[i].Obs.Controller().Status(group)
		}
	}
	return "(no leader)"
}

// waitOutcome waits until group has a finished failover with outcome.
func waitOutcome(t *testing.T, c *clustertest.Cluster, group, outcome string) {
	t.Helper()
	clustertest.WaitFor(t, waitLong, fmt.Sprintf("a failover of %s to end %s", group, outcome), func() (bool, string) {
		g, ok := c.Nodes[c.Running()[0]].Obs.FSM().Group(group)
		if !ok {
			return false, "group not in the state yet"
		}
		var seen []string
		for _, f := range g.GetFailovers() {
			if f.GetOutcome() == outcome {
				return true, ""
			}
			seen = append(seen, f.GetOutcome()+": "+f.GetOutcomeDetail())
		}
		return false, fmt.Sprintf("finished %v, active %v, leader: %s", seen, g.GetActiveFailover(), leaderStatus(c, group))
	})
}

// scrapeCluster scrapes /metrics of every observer over HTTP and merges
// the vigil_* families (the leader exports the controller's metrics, each
// observer its own view).
func scrapeCluster(t *testing.T, c *clustertest.Cluster) (catalog, map[string][]byte) {
	t.Helper()
	live := catalog{}
	bodies := map[string][]byte{}
	for _, n := range c.Nodes {
		mfs, body, err := scrape(n.Obs.HTTPAddr())
		if err != nil {
			t.Fatalf("scrape %s: %v", n.ID, err)
		}
		live.addScrape(mfs)
		bodies[n.ID] = body
	}
	return live, bodies
}

// promtoolCheckMetrics lints every scrape with promtool check metrics.
func promtoolCheckMetrics(t *testing.T, bodies map[string][]byte) {
	bin := tool(t, "promtool", "prometheus")
	for _, id := range sortedKeys(bodies) {
		cmd := exec.Command(bin, "check", "metrics")
		cmd.Stdin = bytes.NewReader(bodies[id])
		out, err := cmd.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("promtool check metrics on %s's /metrics: %v\n%s", id, err, out)
		}
	}
}

// hangingServer listens on loopback, accepts connections and never
// answers; it returns its address.
func hangingServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[conn] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(io.Discard, conn) // until the client gives up
				mu.Lock()
				delete(conns, conn)
				mu.Unlock()
				conn.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for conn := range conns {
			conn.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}
