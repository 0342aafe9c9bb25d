package health

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// The tests below drive a Monitor by hand: no Run, no probing. Other
// observers' votes arrive as real gossip packets (Receive), this
// observer's own through observe, as a probe result would, and the clock
// only moves when a test moves it.

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type idleProber struct{}

func (idleProber) Probe(context.Context) Result { return Result{} }

const routingStale = 2 * time.Second

// routingPlan is group pg-main with members db1, db2, db3 and primary as
// the replicated state's primary.
func routingPlan(primary string) []GroupPlan {
	g := GroupPlan{Name: "pg-main", Primary: primary, DownAfter: time.Second, StaleAfter: routingStale}
	for _, name := range []string{"db1", "db2", "db3"} {
		g.Members = append(g.Members, MemberPlan{Name: name, Interval: time.Second, ProberKey: "idle",
			NewProber: func() Prober { return idleProber{} }})
	}
	return []GroupPlan{g}
}

type routingMonitor struct {
	*Monitor
	t     *testing.T
	clock *fakeClock
	reg   *prometheus.Registry
	seq   uint64
}

// newRoutingMonitor returns observer a's monitor of observers a, b and c
// (quorum 2) for routingPlan("db1").
func newRoutingMonitor(t *testing.T) *routingMonitor {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)}
	reg := prometheus.NewRegistry()
	m, err := NewMonitor(MonitorConfig{Self: "a", Observers: []string{"a", "b", "c"}, Quorum: 2,
		Send: func([]byte) {}, Registerer: reg, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SetGroups(routingPlan("db1")); err != nil {
		t.Fatal(err)
	}
	return &routingMonitor{Monitor: m, t: t, clock: clock, reg: reg}
}

// saw records observer obs's vote about member, observed now: through
// gossip for b and c, as a probe result of its own for a.
func (r *routingMonitor) saw(obs, member string, v Verdict, role Role) {
	r.t.Helper()
	r.record(obs, member, Result{Verdict: v, Role: role, At: r.clock.Now()})
}

// sawFenced records that obs saw member up as a primary whose new
// sessions are read-only (fenced): up, but not writable.
func (r *routingMonitor) sawFenced(obs, member string) {
	r.t.Helper()
	r.record(obs, member, Result{Verdict: VerdictUp, Role: RolePrimary, ReadOnly: true, At: r.clock.Now()})
}

func (r *routingMonitor) record(obs, member string, res Result) {
	r.t.Helper()
	now := res.At
	if obs == "a" {
		r.observe(Target{Group: "pg-main", Member: member}, res)
		return
	}
	r.seq++
	vote := VoteFromResult(obs, "pg-main", member, res, r.seq)
	packets, err := EncodeVotes(obs, []Vote{vote}, now)
	if err != nil {
		r.t.Fatal(err)
	}
	for _, p := range packets {
		r.Receive(p)
	}
	if got := r.Votes("pg-main", member); !slices.ContainsFunc(got, func(x Vote) bool { return x.Observer == obs && x.Sequence == vote.Sequence }) {
		r.t.Fatalf("vote of %s about %s not stored: %+v", obs, member, got)
	}
}

// health evaluates now and returns member's aggregate.
func (r *routingMonitor) health(member string) *vigilv1.MemberHealth {
	r.t.Helper()
	r.evaluate()
	for _, h := range r.Health("pg-main") {
		if h.GetMember() == member {
			return h
		}
	}
	r.t.Fatalf("no health for %s", member)
	return nil
}

// rogueGauge reads vigil_rogue_primary{group="pg-main",member=member}
// from the registry, as a scrape would; -1 when there is no such series.
func (r *routingMonitor) rogueGauge(member string) float64 {
	r.t.Helper()
	for _, s := range r.rogueSeries() {
		labels := map[string]string{}
		for _, l := range s.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["group"] == "pg-main" && labels["member"] == member {
			return s.GetGauge().GetValue()
		}
	}
	return -1
}

func (r *routingMonitor) rogueSeries() []*dto.Metric {
	r.t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		r.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "vigil_rogue_primary" {
			if mf.GetType() != dto.MetricType_GAUGE {
				r.t.Fatalf("vigil_rogue_primary is a %s", mf.GetType())
			}
			return mf.GetMetric()
		}
	}
	return nil
}

func TestRoutablePrimaryWithQuorumOfFreshPrimaryVotes(t *testing.T) {
	r := newRoutingMonitor(t)
	if r.RoutablePrimary("pg-main", "db1") {
		t.Fatal("routable without any vote")
	}
	r.saw("a", "db1", VerdictUp, RolePrimary)
	if r.RoutablePrimary("pg-main", "db1") {
		t.Fatal("routable on one vote of three (quorum 2)")
	}
	r.saw("b", "db1", VerdictUp, RolePrimary)
	if !r.RoutablePrimary("pg-main", "db1") {
		t.Fatal("not routable with 2 fresh up-primary votes of 3 (quorum 2)")
	}
	h := r.health("db1")
	if !h.GetPrimaryQuorum() || h.GetRoguePrimary() || h.GetExpectedRole() != "primary" {
		t.Fatalf("db1 health: %+v", h)
	}
	// Only the state's primary is routable, and only in a known group.
	r.saw("a", "db2", VerdictUp, RolePrimary)
	r.saw("b", "db2", VerdictUp, RolePrimary)
	for _, c := range []struct{ group, member string }{{"pg-main", "db2"}, {"pg-main", ""}, {"other", "db1"}, {"pg-main", "db9"}} {
		if r.RoutablePrimary(c.group, c.member) {
			t.Errorf("RoutablePrimary(%q, %q) = true", c.group, c.member)
		}
	}
	if h := r.health("db2"); !h.GetPrimaryQuorum() || !h.GetRoguePrimary() {
		t.Errorf("db2 (expected standby, primary on 2 of 3): %+v", h)
	}
}

func TestRoutablePrimaryNotWithoutQuorum(t *testing.T) {
	r := newRoutingMonitor(t)
	r.saw("a", "db1", VerdictUp, RolePrimary)
	r.saw("b", "db1", VerdictDown, RoleUnknown)
	if r.RoutablePrimary("pg-main", "db1") {
		t.Fatal("routable with one up-primary and one down vote (quorum 2)")
	}
	if h := r.health("db1"); h.GetPrimaryQuorum() || h.GetRoguePrimary() {
		t.Fatalf("db1 health: %+v", h)
	}
	// Up is not enough: the votes must have seen a primary. A standby
	// (pg_is_in_recovery) or a role nobody could tell (TCP probe) is not
	// a writable primary.
	for _, role := range []Role{RoleStandby, RoleUnknown} {
		r.clock.Advance(10 * time.Millisecond)
		r.saw("b", "db1", VerdictUp, role)
		r.saw("c", "db1", VerdictUp, role)
		if r.RoutablePrimary("pg-main", "db1") {
			t.Errorf("routable with one primary vote and two seeing it up as %s", role)
		}
	}
	// Nor is a primary fenced read-only.
	r.clock.Advance(10 * time.Millisecond)
	r.sawFenced("c", "db1")
	if r.RoutablePrimary("pg-main", "db1") {
		t.Error("routable with one writable and one read-only (fenced) primary vote")
	}
	r.clock.Advance(10 * time.Millisecond)
	r.saw("c", "db1", VerdictUp, RolePrimary)
	if !r.RoutablePrimary("pg-main", "db1") {
		t.Fatal("not routable once a second observer sees it up as a writable primary")
	}
	if h := r.health("db1"); !h.GetPrimaryQuorum() {
		t.Fatalf("db1 health: %+v", h)
	}
	// Fenced on every observer: no longer routable.
	r.clock.Advance(10 * time.Millisecond)
	for _, obs := range []string{"a", "b", "c"} {
		r.sawFenced(obs, "db1")
	}
	if r.RoutablePrimary("pg-main", "db1") || r.health("db1").GetPrimaryQuorum() {
		t.Fatal("a primary fenced read-only on every observer is still routable")
	}
}

func TestRoutablePrimaryStaleVoteDoesNotCount(t *testing.T) {
	r := newRoutingMonitor(t)
	r.saw("b", "db1", VerdictUp, RolePrimary)
	r.clock.Advance(routingStale / 2)
	r.saw("a", "db1", VerdictUp, RolePrimary)
	if !r.RoutablePrimary("pg-main", "db1") || !r.health("db1").GetPrimaryQuorum() {
		t.Fatal("not routable with two fresh up-primary votes")
	}
	// b's vote goes stale (exactly StaleAfter old still counts), a's
	// stays fresh. Freshness is judged at the call, not at the last
	// evaluation.
	r.clock.Advance(routingStale / 2)
	if !r.RoutablePrimary("pg-main", "db1") {
		t.Fatal("a vote exactly stale_after old no longer counts")
	}
	r.clock.Advance(time.Millisecond)
	if r.RoutablePrimary("pg-main", "db1") {
		t.Fatal("routable on a stale vote (before any new evaluation)")
	}
	if h := r.health("db1"); h.GetPrimaryQuorum() {
		t.Fatalf("primary quorum on a stale vote: %+v", h)
	}
	// A stale vote is no vote either way: it never makes a rogue.
	r.saw("b", "db2", VerdictUp, RolePrimary)
	r.clock.Advance(routingStale + time.Millisecond)
	if got := r.RoguePrimaries("pg-main"); len(got) != 0 {
		t.Fatalf("rogue primaries from a stale vote: %v", got)
	}
}

func TestRoguePrimaryOnOneVote(t *testing.T) {
	r := newRoutingMonitor(t)
	r.saw("a", "db1", VerdictUp, RolePrimary)
	r.saw("b", "db1", VerdictUp, RolePrimary)
	r.saw("a", "db2", VerdictUp, RoleStandby)
	r.saw("b", "db2", VerdictUp, RoleStandby)
	if got := r.RoguePrimaries("pg-main"); len(got) != 0 {
		t.Fatalf("rogue primaries with db2 a standby: %v", got)
	}
	// One observer (another one) sees the expected standby db2 writable.
	r.saw("c", "db2", VerdictUp, RolePrimary)
	if got := r.RoguePrimaries("pg-main"); !slices.Equal(got, []string{"db2"}) {
		t.Fatalf("RoguePrimaries = %v, want [db2]", got)
	}
	h := r.health("db2")
	if !h.GetRoguePrimary() || h.GetPrimaryQuorum() || h.GetExpectedRole() != "standby" {
		t.Fatalf("db2 health: %+v", h)
	}
	if !strings.Contains(h.GetSummary(), "ROGUE PRIMARY") {
		t.Errorf("summary %q does not say ROGUE PRIMARY", h.GetSummary())
	}
	if g := r.rogueGauge("db2"); g != 1 {
		t.Errorf("vigil_rogue_primary{member=db2} = %v, want 1", g)
	}
	for _, m := range []string{"db1", "db3"} {
		if g := r.rogueGauge(m); g != 0 {
			t.Errorf("vigil_rogue_primary{member=%s} = %v, want 0", m, g)
		}
	}
	// The primary itself is never rogue; the routing of it is unchanged.
	if h := r.health("db1"); h.GetRoguePrimary() || !r.RoutablePrimary("pg-main", "db1") {
		t.Errorf("db1: %+v, routable %v", h, r.RoutablePrimary("pg-main", "db1"))
	}

	// This observer's own vote alone is enough too.
	r.saw("a", "db3", VerdictUp, RolePrimary)
	if got := r.RoguePrimaries("pg-main"); !slices.Equal(got, []string{"db2", "db3"}) {
		t.Fatalf("RoguePrimaries = %v, want [db2 db3]", got)
	}
	if got := r.RoguePrimaries("nope"); got != nil {
		t.Errorf("RoguePrimaries(unknown group) = %v", got)
	}

	// Every member has a series from its first evaluation on, so the
	// family is in every scrape.
	if n := len(r.rogueSeries()); n != 3 {
		t.Errorf("%d vigil_rogue_primary series, want 3", n)
	}
}

func TestRoguePrimaryClearsWhenVotesChange(t *testing.T) {
	r := newRoutingMonitor(t)
	r.saw("a", "db2", VerdictUp, RoleStandby)
	r.saw("b", "db2", VerdictUp, RolePrimary)
	if h := r.health("db2"); !h.GetRoguePrimary() || r.rogueGauge("db2") != 1 {
		t.Fatalf("db2 not rogue: %+v", h)
	}

	// b's next vote sees it as a standby again (fenced, demoted): clears at
	// once for callers, at the next evaluation for health and metric.
	r.clock.Advance(100 * time.Millisecond)
	r.saw("b", "db2", VerdictUp, RoleStandby)
	if got := r.RoguePrimaries("pg-main"); len(got) != 0 {
		t.Fatalf("still rogue after the vote changed: %v", got)
	}
	if h := r.health("db2"); h.GetRoguePrimary() || r.rogueGauge("db2") != 0 {
		t.Fatalf("db2 still rogue: %+v (gauge %v)", h, r.rogueGauge("db2"))
	}

	// Down is not rogue either (killed, or fenced by stopping it).
	r.clock.Advance(100 * time.Millisecond)
	r.saw("c", "db2", VerdictUp, RolePrimary)
	if got := r.RoguePrimaries("pg-main"); !slices.Equal(got, []string{"db2"}) {
		t.Fatalf("RoguePrimaries = %v, want [db2]", got)
	}
	r.clock.Advance(100 * time.Millisecond)
	r.saw("c", "db2", VerdictDown, RoleUnknown)
	if got := r.RoguePrimaries("pg-main"); len(got) != 0 {
		t.Fatalf("rogue while down: %v", got)
	}

	// The plan moves: after a failover to db2, db2 is the primary and the
	// old primary db1, still answering as one, is the rogue.
	r.clock.Advance(100 * time.Millisecond)
	r.saw("a", "db1", VerdictUp, RolePrimary)
	r.saw("a", "db2", VerdictUp, RolePrimary)
	r.saw("b", "db2", VerdictUp, RolePrimary)
	if got := r.RoguePrimaries("pg-main"); !slices.Equal(got, []string{"db2"}) {
		t.Fatalf("before the failover: RoguePrimaries = %v, want [db2]", got)
	}
	if err := r.SetGroups(routingPlan("db2")); err != nil {
		t.Fatal(err)
	}
	if got := r.RoguePrimaries("pg-main"); !slices.Equal(got, []string{"db1"}) {
		t.Fatalf("after the failover: RoguePrimaries = %v, want [db1]", got)
	}
	if !r.RoutablePrimary("pg-main", "db2") || r.RoutablePrimary("pg-main", "db1") {
		t.Fatal("after the failover only db2 is routable")
	}
	if r.health("db2").GetRoguePrimary() || !r.health("db1").GetRoguePrimary() {
		t.Fatal("health does not follow the new plan")
	}
	if r.rogueGauge("db1") != 1 || r.rogueGauge("db2") != 0 {
		t.Fatalf("gauges db1 %v db2 %v, want 1 and 0", r.rogueGauge("db1"), r.rogueGauge("db2"))
	}

	// Fenced read-only (still not in recovery, not yet rejoined as a
	// standby), the old primary takes no writes: no longer rogue.
	r.clock.Advance(100 * time.Millisecond)
	r.sawFenced("a", "db1")
	if got := r.RoguePrimaries("pg-main"); len(got) != 0 {
		t.Fatalf("a primary fenced read-only is rogue: %v", got)
	}
	if h := r.health("db1"); h.GetRoguePrimary() || h.GetRoleSeen() != "primary" || r.rogueGauge("db1") != 0 {
		t.Fatalf("db1 fenced: %+v (gauge %v)", h, r.rogueGauge("db1"))
	}
}

// A group probed by TCP or HTTP cannot tell roles: its primary is
// routable when a quorum sees it up.
func TestRoutablePrimaryRoleBlindGroup(t *testing.T) {
	st := MemberState{Quorum: 2, UpVotes: 2}
	if routable(GroupPlan{}, st) {
		t.Fatal("a role-aware group needs writable-primary votes")
	}
	if !routable(GroupPlan{RoleBlind: true}, st) {
		t.Fatal("a role-blind group's primary seen up by a quorum must be routable")
	}
	if routable(GroupPlan{RoleBlind: true}, MemberState{Quorum: 2, UpVotes: 1}) {
		t.Fatal("one up vote is not a quorum")
	}
}
