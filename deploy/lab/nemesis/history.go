package nemesis

import "time"

// History is everything one nemesis run recorded. Every time in it is
// taken on the test process's clock (the observers' own timestamps are
// not used: one observer may run with a clock offset on purpose).
type History struct {
	// Seed is the seed the schedule was drawn from; re-running it replays
	// the same schedule.
	Seed int64 `json:"seed"`
	// Sync is true when the group used synchronous replication.
	Sync bool `json:"sync"`
	// Members are the group's members (pg0, pg1, …).
	Members []string `json:"members"`
	// Observers are the observers' ids (obs1, obs2, obs3).
	Observers []string `json:"observers"`
	// DownAfter is the group's down_after, used for the grace with which a
	// failover may follow a fault.
	DownAfter time.Duration `json:"down_after"`
	// SampleEvery is the sampler's period.
	SampleEvery time.Duration `json:"sample_every"`
	// InitialPrimary and InitialEpoch are the group's state when the
	// clients started.
	InitialPrimary string    `json:"initial_primary"`
	InitialEpoch   uint64    `json:"initial_epoch"`
	Start          time.Time `json:"start"`
	// Healed is when every fault had been healed at the end of the run;
	// End is when the final state was taken.
	Healed time.Time `json:"healed"`
	End    time.Time `json:"end"`

	Faults    []Fault    `json:"faults"`
	Attempts  []Attempt  `json:"attempts"`
	Samples   []Sample   `json:"samples"`
	Failovers []Failover `json:"failovers"`
	Final     Final      `json:"final"`
}

// Fault is one fault the nemesis injected (or one action it took, such as
// a planned switchover), from injection to heal.
type Fault struct {
	// Kind is one of the Kind* constants.
	Kind string `json:"kind"`
	// Target is the member (pg1), the observer (obs2) or the side of a
	// split ("obs1|obs2,obs3") the fault hit.
	Target string `json:"target"`
	// Justifies is true when the fault makes the target member unusable
	// as a primary for a quorum of observers (process killed, host dead,
	// hung, cut from the observers, disk stalled, flapping): an automatic
	// failover of the target is then expected, not false. For
	// KindSwitchover, Target is the requested new primary and the
	// switchover is justified.
	Justifies bool `json:"justifies"`
	// Start is taken just before the fault was injected; End just after
	// it was healed (zero while in force).
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	Detail string    `json:"detail,omitempty"`
}

// Outcome of one client attempt.
type Outcome string

// Outcomes. Only OK is an acknowledged write; Unknown (timeout or error
// after the statement was sent) may or may not have been applied.
const (
	OK      Outcome = "ok"
	Failed  Outcome = "failed"
	Unknown Outcome = "unknown"
)

// Attempt is one write a client tried.
type Attempt struct {
	// Client is "vip", "haproxy" or "stranded-<member>" (a client on the
	// member's own host writing to the member's own address).
	Client string `json:"client"`
	// ID is unique per client; the row (client, id) is what was written.
	ID      int64     `json:"id"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	Outcome Outcome   `json:"outcome"`
	// Server is the cluster_name of the server that answered on this
	// connection ("" when none answered).
	Server string `json:"server,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Sample is one sampled instant.
type Sample struct {
	At time.Time `json:"at"`
	// VIP lists the members whose host holds the group's VIP.
	VIP []string `json:"vip,omitempty"`
	// HAProxy lists the members HAProxy would route a new connection to
	// (server UP and not in maintenance or drain).
	HAProxy []string `json:"haproxy,omitempty"`
	// Writable lists the members that, probed directly from the client
	// host within the sampler's probe timeout, answered as a primary that
	// accepts writes (not in recovery, not read-only).
	Writable []string `json:"writable,omitempty"`
}

// Failover is one failover or switchover of the replicated history, as
// read from the observers at the end of the run.
type Failover struct {
	Epoch         uint64 `json:"epoch"`
	Kind          string `json:"kind"` // failover, switchover or forced
	Old           string `json:"old"`
	New           string `json:"new"`
	Reason        string `json:"reason"`
	Outcome       string `json:"outcome"` // completed, aborted, or "" if still active
	OutcomeDetail string `json:"outcome_detail,omitempty"`
	Steps         []Step `json:"steps"`
	// SeenAt is when the test process first saw this failover (active or
	// finished) in the replicated state: on the test's clock, an upper
	// bound of when it started.
	SeenAt time.Time `json:"seen_at"`
}

// Step is one committed step of a failover.
type Step struct {
	Name   string `json:"name"`
	Failed bool   `json:"failed,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Final is the state after every fault was healed and the cluster was
// given time to settle.
type Final struct {
	// Primary is the group's primary in the replicated state.
	Primary string `json:"primary"`
	Epoch   uint64 `json:"epoch"`
	// Active is the epoch of a failover still in progress (0: none).
	Active uint64 `json:"active,omitempty"`
	// Writable, VIP and HAProxy are one last sample.
	Writable []string `json:"writable,omitempty"`
	VIP      []string `json:"vip,omitempty"`
	HAProxy  []string `json:"haproxy,omitempty"`
	// Streaming lists the members streaming from Primary
	// (pg_stat_replication on it, state streaming).
	Streaming []string `json:"streaming,omitempty"`
	// NeedsRejoin lists members reported as needing a rejoin or rebuild
	// (so neither streaming nor routed, and that is expected).
	NeedsRejoin []string `json:"needs_rejoin,omitempty"`
	// ObserverState is, per observer, a digest of its replicated state
	// (groups and failover history) read from that observer alone; ""
	// when it could not be read.
	ObserverState map[string]string `json:"observer_state"`
	// Present lists, per client, the ids found in the final primary's
	// table.
	Present map[string][]int64 `json:"present"`
	// Error says why the final state could not be read fully, if so.
	Error string `json:"error,omitempty"`
}

// Fault kinds the nemesis draws from.
const (
	KindKillPostgres      = "kill-postgres"            // kill -9 the primary's postmaster
	KindKillHost          = "kill-host"                // freeze then kill -9 postgres and the node agent
	KindHangPrimary       = "hang-primary"             // SIGSTOP the primary's postgres, SIGCONT at heal
	KindPartitionPrimary  = "partition-primary"        // primary's host silently cut from every observer
	KindPartitionOne      = "partition-one"            // primary's host cut from one observer
	KindPartitionOneWay   = "partition-one-way"        // primary's host drops what the observers send it
	KindSplitLeaderAlone  = "split-leader-alone"       // observers 1|2, the leader alone
	KindSplitLeaderMajor  = "split-leader-major"       // observers 1|2, the leader with the majority
	KindKillLeader        = "kill-leader"              // kill -9 the Raft leader
	KindKillLeaderMidFail = "kill-leader-mid-failover" // kill the primary, then the leader between two steps
	KindKillAgent         = "kill-agent"               // kill -9 the primary's node agent
	KindStallDisk         = "stall-disk"               // fsfreeze the primary's data directory
	KindFlapPrimary       = "flap-primary"             // kill and restart the primary's postgres in a loop
	KindPauseReplay       = "pause-replay"             // a standby's replay paused past max_lag
	KindPacketLoss        = "packet-loss"              // random loss on the observers' links
	KindClockOffset       = "clock-offset"             // one observer's clock shifted (whole run)
	KindSwitchover        = "switchover"               // a planned switchover to a random standby
	KindRestartObservers  = "restart-observers"        // kill -9 every observer, restart them all
)
