package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/cluster"
	"github.com/vigilha/vigil/cluster/clustertest"
	"github.com/vigilha/vigil/cluster/config"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

const waitLong = 20 * time.Second

func pauseCmd(group, reason string) *vigilv1.Command {
	return &vigilv1.Command{Actor: "test",
		Cmd: &vigilv1.Command_SetPaused{SetPaused: &vigilv1.SetPaused{Group: group, Paused: true, Reason: reason}}}
}

// waitGroupsSynced waits until every running observer serves the config's groups.
func waitGroupsSynced(t testing.TB, c *clustertest.Cluster) {
	t.Helper()
	clustertest.WaitFor(t, waitLong, "pg-main synced to every observer", func() (bool, string) {
		for _, i := range c.Running() {
			if _, ok := c.Nodes[i].Obs.FSM().Group("pg-main"); !ok {
				return false, c.Nodes[i].ID + " has no pg-main"
			}
		}
		return true, ""
	})
}

func TestDeposedLeaderCannotCommit(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, clustertest.Options{})
	old := c.WaitForLeader(waitLong)
	waitGroupsSynced(t, c)
	oldObs := c.Nodes[old].Obs

	// Cut the leader off: whatever it proposes now cannot reach a quorum.
	c.Cut(old)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	_, err := oldObs.Propose(ctx, pauseCmd("pg-main", "from the cut-off leader"))
	cancel()
	if err == nil {
		t.Fatal("a leader cut off from the quorum committed a command")
	}
	t.Logf("cut-off leader's proposal failed as it must: %v", err)

	var others []int
	for i := range c.Nodes {
		if i != old {
			others = append(others, i)
		}
	}
	newLeader := c.WaitForLeader(waitLong, others...)
	if newLeader == old {
		t.Fatal("the cut-off observer is still the leader of the others")
	}
	// The old leader steps down once its lease runs out; from then on it
	// refuses outright.
	clustertest.Eventually(t, waitLong, "cut-off leader to step down", func() bool { return !oldObs.IsLeader() })
	if _, err := oldObs.Propose(context.Background(), pauseCmd("pg-main", "again")); !errors.Is(err, cluster.ErrNotLeader) {
		t.Fatalf("deposed leader's Propose: err = %v, want ErrNotLeader", err)
	}

	// The new leader commits; after healing, every observer converges on
	// its log and nothing of the deposed leader's proposal survives.
	res, err := c.Nodes[newLeader].Obs.Propose(context.Background(), &vigilv1.Command{Actor: "test",
		Cmd: &vigilv1.Command_SetPaused{SetPaused: &vigilv1.SetPaused{Group: "pg-main", Paused: false}}})
	if err != nil {
		t.Fatalf("new leader cannot commit: %v", err)
	}
	c.Heal(old)
	c.WaitForApplied(waitLong, res.Index)
	for _, n := range c.Nodes {
		g, _ := n.Obs.FSM().Group("pg-main")
		if g.GetPaused() {
			t.Fatalf("%s: the deposed leader's uncommitted pause took effect: %v", n.ID, g)
		}
		for _, e := range g.GetHistory() {
			if e.GetKind() == "paused" {
				t.Fatalf("%s: history holds the deposed leader's pause: %v", n.ID, e)
			}
		}
	}
}

func TestLeaderKilledNewLeaderElectedAndOldRejoins(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, clustertest.Options{})
	old := c.WaitForLeader(waitLong)
	waitGroupsSynced(t, c)

	c.StopNode(old)
	newLeader := c.WaitForLeader(waitLong)
	if newLeader == old {
		t.Fatal("stopped observer still leader")
	}
	res, err := c.Nodes[newLeader].Obs.Propose(context.Background(), pauseCmd("pg-main", "while one observer is down"))
	if err != nil {
		t.Fatalf("two of three observers cannot commit: %v", err)
	}

	c.StartNode(old)
	c.WaitForLeader(waitLong)
	c.WaitForApplied(waitLong, res.Index)
	g, _ := c.Nodes[old].Obs.FSM().Group("pg-main")
	if !g.GetPaused() || g.GetPausedReason() != "while one observer is down" {
		t.Fatalf("restarted observer did not catch up: %v", g)
	}
}

// snapshots returns each running observer's encoded state.
func snapshots(t testing.TB, c *clustertest.Cluster) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, i := range c.Running() {
		b, err := c.Nodes[i].Obs.FSM().Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		out[c.Nodes[i].ID] = b
	}
	return out
}

func assertIdentical(t testing.TB, states map[string][]byte) []byte {
	t.Helper()
	var ref []byte
	var refID string
	for id, b := range states {
		if ref == nil {
			ref, refID = b, id
			continue
		}
		if !bytes.Equal(ref, b) {
			t.Fatalf("state of %s differs from %s", id, refID)
		}
	}
	return ref
}

func TestStateIdenticalAndSurvivesRestartAndSnapshot(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, clustertest.Options{})
	leader := c.WaitForLeader(waitLong)
	waitGroupsSynced(t, c)

	var last uint64
	for i := 0; i < 11; i++ {
		res, err := c.Nodes[leader].Obs.Propose(context.Background(), &vigilv1.Command{Actor: "test",
			Cmd: &vigilv1.Command_SetPaused{SetPaused: &vigilv1.SetPaused{Group: "pg-main", Paused: i%2 == 0, Reason: fmt.Sprint("round ", i)}}})
		if err != nil {
			t.Fatal(err)
		}
		last = res.Index
	}
	c.WaitForApplied(waitLong, last)
	before := assertIdentical(t, snapshots(t, c))

	// Snapshot observer 0 (so it restores from a snapshot), then restart all.
	if err := c.Nodes[0].Obs.Snapshot(); err != nil {
		t.Fatal(err)
	}
	c.Shutdown()
	for i := range c.Nodes {
		c.StartNode(i)
	}
	c.WaitForLeader(waitLong)
	c.WaitForApplied(waitLong, last)
	after := assertIdentical(t, snapshots(t, c))
	// A new leader may append (no-op/barrier entries only move indexes), but
	// the groups must be exactly as before.
	var sb, sa vigilv1.State
	if err := unmarshal(before, &sb); err != nil {
		t.Fatal(err)
	}
	if err := unmarshal(after, &sa); err != nil {
		t.Fatal(err)
	}
	if !equalGroups(&sb, &sa) {
		t.Fatalf("groups changed across a full restart:\nbefore %v\nafter  %v", sb.GetGroups(), sa.GetGroups())
	}
	g := sa.GetGroups()[0]
	if !g.GetPaused() || g.GetPausedReason() != "round 10" || len(g.GetHistory()) != 12 {
		t.Fatalf("restored group = %v", g)
	}
}

// A start that fails after Raft is up (here: the HTTP port is taken) must
// return the error and close what it opened, not panic in its undo step,
// so a retry on the same ports can succeed.
func TestStartFailingLateUndoesAndRetries(t *testing.T) {
	set := clustertest.GenerateConfigs(t, clustertest.ConfigOptions{})
	cfg, err := config.Parse(set.YAML[0])
	if err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		t.Fatal(err)
	}
	_, err = cluster.New(cluster.Options{Config: cfg})
	if err == nil || !strings.Contains(err.Error(), "listen for http on "+cfg.HTTP.Listen) {
		t.Fatalf("start with the http port taken: got %v, want an error naming %s", err, cfg.HTTP.Listen)
	}
	// Raft, gossip and gRPC were closed again: their ports are free.
	_ = taken.Close()
	obs, err := cluster.New(cluster.Options{Config: cfg})
	if err != nil {
		t.Fatalf("retry after the port was freed: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := obs.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}
