package failover

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilha/vigil/fsm"
	"github.com/vigilha/vigil/health"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// memLog applies proposals straight to an in-memory FSM: the controller's
// view of a Raft log that always commits (a unit test of the layer above
// Raft; the real log is exercised by cluster/'s end-to-end tests).
type memLog struct {
	mu  sync.Mutex
	f   *fsm.FSM
	idx uint64
	now func() time.Time
}

func (l *memLog) Propose(_ context.Context, cmd *vigilv1.Command) (fsm.Result, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	cmd.At = timestamppb.New(l.now())
	b, err := fsm.Encode(cmd)
	if err != nil {
		return fsm.Result{}, err
	}
	l.idx++
	res := l.f.Apply(l.idx, b)
	return res, res.Err
}

func (l *memLog) VerifyLeader(context.Context) error { return nil }

// fakeHealth: the primary is ODOWN, every standby up and streaming.
type fakeHealth struct {
	mu        sync.Mutex
	selfUp    bool // this observer's own vote sees the primary up
	primaryUp bool // a quorum sees the primary up (read-only)
	odown     map[string]bool
	routable  map[string]bool
	rogues    []string
}

func (h *fakeHealth) Health(string) []*vigilv1.MemberHealth {
	h.mu.Lock()
	defer h.mu.Unlock()
	primary := mh("db1", votes("down", "unknown", 0, 0, 3))
	if h.primaryUp {
		primary = mh("db1", votes("up", "primary", 100, 0, 3))
		primary.UpVotes, primary.RoleSeen = 3, "primary"
	}
	primary.Sdown = !h.selfUp
	return []*vigilv1.MemberHealth{
		primary,
		mh("db2", votes("up", "standby", 100, 0, 3)),
		mh("db3", votes("up", "standby", 90, 0, 3)),
	}
}
func (h *fakeHealth) ODown(_, m string) (bool, time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.odown[m], time.Now().Add(-3 * time.Second)
}
func (h *fakeHealth) Primary(string) (health.PrimaryMemo, bool) { return health.PrimaryMemo{}, false }
func (h *fakeHealth) RoutablePrimary(_, m string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.routable[m]
}
func (h *fakeHealth) RoguePrimaries(string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.rogues...)
}

type fenceFn func(ctx context.Context, a Action) (FenceResult, error)

func (f fenceFn) Fence(ctx context.Context, a Action) (FenceResult, error) { return f(ctx, a) }

type countingFencer struct {
	calls atomic.Int32
	res   FenceResult
	err   error
	wait  bool // block until ctx ends (an unreachable host)
}

func (c *countingFencer) Fence(ctx context.Context, _ Action) (FenceResult, error) {
	c.calls.Add(1)
	if c.wait {
		<-ctx.Done()
		return FenceResult{Detail: "timed out"}, ctx.Err()
	}
	return c.res, c.err
}

type fakePG struct {
	mu           sync.Mutex
	promoteErr   error
	inRecovery   bool
	recoveryErr  error
	unfenced     []string
	fencedCands  []string
	candFenceErr error
	promoted     int
	// order records promotions ("promote db2") and re-points ("db3 ->
	// db2") as they happen.
	order []string
}

func (p *fakePG) Promote(_ context.Context, a Action) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.promoted++
	p.order = append(p.order, "promote "+a.New.Name)
	return p.promoteErr
}
func (p *fakePG) Repoint(_ context.Context, a Action, m Member) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.order = append(p.order, m.Name+" -> "+a.New.Name)
	return nil
}
func (p *fakePG) CurrentLSN(context.Context, Member) (uint64, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return 100, p.inRecovery, p.recoveryErr
}
func (p *fakePG) WaitReplayed(context.Context, Member, uint64) error { return nil }
func (p *fakePG) Unfence(_ context.Context, m Member) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.unfenced = append(p.unfenced, m.Name)
	return nil
}
func (p *fakePG) FenceCandidate(_ context.Context, m Member) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fencedCands = append(p.fencedCands, m.Name)
	return p.candFenceErr
}

type routerFn func(ctx context.Context, a Action) error

func (r routerFn) Route(ctx context.Context, a Action) error { return r(ctx, a) }

type harness struct {
	t    *testing.T
	f    *fsm.FSM
	log  *memLog
	h    *fakeHealth
	acts GroupActuators
	c    *Controller
	now  atomic.Int64 // offset in ns added to the real clock
}

func newHarness(t *testing.T, acts GroupActuators) *harness {
	t.Helper()
	hs := &harness{t: t, f: fsm.New(), h: &fakeHealth{odown: map[string]bool{"db1": true}, routable: map[string]bool{}}}
	now := func() time.Time { return time.Now().Add(time.Duration(hs.now.Load())) }
	hs.log = &memLog{f: hs.f, now: now}
	if acts.StepTimeout == 0 {
		acts.StepTimeout = 2 * time.Second
	}
	if acts.PromoteTimeout == 0 {
		acts.PromoteTimeout = time.Second
	}
	if acts.VetoBackoff == 0 {
		acts.VetoBackoff = time.Minute
	}
	hs.acts = acts
	spec := &vigilv1.GroupSpec{Name: "pg", Kind: "postgres", InitialPrimary: "db1", DownAfterMs: 2000, MaxLagBytes: 1000, CooldownMs: 60_000,
		Members: []*vigilv1.MemberSpec{{Name: "db1", Address: "h1:5432", Priority: 100}, {Name: "db2", Address: "h2:5432", Priority: 100}, {Name: "db3", Address: "h3:5432", Priority: 50}}}
	if _, err := hs.log.Propose(context.Background(), &vigilv1.Command{Actor: "config", Cmd: &vigilv1.Command_SyncGroups{SyncGroups: &vigilv1.SyncGroups{Groups: []*vigilv1.GroupSpec{spec}}}}); err != nil {
		t.Fatal(err)
	}
	hs.c = hs.controller()
	return hs
}

func (hs *harness) controller() *Controller {
	return NewController(Options{Self: "o1", Log: hs.log, State: hs.f, Health: hs.h, Tick: 10 * time.Millisecond, RerouteRetry: 20 * time.Millisecond,
		Actuators: func(string) (GroupActuators, bool) { return hs.acts, true },
		Now:       func() time.Time { return time.Now().Add(time.Duration(hs.now.Load())) }})
}

// run runs the controller until cond holds on the group (or fails the
// test after 10s).
func (hs *harness) run(c *Controller, cond func(g *vigilv1.Group) bool) *vigilv1.Group {
	hs.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if g, _ := hs.f.Group("pg"); cond(g) {
			return g
		}
		time.Sleep(5 * time.Millisecond)
	}
	g, _ := hs.f.Group("pg")
	hs.t.Fatalf("condition not reached; group: %v", g)
	return nil
}

func finished(n int) func(g *vigilv1.Group) bool {
	return func(g *vigilv1.Group) bool { return len(g.GetFailovers()) >= n }
}

func lastFailover(g *vigilv1.Group) *vigilv1.Failover {
	return g.GetFailovers()[len(g.GetFailovers())-1]
}

func pgActs(pg *fakePG, fencers ...Fencer) GroupActuators {
	return GroupActuators{Fencers: fencers, Promoter: pg, Repointer: pg, CatchUp: pg, Unfencer: pg, CandidateFencer: pg}
}

// Hole 2: in a VIP group the agent's VIP removal alone is not a fence;
// the database must be fenced too, by a method that says so.
func TestFenceNeedsDatabaseAndTraffic(t *testing.T) {
	agent := &countingFencer{res: FenceResult{Traffic: true, Detail: "VIP removed"}}
	sql := &countingFencer{res: FenceResult{Confirmed: true, Detail: "read-only, 3 sessions terminated"}}
	pg := &fakePG{}
	acts := pgActs(pg, agent, sql)
	acts.NeedTrafficFence = true
	hs := newHarness(t, acts)
	g := hs.run(hs.c, finished(1))
	f := lastFailover(g)
	if f.GetOutcome() != fsm.OutcomeCompleted || agent.calls.Load() != 1 || sql.calls.Load() != 1 {
		t.Fatalf("outcome %s, agent calls %d, sql calls %d; want completed with both fence methods run", f.GetOutcome(), agent.calls.Load(), sql.calls.Load())
	}
	if d := f.GetSteps()[0].GetDetail(); !strings.Contains(d, "VIP removed") || !strings.Contains(d, "read-only") {
		t.Fatalf("fenced detail %q does not record both fences", d)
	}
}

func TestStrictFenceAbortsWithoutDatabaseFence(t *testing.T) {
	agent := &countingFencer{res: FenceResult{Traffic: true, Detail: "VIP removed"}}
	sql := &countingFencer{err: errors.New("cannot connect: i/o timeout")}
	pg := &fakePG{}
	acts := pgActs(pg, agent, sql)
	acts.NeedTrafficFence = true
	hs := newHarness(t, acts)
	g := hs.run(hs.c, finished(1))
	f := lastFailover(g)
	if f.GetOutcome() != fsm.OutcomeAborted || pg.promoted != 0 || !strings.Contains(f.GetOutcomeDetail(), "database") {
		t.Fatalf("outcome %s (%s), promoted %d; want aborted naming the database, nothing promoted", f.GetOutcome(), f.GetOutcomeDetail(), pg.promoted)
	}
	// Hole 7: the abort's back-off is in the replicated state, so a new
	// leader (a fresh controller) does not retry at once.
	if g.GetBackoffUntil() == nil || g.GetBackoffMs() != time.Minute.Milliseconds() {
		t.Fatalf("no back-off in the state after an abort: %v", g)
	}
	c2 := hs.controller()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c2.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.HasPrefix(c2.Status("pg"), "back-off") {
		if time.Now().After(deadline) {
			t.Fatalf("new leader's status %q; want back-off", c2.Status("pg"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if g, _ := hs.f.Group("pg"); len(g.GetFailovers()) != 1 || g.GetActiveFailover() != nil {
		t.Fatalf("a new leader retried during the back-off: %d failovers", len(g.GetFailovers()))
	}
}

// A method still waiting on an unreachable host does not delay a fence
// the others have already completed.
func TestFenceDoesNotWaitForHungMethodOnceCovered(t *testing.T) {
	hung := &countingFencer{wait: true}
	agent := &countingFencer{res: FenceResult{Traffic: true, Confirmed: true, Detail: "VIP removed; database fenced"}}
	pg := &fakePG{}
	acts := pgActs(pg, hung, agent)
	acts.NeedTrafficFence = true
	acts.StepTimeout = time.Minute
	hs := newHarness(t, acts)
	start := time.Now()
	g := hs.run(hs.c, finished(1))
	if lastFailover(g).GetOutcome() != fsm.OutcomeCompleted || time.Since(start) > 30*time.Second {
		t.Fatalf("outcome %s after %s", lastFailover(g).GetOutcome(), time.Since(start))
	}
}

// Hole 5: a promotion reported failed must not unfence the old primary
// while the candidate may be writable.
// The other standbys follow the candidate before it is promoted: a
// fenced old primary still streaming to them would otherwise put them
// past the new timeline's fork point.
func TestOtherStandbysCascadeBeforePromotion(t *testing.T) {
	pg := &fakePG{}
	sql := &countingFencer{res: FenceResult{Confirmed: true}}
	hs := newHarness(t, pgActs(pg, sql))
	g := hs.run(hs.c, finished(1))
	f := lastFailover(g)
	pg.mu.Lock()
	order := slices.Clone(pg.order)
	pg.mu.Unlock()
	if f.GetOutcome() != fsm.OutcomeCompleted || len(order) < 2 || order[0] != "db3 -> db2" || order[1] != "promote db2" {
		t.Fatalf("outcome %s, order %v; want db3 re-pointed to db2 before db2 is promoted", f.GetOutcome(), order)
	}
	var promoted string
	for _, st := range f.GetSteps() {
		if st.GetName() == fsm.StepPromoted {
			promoted = st.GetDetail()
		}
	}
	if !strings.Contains(promoted, "cascading from db2 before its promotion: [db3]") {
		t.Fatalf("promoted step detail %q does not say db3 cascaded", promoted)
	}
}

func TestPromotionFailureRollsForwardWhenCandidateWritable(t *testing.T) {
	pg := &fakePG{promoteErr: errors.New("timeout"), inRecovery: false}
	sql := &countingFencer{res: FenceResult{Confirmed: true}}
	hs := newHarness(t, pgActs(pg, sql))
	g := hs.run(hs.c, finished(1))
	f := lastFailover(g)
	if f.GetOutcome() != fsm.OutcomeCompleted || len(pg.unfenced) != 0 || g.GetPrimary() != "db2" {
		t.Fatalf("outcome %s, unfenced %v, primary %s; want rolled forward to db2 without unfencing", f.GetOutcome(), pg.unfenced, g.GetPrimary())
	}
}

func TestPromotionFailureFencesCandidateBeforeUnfencing(t *testing.T) {
	pg := &fakePG{promoteErr: errors.New("timeout"), inRecovery: true}
	sql := &countingFencer{res: FenceResult{Confirmed: true}}
	hs := newHarness(t, pgActs(pg, sql))
	g := hs.run(hs.c, finished(1))
	if lastFailover(g).GetOutcome() != fsm.OutcomeAborted || len(pg.fencedCands) != 1 || len(pg.unfenced) != 1 || g.GetPrimary() != "db1" {
		t.Fatalf("outcome %s, candidate fenced %v, unfenced %v, primary %s", lastFailover(g).GetOutcome(), pg.fencedCands, pg.unfenced, g.GetPrimary())
	}
}

func TestPromotionFailureLeavesOldFencedWhenCandidateUnknown(t *testing.T) {
	for _, tc := range []struct {
		name string
		pg   *fakePG
	}{
		{"unreachable", &fakePG{promoteErr: errors.New("timeout"), recoveryErr: errors.New("i/o timeout")}},
		{"cannot fence candidate", &fakePG{promoteErr: errors.New("timeout"), inRecovery: true, candFenceErr: errors.New("permission denied")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t, pgActs(tc.pg, &countingFencer{res: FenceResult{Confirmed: true}}))
			g := hs.run(hs.c, finished(1))
			f := lastFailover(g)
			if f.GetOutcome() != fsm.OutcomeAborted || len(tc.pg.unfenced) != 0 || !strings.Contains(f.GetOutcomeDetail(), "left fenced") {
				t.Fatalf("outcome %s (%s), unfenced %v; want aborted with db1 left fenced", f.GetOutcome(), f.GetOutcomeDetail(), tc.pg.unfenced)
			}
		})
	}
}

// Hole 7: a failing router is retried; past the budget the step is
// recorded as failed, not as routed.
func TestRerouteRetriesThenRecordsFailure(t *testing.T) {
	var calls atomic.Int32
	pg := &fakePG{}
	acts := pgActs(pg, &countingFencer{res: FenceResult{Confirmed: true}})
	acts.Routers = []Router{routerFn(func(context.Context, Action) error {
		if calls.Add(1) < 3 {
			return errors.New("agent unreachable")
		}
		return nil
	})}
	hs := newHarness(t, acts)
	g := hs.run(hs.c, finished(1))
	step := lastFailover(g).GetSteps()[2]
	if step.GetName() != fsm.StepRerouted || step.GetFailed() || !strings.Contains(step.GetDetail(), "after 3 attempts") {
		t.Fatalf("rerouted step %v; want routed after 3 attempts", step)
	}

	acts.Routers = []Router{routerFn(func(context.Context, Action) error { return errors.New("agent unreachable") })}
	acts.StepTimeout = 200 * time.Millisecond
	hs = newHarness(t, acts)
	g = hs.run(hs.c, finished(1))
	step = lastFailover(g).GetSteps()[2]
	if !step.GetFailed() || !strings.Contains(step.GetDetail(), "agent unreachable") || strings.Contains(step.GetDetail(), "routed to") {
		t.Fatalf("rerouted step %v; want failed with the router's error", step)
	}
}

// Hole 6: the cooldown is counted on this observer's own clock from when
// it saw the failover, so a leader whose wall clock runs ahead cannot
// shorten it.
type fakeSeen struct{ ago time.Duration }

func (s fakeSeen) Since(string, string) (time.Duration, bool) { return s.ago, true }

func TestCooldownNotShortenedByClockOffset(t *testing.T) {
	c := NewController(Options{Seen: fakeSeen{ago: 10 * time.Second}, Now: func() time.Time { return time.Now().Add(2 * time.Minute) }})
	g := &vigilv1.Group{Spec: &vigilv1.GroupSpec{Name: "pg", CooldownMs: 60_000}, LastFailoverAt: timestamppb.New(time.Now().Add(-10 * time.Second))}
	if left := c.cooldownLeft(g); left < 49*time.Second {
		t.Fatalf("cooldown left %s with a clock 2 minutes ahead; want about 50s (counted from when this observer saw it)", left)
	}
	c = NewController(Options{Now: func() time.Time { return time.Now().Add(2 * time.Minute) }})
	if left := c.cooldownLeft(g); left != 0 {
		t.Fatalf("without a local sighting the wall clock decides; left %s", left)
	}
}

// Hole 4: a member seen writable while another is primary is fenced
// again, with the current epoch, by the normal fence methods.
func TestRoguePrimaryIsFencedAgain(t *testing.T) {
	var got atomic.Value
	sql := fenceFn(func(_ context.Context, a Action) (FenceResult, error) {
		got.Store(a)
		return FenceResult{Confirmed: true}, nil
	})
	hs := newHarness(t, pgActs(&fakePG{}, sql))
	hs.h.mu.Lock()
	hs.h.odown = map[string]bool{}
	hs.h.rogues = []string{"db3"}
	hs.h.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { hs.c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for got.Load() == nil {
		if time.Now().After(deadline) {
			t.Fatal("rogue primary db3 was not fenced")
		}
		time.Sleep(5 * time.Millisecond)
	}
	a := got.Load().(Action)
	if a.Old.Name != "db3" || a.Kind != "refence" || a.New.Name != "db1" {
		t.Fatalf("re-fence action %+v", a)
	}
	if st := hs.c.Status("pg"); !strings.Contains(st, "rogue primary [db3]") {
		t.Fatalf("controller status %q does not name the rogue primary", st)
	}
	if g, _ := hs.f.Group("pg"); g.GetActiveFailover() != nil || len(g.GetFailovers()) != 0 {
		t.Fatal("a re-fence must not start a failover")
	}
}

// An operator's forced failover goes on with an unconfirmed fence (the
// operator vouches for it) and says so; an automatic one would abort.
func TestForcedFailoverGoesOnUnconfirmed(t *testing.T) {
	pg := &fakePG{}
	sql := &countingFencer{err: errors.New("cannot connect: i/o timeout")}
	hs := newHarness(t, pgActs(pg, sql))
	hs.h.mu.Lock()
	hs.h.odown = map[string]bool{}
	hs.h.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { hs.c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	var f *vigilv1.Failover
	var err error
	deadline := time.Now().Add(5 * time.Second)
	for {
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		f, err = hs.c.Request(rctx, "pg", fsm.KindForced, "db2")
		rcancel()
		if !errors.Is(err, ErrNotRunning) || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err != nil || f.GetOutcome() != fsm.OutcomeCompleted || !strings.Contains(f.GetSteps()[0].GetDetail(), "UNCONFIRMED database (forced by an operator)") {
		t.Fatalf("forced failover: %v, %v", f, err)
	}
}

// Issue 11: a quorum of DOWN votes is not enough when the leader's own
// probe sees the primary up (forged votes cannot move a primary alone).
func TestNoFailoverWhileLeaderSeesPrimaryUp(t *testing.T) {
	pg := &fakePG{}
	hs := newHarness(t, pgActs(pg, &countingFencer{res: FenceResult{Confirmed: true}}))
	hs.h.mu.Lock()
	hs.h.selfUp = true
	hs.h.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { hs.c.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(hs.c.Status("pg"), "still sees it up") {
		if time.Now().After(deadline) {
			t.Fatalf("status %q", hs.c.Status("pg"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if g, _ := hs.f.Group("pg"); g.GetEpoch() != 0 || pg.promoted != 0 {
		t.Fatalf("failed over on other observers' votes alone: epoch %d", g.GetEpoch())
	}
	// Once its own probe agrees, it fails over.
	hs.h.mu.Lock()
	hs.h.selfUp = false
	hs.h.mu.Unlock()
	if g := hs.run(hs.c, finished(1)); lastFailover(g).GetOutcome() != fsm.OutcomeCompleted {
		t.Fatalf("outcome %s", lastFailover(g).GetOutcome())
	}
}

// A primary the leader still reaches but whose agent fenced it (cut off
// from the other observers, it lost its lease quorum) is out of service:
// the leader need not wait for its own probe.
func TestFailoverWhenAgentSelfFencedThoughLeaderSeesUp(t *testing.T) {
	pg := &fakePG{}
	hs := newHarness(t, pgActs(pg, &countingFencer{res: FenceResult{Confirmed: true}}))
	hs.h.mu.Lock()
	hs.h.selfUp = true
	hs.h.mu.Unlock()
	hs.c.opt.AgentSelfFenced = func(_, m string) bool { return m == "db1" }
	if g := hs.run(hs.c, finished(1)); lastFailover(g).GetOutcome() != fsm.OutcomeCompleted {
		t.Fatalf("outcome %s", lastFailover(g).GetOutcome())
	}
}

// A primary whose agent fenced itself in a blip (leader election) is given
// its VIP back once a quorum sees it up again, although its database
// fence made it read-only (not "writable").
func TestSelfFencedPrimaryGetsItsVIPBack(t *testing.T) {
	var ensured atomic.Int32
	acts := pgActs(&fakePG{}, &countingFencer{res: FenceResult{Confirmed: true}})
	acts.VIPEnsure = routerFn(func(_ context.Context, a Action) error {
		if a.New.Name == "db1" && a.Kind == "ensure" {
			ensured.Add(1)
		}
		return nil
	})
	hs := newHarness(t, acts)
	hs.h.mu.Lock()
	hs.h.odown = map[string]bool{}
	hs.h.selfUp = true
	hs.h.mu.Unlock()
	hs.h.primaryUp = true
	var fenced atomic.Bool
	hs.c.opt.AgentSelfFenced = func(_, m string) bool { return m == "db1" && fenced.Load() }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { hs.c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	time.Sleep(300 * time.Millisecond) // several ticks: nothing may be placed yet
	if n := ensured.Load(); n != 0 {
		t.Fatalf("VIP placed %d times on a primary that is neither routable nor self-fenced", n)
	}
	fenced.Store(true)
	deadline := time.Now().Add(5 * time.Second)
	for ensured.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the self-fenced primary never got its VIP back")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
