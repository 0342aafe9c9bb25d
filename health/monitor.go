package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// Member states as shown to operators.
const (
	StateUnknown = "unknown"
	StateUp      = "up"
	StateSDown   = "sdown"
	StateODown   = "odown"
)

// MonitorConfig configures one observer's health pipeline.
type MonitorConfig struct {
	// Self is this observer's id; Observers the configured ids (Self too).
	Self      string
	Observers []string
	// Quorum of down votes for ODOWN; raised to a majority if lower.
	Quorum int
	// Send delivers one packet to every other observer (gossip). It must
	// not block for long.
	Send func(packet []byte)
	// FlushInterval is how often refreshed own votes are sent (default
	// 100ms); one that changes a verdict or role is sent at once.
	FlushInterval time.Duration
	// EvalInterval is how often every member is re-aggregated (default
	// 100ms); a group is also re-aggregated at once on a vote that changes
	// something, and every member at the moment a down streak becomes
	// ODOWN.
	EvalInterval time.Duration
	Logger       *slog.Logger
	Registerer   prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Signer signs this observer's vote batches; Verifier checks the
	// other observers'. With a Verifier, only batches signed by the
	// observer they name are accepted. Without one (no TLS), any holder of
	// the gossip key can vote in any observer's name.
	Signer   BatchSigner
	Verifier BatchVerifier
	// OnChange, when set, is called with a group's name as soon as what
	// this observer concludes about one of its members may have moved: a
	// vote (own probe or gossip) that changes a member's verdict, role or
	// read-only flag, or counts again after its predecessor went stale
	// (the group is re-evaluated at once, before the call), and an
	// evaluation that changes a member's aggregate (ODOWN reached by
	// down_after elapsing, which the monitor evaluates at that very
	// moment; votes going stale). An identical refresh of a vote does not
	// call it. It runs on the goroutine that took the vote or evaluated,
	// without the monitor's lock held, and must not block: the failover
	// controller's Wake.
	OnChange func(group string)
}

// MaxSequenceLead is how far ahead of the receiver's clock a sequence
// (derived from the sender's clock) may be: beyond that it is implausible,
// and storing it would make every later real vote of that observer look
// stale. The same lead bounds a jump over the last accepted sequence of an
// observer, its clock's progress since then included.
const MaxSequenceLead = 10 * time.Minute

// GroupPlan is what to probe in one group and how to judge it.
type GroupPlan struct {
	Name string
	// Primary is the member the replicated state holds as primary.
	Primary    string
	DownAfter  time.Duration
	StaleAfter time.Duration
	Members    []MemberPlan
	// RoleBlind: the group's probe cannot tell roles (TCP, HTTP), so a
	// primary that a quorum sees up is as routable as it gets.
	RoleBlind bool
	// ReplayStallAfter > 0 votes a standby down (KindReplayStalled) whose
	// replay has not moved for that long while the primary was ahead of
	// it (judgeReplayLocked). Postgres groups set it to write_stall_after.
	ReplayStallAfter time.Duration
}

// MemberPlan is one member to probe.
type MemberPlan struct {
	Name              string
	Interval, Timeout time.Duration
	// ProberKey identifies the probe settings; the prober is rebuilt only
	// when it changes, so unrelated updates do not restart probing.
	ProberKey string
	NewProber func() Prober
}

// Change is one member's aggregate state moving (or its first evaluation,
// with an empty Previous).
type Change struct {
	At       time.Time
	Previous string
	Health   *vigilv1.MemberHealth
}

type memberEval struct {
	state  MemberState
	health *vigilv1.MemberHealth
}

// Monitor probes members, keeps this observer's votes and those gossiped
// by the others, and aggregates them into UP / SDOWN / ODOWN. The same
// aggregation runs on every observer.
type Monitor struct {
	cfg    MonitorConfig
	now    func() time.Time
	log    *slog.Logger
	book   *VoteBook
	runner *Runner
	m      *monitorMetrics

	mu      sync.Mutex
	plans   map[string]GroupPlan
	probers map[memberKey]proberEntry
	evals   map[memberKey]*memberEval
	lastSeq uint64
	// marks tracks each other observer's accepted sequences (kept across
	// Forget, so that a replayed batch stays a replay).
	marks     map[string]seqMark
	signErrAt time.Time
	dirty     map[memberKey]Vote
	ownRes    map[memberKey]Result
	replay    map[memberKey]replayTrack
	subs      map[int]chan Change
	nextSub   int
	// primaries remembers, per group, the last primary seen up and how far
	// its WAL went: after it dies, standbys' lag is measured against it.
	primaries map[string]PrimaryMemo
	// odownAt is the earliest moment a member's current down streak
	// becomes ODOWN if it holds (zero: none on its way); rearm tells the
	// evaluation loop it moved, so that it evaluates at that moment.
	odownAt time.Time

	// evalMu serialises evaluations with their publication: they run on
	// the evaluation loop and on the goroutines that take a vote that
	// changes something, and subscribers must see changes in order.
	evalMu sync.Mutex
	// rearm and flushNow (buffered 1, never closed) wake the evaluation
	// loop (odownAt moved) and the flush loop (an own vote changed: the
	// other observers should know now, not at the next flush interval).
	rearm, flushNow chan struct{}
}

// PrimaryMemo is what was last seen of a group's primary while it was up.
type PrimaryMemo struct {
	Member string
	// LSN is the highest WAL position any observer saw it at.
	LSN uint64
	// SyncStandbys are the standbys it considered synchronous, as this
	// observer last saw (nil when unknown or asynchronous).
	SyncStandbys []string
	At           time.Time
}

// seqMark is what was last accepted from one observer.
type seqMark struct {
	// seq is the estimate of the observer's clock-derived sequence at
	// at (our clock): the highest it sent, advanced by our time since.
	seq uint64
	at  time.Time
	// batch is the highest batch sequence accepted from it (signed only).
	batch uint64
}

type proberEntry struct {
	key    string
	prober Prober
}

// NewMonitor returns a Monitor with no groups; call SetGroups and Run.
func NewMonitor(cfg MonitorConfig) (*Monitor, error) {
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = 100 * time.Millisecond
	}
	if cfg.EvalInterval <= 0 {
		cfg.EvalInterval = 100 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	// The runner gets the caller's clock as given: nil keeps its stamps
	// exactly as the probers make them.
	probeClock := cfg.Now
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Send == nil {
		return nil, errors.New("health monitor: no Send function")
	}
	p := Params{Observers: cfg.Observers, Quorum: cfg.Quorum, StaleAfter: time.Second}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("health monitor: %w", err)
	}
	m := &Monitor{
		cfg: cfg, now: cfg.Now, log: cfg.Logger, book: NewVoteBook(),
		plans: map[string]GroupPlan{}, probers: map[memberKey]proberEntry{}, evals: map[memberKey]*memberEval{},
		dirty: map[memberKey]Vote{}, ownRes: map[memberKey]Result{}, replay: map[memberKey]replayTrack{}, subs: map[int]chan Change{},
		primaries: map[string]PrimaryMemo{}, marks: map[string]seqMark{},
		rearm: make(chan struct{}, 1), flushNow: make(chan struct{}, 1),
	}
	var err error
	if m.m, err = newMonitorMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	if cfg.Verifier != nil && cfg.Signer != nil {
		m.m.authenticated.Set(1)
	} else {
		m.log.Warn("gossip votes are not authenticated per observer: any holder of the gossip key can vote in any observer's name; configure tls")
	}
	m.runner = NewRunner(nil, m.observe, cfg.Logger)
	// Own votes are stamped by the runner and aged by m.now: one clock.
	m.runner.Now = probeClock
	return m, nil
}

// SetGroups replaces what is probed and how it is judged. Members that
// disappear are forgotten; probers whose settings did not change keep
// running undisturbed.
func (m *Monitor) SetGroups(plans []GroupPlan) error {
	m.mu.Lock()
	var targets []Target
	keep := map[memberKey]bool{}
	newPlans := map[string]GroupPlan{}
	for _, g := range plans {
		newPlans[g.Name] = g
		for _, mp := range g.Members {
			k := memberKey{g.Name, mp.Name}
			keep[k] = true
			pe, ok := m.probers[k]
			if !ok || pe.key != mp.ProberKey {
				pe = proberEntry{key: mp.ProberKey, prober: mp.NewProber()}
				m.probers[k] = pe
			}
			targets = append(targets, Target{Group: g.Name, Member: mp.Name, Interval: mp.Interval, Timeout: mp.Timeout, Prober: pe.prober})
		}
	}
	var gone []memberKey
	for k := range m.probers {
		if !keep[k] {
			gone = append(gone, k)
			delete(m.probers, k)
			delete(m.evals, k)
			delete(m.replay, k)
			delete(m.dirty, k)
			delete(m.ownRes, k)
		}
	}
	m.plans = newPlans
	m.mu.Unlock()
	for _, k := range gone {
		m.book.ForgetMember(k.group, k.member)
		m.m.forgetMember(k.group, k.member, m.cfg.Observers)
	}
	if err := m.runner.Update(targets); err != nil {
		return fmt.Errorf("update probe targets: %w", err)
	}
	return nil
}

// observe turns a local probe result into this observer's vote. A vote
// that changes something is sent at once and re-evaluated at once.
func (m *Monitor) observe(t Target, r Result) {
	m.m.observeProbe(t.Group, t.Member, r)
	m.mu.Lock()
	k := memberKey{t.Group, t.Member}
	if _, ok := m.probers[k]; !ok {
		m.mu.Unlock()
		return // removed meanwhile
	}
	m.judgeReplayLocked(k, &r)
	v := VoteFromResult(m.cfg.Self, t.Group, t.Member, r, m.nextSeqLocked())
	stored, prev, had := m.book.swap(v)
	changed := stored && m.changesLocked(prev, had, v)
	m.dirty[k] = v
	m.ownRes[k] = r
	if r.Verdict == VerdictUp && r.Role == RolePrimary {
		memo := m.notePrimaryLocked(v)
		memo.SyncStandbys = append([]string(nil), r.SyncStandbys...)
		m.primaries[t.Group] = memo
	}
	m.mu.Unlock()
	if changed {
		signal(m.flushNow)
		m.votesChanged([]string{t.Group})
	}
}

// changesLocked reports whether v, stored in place of prev (had: there
// was one), may change what the aggregation concludes about its member:
// it is the first, it has another verdict, role or read-only flag, or it
// counts again after prev went stale. A vote for a group without a plan
// changes nothing. m.mu must be held.
func (m *Monitor) changesLocked(prev Vote, had bool, v Vote) bool {
	g, ok := m.plans[v.Group]
	switch {
	case !ok:
		return false
	case !had || prev.Verdict != v.Verdict || prev.Role != v.Role || prev.ReadOnly != v.ReadOnly:
		return true
	}
	return !fresh(prev.ObservedAt, m.now(), g.StaleAfter)
}

// votesChanged re-evaluates the groups now and calls OnChange for them:
// a verdict that a vote just changed must not wait for the next
// evaluation interval to reach the failover controller.
func (m *Monitor) votesChanged(groups []string) {
	m.evaluateGroups(groups)
	m.notify(groups)
}

// notify calls OnChange for each group (no lock held).
func (m *Monitor) notify(groups []string) {
	if m.cfg.OnChange == nil {
		return
	}
	for _, g := range groups {
		m.cfg.OnChange(g)
	}
}

// signal wakes the loop reading ch without blocking: one pending wake is
// as good as several.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// nextSeqLocked returns the next of this observer's sequences (for votes
// and batches alike). They come from the wall clock so they keep growing
// across restarts, and are strictly increasing within this process.
func (m *Monitor) nextSeqLocked() uint64 {
	seq := clockSequence(m.now())
	if seq <= m.lastSeq {
		seq = m.lastSeq + 1
	}
	m.lastSeq = seq
	return seq
}

func (m *Monitor) nextSeq() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.nextSeqLocked()
}

// notePrimaryLocked updates the group's primary memo from a vote that saw
// the member up as primary.
func (m *Monitor) notePrimaryLocked(v Vote) PrimaryMemo {
	memo := m.primaries[v.Group]
	if memo.Member != v.Member {
		memo = PrimaryMemo{Member: v.Member}
	}
	memo.LSN = max(memo.LSN, v.ReplayLSN)
	memo.At = v.ObservedAt
	m.primaries[v.Group] = memo
	return memo
}

// Primary returns what was last seen of a group's primary while it was up.
func (m *Monitor) Primary(group string) (PrimaryMemo, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.primaries[group]
	return p, ok
}

// Receive handles one gossip packet from another observer. Malformed,
// oversized, foreign, echoed, unauthenticated (with a Verifier) and
// implausibly sequenced packets are counted and dropped whole: none of
// their votes reaches the vote book.
func (m *Monitor) Receive(packet []byte) {
	now := m.now()
	p, err := DecodePacket(packet, now)
	switch {
	case errors.Is(err, ErrOversized):
		m.m.dropped.WithLabelValues("oversized").Inc()
		return
	case err != nil:
		m.m.dropped.WithLabelValues("malformed").Inc()
		m.log.Debug("dropped malformed vote packet", "err", err)
		return
	case p.Observer == m.cfg.Self:
		m.m.dropped.WithLabelValues("self").Inc()
		return
	case !slices.Contains(m.cfg.Observers, p.Observer):
		m.m.dropped.WithLabelValues("unknown_observer").Inc()
		return
	}
	signed := m.cfg.Verifier != nil
	if signed {
		if reason, err := m.verify(p); err != nil {
			m.m.dropped.WithLabelValues(reason).Inc()
			m.log.Debug("dropped unauthenticated vote packet", "observer", p.Observer, "reason", reason, "err", err)
			return
		}
	}
	if reason, err := m.admit(p, now, signed); err != nil {
		m.m.dropped.WithLabelValues(reason).Inc()
		m.log.Debug("dropped vote packet", "observer", p.Observer, "reason", reason, "err", err)
		return
	}
	m.m.packetsReceived.Inc()
	var changed []string
	for _, v := range p.Votes {
		if stored, prev, had := m.book.swap(v); stored {
			if v.Verdict == VerdictDown && (!had || prev.Verdict != VerdictDown) && !m.seesDown(v.Group, v.Member) {
				// A peer just saw it go down: look again now rather than at
				// the next interval, so a quorum's evidence is complete
				// about one probe sooner. Once per change of that peer's
				// verdict: a peer alone in seeing it down (cut off from it)
				// does not double this observer's probe rate.
				m.Kick(v.Group, v.Member)
			}
			m.m.votesReceived.Inc()
			m.mu.Lock()
			if v.Verdict == VerdictUp && v.Role == RolePrimary {
				m.notePrimaryLocked(v)
			}
			if m.changesLocked(prev, had, v) && !slices.Contains(changed, v.Group) {
				changed = append(changed, v.Group)
			}
			m.mu.Unlock()
		} else {
			m.m.dropped.WithLabelValues("stale_sequence").Inc()
		}
	}
	if len(changed) > 0 {
		m.votesChanged(changed)
	}
}

// verify checks the packet's signature; on failure it returns the
// dropped-metric reason.
func (m *Monitor) verify(p Packet) (string, error) {
	if len(p.Signature) == 0 {
		return "unsigned", ErrUnsigned
	}
	err := m.cfg.Verifier.VerifyBatch(p.Observer, p.Batch, p.Signature)
	switch {
	case err == nil:
		return "", nil
	case errors.Is(err, ErrSignerUnknown):
		return "unverified", err
	default:
		return "bad_signature", err
	}
}

// admit checks the packet's sequences against what is plausible now and
// what was accepted from the same observer before, and records them when
// they pass; on failure it returns the dropped-metric reason. Batch
// replays are refused only for signed packets: without signatures anyone
// can make a fresh batch anyway.
func (m *Monitor) admit(p Packet, now time.Time, signed bool) (string, error) {
	highest := p.Sequence
	for _, v := range p.Votes {
		highest = max(highest, v.Sequence)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	mark, seen := m.marks[p.Observer]
	// Our clock's progress since the mark (none if our clock went back).
	var elapsed uint64
	if seen && now.After(mark.at) {
		elapsed = uint64(now.Sub(mark.at))
	}
	limit := satAdd(clockSequence(now), uint64(MaxSequenceLead))
	// A mark older than the lead no longer bounds jumps: an observer whose
	// clock was set right is believed again after at most that long.
	if seen && elapsed <= uint64(MaxSequenceLead) {
		limit = min(limit, satAdd(satAdd(mark.seq, elapsed), uint64(MaxSequenceLead)))
	}
	if highest > limit {
		return "sequence_ahead", fmt.Errorf("sequence %d is more than %s ahead of the plausible %d", highest, MaxSequenceLead, limit-uint64(MaxSequenceLead))
	}
	if signed && seen && p.Sequence <= mark.batch {
		return "replayed", fmt.Errorf("batch sequence %d not above %d, already accepted", p.Sequence, mark.batch)
	}
	est := highest
	if seen {
		est = max(est, satAdd(mark.seq, elapsed))
	}
	next := seqMark{seq: est, at: now, batch: mark.batch}
	if signed {
		next.batch = max(mark.batch, p.Sequence)
	}
	m.marks[p.Observer] = next
	return "", nil
}

// satAdd is a + b, saturating at the largest uint64.
func satAdd(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// Forget drops every vote of an observer that left the cluster.
func (m *Monitor) Forget(observer string) {
	if observer != m.cfg.Self {
		m.book.Forget(observer)
	}
}

// Run probes, sends and aggregates until ctx is cancelled.
func (m *Monitor) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); m.flushLoop(ctx) }()
	go func() { defer wg.Done(); m.evalLoop(ctx) }()
	err := m.runner.Run(ctx)
	wg.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// flushLoop sends changed own votes every flush interval, and at once
// when an own vote changed verdict or role (flushNow).
func (m *Monitor) flushLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.flushNow:
		}
		m.flush()
	}
}

// evalLoop evaluates every member each evaluation interval, and at the
// moment a down streak becomes ODOWN (odownAt): ODOWN also comes by time
// passing, with no vote to trigger an evaluation, and waiting for the
// next interval would add up to one interval to every failover.
func (m *Monitor) evalLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.EvalInterval)
	defer t.Stop()
	due := time.NewTimer(time.Hour)
	due.Stop()
	defer due.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.evaluate()
		case <-due.C:
			m.evaluate()
		case <-m.rearm:
		}
		m.mu.Lock()
		at := m.odownAt
		m.mu.Unlock()
		// Since Go 1.23 Stop and Reset leave no stale tick in due.C.
		due.Stop()
		if !at.IsZero() {
			due.Reset(at.Sub(m.now()))
		}
	}
}

// flush sends the own votes that changed (or were refreshed by a new
// probe) since the last flush.
func (m *Monitor) flush() {
	m.mu.Lock()
	if len(m.dirty) == 0 {
		m.mu.Unlock()
		return
	}
	votes := make([]Vote, 0, len(m.dirty))
	for _, v := range m.dirty {
		votes = append(votes, v)
	}
	clear(m.dirty)
	m.mu.Unlock()
	now := m.now()
	packets, err := EncodeVotePackets(m.cfg.Self, votes, now, m.nextSeq, m.cfg.Signer)
	if err != nil {
		// At most one line every 10 s: this runs every flush interval.
		m.mu.Lock()
		logIt := now.Sub(m.signErrAt) >= 10*time.Second || now.Before(m.signErrAt)
		if logIt {
			m.signErrAt = now
		}
		m.mu.Unlock()
		m.m.encodeErrors.Inc()
		if logIt {
			m.log.Error("encode votes; they are not sent", "err", err)
		}
		return
	}
	for _, p := range packets {
		m.cfg.Send(p)
	}
	m.m.packetsSent.Add(float64(len(packets)))
	m.m.votesSent.Add(float64(len(votes)))
}

// evaluate aggregates every member, publishes state changes and calls
// OnChange for the groups where an aggregate moved.
func (m *Monitor) evaluate() {
	m.notify(m.evaluateGroups(nil))
}

// evaluateGroups aggregates the members of the given groups (every group
// when nil), publishes state changes, and returns the groups in which a
// member's aggregate moved (aggregateMoved).
func (m *Monitor) evaluateGroups(only []string) (moved []string) {
	m.evalMu.Lock()
	defer m.evalMu.Unlock()
	now := m.now()
	m.mu.Lock()
	var changes []Change
	var rogue []*vigilv1.MemberHealth
	for _, g := range m.plans {
		if only != nil && !slices.Contains(only, g.Name) {
			continue
		}
		params := m.paramsFor(g)
		groupMoved := false
		for _, mp := range g.Members {
			k := memberKey{g.Name, mp.Name}
			votes := m.book.Votes(g.Name, mp.Name)
			ev := m.evals[k]
			var prev MemberState
			var prevHealth *vigilv1.MemberHealth
			if ev != nil {
				prev, prevHealth = ev.state, ev.health
			}
			prevState, prevRogue := prevHealth.GetState(), prevHealth.GetRoguePrimary()
			st := Aggregate(m.cfg.Self, votes, params, prev, now)
			h := m.memberHealth(g, mp.Name, st, votes, params, now)
			m.evals[k] = &memberEval{state: st, health: h}
			m.m.observeEval(h, votes, params, now)
			if h.GetState() != prevState {
				changes = append(changes, Change{At: now, Previous: prevState, Health: h})
			}
			if h.GetRoguePrimary() != prevRogue {
				rogue = append(rogue, h)
			}
			groupMoved = groupMoved || aggregateMoved(prevHealth, h)
		}
		if groupMoved {
			moved = append(moved, g.Name)
		}
	}
	if next := m.nextODownLocked(); !next.Equal(m.odownAt) {
		m.odownAt = next
		signal(m.rearm)
	}
	subs := make([]chan Change, 0, len(m.subs))
	for _, ch := range m.subs {
		subs = append(subs, ch)
	}
	m.mu.Unlock()
	for _, h := range rogue {
		if h.GetRoguePrimary() {
			m.log.Warn("member answers as primary while the replicated state expects a standby", "group", h.GetGroup(),
				"member", h.GetMember(), "summary", h.GetSummary())
		} else {
			m.log.Info("member no longer seen as a rogue primary", "group", h.GetGroup(), "member", h.GetMember(),
				"summary", h.GetSummary())
		}
	}
	for _, c := range changes {
		if c.Previous != "" {
			m.log.Info("member state changed", "group", c.Health.GetGroup(), "member", c.Health.GetMember(),
				"from", c.Previous, "to", c.Health.GetState(), "summary", c.Health.GetSummary())
		}
		for _, ch := range subs {
			select {
			case ch <- c:
			default:
				m.m.watchDropped.Inc()
			}
		}
	}
	return moved
}

// aggregateMoved reports whether a member's new aggregate h differs from
// prev (nil: none yet) in something decisions are taken on: its state,
// SDOWN, ODOWN, routability as the primary, rogue primary, the role this
// observer sees.
func aggregateMoved(prev, h *vigilv1.MemberHealth) bool {
	return prev == nil || prev.GetState() != h.GetState() || prev.GetSdown() != h.GetSdown() || prev.GetOdown() != h.GetOdown() ||
		prev.GetPrimaryQuorum() != h.GetPrimaryQuorum() || prev.GetRoguePrimary() != h.GetRoguePrimary() || prev.GetRoleSeen() != h.GetRoleSeen()
}

// nextODownLocked returns the earliest moment at which a member's current
// down streak becomes ODOWN if it holds (DownSince + DownAfter), zero
// when no member is on its way. m.mu must be held.
func (m *Monitor) nextODownLocked() time.Time {
	var next time.Time
	for _, g := range m.plans {
		for _, mp := range g.Members {
			ev := m.evals[memberKey{g.Name, mp.Name}]
			if ev == nil || ev.state.ODown || ev.state.DownSince.IsZero() {
				continue
			}
			if at := ev.state.DownSince.Add(g.DownAfter); next.IsZero() || at.Before(next) {
				next = at
			}
		}
	}
	return next
}

func (m *Monitor) memberHealth(g GroupPlan, member string, st MemberState, votes []Vote, p Params, now time.Time) *vigilv1.MemberHealth {
	h := &vigilv1.MemberHealth{
		Group: g.Name, Member: member,
		DownVotes: int32(st.DownVotes), UpVotes: int32(st.UpVotes),
		Observers: int32(len(p.Observers)), Quorum: int32(st.Quorum),
		Sdown: st.SDown, Odown: st.ODown, ExpectedRole: RoleStandby.String(), RoleSeen: RoleUnknown.String(),
	}
	if member == g.Primary {
		h.ExpectedRole = RolePrimary.String()
	}
	h.PrimaryQuorum = routable(g, st)
	h.RoguePrimary = member != g.Primary && st.PrimaryVotes > 0
	if !st.DownSince.IsZero() {
		h.DownSince = timestamppb.New(st.DownSince)
	}
	if st.ODown {
		h.OdownSince = timestamppb.New(st.ODownSince)
	}
	byObs := map[string]Vote{}
	for _, v := range votes {
		byObs[v.Observer] = v
	}
	for _, o := range p.Observers {
		ov := &vigilv1.ObserverVote{Observer: o, Verdict: "none", Role: RoleUnknown.String(), AgeMs: -1}
		if v, ok := byObs[o]; ok {
			ov.AgeMs = now.Sub(v.ObservedAt).Milliseconds()
			ov.Fresh = fresh(v.ObservedAt, now, p.StaleAfter)
			ov.Verdict = v.Verdict.String()
			ov.Role = v.Role.String()
			ov.WalLsn = v.ReplayLSN
			ov.LagBytes = v.LagBytes
			if o == m.cfg.Self {
				h.RoleSeen = v.Role.String()
			}
		}
		h.Votes = append(h.Votes, ov)
	}
	switch {
	case st.ODown:
		h.State = StateODown
		h.Summary = fmt.Sprintf("ODOWN since %s (down on %d of %d, quorum %d)", st.ODownSince.UTC().Format("15:04:05.000"), st.DownVotes, len(p.Observers), st.Quorum)
	case st.SDown || st.DownVotes > 0:
		h.State = StateSDown
		h.Summary = fmt.Sprintf("SDOWN on %d of %d (quorum %d)", st.DownVotes, len(p.Observers), st.Quorum)
		if !st.SDown {
			// Others see it down, this observer does not: still not ODOWN.
			h.Summary = fmt.Sprintf("down on %d of %d (quorum %d), up here", st.DownVotes, len(p.Observers), st.Quorum)
		}
	case st.UpVotes > 0:
		h.State = StateUp
		h.Summary = fmt.Sprintf("UP on %d of %d", st.UpVotes, len(p.Observers))
	default:
		h.State = StateUnknown
		h.Summary = "no fresh votes"
	}
	switch {
	case h.RoguePrimary:
		h.Summary += fmt.Sprintf("; ROGUE PRIMARY: writable primary on %d of %d, expected %s", st.PrimaryVotes, len(p.Observers), h.ExpectedRole)
	case h.RoleSeen != RoleUnknown.String() && h.RoleSeen != h.ExpectedRole && h.State == StateUp:
		h.Summary += fmt.Sprintf("; seen as %s, expected %s", h.RoleSeen, h.ExpectedRole)
	}
	return h
}

// paramsFor returns the aggregation settings of a group.
func (m *Monitor) paramsFor(g GroupPlan) Params {
	return Params{Observers: m.cfg.Observers, Quorum: m.cfg.Quorum, StaleAfter: g.StaleAfter, DownAfter: g.DownAfter}
}

// stateNowLocked aggregates a member's votes as they are at now. Only the
// vote counts are meaningful: the down streak (DownSince, ODown) needs
// the evaluation history, which this does not touch. m.mu must be held.
func (m *Monitor) stateNowLocked(g GroupPlan, member string, now time.Time) MemberState {
	return Aggregate(m.cfg.Self, m.book.Votes(g.Name, member), m.paramsFor(g), MemberState{}, now)
}

// RoutablePrimary reports whether clients may be routed to member as the
// writable primary of group now: the plan the monitor has names it the
// group's primary, and at least the effective quorum of configured
// observers hold fresh votes (freshness judged now, not at the last
// evaluation) that saw it up as a writable primary (not in recovery, not
// read-only). Anything else, an unknown group or member included, is
// false.
func (m *Monitor) RoutablePrimary(group, member string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.plans[group]
	if !ok || member == "" || member != g.Primary || !slices.ContainsFunc(g.Members, func(mp MemberPlan) bool { return mp.Name == member }) {
		return false
	}
	return routable(g, m.stateNowLocked(g, member, m.now()))
}

// routable: a quorum sees the member up as a writable primary, or merely
// up when the group's probe cannot tell roles.
func routable(g GroupPlan, st MemberState) bool {
	if g.RoleBlind {
		return st.Quorum > 0 && st.UpVotes >= st.Quorum
	}
	return st.PrimaryQuorum()
}

// RoguePrimaries returns, sorted, the members of group that the plan
// expects to be standbys but that at least one fresh vote (freshness
// judged now) saw up as a writable primary: they must be fenced again and
// never routed. One vote is enough, for safety; a primary fenced read-only
// is not writable and not rogue. Nil for an unknown group.
func (m *Monitor) RoguePrimaries(group string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.plans[group]
	if !ok {
		return nil
	}
	now := m.now()
	var out []string
	for _, mp := range g.Members {
		if mp.Name != g.Primary && m.stateNowLocked(g, mp.Name, now).PrimaryVotes > 0 {
			out = append(out, mp.Name)
		}
	}
	sort.Strings(out)
	return out
}

// Health returns the latest aggregate of every member of a group (all
// groups when group is empty), sorted by group and member.
func (m *Monitor) Health(group string) []*vigilv1.MemberHealth {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*vigilv1.MemberHealth
	for k, ev := range m.evals {
		if group == "" || k.group == group {
			out = append(out, ev.health)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].GetGroup() != out[j].GetGroup() {
			return out[i].GetGroup() < out[j].GetGroup()
		}
		return out[i].GetMember() < out[j].GetMember()
	})
	return out
}

// ODown reports whether a member is objectively down now, and since when.
func (m *Monitor) ODown(group, member string) (bool, time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ev, ok := m.evals[memberKey{group, member}]
	if !ok || !ev.state.ODown {
		return false, time.Time{}
	}
	return true, ev.state.ODownSince
}

// Votes returns every observer's latest vote about a member.
func (m *Monitor) Votes(group, member string) []Vote { return m.book.Votes(group, member) }

// LastResult returns this observer's latest probe result for a member.
func (m *Monitor) LastResult(group, member string) (Result, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.ownRes[memberKey{group, member}]
	return r, ok
}

// Subscribe returns a channel of state changes, primed with the current
// state of every member; cancel ends the subscription. A subscriber that
// does not keep up loses changes (counted), it never slows aggregation.
func (m *Monitor) Subscribe(buffer int) (<-chan Change, func()) {
	if buffer < 16 {
		buffer = 16
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	initial := make([]Change, 0, len(m.evals))
	for _, ev := range m.evals {
		initial = append(initial, Change{At: now, Health: ev.health})
	}
	ch := make(chan Change, buffer+len(initial))
	for _, c := range initial {
		ch <- c
	}
	id := m.nextSub
	m.nextSub++
	m.subs[id] = ch
	return ch, func() {
		m.mu.Lock()
		delete(m.subs, id)
		m.mu.Unlock()
	}
}

// seesDown reports whether this observer's own latest vote about the
// member says down.
func (m *Monitor) seesDown(group, member string) bool {
	for _, v := range m.book.Votes(group, member) {
		if v.Observer == m.cfg.Self {
			return v.Verdict == VerdictDown
		}
	}
	return false
}

// replayTrack is what this observer's probes remember of one standby's
// replay (judgeReplayLocked).
type replayTrack struct {
	lsn uint64 // replay position last seen
	// behindSince: since when, with lsn unchanged, this observer has seen
	// the primary up and ahead of it; zero while it is not.
	behindSince time.Time
	// stalled stays set until the replay position moves again: a standby
	// found stalled while the primary was up stays no failover target
	// after the primary dies.
	stalled bool
}

// judgeReplayLocked applies the group's ReplayStallAfter to a standby's
// result: one whose replay position has not moved for that long while
// this observer's own fresh probes saw the primary up with its WAL ahead
// of that position — it had WAL to replay and replayed none — is made
// down with KindReplayStalled, so that it is never chosen as the failover
// target, until its replay moves. A primary that is idle (not ahead) or
// down (its last position may never reach any standby) starts nothing.
// m.mu is held.
func (m *Monitor) judgeReplayLocked(k memberKey, r *Result) {
	g := m.plans[k.group]
	if g.ReplayStallAfter <= 0 || r.Verdict != VerdictUp || r.Role != RoleStandby || k.member == g.Primary {
		delete(m.replay, k)
		return
	}
	tr, had := m.replay[k]
	if !had || r.ReplayLSN != tr.lsn {
		tr = replayTrack{lsn: r.ReplayLSN}
	}
	p, ok := m.ownRes[memberKey{k.group, g.Primary}]
	ahead := ok && p.Verdict == VerdictUp && p.Role == RolePrimary && p.CurrentLSN > tr.lsn &&
		r.At.Sub(p.At).Abs() <= g.StaleAfter
	switch {
	case ahead && tr.behindSince.IsZero():
		tr.behindSince = r.At
	case !ahead && !tr.stalled:
		tr.behindSince = time.Time{}
	}
	if !tr.behindSince.IsZero() && r.At.Sub(tr.behindSince) >= g.ReplayStallAfter {
		tr.stalled = true
	}
	m.replay[k] = tr
	if tr.stalled {
		r.Verdict = VerdictDown
		r.ErrKind = KindReplayStalled
		r.Err = fmt.Sprintf("replay stalled at %s for %s while the primary %s was ahead of it",
			FormatLSN(tr.lsn), r.At.Sub(tr.behindSince).Round(100*time.Millisecond), g.Primary)
	}
}
