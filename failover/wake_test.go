package failover

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilha/vigil/fsm"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// countingHealth counts the controller's ODown questions, so a test knows
// a pass over the groups has looked at the primary.
type countingHealth struct {
	*fakeHealth
	odownCalls atomic.Int32
}

func (h *countingHealth) ODown(g, m string) (bool, time.Time) {
	h.odownCalls.Add(1)
	return h.fakeHealth.ODown(g, m)
}

// A Wake makes the controller act on a primary that became ODOWN without
// waiting for its tick (an hour here: only the Wake can do it).
func TestWakeActsWithoutWaitingForTheTick(t *testing.T) {
	hs := newHarness(t, pgActs(&fakePG{}, &countingFencer{res: FenceResult{Confirmed: true}}))
	hs.h.mu.Lock()
	hs.h.odown = map[string]bool{}
	hs.h.mu.Unlock()
	h := &countingHealth{fakeHealth: hs.h}
	c := hs.controller()
	c.opt.Health, c.opt.Tick = h, time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	waitUntil(t, "the first pass over the groups", func() bool { return h.odownCalls.Load() > 0 })
	hs.h.mu.Lock()
	hs.h.odown = map[string]bool{"db1": true}
	hs.h.mu.Unlock()
	time.Sleep(200 * time.Millisecond)
	if g, _ := hs.f.Group("pg"); g.GetEpoch() != 0 {
		t.Fatalf("failover started without a Wake or a tick (epoch %d): the test proves nothing", g.GetEpoch())
	}
	// A wake for another group examines that group only.
	calls := h.odownCalls.Load()
	c.Wake("other")
	time.Sleep(100 * time.Millisecond)
	if g, _ := hs.f.Group("pg"); g.GetEpoch() != 0 || h.odownCalls.Load() != calls {
		t.Fatalf("a wake for group other examined pg (epoch %d)", g.GetEpoch())
	}
	woken := time.Now()
	c.Wake("pg")
	waitUntil(t, "a completed failover after the Wake", func() bool {
		g, _ := hs.f.Group("pg")
		return len(g.GetFailovers()) == 1 && g.GetFailovers()[0].GetOutcome() == fsm.OutcomeCompleted
	})
	t.Logf("failover completed %s after the Wake", time.Since(woken).Round(time.Millisecond))

	// Wake never blocks, however many are pending, with or without Run.
	for range 100 {
		c.Wake()
		c.Wake("pg")
	}
	idle := NewController(Options{})
	idle.Wake()
	idle.Wake("pg", "other")
}

// A Wake naming no group examines them all.
func TestWakeAllGroups(t *testing.T) {
	hs := newHarness(t, pgActs(&fakePG{}, &countingFencer{res: FenceResult{Confirmed: true}}))
	hs.h.mu.Lock()
	hs.h.odown = map[string]bool{}
	hs.h.mu.Unlock()
	h := &countingHealth{fakeHealth: hs.h}
	c := hs.controller()
	c.opt.Health, c.opt.Tick = h, time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, "the first pass over the groups", func() bool { return h.odownCalls.Load() > 0 })
	hs.h.mu.Lock()
	hs.h.odown = map[string]bool{"db1": true}
	hs.h.mu.Unlock()
	c.Wake()
	waitUntil(t, "a failover after the Wake", func() bool { g, _ := hs.f.Group("pg"); return g.GetEpoch() > 0 })
}

// timedHealth is fakeHealth whose primary has a quorum of down votes
// since a moment and becomes ODOWN by time alone, at odownAt (the
// group's down_after later): no vote, and no Wake, marks that moment.
type timedHealth struct {
	*fakeHealth
	odownAt   time.Time
	downAfter time.Duration
}

func (h *timedHealth) Health(g string) []*vigilv1.MemberHealth {
	out := h.fakeHealth.Health(g)
	for _, m := range out {
		if m.GetMember() == "db1" {
			m.DownVotes, m.Quorum = 3, 2
			m.DownSince = timestamppb.New(h.odownAt.Add(-h.downAfter))
			m.Odown = !time.Now().Before(h.odownAt)
		}
	}
	return out
}

func (h *timedHealth) ODown(_, m string) (bool, time.Time) {
	if m == "db1" && !time.Now().Before(h.odownAt) {
		return true, h.odownAt
	}
	return false, time.Time{}
}

// An ODOWN reached by down_after elapsing is acted on when it becomes
// true, not at the next tick (an hour here): the controller arms a timer
// for the moment the primary's down streak turns into ODOWN.
func TestODownByTimeActedOnAtOnce(t *testing.T) {
	hs := newHarness(t, pgActs(&fakePG{}, &countingFencer{res: FenceResult{Confirmed: true}}))
	g, _ := hs.f.Group("pg")
	downAfter := time.Duration(g.GetSpec().GetDownAfterMs()) * time.Millisecond
	h := &timedHealth{fakeHealth: hs.h, odownAt: time.Now().Add(300 * time.Millisecond), downAfter: downAfter}
	c := hs.controller()
	c.opt.Health, c.opt.Tick = h, time.Hour
	g = hs.run(c, func(g *vigilv1.Group) bool { return g.GetEpoch() > 0 })
	var started time.Time
	if a := g.GetActiveFailover(); a != nil {
		started = a.GetStartedAt().AsTime()
	} else {
		started = lastFailover(g).GetStartedAt().AsTime()
	}
	late := started.Sub(h.odownAt)
	t.Logf("failover started %s after the primary became ODOWN", late.Round(time.Microsecond))
	if late < 0 {
		t.Fatalf("failover started %s before ODOWN", -late)
	}
	// The bound is loose for loaded machines; without the timer the
	// failover would wait for the hour-long tick.
	if late > time.Second {
		t.Fatalf("failover started %s after ODOWN; want it at once", late)
	}
}

// waitUntil polls cond for up to 10s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
