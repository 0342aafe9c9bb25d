package failover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vigilha/vigil/fsm"
	"github.com/vigilha/vigil/health"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// Log is the replicated log as the leader uses it. Propose fails on an
// observer that is not (or no longer) the leader.
type Log interface {
	Propose(ctx context.Context, cmd *vigilv1.Command) (fsm.Result, error)
	VerifyLeader(ctx context.Context) error
}

// State is the replicated state, read-only.
type State interface {
	Groups() []*vigilv1.Group
	Group(name string) (*vigilv1.Group, bool)
}

// Health is the aggregated health view.
type Health interface {
	Health(group string) []*vigilv1.MemberHealth
	ODown(group, member string) (bool, time.Time)
	Primary(group string) (health.PrimaryMemo, bool)
	// RoutablePrimary: member is the expected primary and a quorum of
	// fresh votes sees it up as a writable primary.
	RoutablePrimary(group, member string) bool
	// RoguePrimaries: members a fresh vote saw as a writable primary
	// while the state names another member primary.
	RoguePrimaries(group string) []string
}

// Seen tells how long ago this observer itself applied the command that
// set a group's last failover ("last_failover") or back-off ("backoff"),
// on its own monotonic clock; false when it did not see it applied live.
// Safety waits count from events the waiting observer saw itself, so a
// clock offset between observers cannot shorten them.
type Seen interface {
	Since(group, what string) (time.Duration, bool)
}

// CandidateFencer makes a standby read-only, so that a promotion that
// completes late (after its timeout) still leaves it taking no writes.
type CandidateFencer interface {
	FenceCandidate(ctx context.Context, m Member) error
}

// PreFailoverCheck may veto an automatic failover.
type PreFailoverCheck interface {
	Check(ctx context.Context, a Action) error
}

// CatchUp is what a planned switchover needs to lose nothing: the old
// primary's final WAL position and a wait until the target replayed it.
type CatchUp interface {
	CurrentLSN(ctx context.Context, m Member) (lsn uint64, inRecovery bool, err error)
	WaitReplayed(ctx context.Context, m Member, lsn uint64) error
}

// Positioner reads a member's WAL position live, so that the choice
// between equally good candidates is made on where they are now rather
// than where the last probe saw them.
type Positioner interface {
	WALPosition(ctx context.Context, m Member) (uint64, error)
}

// Unfencer undoes a fence when a failover is aborted before promotion.
type Unfencer interface {
	Unfence(ctx context.Context, m Member) error
}

// GroupActuators are the actuators and policy of one group.
type GroupActuators struct {
	// Fencers run at once; the fence step needs the database fenced and,
	// with NeedTrafficFence, the traffic too (see fence).
	Fencers []Fencer
	// LastResortFencers (exec hooks: IPMI, cloud API) run only when the
	// Fencers did not cover everything.
	LastResortFencers []Fencer
	// NeedTrafficFence: the group has a VIP, which must be verifiably off
	// the old primary's host before anything is promoted.
	NeedTrafficFence bool
	// CandidateFencer makes a candidate whose promotion failed read-only
	// before the old primary is unfenced.
	CandidateFencer CandidateFencer
	Promoter        Promoter
	Repointer       Repointer
	Routers         []Router
	Notifiers       []Notifier
	// Optional.
	PreFailover PreFailoverCheck
	CatchUp     CatchUp
	Unfencer    Unfencer
	Positioner  Positioner
	// VIPEnsure, when set, is used to make sure the current primary holds
	// the group's VIP outside failovers (first start, agent restarts).
	VIPEnsure Router
	// Rejoiner, when set, is asked (asynchronously) to make the old
	// primary a standby of the new one after a completed failover.
	Rejoiner Notifier

	// BestEffortFence lets a failover go on when no fencer confirms.
	BestEffortFence    bool
	StepTimeout        time.Duration
	PromoteTimeout     time.Duration
	VetoBackoff        time.Duration
	AnyStandby         bool
	AllowedDatacenters []string
}

// Options configure a Controller.
type Options struct {
	// Self is this observer's id (recorded as the actor of every step).
	Self   string
	Log    Log
	State  State
	Health Health
	// Actuators returns a group's actuators; false when the group cannot
	// be failed over by this observer (unknown in its config).
	Actuators func(group string) (GroupActuators, bool)
	Logger    *slog.Logger
	Metrics   *Metrics
	Now       func() time.Time
	// Tick is how often groups are examined (default 100ms). It is a
	// safety net: Wake, and a timer at the moment a primary's down streak
	// turns into ODOWN, examine them at once.
	Tick time.Duration
	// Seen, when set, adds this observer's own monotonic view to the
	// cooldown and back-off deadlines written in the state.
	Seen Seen
	// AgentSelfFenced, when set, reports that a member's node agent said
	// it fenced its host itself (lost its lease quorum): a primary that
	// this observer still reaches but whose agent took it out of service.
	AgentSelfFenced func(group, member string) bool
	// RerouteRetry is the pause between attempts of a failing router
	// (default 500ms); a reroute gives up after the group's StepTimeout.
	RerouteRetry time.Duration
	// AfterStep, for tests, runs right after a step is committed.
	AfterStep func(ctx context.Context, group string, epoch uint64, step string)
}

// Controller decides and runs failovers. It runs only on the Raft leader,
// inside the leader loop; every action it takes is first committed to the
// log with the group's new epoch, so a new leader resumes the same
// failover and a deposed one cannot commit its next step.
type Controller struct {
	opt Options
	log *slog.Logger

	mu      sync.Mutex
	running map[string]bool      // groups with a failover goroutine
	status  map[string]string    // why a group is not being failed over
	refence map[string]time.Time // last re-fence per group/member
	// refencing: group/member re-fences in flight
	refencing map[string]bool
	rogueNote map[string]string    // rogue primaries being fenced, per group
	ensured   map[string]time.Time // last VIP check per group
	judged    map[string]time.Time // last eligibility refresh per group
	runCtx    context.Context      // the current leadership's context
	wg        *sync.WaitGroup
	// wake (buffered 1) asks Run to examine the groups in woken (all of
	// them with wakeAll) now: see Wake.
	wake    chan struct{}
	woken   map[string]bool
	wakeAll bool
}

// NewController returns a controller; Run starts it.
func NewController(opt Options) *Controller {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Tick <= 0 {
		opt.Tick = 100 * time.Millisecond
	}
	if opt.Metrics == nil {
		opt.Metrics = NewMetrics(nil)
	}
	if opt.RerouteRetry <= 0 {
		opt.RerouteRetry = 500 * time.Millisecond
	}
	return &Controller{opt: opt, log: opt.Logger, running: map[string]bool{}, status: map[string]string{}, refence: map[string]time.Time{}, refencing: map[string]bool{}, rogueNote: map[string]string{}, ensured: map[string]time.Time{}, judged: map[string]time.Time{},
		wake: make(chan struct{}, 1), woken: map[string]bool{}}
}

// Wake makes Run examine the named groups (every group when none is
// named) now rather than at its next tick: the health monitor calls it
// when a vote changes what it thinks of a member, so that a failover
// starts the moment a primary is ODOWN instead of up to one tick later.
// It never blocks; wakes that arrive while one is pending are merged, and
// a wake while Run is not running (this observer is not the leader) only
// makes the next Run look once more at once.
func (c *Controller) Wake(groups ...string) {
	c.mu.Lock()
	if len(groups) == 0 {
		c.wakeAll = true
	}
	for _, g := range groups {
		c.woken[g] = true
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// takeWoken returns the groups woken since the last call (all: every
// group) and forgets them.
func (c *Controller) takeWoken() (groups []string, all bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	all = c.wakeAll
	for g := range c.woken {
		groups = append(groups, g)
	}
	c.wakeAll = false
	clear(c.woken)
	return groups, all
}

// Run examines every group each tick, the woken ones on every Wake, and a
// group at the moment its primary's down streak becomes ODOWN
// (odownDue), until ctx (the leadership) ends, and waits for the
// failovers it started to stop.
func (c *Controller) Run(ctx context.Context) {
	var wg sync.WaitGroup
	c.mu.Lock()
	c.runCtx, c.wg = ctx, &wg
	c.mu.Unlock()
	defer func() {
		wg.Wait()
		c.mu.Lock()
		c.runCtx, c.wg = nil, nil
		c.mu.Unlock()
	}()
	t := time.NewTicker(c.opt.Tick)
	defer t.Stop()
	// due fires when the earliest primary on its way to ODOWN gets there:
	// ODOWN also becomes true by time passing, with no vote (so no Wake)
	// at that moment, and the tick would add up to one period to it.
	due := time.NewTimer(time.Hour)
	due.Stop()
	defer due.Stop()
	dueAt := map[string]time.Time{} // per group, see odownDue
	all := true
	var some []string
	for {
		if all {
			clear(dueAt)
			for _, g := range c.opt.State.Groups() {
				c.examine(ctx, g, dueAt)
			}
		} else {
			// A wake names a few groups: with many groups, examining
			// all of them on every vote that changes would be wasted.
			for _, name := range some {
				if g, ok := c.opt.State.Group(name); ok {
					c.examine(ctx, g, dueAt)
				} else {
					delete(dueAt, name)
				}
			}
		}
		var next time.Time
		for _, at := range dueAt {
			if next.IsZero() || at.Before(next) {
				next = at
			}
		}
		// Since Go 1.23 Stop and Reset leave no stale tick in due.C.
		due.Stop()
		if !next.IsZero() {
			due.Reset(next.Sub(c.opt.Now()))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			all = true
		case <-c.wake:
			some, all = c.takeWoken()
		case <-due.C:
			all, some = false, nil
			now := c.opt.Now()
			for name, at := range dueAt {
				if !at.After(now) {
					some = append(some, name)
				}
			}
		}
	}
}

// examine considers g and records in dueAt when its primary becomes
// ODOWN by time alone (nothing when it does not).
func (c *Controller) examine(ctx context.Context, g *vigilv1.Group, dueAt map[string]time.Time) {
	c.consider(ctx, g)
	name := g.GetSpec().GetName()
	if at := c.odownDue(g); !at.IsZero() {
		dueAt[name] = at
	} else {
		delete(dueAt, name)
	}
}

// odownDue returns when the group's primary becomes ODOWN if the quorum
// of down votes it has now holds on (its down streak's start plus the
// group's down_after), or zero when it is not on its way there, is there
// already, or the moment has passed (the monitor's own re-evaluation at
// that moment wakes the controller then).
func (c *Controller) odownDue(g *vigilv1.Group) time.Time {
	if g.GetActiveFailover() != nil {
		return time.Time{}
	}
	name, primary := g.GetSpec().GetName(), g.GetPrimary()
	for _, h := range c.opt.Health.Health(name) {
		if h.GetMember() != primary {
			continue
		}
		if h.GetOdown() || h.GetDownSince() == nil || h.GetQuorum() <= 0 || h.GetDownVotes() < h.GetQuorum() {
			return time.Time{}
		}
		at := h.GetDownSince().AsTime().Add(time.Duration(g.GetSpec().GetDownAfterMs()) * time.Millisecond)
		if !at.After(c.opt.Now()) {
			return time.Time{}
		}
		return at
	}
	return time.Time{}
}

// Status returns why the controller is not failing a group over (empty
// when it has nothing to say), as last seen on the leader.
func (c *Controller) Status(group string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, r := c.status[group], c.rogueNote[group]
	switch {
	case r == "":
		return s
	case s == "":
		return r
	}
	return s + "; " + r
}

func (c *Controller) setStatus(group, s string) {
	c.mu.Lock()
	old := c.status[group]
	c.status[group] = s
	c.mu.Unlock()
	if s != old && s != "" {
		c.log.Info("group not failed over", "group", group, "why", s)
	}
}

// consider decides whether a group needs a failover now, and starts or
// resumes it.
func (c *Controller) consider(ctx context.Context, g *vigilv1.Group) {
	name := g.GetSpec().GetName()
	c.mu.Lock()
	busy := c.running[name]
	c.mu.Unlock()
	c.refenceRogues(ctx, g)
	if busy {
		return
	}
	if a := g.GetActiveFailover(); a != nil {
		// Left unfinished by us or by a previous leader: roll it forward.
		c.log.Info("resuming failover", "group", name, "epoch", a.GetEpoch(), "next_step", fsm.NextStep(a))
		c.start(ctx, name, a.GetEpoch(), nil)
		return
	}
	primary := g.GetPrimary()
	odown, since := c.opt.Health.ODown(name, primary)
	if !odown {
		c.setStatus(name, "")
		c.ensureVIP(ctx, g)
		c.refreshEligibility(g)
		return
	}
	if !c.selfSeesDown(name, primary) {
		// The quorum's word alone is not enough: the leader's own fresh
		// probe must agree, so no set of forged votes moves a primary.
		c.setStatus(name, "primary "+primary+" is ODOWN but this observer (the leader) still sees it up: waiting for its own probe to agree")
		return
	}
	switch {
	case g.GetPaused():
		c.setStatus(name, "paused: primary "+primary+" is ODOWN but the group is in maintenance")
		return
	}
	if left := c.cooldownLeft(g); left > 0 {
		c.setStatus(name, fmt.Sprintf("cooldown: primary %s is ODOWN, last failover at %s, no automatic failover for another %s",
			primary, g.GetLastFailoverAt().AsTime().UTC().Format(time.RFC3339), left.Round(time.Second)))
		return
	}
	if left := c.backoffLeft(g); left > 0 {
		c.setStatus(name, fmt.Sprintf("back-off: primary %s is ODOWN, no automatic failover for another %s (%s)", primary, left.Round(100*time.Millisecond), g.GetBackoffReason()))
		return
	}
	acts, ok := c.opt.Actuators(name)
	if !ok {
		c.setStatus(name, "this observer has no configuration to act on the group")
		return
	}
	cand, err := c.pick(g, acts, false, "")
	if err != nil {
		c.opt.Metrics.noCandidate.WithLabelValues(name).Inc()
		c.setStatus(name, "primary "+primary+" is ODOWN: "+err.Error())
		return
	}
	cand = c.refine(ctx, g, acts, cand)
	action := Action{Group: name, Epoch: g.GetEpoch() + 1, Kind: fsm.KindFailover, Old: member(g, primary), New: member(g, cand.Name)}
	if acts.PreFailover != nil {
		hctx, cancel := context.WithTimeout(ctx, acts.StepTimeout)
		err := acts.PreFailover.Check(hctx, action)
		cancel()
		if err != nil {
			reason := fmt.Sprintf("pre_failover hook vetoed failover to %s: %v", cand.Name, err)
			if _, perr := c.opt.Log.Propose(ctx, &vigilv1.Command{Actor: c.opt.Self, Cmd: &vigilv1.Command_SetBackoff{SetBackoff: &vigilv1.SetBackoff{
				Group: name, DurationMs: acts.VetoBackoff.Milliseconds(), Reason: truncate(reason, 400)}}}); perr != nil {
				c.log.Warn("could not commit the veto back-off", "group", name, "err", perr)
			}
			c.opt.Metrics.failovers.WithLabelValues(name, fsm.KindFailover, "vetoed").Inc()
			c.setStatus(name, fmt.Sprintf("pre_failover hook vetoed failover to %s (retry after %s): %v", cand.Name, acts.VetoBackoff, err))
			c.notify(ctx, acts, action, "pre_failover", "vetoed", err.Error())
			return
		}
	}
	reason := fmt.Sprintf("primary %s ODOWN since %s", primary, since.UTC().Format("15:04:05.000"))
	if err := c.commitStart(ctx, action, reason, since); err != nil {
		c.log.Warn("could not start failover", "group", name, "err", err)
		return
	}
	c.setStatus(name, "")
	c.start(ctx, name, action.Epoch, nil)
}

// selfSeesDown reports whether this observer's own latest vote about the
// member says down (SDOWN) — or, for a member this observer still reaches,
// whether its agent has fenced it (cut off from the other observers, it
// lost its lease quorum): then it is out of service, and waiting for the
// leader's own probe would only prolong the outage.
func (c *Controller) selfSeesDown(group, member string) bool {
	if c.opt.AgentSelfFenced != nil && c.opt.AgentSelfFenced(group, member) {
		return true
	}
	for _, h := range c.opt.Health.Health(group) {
		if h.GetMember() == member {
			return h.GetSdown()
		}
	}
	return false
}

// selfFencedButUp: the state's primary, with no failover in progress, is
// seen up as a primary by a quorum but its agent fenced it itself (it
// lost its lease quorum in a blip: a leader election, a short cut). Its
// agent's database fence made it read-only, so it is not "writable" and
// would never be given its VIP back; AddVIP at the current epoch is what
// lifts an agent's fence.
func (c *Controller) selfFencedButUp(group, member string) bool {
	if c.opt.AgentSelfFenced == nil || !c.opt.AgentSelfFenced(group, member) {
		return false
	}
	for _, h := range c.opt.Health.Health(group) {
		if h.GetMember() == member {
			return h.GetQuorum() > 0 && h.GetUpVotes() >= h.GetQuorum() && h.GetRoleSeen() == "primary"
		}
	}
	return false
}

// ensureVIP makes sure, at most every two seconds per group, that the
// live primary holds the group's VIP in the current epoch: on first start
// nothing has placed it yet, and a restarted agent starts without it.
func (c *Controller) ensureVIP(ctx context.Context, g *vigilv1.Group) {
	name := g.GetSpec().GetName()
	acts, ok := c.opt.Actuators(name)
	if !ok || acts.VIPEnsure == nil {
		return
	}
	if !c.opt.Health.RoutablePrimary(name, g.GetPrimary()) && !c.selfFencedButUp(name, g.GetPrimary()) {
		// Never place the VIP on a member a quorum does not see as a
		// writable primary (down, fenced by a failover, or not yet judged).
		return
	}
	if !c.due(c.ensured, name, 2*time.Second) {
		return
	}
	ectx, cancel := context.WithTimeout(ctx, acts.StepTimeout)
	defer cancel()
	a := Action{Group: name, Epoch: g.GetEpoch(), Kind: "ensure", New: member(g, g.GetPrimary())}
	if err := acts.VIPEnsure.Route(ectx, a); err != nil {
		c.log.Warn("could not place the VIP on the primary", "group", name, "primary", g.GetPrimary(), "err", err)
	}
}

// due reports whether name's last time in last is at least every ago,
// and if so records now: a per-group rate limit for periodic chores.
func (c *Controller) due(last map[string]time.Time, name string, every time.Duration) bool {
	now := c.opt.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !now.After(last[name].Add(every)) {
		return false
	}
	last[name] = now
	return true
}

// refreshEligibility re-judges, at most once a second per group, who could
// be promoted now, so vigil_candidate_eligible (and the "no eligible
// candidate" alert) describe the present, not the last decision.
func (c *Controller) refreshEligibility(g *vigilv1.Group) {
	name := g.GetSpec().GetName()
	if !c.due(c.judged, name, time.Second) {
		return
	}
	if cands, err := c.Candidates(name); err == nil {
		for _, cd := range cands {
			c.opt.Metrics.setEligible(name, cd.Name, cd.Eligible)
		}
	}
}

// pick chooses the new primary: the named member (checked) or the best.
func (c *Controller) pick(g *vigilv1.Group, acts GroupActuators, manual bool, to string) (Candidate, error) {
	name := g.GetSpec().GetName()
	in := CandidateInput{Spec: g.GetSpec(), Primary: g.GetPrimary(), Health: c.opt.Health.Health(name),
		AllowedDatacenters: acts.AllowedDatacenters, Manual: manual}
	if p, ok := c.opt.Health.Primary(name); ok && p.Member == g.GetPrimary() {
		in.PrimaryLSN = p.LSN
		if !acts.AnyStandby {
			in.SyncStandbys = p.SyncStandbys
		}
	}
	ranked := Rank(in)
	for _, cand := range ranked {
		c.opt.Metrics.setEligible(name, cand.Name, cand.Eligible)
	}
	if to == "" {
		return Best(in)
	}
	for _, cand := range ranked {
		if cand.Name == to {
			if !cand.Eligible {
				return Candidate{}, fmt.Errorf("member %s is not eligible: %s", to, cand.Reason)
			}
			return cand, nil
		}
	}
	return Candidate{}, fmt.Errorf("member %q is not a standby of group %s", to, name)
}

// refine re-reads, live, the WAL position of the eligible candidates that
// share the best priority and takes the most advanced: probes are up to
// one interval old, and with synchronous replication the standby holding
// the last acknowledged commit must win. Members that do not answer keep
// their probed position.
func (c *Controller) refine(ctx context.Context, g *vigilv1.Group, acts GroupActuators, best Candidate) Candidate {
	if acts.Positioner == nil {
		return best
	}
	cands, err := c.Candidates(g.GetSpec().GetName())
	if err != nil {
		return best
	}
	var same []Candidate
	for _, cd := range cands {
		if cd.Eligible && cd.Priority == best.Priority {
			same = append(same, cd)
		}
	}
	if len(same) < 2 {
		return best
	}
	var wg sync.WaitGroup
	for i := range same {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if lsn, err := acts.Positioner.WALPosition(pctx, member(g, same[i].Name)); err == nil {
				same[i].LSN = lsn
			}
		}()
	}
	wg.Wait()
	out := same[0]
	for _, cd := range same[1:] {
		if cd.LSN > out.LSN || (cd.LSN == out.LSN && cd.Name < out.Name) {
			out = cd
		}
	}
	if out.Name != best.Name {
		c.log.Info("live WAL positions changed the candidate", "group", g.GetSpec().GetName(), "probed_best", best.Name, "chosen", out.Name)
	}
	return out
}

func (c *Controller) commitStart(ctx context.Context, a Action, reason string, odownAt time.Time) error {
	sf := &vigilv1.StartFailover{Group: a.Group, Epoch: a.Epoch, Kind: a.Kind, OldPrimary: a.Old.Name, NewPrimary: a.New.Name, Reason: reason}
	if !odownAt.IsZero() {
		sf.OdownAt = timestamp(odownAt)
	}
	_, err := c.opt.Log.Propose(ctx, &vigilv1.Command{Actor: c.opt.Self, Cmd: &vigilv1.Command_StartFailover{StartFailover: sf}})
	if err != nil {
		return fmt.Errorf("commit failover intent for %s epoch %d: %w", a.Group, a.Epoch, err)
	}
	c.log.Info("failover started", "group", a.Group, "epoch", a.Epoch, "kind", a.Kind, "old", a.Old.Name, "new", a.New.Name, "reason", reason)
	return nil
}

// start runs the failover of epoch in its own goroutine under the
// leadership context; done, if set, is closed when it ends.
func (c *Controller) start(ctx context.Context, group string, epoch uint64, done chan struct{}) {
	c.mu.Lock()
	if c.running[group] || c.wg == nil {
		c.mu.Unlock()
		if done != nil {
			close(done)
		}
		return
	}
	c.running[group] = true
	wg := c.wg
	wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer wg.Done()
		defer func() {
			c.mu.Lock()
			delete(c.running, group)
			c.mu.Unlock()
			if done != nil {
				close(done)
			}
		}()
		if err := c.run(ctx, group, epoch); err != nil && ctx.Err() == nil {
			c.log.Error("failover stopped", "group", group, "epoch", epoch, "err", err)
		}
	}()
}

func member(g *vigilv1.Group, name string) Member {
	for _, m := range g.GetSpec().GetMembers() {
		if m.GetName() == name {
			return Member{Name: name, Address: m.GetAddress()}
		}
	}
	return Member{Name: name}
}

// run rolls the failover of epoch forward from its last committed step.
// Each step is done, then committed; a commit that fails (leadership
// lost) stops the run, and the next leader repeats the step (idempotent).
func (c *Controller) run(ctx context.Context, group string, epoch uint64) error {
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		g, ok := c.opt.State.Group(group)
		if !ok {
			return fmt.Errorf("group %s disappeared", group)
		}
		a := g.GetActiveFailover()
		if a == nil || a.GetEpoch() != epoch {
			return nil // finished (by us or another leader)
		}
		acts, ok := c.opt.Actuators(group)
		if !ok {
			return fmt.Errorf("no actuators for group %s", group)
		}
		action := Action{Group: group, Epoch: epoch, Kind: a.GetKind(), Old: member(g, a.GetOldPrimary()), New: member(g, a.GetNewPrimary()),
			Started: a.GetStartedAt().AsTime()}
		step := fsm.NextStep(a)
		if step == "" {
			return c.finish(ctx, action, a, fsm.OutcomeCompleted, "")
		}
		start := c.opt.Now()
		detail, abort, err := c.do(ctx, g, acts, action, step)
		if err != nil {
			return fmt.Errorf("step %s: %w", step, err)
		}
		if abort != "" {
			c.opt.Metrics.failovers.WithLabelValues(group, a.GetKind(), "aborted").Inc()
			c.notify(ctx, acts, action, step, "aborted", abort)
			c.log.Error("failover aborted", "group", group, "epoch", epoch, "step", step, "why", abort)
			return c.finishWith(ctx, action, a, fsm.OutcomeAborted, abort, acts.VetoBackoff)
		}
		failed := false
		if strings.HasPrefix(detail, stepFailedPrefix) {
			failed = true
			c.opt.Metrics.stepFailures.WithLabelValues(group, step).Inc()
			c.log.Error("failover step failed; going on", "group", group, "epoch", epoch, "step", step, "detail", detail)
		}
		took := c.opt.Now().Sub(start)
		_, err = c.opt.Log.Propose(ctx, &vigilv1.Command{Actor: c.opt.Self, Cmd: &vigilv1.Command_RecordFailoverStep{RecordFailoverStep: &vigilv1.RecordFailoverStep{
			Group: group, Epoch: epoch, Step: &vigilv1.FailoverStep{Name: step, Detail: detail, DurationMs: took.Milliseconds(), Failed: failed}}}})
		if err != nil {
			return fmt.Errorf("commit step %s of epoch %d: %w", step, epoch, err)
		}
		c.opt.Metrics.stepDuration.WithLabelValues(step).Observe(took.Seconds())
		c.log.Info("failover step committed", "group", group, "epoch", epoch, "step", step, "took", took, "detail", detail)
		c.notify(ctx, acts, action, step, "ok", detail)
		if c.opt.AfterStep != nil {
			c.opt.AfterStep(ctx, group, epoch, step)
		}
	}
}

// do performs one step. It returns the step's detail, or a reason to
// abort the failover (only before promotion), or an error that stops this
// leader's run (to be resumed).
func (c *Controller) do(ctx context.Context, g *vigilv1.Group, acts GroupActuators, a Action, step string) (detail, abort string, err error) {
	switch step {
	case fsm.StepFenced:
		if err := c.opt.Log.VerifyLeader(ctx); err != nil {
			return "", "", fmt.Errorf("verify leadership before fencing: %w", err)
		}
		return c.fence(ctx, g, acts, a)
	case fsm.StepPromoted:
		if err := c.opt.Log.VerifyLeader(ctx); err != nil {
			return "", "", fmt.Errorf("verify leadership before promotion: %w", err)
		}
		note := ""
		if a.Kind != fsm.KindSwitchover { // a switchover cascades before its catch-up
			note = c.cascadeBeforePromote(ctx, g, acts, a)
		}
		var last error
		for attempt := 1; attempt <= 3; attempt++ {
			pctx, cancel := context.WithTimeout(ctx, acts.PromoteTimeout)
			last = acts.Promoter.Promote(pctx, a)
			cancel()
			if last == nil {
				return fmt.Sprintf("%s promoted and writable", a.New.Name) + note, "", nil
			}
			c.log.Warn("promotion failed", "group", a.Group, "member", a.New.Name, "attempt", attempt, "err", last)
			if ctx.Err() != nil {
				return "", "", ctx.Err()
			}
		}
		detail, abort := c.promotionFailed(ctx, acts, a, last)
		return detail, abort, nil
	case fsm.StepRerouted:
		return c.reroute(ctx, acts, a)
	case fsm.StepStandbysRepointed:
		ok, failed := c.repointOthers(ctx, g, acts, a)
		d := fmt.Sprintf("following %s: [%s]", a.New.Name, strings.Join(ok, ", "))
		if len(failed) > 0 {
			d += "; not re-pointed: " + strings.Join(failed, "; ")
		}
		return d, "", nil
	}
	return "", "", fmt.Errorf("unknown step %q", step)
}

// cascadeBeforePromote makes the other standbys follow the candidate
// (cascading replication) before it is promoted. A fenced old primary
// still streams to its standbys, and from the moment the candidate stops
// receiving (promotion) whatever the old primary sends the others would
// put them past the new timeline's fork point: diverged, in need of a
// rewind. Following the candidate, they receive nothing it has not. At
// most a second, all at once: it is on the way to the new primary; a
// standby that cannot be re-pointed now is re-pointed after the
// promotion, as before. It returns a note for the step's detail.
func (c *Controller) cascadeBeforePromote(ctx context.Context, g *vigilv1.Group, acts GroupActuators, a Action) string {
	if acts.Repointer == nil || g == nil {
		return ""
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var ok, failed []string
	for _, m := range g.GetSpec().GetMembers() {
		if m.GetName() == a.New.Name || m.GetName() == a.Old.Name {
			continue
		}
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, min(acts.StepTimeout, time.Second))
			err := acts.Repointer.Repoint(rctx, a, Member{Name: m.GetName(), Address: m.GetAddress()})
			cancel()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed = append(failed, fmt.Sprintf("%s: %v", m.GetName(), err))
			} else {
				ok = append(ok, m.GetName())
			}
		})
	}
	wg.Wait()
	if len(ok) == 0 && len(failed) == 0 {
		return ""
	}
	slices.Sort(ok)
	slices.Sort(failed)
	note := fmt.Sprintf("; cascading from %s before its promotion: [%s]", a.New.Name, strings.Join(ok, ", "))
	if len(failed) > 0 {
		c.log.Warn("some standbys could not cascade from the candidate before its promotion", "group", a.Group, "epoch", a.Epoch, "failed", failed)
		note += "; not yet: " + strings.Join(failed, "; ")
	}
	return note
}

// repointOthers makes every member but the old and the new primary follow
// a.New, and returns who does and why the others do not.
func (c *Controller) repointOthers(ctx context.Context, g *vigilv1.Group, acts GroupActuators, a Action) (ok, failed []string) {
	for _, m := range g.GetSpec().GetMembers() {
		if m.GetName() == a.New.Name || m.GetName() == a.Old.Name {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, acts.StepTimeout)
		err := acts.Repointer.Repoint(rctx, a, Member{Name: m.GetName(), Address: m.GetAddress()})
		cancel()
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", m.GetName(), err))
			continue
		}
		ok = append(ok, m.GetName())
	}
	return ok, failed
}

func (c *Controller) finish(ctx context.Context, a Action, f *vigilv1.Failover, outcome, detail string) error {
	return c.finishWith(ctx, a, f, outcome, detail, 0)
}

// finishWith commits the outcome; an abort also commits a back-off, so
// that a new leader does not retry at once.
func (c *Controller) finishWith(ctx context.Context, a Action, f *vigilv1.Failover, outcome, detail string, backoff time.Duration) error {
	if outcome == fsm.OutcomeCompleted {
		total := c.opt.Now().Sub(f.GetStartedAt().AsTime())
		if f.GetOdownAt() != nil {
			total = c.opt.Now().Sub(f.GetOdownAt().AsTime())
		}
		detail = fmt.Sprintf("%s is primary; %s after %s", a.New.Name, total.Round(time.Millisecond), map[bool]string{true: "ODOWN", false: "start"}[f.GetOdownAt() != nil])
		c.opt.Metrics.duration.WithLabelValues(f.GetKind()).Observe(c.opt.Now().Sub(f.GetStartedAt().AsTime()).Seconds())
		c.opt.Metrics.failovers.WithLabelValues(a.Group, f.GetKind(), "completed").Inc()
	}
	_, err := c.opt.Log.Propose(ctx, &vigilv1.Command{Actor: c.opt.Self, Cmd: &vigilv1.Command_FinishFailover{FinishFailover: &vigilv1.FinishFailover{
		Group: a.Group, Epoch: a.Epoch, Outcome: outcome, Detail: truncate(detail, 2000), BackoffMs: backoff.Milliseconds()}}})
	if err != nil {
		return fmt.Errorf("commit %s of epoch %d: %w", outcome, a.Epoch, err)
	}
	c.log.Info("failover finished", "group", a.Group, "epoch", a.Epoch, "outcome", outcome, "detail", detail)
	if acts, ok := c.opt.Actuators(a.Group); ok {
		c.notify(ctx, acts, a, "finished", outcome, detail)
		if outcome == fsm.OutcomeCompleted && acts.Rejoiner != nil {
			acts.Rejoiner.Notify(ctx, Event{Action: a, Step: "rejoin", Outcome: "requested", Detail: detail, At: c.opt.Now()})
		}
	}
	return nil
}

func (c *Controller) notify(ctx context.Context, acts GroupActuators, a Action, step, outcome, detail string) {
	for _, n := range acts.Notifiers {
		n.Notify(ctx, Event{Action: a, Step: step, Outcome: outcome, Detail: detail, At: c.opt.Now()})
	}
}

// ErrNotRunning is returned by Request when this observer is not leading.
var ErrNotRunning = errors.New("failover controller not running on this observer (not the leader, or leadership not yet established)")

// Request runs an operator's switchover (planned, zero data loss) or
// forced failover to member `to` (the best candidate when empty). It
// returns once the failover finished or ctx ended (the failover goes on).
func (c *Controller) Request(ctx context.Context, group, kind, to string) (*vigilv1.Failover, error) {
	c.mu.Lock()
	runCtx := c.runCtx
	c.mu.Unlock()
	if runCtx == nil {
		return nil, ErrNotRunning
	}
	g, ok := c.opt.State.Group(group)
	if !ok {
		return nil, fmt.Errorf("%w: %q", fsm.ErrGroupNotFound, group)
	}
	if a := g.GetActiveFailover(); a != nil {
		return nil, fmt.Errorf("%w: failover of epoch %d is in progress", ErrRefused, a.GetEpoch())
	}
	acts, ok := c.opt.Actuators(group)
	if !ok {
		return nil, fmt.Errorf("%w: this observer has no configuration to act on group %s", ErrRefused, group)
	}
	primary := g.GetPrimary()
	if kind == fsm.KindSwitchover {
		if odown, _ := c.opt.Health.ODown(group, primary); odown {
			return nil, fmt.Errorf("%w: primary %s is ODOWN; a switchover needs a live primary (use failover --force)", ErrRefused, primary)
		}
		if acts.CatchUp == nil {
			return nil, fmt.Errorf("%w: group %s has no way to wait for catch-up (not a postgres group)", ErrRefused, group)
		}
	}
	cand, err := c.pick(g, acts, true, to)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	a := Action{Group: group, Epoch: g.GetEpoch() + 1, Kind: kind, Old: member(g, primary), New: member(g, cand.Name)}
	reason := fmt.Sprintf("%s requested by operator", kind)
	if err := c.commitStart(ctx, a, reason, time.Time{}); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	c.start(runCtx, group, a.Epoch, done)
	select {
	case <-done:
	case <-ctx.Done():
	}
	g, _ = c.opt.State.Group(group)
	if act := g.GetActiveFailover(); act != nil && act.GetEpoch() == a.Epoch {
		return act, nil
	}
	for i := len(g.GetFailovers()) - 1; i >= 0; i-- {
		if f := g.GetFailovers()[i]; f.GetEpoch() == a.Epoch {
			return f, nil
		}
	}
	return nil, fmt.Errorf("failover of epoch %d not found after it ran", a.Epoch)
}

// ErrRefused marks an operator request refused with a reason.
var ErrRefused = errors.New("refused")

// Candidates ranks a group's members for promotion as this observer sees
// them (for operators: who would be promoted, and why not the others).
func (c *Controller) Candidates(group string) ([]Candidate, error) {
	g, ok := c.opt.State.Group(group)
	if !ok {
		return nil, fmt.Errorf("%w: %q", fsm.ErrGroupNotFound, group)
	}
	acts, _ := c.opt.Actuators(group)
	in := CandidateInput{Spec: g.GetSpec(), Primary: g.GetPrimary(), Health: c.opt.Health.Health(group), AllowedDatacenters: acts.AllowedDatacenters}
	if p, ok := c.opt.Health.Primary(group); ok && p.Member == g.GetPrimary() {
		in.PrimaryLSN = p.LSN
		if !acts.AnyStandby {
			in.SyncStandbys = p.SyncStandbys
		}
	}
	return Rank(in), nil
}
