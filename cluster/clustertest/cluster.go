package clustertest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/vigilha/vigil/cluster"
	"github.com/vigilha/vigil/cluster/config"
)

// Cluster is a set of in-process observers on loopback.
type Cluster struct {
	t     testing.TB
	Set   *ConfigSet
	Nodes []*Node
	opts  Options
}

// Node is one observer of a Cluster; Obs is nil while it is stopped.
type Node struct {
	ID    string
	Cfg   *config.Config
	Obs   *cluster.Observer
	layer *cuttableLayer
}

// Options shape a test cluster.
type Options struct {
	ConfigOptions
	// Customize may change each observer's options before start.
	Customize func(i int, o *cluster.Options)
}

// Start starts a cluster and registers its shutdown with t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c := &Cluster{t: t, Set: GenerateConfigs(t, opts.ConfigOptions), opts: opts}
	for i, id := range c.Set.IDs {
		cfg, err := config.Parse(c.Set.YAML[i])
		if err != nil {
			t.Fatalf("config %s: %v", id, err)
		}
		c.Nodes = append(c.Nodes, &Node{ID: id, Cfg: cfg})
	}
	t.Cleanup(c.Shutdown)
	for i := range c.Nodes {
		c.StartNode(i)
	}
	return c
}

// StartNode starts (or restarts, from its data directory) observer i.
func (c *Cluster) StartNode(i int) {
	c.t.Helper()
	n := c.Nodes[i]
	if n.Obs != nil {
		c.t.Fatalf("observer %s already running", n.ID)
	}
	level := slog.LevelWarn
	if os.Getenv("VIGIL_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	opts := cluster.Options{
		Config: n.Cfg,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
		WrapStreamLayer: func(s raft.StreamLayer) raft.StreamLayer {
			n.layer = newCuttableLayer(s)
			return n.layer
		},
	}
	if c.opts.Customize != nil {
		c.opts.Customize(i, &opts)
	}
	// Ports freed by a previous run of this node may linger briefly.
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		n.Obs, err = cluster.New(opts)
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatalf("start observer %s: %v", n.ID, err)
	}
}

// StopNode shuts observer i down (its data directory stays).
func (c *Cluster) StopNode(i int) {
	c.t.Helper()
	n := c.Nodes[i]
	if n.Obs == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Obs.Shutdown(ctx); err != nil {
		c.t.Errorf("stop observer %s: %v", n.ID, err)
	}
	n.Obs = nil
}

// Shutdown stops every observer.
func (c *Cluster) Shutdown() {
	for i := range c.Nodes {
		c.StopNode(i)
	}
}

// Cut cuts observer i off the Raft network, in both directions.
func (c *Cluster) Cut(i int) { c.Nodes[i].layer.setCut(true) }

// Heal reconnects observer i.
func (c *Cluster) Heal(i int) { c.Nodes[i].layer.setCut(false) }

// Running returns the indexes of running observers.
func (c *Cluster) Running() []int {
	var out []int
	for i, n := range c.Nodes {
		if n.Obs != nil {
			out = append(out, i)
		}
	}
	return out
}

// WaitForLeader waits until exactly one of the given observers (all running
// ones when none given) is leader and all of them agree on it; it returns
// the leader's index.
func (c *Cluster) WaitForLeader(timeout time.Duration, among ...int) int {
	c.t.Helper()
	if len(among) == 0 {
		among = c.Running()
	}
	leader := -1
	WaitFor(c.t, timeout, "one leader all observers agree on", func() (bool, string) {
		leader = -1
		var leaders []string
		for _, i := range among {
			if c.Nodes[i].Obs.IsLeader() {
				leaders = append(leaders, c.Nodes[i].ID)
				leader = i
			}
		}
		if len(leaders) != 1 {
			return false, fmt.Sprintf("leaders among %v: %v", among, leaders)
		}
		for _, i := range among {
			if id, _ := c.Nodes[i].Obs.Leader(); id != c.Nodes[leader].ID {
				return false, fmt.Sprintf("%s follows %q, not %s", c.Nodes[i].ID, id, c.Nodes[leader].ID)
			}
		}
		return true, ""
	})
	return leader
}

// WaitForApplied waits until the given observers (all running ones when
// none given) have applied at least index.
func (c *Cluster) WaitForApplied(timeout time.Duration, index uint64, among ...int) {
	c.t.Helper()
	if len(among) == 0 {
		among = c.Running()
	}
	WaitFor(c.t, timeout, fmt.Sprintf("index %d applied everywhere", index), func() (bool, string) {
		for _, i := range among {
			if got := c.Nodes[i].Obs.FSM().AppliedIndex(); got < index {
				return false, fmt.Sprintf("%s applied %d", c.Nodes[i].ID, got)
			}
		}
		return true, ""
	})
}
