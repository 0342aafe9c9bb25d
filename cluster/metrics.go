package cluster

import (
	"strconv"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the observer's own Prometheus metrics. Raft and gossip
// figures are read at scrape time (see raftCollector) so they are never
// stale; events are counted as they happen.
type metrics struct {
	leaderChanges *prometheus.CounterVec
	commitLatency prometheus.Histogram
	fsmApplies    *prometheus.CounterVec
	forwarded     *prometheus.CounterVec
	leaderLoops   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, nodeID string) *metrics {
	m := &metrics{
		leaderChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_raft_leader_changes_total",
			Help: "Leader changes this observer has seen, by whether it gained or lost leadership itself (gained, lost) or saw another observer become leader (observed).",
		}, []string{"kind"}),
		commitLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_raft_commit_duration_seconds",
			Help:    "Time from proposing a command on the leader to its commit and apply.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		fsmApplies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_fsm_applies_total",
			Help: "Commands applied to the replicated state, by command and result (ok, refused).",
		}, []string{"command", "result"}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_admin_forwarded_total",
			Help: "Admin write requests this observer forwarded to the leader, by result.",
		}, []string{"result"}),
		leaderLoops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_leader_establish_failures_total",
			Help: "Times this observer won leadership but could not establish it (barrier or config sync failed).",
		}),
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "vigil_observer_info",
		Help:        "Always 1; labels identify the observer.",
		ConstLabels: prometheus.Labels{"observer": nodeID},
	})
	info.Set(1)
	reg.MustRegister(m.leaderChanges, m.commitLatency, m.fsmApplies, m.forwarded, m.leaderLoops, info)
	return m
}

// raftCollector reads Raft and gossip state at scrape time.
type raftCollector struct {
	raft        *raft.Raft
	gossipAlive func() int
	appliedFSM  func() uint64

	state, term, lastIndex, commitIndex, appliedIndex, hasLeader, alive, fsmIndex *prometheus.Desc
}

var raftStates = []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown}

func newRaftCollector(r *raft.Raft, gossipAlive func() int, appliedFSM func() uint64) *raftCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &raftCollector{
		raft: r, gossipAlive: gossipAlive, appliedFSM: appliedFSM,
		state:        d("vigil_raft_state", "1 for this observer's current Raft state (follower, candidate, leader, shutdown), 0 for the others.", "state"),
		term:         d("vigil_raft_term", "Current Raft term."),
		lastIndex:    d("vigil_raft_last_log_index", "Index of the last entry in this observer's Raft log."),
		commitIndex:  d("vigil_raft_commit_index", "Highest Raft log index known to be committed."),
		appliedIndex: d("vigil_raft_applied_index", "Highest Raft log index applied to the state machine."),
		hasLeader:    d("vigil_raft_has_leader", "1 when this observer knows a Raft leader, else 0."),
		alive:        d("vigil_gossip_members_alive", "Observers (this one included) that gossip reports alive."),
		fsmIndex:     d("vigil_fsm_applied_index", "Raft index of the last command applied to vigil's replicated state."),
	}
}

func (c *raftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.state, c.term, c.lastIndex, c.commitIndex, c.appliedIndex, c.hasLeader, c.alive, c.fsmIndex} {
		ch <- d
	}
}

func (c *raftCollector) Collect(ch chan<- prometheus.Metric) {
	cur := c.raft.State()
	for _, s := range raftStates {
		v := 0.0
		if s == cur {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, stateName(s))
	}
	stats := c.raft.Stats()
	for desc, key := range map[*prometheus.Desc]string{c.term: "term", c.lastIndex: "last_log_index", c.commitIndex: "commit_index", c.appliedIndex: "applied_index"} {
		n, _ := strconv.ParseUint(stats[key], 10, 64)
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(n))
	}
	leader := 0.0
	if addr, _ := c.raft.LeaderWithID(); addr != "" {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(c.hasLeader, prometheus.GaugeValue, leader)
	ch <- prometheus.MustNewConstMetric(c.alive, prometheus.GaugeValue, float64(c.gossipAlive()))
	ch <- prometheus.MustNewConstMetric(c.fsmIndex, prometheus.GaugeValue, float64(c.appliedFSM()))
}

func stateName(s raft.RaftState) string {
	switch s {
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	case raft.Leader:
		return "leader"
	default:
		return "shutdown"
	}
}

// groupCollector exports the replicated state of every group, the same on
// every observer.
type groupCollector struct {
	groups                             func() []*vigilv1.Group
	epoch, paused, inProgress, primary *prometheus.Desc
	failoversDone                      *prometheus.Desc
}

func newGroupCollector(groups func() []*vigilv1.Group) *groupCollector {
	return &groupCollector{
		groups:        groups,
		epoch:         prometheus.NewDesc("vigil_group_epoch", "Current epoch (fencing token) of the group; rises with every failover.", []string{"group"}, nil),
		paused:        prometheus.NewDesc("vigil_group_paused", "1 while the group is paused (maintenance: observe, never act).", []string{"group"}, nil),
		inProgress:    prometheus.NewDesc("vigil_group_failover_in_progress", "1 while a failover of the group is in progress.", []string{"group"}, nil),
		primary:       prometheus.NewDesc("vigil_group_primary", "1 for the member the replicated state holds as the group's primary.", []string{"group", "member"}, nil),
		failoversDone: prometheus.NewDesc("vigil_group_failovers_recorded", "Finished failovers kept in the group's history, by outcome.", []string{"group", "outcome"}, nil),
	}
}

func (c *groupCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.epoch, c.paused, c.inProgress, c.primary, c.failoversDone} {
		ch <- d
	}
}

func (c *groupCollector) Collect(ch chan<- prometheus.Metric) {
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	for _, g := range c.groups() {
		name := g.GetSpec().GetName()
		ch <- prometheus.MustNewConstMetric(c.epoch, prometheus.GaugeValue, float64(g.GetEpoch()), name)
		ch <- prometheus.MustNewConstMetric(c.paused, prometheus.GaugeValue, b(g.GetPaused()), name)
		ch <- prometheus.MustNewConstMetric(c.inProgress, prometheus.GaugeValue, b(g.GetActiveFailover() != nil), name)
		for _, m := range g.GetSpec().GetMembers() {
			ch <- prometheus.MustNewConstMetric(c.primary, prometheus.GaugeValue, b(m.GetName() == g.GetPrimary()), name, m.GetName())
		}
		outcomes := map[string]int{"completed": 0, "aborted": 0}
		for _, f := range g.GetFailovers() {
			outcomes[f.GetOutcome()]++
		}
		for o, n := range outcomes {
			ch <- prometheus.MustNewConstMetric(c.failoversDone, prometheus.GaugeValue, float64(n), name, o)
		}
	}
}
