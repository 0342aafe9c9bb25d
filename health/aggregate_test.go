package health

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func vote(obs string, v Verdict, at time.Time) Vote {
	return Vote{Observer: obs, Group: "pg-main", Member: "db1", Verdict: v, ObservedAt: at, Sequence: uint64(at.UnixNano())}
}

var params3 = Params{
	Observers:  []string{"a", "b", "c"},
	Quorum:     2,
	StaleAfter: 3 * time.Second,
	DownAfter:  2 * time.Second,
}

func TestAggregateSingleEvaluation(t *testing.T) {
	down, up, unk := VerdictDown, VerdictUp, VerdictUnknown
	params5 := Params{Observers: []string{"a", "b", "c", "d", "e"}, Quorum: 1, StaleAfter: 3 * time.Second, DownAfter: 0}
	withQuorum := func(p Params, q int) Params { p.Quorum = q; return p }

	tests := []struct {
		name  string
		self  string
		p     Params
		votes []Vote
		want  MemberState
	}{
		{
			name:  "exactly quorum holds, not yet ODOWN",
			self:  "a",
			p:     params3,
			votes: []Vote{vote("a", down, t0), vote("b", down, t0), vote("c", up, t0)},
			want:  MemberState{DownVotes: 2, UpVotes: 1, FreshVotes: 3, Quorum: 2, SDown: true, DownSince: t0},
		},
		{
			name:  "one short of quorum",
			self:  "a",
			p:     params3,
			votes: []Vote{vote("a", down, t0), vote("b", up, t0), vote("c", up, t0)},
			want:  MemberState{DownVotes: 1, UpVotes: 2, FreshVotes: 3, Quorum: 2, SDown: true},
		},
		{
			name:  "stale down vote is no vote",
			self:  "c",
			p:     params3,
			votes: []Vote{vote("a", down, t0), vote("b", down, t0.Add(-3*time.Second-1)), vote("c", up, t0)},
			want:  MemberState{DownVotes: 1, UpVotes: 1, FreshVotes: 2, Quorum: 2},
		},
		{
			name:  "vote exactly StaleAfter old still counts",
			self:  "c",
			p:     params3,
			votes: []Vote{vote("a", down, t0), vote("b", down, t0.Add(-3*time.Second))},
			want:  MemberState{DownVotes: 2, FreshVotes: 2, Quorum: 2, DownSince: t0},
		},
		{
			name:  "vote from a clock far in the future is no vote",
			self:  "a",
			p:     params3,
			votes: []Vote{vote("a", down, t0), vote("b", down, t0.Add(time.Minute))},
			want:  MemberState{DownVotes: 1, FreshVotes: 1, Quorum: 2, SDown: true},
		},
		{
			name:  "zero ObservedAt is no vote",
			self:  "a",
			p:     params3,
			votes: []Vote{vote("a", down, t0), vote("b", down, time.Time{})},
			want:  MemberState{DownVotes: 1, FreshVotes: 1, Quorum: 2, SDown: true},
		},
		{
			name:  "observer not configured (departed) is no vote",
			self:  "a",
			p:     params3,
			votes: []Vote{vote("a", down, t0), vote("x", down, t0), vote("y", down, t0)},
			want:  MemberState{DownVotes: 1, FreshVotes: 1, Quorum: 2, SDown: true},
		},
		{
			name:  "one observer counts once",
			self:  "b",
			p:     params3,
			votes: []Vote{vote("a", down, t0.Add(-time.Second)), vote("a", down, t0), vote("b", up, t0)},
			want:  MemberState{DownVotes: 1, UpVotes: 1, FreshVotes: 2, Quorum: 2},
		},
		{
			name: "latest sequence of an observer wins",
			self: "c",
			p:    params3,
			votes: []Vote{
				vote("a", up, t0), vote("a", down, t0.Add(-time.Second)), // older down loses
				vote("b", down, t0),
			},
			want: MemberState{DownVotes: 1, UpVotes: 1, FreshVotes: 2, Quorum: 2},
		},
		{
			name:  "unknown verdicts are fresh but not down",
			self:  "a",
			p:     params3,
			votes: []Vote{vote("a", unk, t0), vote("b", unk, t0), vote("c", down, t0)},
			want:  MemberState{DownVotes: 1, FreshVotes: 3, Quorum: 2},
		},
		{
			name:  "quorum configured above majority: 2 of 3 not enough",
			self:  "a",
			p:     withQuorum(params3, 3),
			votes: []Vote{vote("a", down, t0), vote("b", down, t0), vote("c", up, t0)},
			want:  MemberState{DownVotes: 2, UpVotes: 1, FreshVotes: 3, Quorum: 3, SDown: true},
		},
		{
			name:  "quorum configured above majority: 3 of 3 holds",
			self:  "a",
			p:     withQuorum(params3, 3),
			votes: []Vote{vote("a", down, t0), vote("b", down, t0), vote("c", down, t0)},
			want:  MemberState{DownVotes: 3, FreshVotes: 3, Quorum: 3, SDown: true, DownSince: t0},
		},
		{
			name:  "quorum configured below majority is raised",
			self:  "a",
			p:     withQuorum(params3, 1),
			votes: []Vote{vote("a", down, t0), vote("b", up, t0)},
			want:  MemberState{DownVotes: 1, UpVotes: 1, FreshVotes: 2, Quorum: 2, SDown: true},
		},
		{
			name:  "majority of configured, not of live observers",
			self:  "a",
			p:     params5,
			votes: []Vote{vote("a", down, t0), vote("b", down, t0)}, // c, d, e silent
			want:  MemberState{DownVotes: 2, FreshVotes: 2, Quorum: 3, SDown: true},
		},
		{
			name:  "DownAfter zero: ODOWN at once",
			self:  "a",
			p:     params5,
			votes: []Vote{vote("a", down, t0), vote("b", down, t0), vote("c", down, t0)},
			want:  MemberState{DownVotes: 3, FreshVotes: 3, Quorum: 3, SDown: true, DownSince: t0, ODown: true, ODownSince: t0},
		},
		{
			name:  "no observers configured never holds",
			self:  "a",
			p:     Params{StaleAfter: time.Second},
			votes: []Vote{vote("a", down, t0)},
			want:  MemberState{Quorum: 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Aggregate(tc.self, tc.votes, tc.p, MemberState{}, t0)
			if got != tc.want {
				t.Fatalf("Aggregate:\n got  %+v\n want %+v", got, tc.want)
			}
		})
	}
}

// step is one evaluation in a timeline: the verdicts of a, b, c at
// t0+at (a missing verdict means that observer's last vote is reused),
// and what must hold after it.
type step struct {
	at         time.Duration
	verdicts   map[string]Verdict
	odown      bool
	downSince  time.Duration // -1: zero
	odownSince time.Duration // -1: zero
}

func runTimeline(t *testing.T, p Params, steps []step) {
	t.Helper()
	book := NewVoteBook()
	var st MemberState
	for i, s := range steps {
		now := t0.Add(s.at)
		for obs, v := range s.verdicts {
			book.Put(vote(obs, v, now))
		}
		st = Aggregate("a", book.Votes("pg-main", "db1"), p, st, now)
		wantDS, wantOS := time.Time{}, time.Time{}
		if s.downSince >= 0 {
			wantDS = t0.Add(s.downSince)
		}
		if s.odownSince >= 0 {
			wantOS = t0.Add(s.odownSince)
		}
		if st.ODown != s.odown || !st.DownSince.Equal(wantDS) || !st.ODownSince.Equal(wantOS) {
			t.Fatalf("step %d (t0+%v): got ODown=%v DownSince=%v ODownSince=%v; want %v %v %v (state %+v)",
				i, s.at, st.ODown, st.DownSince, st.ODownSince, s.odown, wantDS, wantOS, st)
		}
	}
}

func TestAggregateTimelines(t *testing.T) {
	down, up := VerdictDown, VerdictUp
	allDown := map[string]Verdict{"a": down, "b": down, "c": down}
	allUp := map[string]Verdict{"a": up, "b": up, "c": up}
	s := time.Second

	t.Run("steady down reaches ODOWN after down_after and stays stable", func(t *testing.T) {
		runTimeline(t, params3, []step{
			{at: 0, verdicts: allDown, downSince: 0, odownSince: -1},
			{at: 1 * s, verdicts: allDown, downSince: 0, odownSince: -1},
			{at: 2*s - 1, verdicts: allDown, downSince: 0, odownSince: -1},
			{at: 2 * s, verdicts: allDown, odown: true, downSince: 0, odownSince: 2 * s},
			{at: 3 * s, verdicts: allDown, odown: true, downSince: 0, odownSince: 2 * s},
			{at: 5 * s, verdicts: allUp, downSince: -1, odownSince: -1},
		})
	})

	t.Run("flapping across down_after never reaches ODOWN", func(t *testing.T) {
		var steps []step
		for i := range 10 {
			at := time.Duration(i) * 1500 * time.Millisecond
			if i%2 == 0 {
				steps = append(steps, step{at: at, verdicts: allDown, downSince: at, odownSince: -1})
			} else {
				steps = append(steps, step{at: at, verdicts: allUp, downSince: -1, odownSince: -1})
			}
		}
		runTimeline(t, params3, steps)
	})

	t.Run("a single evaluation without quorum resets the streak", func(t *testing.T) {
		runTimeline(t, params3, []step{
			{at: 0, verdicts: allDown, downSince: 0, odownSince: -1},
			{at: 1 * s, verdicts: map[string]Verdict{"b": up, "c": up}, downSince: -1, odownSince: -1},
			{at: 2 * s, verdicts: allDown, downSince: 2 * s, odownSince: -1},
			{at: 3 * s, verdicts: allDown, downSince: 2 * s, odownSince: -1},
			{at: 4 * s, verdicts: allDown, odown: true, downSince: 2 * s, odownSince: 4 * s},
		})
	})

	t.Run("one blind observer changes nothing", func(t *testing.T) {
		runTimeline(t, params3, []step{
			{at: 0, verdicts: map[string]Verdict{"a": down, "b": up, "c": up}, downSince: -1, odownSince: -1},
			{at: 5 * s, verdicts: map[string]Verdict{"a": down, "b": up, "c": up}, downSince: -1, odownSince: -1},
		})
	})

	t.Run("down votes going stale break the streak", func(t *testing.T) {
		runTimeline(t, params3, []step{
			{at: 0, verdicts: allDown, downSince: 0, odownSince: -1},
			// b and c fall silent; a keeps voting. At 3s their votes are
			// exactly StaleAfter old and still count…
			{at: 3 * s, verdicts: map[string]Verdict{"a": down}, odown: true, downSince: 0, odownSince: 2 * s},
			// …just after, they are no votes at all.
			{at: 3*s + 1, verdicts: map[string]Verdict{"a": down}, downSince: -1, odownSince: -1},
		})
	})
}

func TestParamsValidate(t *testing.T) {
	if err := params3.Validate(); err != nil {
		t.Fatalf("valid params: %v", err)
	}
	bad := []Params{
		{},
		{Observers: []string{"a", "a", "b"}, StaleAfter: time.Second},
		{Observers: []string{"a", ""}, StaleAfter: time.Second},
		{Observers: []string{"a", "b", "c"}, Quorum: 4, StaleAfter: time.Second},
		{Observers: []string{"a"}, StaleAfter: 0},
		{Observers: []string{"a"}, StaleAfter: time.Second, DownAfter: -1},
	}
	for i, p := range bad {
		if p.Validate() == nil {
			t.Errorf("case %d: %+v accepted", i, p)
		}
	}
}

func TestVoteBookPutReplay(t *testing.T) {
	b := NewVoteBook()
	v := Vote{Observer: "a", Group: "g", Member: "m", Verdict: VerdictDown, ObservedAt: t0, Sequence: 10}
	if !b.Put(v) {
		t.Fatal("first vote rejected")
	}
	replay := v
	replay.Verdict = VerdictUp
	if b.Put(replay) {
		t.Fatal("same sequence accepted")
	}
	older := v
	older.Sequence = 9
	older.Verdict = VerdictUp
	if b.Put(older) {
		t.Fatal("older sequence accepted")
	}
	if got := b.Votes("g", "m"); len(got) != 1 || got[0].Verdict != VerdictDown {
		t.Fatalf("replays changed the book: %+v", got)
	}
	newer := v
	newer.Sequence = 11
	newer.Verdict = VerdictUp
	if !b.Put(newer) {
		t.Fatal("newer sequence rejected")
	}
	// Sequences are per member: another member starts from scratch.
	other := v
	other.Member = "m2"
	other.Sequence = 1
	if !b.Put(other) {
		t.Fatal("vote about another member rejected")
	}
	for _, bad := range []Vote{{Group: "g", Member: "m", Sequence: 99}, {Observer: "a", Member: "m", Sequence: 99}, {Observer: "a", Group: "g", Sequence: 99}} {
		if b.Put(bad) {
			t.Errorf("malformed vote %+v accepted", bad)
		}
	}
	if got := b.Votes("g", "m"); len(got) != 1 || got[0].Verdict != VerdictUp {
		t.Fatalf("votes: %+v", got)
	}
	if got := b.Votes("g", "nobody"); len(got) != 0 {
		t.Fatalf("votes about an unknown member: %+v", got)
	}
}

func TestVoteBookSequenceReplayDoesNotRevertQuorum(t *testing.T) {
	// Three fresh up votes; an attacker or a slow gossip path replays old
	// down votes from b and c: they must not create a quorum.
	b := NewVoteBook()
	for i, o := range []string{"a", "b", "c"} {
		b.Put(Vote{Observer: o, Group: "g", Member: "m", Verdict: VerdictUp, ObservedAt: t0, Sequence: uint64(100 + i)})
	}
	for _, o := range []string{"b", "c"} {
		if b.Put(Vote{Observer: o, Group: "g", Member: "m", Verdict: VerdictDown, ObservedAt: t0, Sequence: 5}) {
			t.Fatalf("replayed vote of %s accepted", o)
		}
	}
	st := Aggregate("a", b.Votes("g", "m"), params3, MemberState{}, t0)
	if st.DownVotes != 0 || !st.DownSince.IsZero() {
		t.Fatalf("replay produced down votes: %+v", st)
	}
}

func TestVoteBookForgetAndOrder(t *testing.T) {
	b := NewVoteBook()
	for _, o := range []string{"c", "a", "b"} {
		b.Put(Vote{Observer: o, Group: "g", Member: "m", Verdict: VerdictDown, ObservedAt: t0, Sequence: 50})
		b.Put(Vote{Observer: o, Group: "g", Member: "m2", Verdict: VerdictDown, ObservedAt: t0, Sequence: 50})
	}
	got := b.Votes("g", "m")
	if len(got) != 3 || got[0].Observer != "a" || got[1].Observer != "b" || got[2].Observer != "c" {
		t.Fatalf("not sorted by observer: %+v", got)
	}
	if st := Aggregate("a", got, params3, MemberState{}, t0); st.DownVotes != 3 {
		t.Fatalf("state before Forget: %+v", st)
	}

	// b and c leave: their votes are gone, quorum is lost.
	b.Forget("b")
	b.Forget("c")
	got = b.Votes("g", "m")
	if len(got) != 1 || got[0].Observer != "a" {
		t.Fatalf("after Forget: %+v", got)
	}
	if st := Aggregate("a", got, params3, MemberState{}, t0); st.DownVotes != 1 || !st.DownSince.IsZero() {
		t.Fatalf("state after Forget: %+v", st)
	}
	// A forgotten observer that comes back may start its sequence anew.
	if !b.Put(Vote{Observer: "b", Group: "g", Member: "m", Verdict: VerdictUp, ObservedAt: t0, Sequence: 1}) {
		t.Fatal("returning observer's vote rejected")
	}

	b.ForgetMember("g", "m2")
	if got := b.Votes("g", "m2"); len(got) != 0 {
		t.Fatalf("after ForgetMember: %+v", got)
	}
}

func TestVoteBookConcurrent(t *testing.T) {
	b := NewVoteBook()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			obs := fmt.Sprintf("o%d", w%4)
			for i := range 500 {
				b.Put(Vote{Observer: obs, Group: "g", Member: fmt.Sprint(i % 7), Verdict: VerdictDown, ObservedAt: t0, Sequence: uint64(i)})
				_ = b.Votes("g", fmt.Sprint(i%7))
				if i%100 == 0 {
					b.Forget("o3")
				}
			}
		})
	}
	wg.Wait()
	for m := range 7 {
		for _, v := range b.Votes("g", fmt.Sprint(m)) {
			if v.Member != fmt.Sprint(m) {
				t.Fatalf("vote filed under the wrong member: %+v", v)
			}
		}
	}
}

// A quorum of write-stall votes that already say "down for down_after"
// make the member ODOWN at once, since the quorum-th earliest evidence
// start; fewer such votes than a quorum change nothing.
func TestAggregateWriteStallVotesBackdateTheStreak(t *testing.T) {
	now := t0.Add(10 * time.Second)
	stall := func(obs string, downFor time.Duration) Vote {
		v := vote(obs, VerdictDown, now.Add(-100*time.Millisecond))
		v.DownFor = downFor
		return v
	}
	s := Aggregate("a", []Vote{stall("a", 2500*time.Millisecond), stall("b", 2100*time.Millisecond), stall("c", 300*time.Millisecond)}, params3, MemberState{}, now)
	// Evidence starts: a 2.6 s, b 2.2 s, c 0.4 s ago; from b's on, two hold.
	if want := now.Add(-2200 * time.Millisecond); !s.ODown || !s.DownSince.Equal(want) || !s.ODownSince.Equal(want.Add(params3.DownAfter)) {
		t.Fatalf("quorum of stall votes: %+v, want ODOWN with DownSince %v", s, want)
	}
	s = Aggregate("a", []Vote{stall("a", 2500*time.Millisecond), vote("b", VerdictDown, now), vote("c", VerdictUp, now)}, params3, MemberState{}, now)
	if s.ODown || !s.DownSince.Equal(now) {
		t.Fatalf("one stall vote and one plain down vote: %+v, want the streak to start now", s)
	}
	// Plain down votes date from when their probes began (a probe that
	// timed out saw no answer since then): the second earliest of two.
	s = Aggregate("a", []Vote{vote("a", VerdictDown, now.Add(-300*time.Millisecond)), vote("b", VerdictDown, now.Add(-100*time.Millisecond))}, params3, MemberState{}, now)
	if want := now.Add(-100 * time.Millisecond); s.ODown || !s.DownSince.Equal(want) {
		t.Fatalf("two plain down votes: %+v, want DownSince %v", s, want)
	}
	// A streak already running keeps its earlier start.
	prev := MemberState{DownSince: now.Add(-5 * time.Second)}
	if s := Aggregate("a", []Vote{stall("a", time.Second), stall("b", time.Second)}, params3, prev, now); !s.DownSince.Equal(prev.DownSince) {
		t.Fatalf("running streak: DownSince %v, want %v", s.DownSince, prev.DownSince)
	}
}

func TestVoteFromResult(t *testing.T) {
	r := Result{Verdict: VerdictUp, Role: RolePrimary, CurrentLSN: 100, ReplayLSN: 7, At: t0}
	v := VoteFromResult("a", "g", "m", r, 3)
	if v.ReplayLSN != 100 || v.Role != RolePrimary || v.ObservedAt != t0 || v.Sequence != 3 || v.Observer != "a" {
		t.Fatalf("primary vote: %+v", v)
	}
	r = Result{Verdict: VerdictUp, Role: RoleStandby, ReplayLSN: 7, LagBytes: 5, At: t0}
	if v := VoteFromResult("a", "g", "m", r, 4); v.ReplayLSN != 7 || v.LagBytes != 5 {
		t.Fatalf("standby vote: %+v", v)
	}
}
