package health

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// lsnProber answers as a primary (its WAL position) or a standby (its
// replay position), or down, as told.
type lsnProber struct {
	primary bool
	lsn     *atomic.Uint64
	down    *atomic.Bool
}

func (p lsnProber) Probe(context.Context) Result {
	if p.down.Load() {
		return Result{Verdict: VerdictDown, ErrKind: KindRefused, Err: "connection refused", At: time.Now()}
	}
	if p.primary {
		return Result{Verdict: VerdictUp, Role: RolePrimary, CurrentLSN: p.lsn.Load(), At: time.Now()}
	}
	return Result{Verdict: VerdictUp, Role: RoleStandby, ReplayLSN: p.lsn.Load(), ReceiveLSN: p.lsn.Load(), At: time.Now()}
}

// A standby whose replay does not move while the primary, seen up, is
// ahead of it is voted down as replay-stalled (never a failover target)
// until its replay moves; an idle primary (not ahead) or a dead one (its
// last position may never reach a standby) makes no standby stalled.
func TestReplayStalledStandbyVotedDown(t *testing.T) {
	m, err := NewMonitor(MonitorConfig{Self: "a", Observers: []string{"a", "b", "c"}, Quorum: 2, Send: func([]byte) {}})
	if err != nil {
		t.Fatal(err)
	}
	var primLSN, standbyLSN atomic.Uint64
	var primDown, never atomic.Bool
	primLSN.Store(1000)
	standbyLSN.Store(1000)
	g := GroupPlan{Name: "pg-main", Primary: "db1", DownAfter: time.Second, StaleAfter: 2 * time.Second, ReplayStallAfter: 300 * time.Millisecond}
	g.Members = []MemberPlan{
		{Name: "db1", Interval: 20 * time.Millisecond, Timeout: 10 * time.Millisecond, ProberKey: "p",
			NewProber: func() Prober { return lsnProber{primary: true, lsn: &primLSN, down: &primDown} }},
		{Name: "db2", Interval: 20 * time.Millisecond, Timeout: 10 * time.Millisecond, ProberKey: "s",
			NewProber: func() Prober { return lsnProber{lsn: &standbyLSN, down: &never} }},
	}
	if err := m.SetGroups([]GroupPlan{g}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()

	own := func() (Verdict, ErrorKind) {
		m.mu.Lock()
		defer m.mu.Unlock()
		r, ok := m.ownRes[memberKey{"pg-main", "db2"}]
		if !ok {
			return VerdictUnknown, ""
		}
		return r.Verdict, r.ErrKind
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				v, k := own()
				t.Fatalf("%s: db2 is %v (%s)", what, v, k)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// holdsUp checks db2 stays up for several stall windows.
	holdsUp := func(what string) {
		t.Helper()
		waitFor(what+": db2 up", func() bool { v, _ := own(); return v == VerdictUp })
		deadline := time.Now().Add(4 * g.ReplayStallAfter)
		for time.Now().Before(deadline) {
			if v, k := own(); v != VerdictUp {
				t.Fatalf("%s: db2 voted %v (%s)", what, v, k)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	holdsUp("idle primary, standby caught up")

	primLSN.Store(5000) // the primary writes; db2 replays nothing
	waitFor("replay stalled", func() bool { v, k := own(); return v == VerdictDown && k == KindReplayStalled })

	primDown.Store(true) // found stalled while the primary was up: stays so
	time.Sleep(4 * g.ReplayStallAfter)
	if v, k := own(); v != VerdictDown || k != KindReplayStalled {
		t.Fatalf("after the primary died, the stalled standby is %v (%s), want still replay-stalled", v, k)
	}

	standbyLSN.Store(4000) // it replays again
	waitFor("replay moved", func() bool { v, _ := own(); return v == VerdictUp })

	// The primary is down and db2 will never reach its last position:
	// not a stall.
	holdsUp("dead primary ahead of the standby")
}
