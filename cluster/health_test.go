package cluster_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/vigilha/vigil/cluster"
	"github.com/vigilha/vigil/cluster/clustertest"
	"github.com/vigilha/vigil/deploy/lab/pglab"
	"github.com/vigilha/vigil/health"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// pgGroups is a group section for a real primary + standbys.
func pgGroups(pg *pglab.Cluster) string {
	var b strings.Builder
	b.WriteString(`
  - name: pg-main
    kind: postgres
    primary: db1
    down_after: 1s
    probe: {type: postgres, interval: 500ms, timeout: 400ms, postgres: {user: postgres, database: postgres, sslmode: disable}}
    members:`)
	for i, n := range pg.Nodes {
		fmt.Fprintf(&b, "\n      - {name: db%d, address: %q, priority: 100}", i+1, n.Addr())
	}
	b.WriteString("\n")
	return b.String()
}

// memberHealth returns observer i's aggregate for a member.
func memberHealth(c *clustertest.Cluster, i int, member string) *vigilv1.MemberHealth {
	for _, h := range c.Nodes[i].Obs.Monitor().Health("pg-main") {
		if h.GetMember() == member {
			return h
		}
	}
	return nil
}

// waitState waits until every running observer reports member in state.
func waitState(t testing.TB, c *clustertest.Cluster, member, state string, timeout time.Duration) {
	t.Helper()
	clustertest.WaitFor(t, timeout, fmt.Sprintf("%s %s on every observer", member, state), func() (bool, string) {
		for _, i := range c.Running() {
			h := memberHealth(c, i, member)
			if h.GetState() != state {
				return false, fmt.Sprintf("%s sees %s: %s", c.Nodes[i].ID, h.GetState(), h.GetSummary())
			}
		}
		return true, ""
	})
}

func TestHealthRealPostgresRolesAndODOWN(t *testing.T) {
	t.Parallel()
	pg := pglab.StartForTest(t, pglab.Options{Standbys: 1})
	c := clustertest.Start(t, clustertest.Options{ConfigOptions: clustertest.ConfigOptions{Groups: pgGroups(pg)}})
	c.WaitForLeader(waitLong)

	waitState(t, c, "db1", health.StateUp, waitLong)
	waitState(t, c, "db2", health.StateUp, waitLong)
	clustertest.WaitFor(t, waitLong, "roles and WAL seen by every observer", func() (bool, string) {
		for _, i := range c.Running() {
			p, s := memberHealth(c, i, "db1"), memberHealth(c, i, "db2")
			if p.GetRoleSeen() != "primary" || s.GetRoleSeen() != "standby" || p.GetExpectedRole() != "primary" || s.GetExpectedRole() != "standby" {
				return false, fmt.Sprintf("%s: db1 %s/%s db2 %s/%s", c.Nodes[i].ID, p.GetRoleSeen(), p.GetExpectedRole(), s.GetRoleSeen(), s.GetExpectedRole())
			}
			// Every observer holds every observer's fresh vote.
			for _, v := range s.GetVotes() {
				if !v.GetFresh() || v.GetVerdict() != "up" || v.GetWalLsn() == 0 {
					return false, fmt.Sprintf("%s: vote of %s about db2: %v", c.Nodes[i].ID, v.GetObserver(), v)
				}
			}
		}
		return true, ""
	})
	r, ok := c.Nodes[0].Obs.Monitor().LastResult("pg-main", "db2")
	if !ok || !r.Streaming || r.Upstream == "" || !strings.HasSuffix(r.Upstream, fmt.Sprint(pg.Nodes[0].Port)) {
		t.Fatalf("standby result: %+v", r)
	}

	// SIGSTOP: a hung primary is judged down by timeouts, on every observer.
	if err := pg.Primary().Stop(); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, "db1", health.StateODown, waitLong)
	if h := memberHealth(c, 1, "db2"); h.GetState() != health.StateUp {
		t.Fatalf("standby not up while primary hung: %s", h.GetSummary())
	}
	if err := pg.Primary().Cont(); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, "db1", health.StateUp, waitLong)

	// kill -9: ODOWN again, with a quorum of down votes.
	if err := pg.Primary().Kill(); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, "db1", health.StateODown, waitLong)
	h := memberHealth(c, 2, "db1")
	if h.GetDownVotes() < h.GetQuorum() || h.GetOdownSince() == nil || !h.GetOdownSince().AsTime().Equal(h.GetDownSince().AsTime().Add(time.Second)) {
		t.Fatalf("ODOWN without a quorum, or not down_after (1s) after quorum-down began: %v", h)
	}
	if got := gaugeValue(t, c.Nodes[0].Obs, "vigil_member_odown", map[string]string{"group": "pg-main", "member": "db1"}); got != 1 {
		t.Fatalf("vigil_member_odown = %v, want 1", got)
	}
}

func TestHealthOneBlindObserverNeverODOWN(t *testing.T) {
	t.Parallel()
	pg := pglab.StartForTest(t, pglab.Options{Standbys: 1})
	dead := clustertest.FreePorts(t, 1)[0]
	c := clustertest.Start(t, clustertest.Options{
		ConfigOptions: clustertest.ConfigOptions{Groups: pgGroups(pg)},
		Customize: func(i int, o *cluster.Options) {
			if i == 2 {
				// obs3 reaches db1 by a broken route: nothing listens there.
				o.Config.Groups[0].Members[0].Address = fmt.Sprintf("127.0.0.1:%d", dead)
			}
		},
	})
	c.WaitForLeader(waitLong)

	// Watch every observer for ODOWN from now on.
	var mu sync.Mutex
	var odown []string
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, n := range c.Nodes {
		ch, unsub := n.Obs.Monitor().Subscribe(64)
		defer unsub()
		go func(id string) {
			for {
				select {
				case <-ctx.Done():
					return
				case ch := <-ch:
					// Only the member the blind observer cannot reach is at
					// stake; the others may flap on a loaded machine.
					if ch.Health.GetState() == health.StateODown && ch.Health.GetMember() == "db1" {
						mu.Lock()
						odown = append(odown, id+": "+ch.Health.GetMember())
						mu.Unlock()
					}
				}
			}
		}(n.ID)
	}

	clustertest.WaitFor(t, waitLong, "obs3 SDOWN on db1, the others UP", func() (bool, string) {
		h3, h1 := memberHealth(c, 2, "db1"), memberHealth(c, 0, "db1")
		return h3.GetSdown() && h3.GetState() == health.StateSDown && !h1.GetSdown() && h1.GetDownVotes() == 1,
			fmt.Sprintf("obs3: %s; obs1: %s", h3.GetSummary(), h1.GetSummary())
	})
	// Hold the broken path for several down_after periods: a single blind
	// observer must never produce ODOWN anywhere.
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		for i := range c.Nodes {
			if h := memberHealth(c, i, "db1"); h.GetOdown() {
				t.Fatalf("%s reports ODOWN with one blind observer: %s", c.Nodes[i].ID, h.GetSummary())
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(odown) > 0 {
		t.Fatalf("ODOWN events with one blind observer: %v", odown)
	}
}

func TestGossipDropsMalformedVotePackets(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, clustertest.Options{})
	c.WaitForLeader(waitLong)
	clustertest.Eventually(t, waitLong, "gossip to see all three", func() bool { return c.Nodes[0].Obs.Gossip().AliveMembers() == 3 })

	bad := [][]byte{{0xff, 0xff, 0xff}, make([]byte, 70<<10), []byte("\x0a\x04OBS!")}
	clustertest.WaitFor(t, waitLong, "peers to count the malformed and oversized packets", func() (bool, string) {
		for _, p := range bad {
			c.Nodes[0].Obs.Gossip().SendToPeers(p)
		}
		for _, i := range []int{1, 2} {
			mal := counterValue(t, c.Nodes[i].Obs, "vigil_gossip_votes_dropped_total", map[string]string{"reason": "malformed"})
			if mal < 2 {
				return false, fmt.Sprintf("%s counted %v malformed", c.Nodes[i].ID, mal)
			}
		}
		return true, ""
	})
	// Still healthy: the cluster keeps committing.
	leader := c.WaitForLeader(waitLong)
	if _, err := c.Nodes[leader].Obs.Propose(context.Background(), pauseCmd("pg-main", "after garbage")); err != nil {
		t.Fatal(err)
	}
}

func findMetric(t testing.TB, o *cluster.Observer, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	m, err := lookupMetric(o, name, labels)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// lookupMetric finds the series of name with (at least) labels in o's
// registry; nil when there is none. Safe to call off the test goroutine.
func lookupMetric(o *cluster.Observer, name string, labels map[string]string) (*dto.Metric, error) {
	mfs, err := o.Registry().Gather()
	if err != nil {
		return nil, err
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			return m, nil
		}
	}
	return nil, nil
}

func gaugeValue(t testing.TB, o *cluster.Observer, name string, labels map[string]string) float64 {
	t.Helper()
	m := findMetric(t, o, name, labels)
	if m == nil {
		return -999
	}
	return m.GetGauge().GetValue()
}

func counterValue(t testing.TB, o *cluster.Observer, name string, labels map[string]string) float64 {
	t.Helper()
	m := findMetric(t, o, name, labels)
	if m == nil {
		return 0
	}
	return m.GetCounter().GetValue()
}
