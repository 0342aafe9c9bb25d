package health

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// changeLog records OnChange calls with the aggregate the monitor had
// published for db1 when it made each call.
type changeLog struct {
	mu    sync.Mutex
	calls []string
	db1   []*vigilv1.MemberHealth
}

func (l *changeLog) hook(m *Monitor) func(string) {
	return func(group string) {
		// Health takes the monitor's lock: OnChange must run without it.
		var db1 *vigilv1.MemberHealth
		for _, h := range m.Health(group) {
			if h.GetMember() == "db1" {
				db1 = h
			}
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		l.calls = append(l.calls, group)
		l.db1 = append(l.db1, db1)
	}
}

// take returns the calls since the last take, and the last db1 aggregate.
func (l *changeLog) take() ([]string, *vigilv1.MemberHealth) {
	l.mu.Lock()
	defer l.mu.Unlock()
	calls := l.calls
	var last *vigilv1.MemberHealth
	if n := len(l.db1); n > 0 {
		last = l.db1[n-1]
	}
	l.calls, l.db1 = nil, nil
	return calls, last
}

// OnChange fires, with the group already re-evaluated, when a vote changes
// a member's verdict or role, from gossip as from this observer's own
// probe, and when an evaluation moves an aggregate (ODOWN by down_after
// elapsing); an identical refresh of a vote does not fire it.
func TestOnChangeOnVerdictChangeNotOnRefresh(t *testing.T) {
	r := newRoutingMonitor(t)
	var log changeLog
	r.cfg.OnChange = log.hook(r.Monitor)
	r.evaluate()
	log.take()

	want := func(step string, n int) *vigilv1.MemberHealth {
		t.Helper()
		calls, db1 := log.take()
		if len(calls) != n || (n > 0 && !slices.Equal(calls, slices.Repeat([]string{"pg-main"}, n))) {
			t.Fatalf("%s: OnChange calls %v, want %d for pg-main", step, calls, n)
		}
		return db1
	}

	r.saw("b", "db1", VerdictUp, RolePrimary)
	want("first vote of b", 1)
	r.clock.Advance(100 * time.Millisecond)
	r.saw("b", "db1", VerdictUp, RolePrimary)
	want("identical refresh from b", 0)
	r.saw("a", "db1", VerdictUp, RolePrimary)
	want("first own vote", 1)
	r.clock.Advance(100 * time.Millisecond)
	r.saw("a", "db1", VerdictUp, RolePrimary)
	want("identical own refresh", 0)

	// A verdict change: the call sees the new aggregate, with no
	// evaluation in between.
	r.clock.Advance(100 * time.Millisecond)
	r.saw("b", "db1", VerdictDown, RoleUnknown)
	if db1 := want("b sees db1 down", 1); db1.GetDownVotes() != 1 || db1.GetState() != StateSDown {
		t.Fatalf("OnChange saw db1 %v; want the vote already counted (1 down vote, sdown)", db1)
	}
	r.saw("a", "db1", VerdictDown, RoleUnknown)
	db1 := want("own probe sees db1 down", 1)
	if !db1.GetSdown() || db1.GetDownVotes() != 2 || db1.GetDownSince() == nil || db1.GetOdown() {
		t.Fatalf("OnChange saw db1 %v; want SDOWN with a quorum down since now, not yet ODOWN", db1)
	}
	downSince := db1.GetDownSince().AsTime()
	r.mu.Lock()
	at := r.odownAt
	r.mu.Unlock()
	if want := downSince.Add(time.Second); !at.Equal(want) {
		t.Fatalf("ODOWN due at %v, want down_since + down_after = %v", at, want)
	}
	// A role change alone (down votes unchanged) is a change too.
	r.saw("c", "db2", VerdictUp, RoleStandby)
	want("first vote of c about db2", 1)
	r.saw("c", "db2", VerdictUp, RolePrimary)
	want("c sees db2 as primary", 1)

	// Refreshes and evaluations that move nothing stay quiet.
	r.clock.Advance(500 * time.Millisecond)
	r.saw("b", "db1", VerdictDown, RoleUnknown)
	r.saw("a", "db1", VerdictDown, RoleUnknown)
	r.evaluate()
	want("down refreshes before down_after", 0)

	// down_after elapses with no new vote: the evaluation at that moment
	// moves db1 to ODOWN and says so.
	r.clock.Advance(500 * time.Millisecond)
	r.evaluate()
	if db1 := want("ODOWN by time", 1); !db1.GetOdown() || !db1.GetOdownSince().AsTime().Equal(downSince.Add(time.Second)) {
		t.Fatalf("db1 %v; want ODOWN since down_since + down_after", db1)
	}
	r.mu.Lock()
	at = r.odownAt
	r.mu.Unlock()
	if !at.IsZero() {
		t.Fatalf("ODOWN still due at %v once reached", at)
	}
}

// Running, the monitor evaluates at the moment a down streak becomes
// ODOWN, not at its next evaluation interval (an hour here), and tells
// OnChange.
func TestODownEvaluatedWhenDue(t *testing.T) {
	var mu sync.Mutex
	var odownSeen time.Time
	var m *Monitor
	m, err := NewMonitor(MonitorConfig{Self: "a", Observers: []string{"a", "b", "c"}, Quorum: 2,
		Send: func([]byte) {}, EvalInterval: time.Hour, OnChange: func(g string) {
			if ok, _ := m.ODown(g, "db1"); ok {
				mu.Lock()
				if odownSeen.IsZero() {
					odownSeen = time.Now()
				}
				mu.Unlock()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	plan := routingPlan("db1")
	plan[0].DownAfter = 300 * time.Millisecond
	// This observer's own probes never answer: only b and c vote.
	for i := range plan[0].Members {
		plan[0].Members[i].Interval = time.Hour
	}
	if err := m.SetGroups(plan); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var seq uint64
	for _, obs := range []string{"b", "c"} {
		seq++
		receiveVote(t, m, obs, VerdictDown, seq)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		seen := odownSeen
		mu.Unlock()
		if !seen.IsZero() {
			_, since := m.ODown("pg-main", "db1")
			late := seen.Sub(since)
			t.Logf("ODOWN reported %s after it became due", late.Round(time.Microsecond))
			if late < 0 || late > time.Second {
				t.Fatalf("ODOWN (since %v) reported at %v; want at once", since, seen)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("ODOWN never reported: the monitor waited for its evaluation interval")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// countingProber answers up and counts its probes.
type countingProber struct{ n *atomic.Int64 }

func (p countingProber) Probe(context.Context) Result {
	p.n.Add(1)
	return Result{Verdict: VerdictUp, Role: RolePrimary, At: time.Now()}
}

// A peer's vote turning down makes this observer probe the member at
// once (not at its next interval, an hour here), once per change of that
// peer's verdict: a peer that keeps voting down does not speed up this
// observer's probes.
func TestPeerDownVoteKicksAProbe(t *testing.T) {
	m, err := NewMonitor(MonitorConfig{Self: "a", Observers: []string{"a", "b", "c"}, Quorum: 2, Send: func([]byte) {}})
	if err != nil {
		t.Fatal(err)
	}
	var probes atomic.Int64
	plan := routingPlan("db1")
	for i := range plan[0].Members {
		plan[0].Members[i].Interval = time.Hour
		plan[0].Members[i].ProberKey = "counting"
		if plan[0].Members[i].Name == "db1" {
			plan[0].Members[i].NewProber = func() Prober { return countingProber{&probes} }
		}
	}
	if err := m.SetGroups(plan); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()

	seq := uint64(0)
	send := func(obs string, v Verdict) {
		seq++
		receiveVote(t, m, obs, v, seq)
	}
	waitProbes := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for probes.Load() < want {
			if time.Now().After(deadline) {
				t.Fatalf("%d probes of db1, want %d", probes.Load(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
		// And this observer's own vote is in the book.
		for !slices.ContainsFunc(m.book.Votes("pg-main", "db1"), func(v Vote) bool { return v.Observer == "a" }) {
			if time.Now().After(deadline) {
				t.Fatal("own vote never stored")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// Kicks reach only a running probe worker: wait for db1's.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.runner.mu.Lock()
		w := m.runner.workers[targetKey{"pg-main", "db1"}]
		m.runner.mu.Unlock()
		if w != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("db1's probe worker never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	base := probes.Load()
	send("b", VerdictDown)
	waitProbes(base + 1)
	after := probes.Load()
	send("b", VerdictDown) // no change of b's verdict: no kick
	send("b", VerdictDown)
	send("c", VerdictDown) // c's verdict changed: one more probe
	waitProbes(after + 1)
	// Give a wrongly kicked probe time to show up before counting.
	deadline = time.Now().Add(200 * time.Millisecond)
	for time.Now().Before(deadline) {
		if probes.Load() > after+1 {
			t.Fatalf("%d probes after b's repeated down votes and c's change, want %d", probes.Load(), after+1)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// receiveVote hands m a gossip packet with obs's vote about pg-main/db1.
func receiveVote(t *testing.T, m *Monitor, obs string, v Verdict, seq uint64) {
	t.Helper()
	now := time.Now()
	packets, err := EncodeVotes(obs, []Vote{{Observer: obs, Group: "pg-main", Member: "db1", Verdict: v, ObservedAt: now, Sequence: seq}}, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range packets {
		m.Receive(p)
	}
}
