package nemesis

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Verdict is the checker's finding on one property of a run.
type Verdict struct {
	// Property is the property's letter, "a".."e".
	Property string
	// Name is the property's short name, e.g. "never two writable routed
	// members".
	Name string
	// OK is true when no violation was found.
	OK bool
	// Violations has one human-readable line per violation, times written
	// as offsets from History.Start ("+12345ms"). It is capped at
	// chkMaxLines lines plus a "… and N more" line so that a run that goes
	// badly wrong still prints a readable report.
	Violations []string
	// Count is the number of violation lines found before the cap: the
	// summary's totals are taken from it because Violations may be
	// truncated. (Added to the brief's struct.)
	Count int
}

// Report is the checker's verdict on one run, with the figures the summary
// aggregates over many runs.
type Report struct {
	// Seed and Sync are copied from the History, so that a report alone
	// says how to rerun it.
	Seed int64
	Sync bool
	// Verdicts holds one verdict per property, always 5, in order a..e.
	Verdicts []Verdict
	// Faults counts the faults injected, by kind.
	Faults map[string]int
	// Acked is the number of acknowledged writes; Lost how many of them
	// are missing from Final.Present; LostBounded how many of the lost
	// ones lie within the stranded-client window of an automatic or
	// forced failover in async mode (allowed there, never in sync mode).
	Acked, Lost, LostBounded int
	// StrandedAfterT0 counts acknowledged writes by "stranded-*" clients
	// that ended after the start of a justifying fault against the
	// client's member which was then failed over: writes a client kept
	// getting acknowledged by an old primary already cut off. It is
	// informational; property (b) decides whether any of them was lost
	// unacceptably.
	StrandedAfterT0 int
	// Failovers is the number of failovers recorded; FalseFailovers how
	// many automatic ones had no justifying fault.
	Failovers, FalseFailovers int
	// Recovery holds, per fault kind, the time from a justifying fault's
	// (or a switchover's) start to the first write acknowledged through
	// the VIP or HAProxy by a member other than the one it hit, for the
	// faults that were followed by a failover away from that member and
	// by such a write before the next fault started.
	Recovery map[string][]time.Duration
}

// OK reports whether every property held. A report without its five
// verdicts (a zero Report) is not OK: it proves nothing.
func (r Report) OK() bool {
	if len(r.Verdicts) != len(chkProperties) {
		return false
	}
	for _, v := range r.Verdicts {
		if !v.OK {
			return false
		}
	}
	return true
}

// chkProperties are the checked properties, in report order.
var chkProperties = [...]struct{ id, name string }{
	{"a", "never two writable routed members"},
	{"b", "no acknowledged write lost"},
	{"c", "no false failover, one per epoch"},
	{"d", "one primary after healing, all converged"},
	{"e", "every failover explained and complete"},
}

// chkMaxLines caps the violation lines kept per verdict.
const chkMaxLines = 10

// Client names the checker gives a meaning to.
const (
	chkClientVIP      = "vip"
	chkClientHAProxy  = "haproxy"
	chkStrandedPrefix = "stranded-"
)

// chkDefaultDownAfter is used when a History does not say its down_after,
// so that the grace is never just the fixed 5s.
const chkDefaultDownAfter = 2 * time.Second

// chkRun is one History prepared for checking: sorted copies, so that the
// checks do not depend on the order the recorder appended in, and the
// grace with which a failover may follow a fault.
type chkRun struct {
	h     *History
	grace time.Duration
	// samples is h.Samples sorted by At.
	samples []Sample
	// failovers is h.Failovers sorted by Epoch (stable).
	failovers []Failover
	// usesVIP and usesHAProxy say whether the group routes through a VIP
	// or HAProxy at all: only then must the final state and every
	// completed failover have moved them.
	usesVIP, usesHAProxy bool
}

func newChkRun(h *History) *chkRun {
	c := &chkRun{h: h}
	downAfter := h.DownAfter
	if downAfter == 0 {
		downAfter = chkDefaultDownAfter
	}
	c.grace = downAfter + 5*time.Second
	c.samples = slices.Clone(h.Samples)
	sort.SliceStable(c.samples, func(i, j int) bool { return c.samples[i].At.Before(c.samples[j].At) })
	c.failovers = slices.Clone(h.Failovers)
	sort.SliceStable(c.failovers, func(i, j int) bool { return c.failovers[i].Epoch < c.failovers[j].Epoch })
	for _, s := range c.samples {
		c.usesVIP = c.usesVIP || len(s.VIP) > 0
		c.usesHAProxy = c.usesHAProxy || len(s.HAProxy) > 0
	}
	return c
}

// at writes t as an offset from the run's start, the form every message
// uses so that lines of one run can be compared at a glance.
func (c *chkRun) at(t time.Time) string {
	if t.IsZero() {
		return "(never)"
	}
	return fmt.Sprintf("%+dms", t.Sub(c.h.Start).Milliseconds())
}

// Check checks the five properties over one run's history and returns its
// report. It is pure: the same History always gives the same Report.
func Check(h *History) Report {
	if h == nil {
		// Check an empty history rather than panic: it then fails (no
		// samples, no final state), which is what a missing history is.
		h = &History{}
	}
	c := newChkRun(h)
	r := Report{
		Seed:      h.Seed,
		Sync:      h.Sync,
		Faults:    map[string]int{},
		Failovers: len(h.Failovers),
	}
	for _, f := range h.Faults {
		r.Faults[f.Kind]++
	}
	r.Verdicts = []Verdict{
		chkVerdict(0, c.checkRouting()),
		chkVerdict(1, c.checkWrites(&r)),
		chkVerdict(2, c.checkFailovers(&r)),
		chkVerdict(3, c.checkFinal()),
		chkVerdict(4, c.checkSteps()),
	}
	r.StrandedAfterT0 = c.strandedAfterT0()
	r.Recovery = c.recovery()
	return r
}

// chkVerdict builds the verdict of property i from its violation lines,
// capping them.
func chkVerdict(i int, lines []string) Verdict {
	v := Verdict{
		Property: chkProperties[i].id,
		Name:     chkProperties[i].name,
		OK:       len(lines) == 0,
		Count:    len(lines),
	}
	if len(lines) > chkMaxLines {
		v.Violations = append(slices.Clip(lines[:chkMaxLines]), fmt.Sprintf("… and %d more", len(lines)-chkMaxLines))
	} else {
		v.Violations = lines
	}
	return v
}

// checkRouting is property (a): a member both writable and routed to (by
// the VIP or by HAProxy) is where new writes go; two at once is split
// brain as clients see it.
func (c *chkRun) checkRouting() []string {
	if len(c.samples) == 0 {
		return []string{"no samples recorded"}
	}
	var out []string
	var desc string
	var first, last time.Time
	n := 0
	flush := func() {
		if n == 0 {
			return
		}
		when := c.at(first)
		if n > 1 {
			when = fmt.Sprintf("%s..%s (%d samples)", c.at(first), c.at(last), n)
		}
		out = append(out, when+": "+desc)
		n = 0
	}
	for _, s := range c.samples {
		d := chkDoubleRouted(s)
		if d == "" {
			flush()
			continue
		}
		if n > 0 && d == desc {
			last = s.At
			n++
			continue
		}
		// A change in who is routed how starts a new line: merging it
		// would hide which members were involved.
		flush()
		desc, first, last, n = d, s.At, s.At, 1
	}
	flush()
	return out
}

// chkDoubleRouted describes the members of s that are writable and routed,
// or returns "" when there are fewer than two.
func chkDoubleRouted(s Sample) string {
	var bad []string
	for _, m := range chkSorted(s.Writable) {
		vip, hap := slices.Contains(s.VIP, m), slices.Contains(s.HAProxy, m)
		switch {
		case vip && hap:
			bad = append(bad, m+" (vip+haproxy)")
		case vip:
			bad = append(bad, m+" (vip)")
		case hap:
			bad = append(bad, m+" (haproxy)")
		}
	}
	switch {
	case len(bad) < 2:
		return ""
	case len(bad) == 2:
		return bad[0] + " and " + bad[1] + " both writable and routed"
	default:
		return strings.Join(bad[:len(bad)-1], ", ") + " and " + bad[len(bad)-1] + " all writable and routed"
	}
}

// chkLostGroup is a run of lost writes of one client on one server with
// the same explanation, reported as one line: a stranded client can lose
// hundreds of writes for one cause.
type chkLostGroup struct {
	client, server string
	why            string // the explanation, the same for every write
	ids            []int64
	first, last    time.Time
}

// checkWrites is property (b), and fills Acked, Lost and LostBounded.
func (c *chkRun) checkWrites(r *Report) []string {
	var acked []Attempt
	for _, a := range c.h.Attempts {
		if a.Outcome == OK {
			acked = append(acked, a)
		}
	}
	r.Acked = len(acked)
	if c.h.Final.Present == nil {
		return []string{fmt.Sprintf("final data could not be read: %s", c.h.Final.Error)}
	}
	present := map[string]map[int64]bool{}
	for client, ids := range c.h.Final.Present {
		set := make(map[int64]bool, len(ids))
		for _, id := range ids {
			set[id] = true
		}
		present[client] = set
	}
	sort.SliceStable(acked, func(i, j int) bool { return acked[i].End.Before(acked[j].End) })
	var groups []*chkLostGroup
	byKey := map[string]*chkLostGroup{}
	for _, a := range acked {
		if present[a.Client][a.ID] {
			continue
		}
		r.Lost++
		why, bounded := c.explainLoss(a)
		if bounded {
			r.LostBounded++
			continue
		}
		key := a.Client + "\x00" + a.Server + "\x00" + why
		g := byKey[key]
		if g == nil {
			g = &chkLostGroup{client: a.Client, server: a.Server, why: why, first: a.End}
			byKey[key] = g
			groups = append(groups, g)
		}
		g.ids = append(g.ids, a.ID)
		g.last = a.End
	}
	out := make([]string, 0, len(groups))
	for _, g := range groups {
		server := g.server
		if server == "" {
			server = "(no server)"
		}
		if len(g.ids) == 1 {
			out = append(out, fmt.Sprintf("%s: acknowledged write id %d (acked by %s at %s) %s",
				g.client, g.ids[0], server, c.at(g.first), g.why))
			continue
		}
		out = append(out, fmt.Sprintf("%s: %d acknowledged writes (ids %s, acked by %s %s..%s) %s",
			g.client, len(g.ids), chkIDs(g.ids), server, c.at(g.first), c.at(g.last), g.why))
	}
	return out
}

// chkIDs lists ids compactly, since a group can hold many.
func chkIDs(ids []int64) string {
	if len(ids) <= 5 {
		s := make([]string, len(ids))
		for i, id := range ids {
			s[i] = fmt.Sprint(id)
		}
		return strings.Join(s, ", ")
	}
	lo, hi := slices.Min(ids), slices.Max(ids)
	return fmt.Sprintf("%d..%d", lo, hi)
}

// explainLoss classifies one lost acknowledged write: whether it is within
// the window async replication allows (a write acknowledged by the old
// primary after its last WAL reached the new one, which an automatic or
// forced failover may discard), and if not, why it is a violation.
func (c *chkRun) explainLoss(a Attempt) (why string, bounded bool) {
	i := c.explainingFailover(a)
	if i < 0 {
		server := a.Server
		if server == "" {
			server = "(no server)"
		}
		if c.h.Sync {
			return fmt.Sprintf("lost in sync mode, with no failover of %s to explain it", server), false
		}
		return fmt.Sprintf("lost with no failover of %s to explain it", server), false
	}
	f := c.failovers[i]
	promoted := c.promotedAt(i)
	end := promoted.Add(2 * c.h.SampleEvery)
	fo := fmt.Sprintf("epoch %d %s %s -> %s seen at %s", f.Epoch, f.Kind, f.Old, f.New, c.at(f.SeenAt))
	switch {
	case c.h.Sync:
		return fmt.Sprintf("lost in sync mode (%s)", fo), false
	case f.Kind == "switchover":
		return fmt.Sprintf("lost on a switchover (%s)", fo), false
	case f.Kind != "failover" && f.Kind != "forced":
		return fmt.Sprintf("lost on a failover of unknown kind %q (%s)", f.Kind, fo), false
	case !a.End.After(end):
		return "", true
	default:
		return fmt.Sprintf("lost outside the stranded window (%s; %s writable at %s, window ended %s)",
			fo, f.New, c.at(promoted), c.at(end)), false
	}
}

// explainingFailover returns the index in c.failovers of the failover that
// took the primary role away from a's server after or around the write:
// the earliest completed one of that member seen no earlier than grace
// before the write ended. -1 when there is none.
func (c *chkRun) explainingFailover(a Attempt) int {
	best := -1
	for i, f := range c.failovers {
		if f.Old != a.Server || f.Outcome != "completed" || f.SeenAt.Before(a.End.Add(-c.grace)) {
			continue
		}
		if best < 0 || f.SeenAt.Before(c.failovers[best].SeenAt) {
			best = i
		}
	}
	return best
}

// promotedAt is when the failover c.failovers[i]'s new primary was first
// seen writable: the first rising edge of it in the samples' Writable
// after the previous failover was seen (or after the start), or the
// failover's SeenAt when the samples never caught one.
func (c *chkRun) promotedAt(i int) time.Time {
	f := c.failovers[i]
	after := c.h.Start
	if i > 0 {
		after = c.failovers[i-1].SeenAt
	}
	had := false
	for _, s := range c.samples {
		has := slices.Contains(s.Writable, f.New)
		rising := has && !had // !had holds for the first sample
		had = has
		if rising && !s.At.Before(after) {
			return s.At
		}
	}
	return f.SeenAt
}

// checkFailovers is property (c), and fills FalseFailovers.
func (c *chkRun) checkFailovers(r *Report) []string {
	var out []string
	for i, f := range c.failovers {
		switch {
		case i == 0:
			if want := c.h.InitialEpoch + 1; f.Epoch != want {
				out = append(out, fmt.Sprintf("first epoch %d, want %d", f.Epoch, want))
			}
		case f.Epoch == c.failovers[i-1].Epoch:
			out = append(out, fmt.Sprintf("epoch %d twice", f.Epoch))
		case f.Epoch == c.failovers[i-1].Epoch+2:
			out = append(out, fmt.Sprintf("epoch %d skipped", f.Epoch-1))
		case f.Epoch > c.failovers[i-1].Epoch+2:
			out = append(out, fmt.Sprintf("epochs %d..%d skipped", c.failovers[i-1].Epoch+1, f.Epoch-1))
		}
	}
	for _, f := range c.failovers {
		switch f.Kind {
		case "failover":
			if c.justifyingFault(f) >= 0 {
				continue
			}
			r.FalseFailovers++
			out = append(out, fmt.Sprintf("false failover of epoch %d: %s -> %s at %s (reason %q); faults in force: %s",
				f.Epoch, f.Old, f.New, c.at(f.SeenAt), f.Reason, c.faultsInForce(f.SeenAt)))
		case "switchover", "forced":
			if c.requestingSwitchover(f) >= 0 {
				continue
			}
			out = append(out, fmt.Sprintf("unrequested %s of epoch %d: %s -> %s at %s (reason %q); faults in force: %s",
				f.Kind, f.Epoch, f.Old, f.New, c.at(f.SeenAt), f.Reason, c.faultsInForce(f.SeenAt)))
		default:
			out = append(out, fmt.Sprintf("failover of epoch %d has unknown kind %q", f.Epoch, f.Kind))
		}
	}
	return out
}

// covers reports whether fault f was in force when t was seen, or healed
// no longer than grace before: a failover may follow a fault by that much.
func (c *chkRun) covers(f Fault, t time.Time) bool {
	return !f.Start.After(t) && (f.End.IsZero() || t.Sub(f.End) <= c.grace)
}

// justifyingFault returns the index in h.Faults of a fault that justifies
// the automatic failover f, -1 when none does.
func (c *chkRun) justifyingFault(f Failover) int {
	for i, x := range c.h.Faults {
		if x.Justifies && x.Target == f.Old && c.covers(x, f.SeenAt) {
			return i
		}
	}
	return -1
}

// requestingSwitchover returns the index in h.Faults of the switchover
// the nemesis requested that explains the planned failover f, -1 when
// none does.
func (c *chkRun) requestingSwitchover(f Failover) int {
	for i, x := range c.h.Faults {
		if x.Kind == KindSwitchover && c.covers(x, f.SeenAt) {
			return i
		}
	}
	return -1
}

// faultsInForce lists the faults in force at t or healed within grace
// before it, for a false-failover message to show what was going on.
func (c *chkRun) faultsInForce(t time.Time) string {
	var s []string
	for _, f := range c.h.Faults {
		if !c.covers(f, t) {
			continue
		}
		healed := "in force"
		if !f.End.IsZero() {
			healed = "healed " + c.at(f.End)
		}
		s = append(s, fmt.Sprintf("%s %s (justifies %t) from %s, %s", f.Kind, f.Target, f.Justifies, c.at(f.Start), healed))
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, "; ")
}

// checkFinal is property (d): once every fault is healed the group must
// be back to one primary, routed to, with every other member streaming
// from it or known to need a rejoin, and every observer agreeing.
func (c *chkRun) checkFinal() []string {
	fin := c.h.Final
	var out []string
	if fin.Error != "" {
		out = append(out, "final state could not be read fully: "+fin.Error)
	}
	if fin.Active != 0 {
		out = append(out, fmt.Sprintf("failover of epoch %d still in progress", fin.Active))
	}
	if fin.Primary == "" {
		out = append(out, "no primary in the final replicated state")
	}
	if w := chkSorted(fin.Writable); len(w) != 1 || w[0] != fin.Primary {
		out = append(out, fmt.Sprintf("writable at the end: %s, want [%s]", chkList(w), fin.Primary))
	}
	// Final.VIP non-empty also counts as using a VIP: a VIP held at the
	// end must be on the primary even if no sample caught one.
	if c.usesVIP || len(fin.VIP) > 0 {
		if v := chkSorted(fin.VIP); len(v) != 1 || v[0] != fin.Primary {
			out = append(out, fmt.Sprintf("VIP held at the end by %s, want [%s]", chkList(v), fin.Primary))
		}
	}
	if c.usesHAProxy || len(fin.HAProxy) > 0 {
		if v := chkSorted(fin.HAProxy); len(v) != 1 || v[0] != fin.Primary {
			out = append(out, fmt.Sprintf("HAProxy routes at the end to %s, want [%s]", chkList(v), fin.Primary))
		}
	}
	if fin.Primary != "" {
		for _, m := range c.h.Members {
			if m == fin.Primary || slices.Contains(fin.Streaming, m) || slices.Contains(fin.NeedsRejoin, m) {
				continue
			}
			out = append(out, fmt.Sprintf("%s neither streaming from %s nor reported as needing a rejoin", m, fin.Primary))
		}
	}
	return append(out, c.checkObservers()...)
}

// checkObservers checks that every observer's replicated state could be
// read and is the same: a diverged observer is a Raft bug even when the
// cluster looks healthy.
func (c *chkRun) checkObservers() []string {
	st := c.h.Final.ObserverState
	var out []string
	if len(st) != len(c.h.Observers) {
		out = append(out, fmt.Sprintf("observer state read from %d observers, want %d (%s)",
			len(st), len(c.h.Observers), strings.Join(c.h.Observers, ", ")))
	}
	ids := slices.Clone(c.h.Observers)
	for id := range st {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	digests := map[string]bool{}
	var shown []string
	for _, id := range ids {
		d, ok := st[id]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s: state not read", id))
			shown = append(shown, id+"=(missing)")
		case d == "":
			out = append(out, fmt.Sprintf("%s: state could not be read", id))
			shown = append(shown, id+"=(unreadable)")
		default:
			digests[d] = true
			shown = append(shown, id+"="+chkShort(d))
		}
	}
	if len(digests) > 1 {
		out = append(out, "observers disagree: "+strings.Join(shown, ", "))
	}
	return out
}

// chkShort is the first 12 characters of a digest, enough to tell them
// apart in a message.
func chkShort(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

// checkSteps is property (e): every failover says why it happened and how
// it ended, and a completed one went through fencing, promotion and (when
// the group routes at all) rerouting.
func (c *chkRun) checkSteps() []string {
	routes := c.usesVIP || c.usesHAProxy
	var out []string
	for _, f := range c.failovers {
		name := fmt.Sprintf("epoch %d (%s %s -> %s, seen %s)", f.Epoch, f.Kind, f.Old, f.New, c.at(f.SeenAt))
		if f.Reason == "" {
			out = append(out, name+": no reason recorded")
		}
		for _, s := range f.Steps {
			if s.Failed && (s.Name == "fenced" || s.Name == "promoted" || s.Name == "rerouted") {
				out = append(out, fmt.Sprintf("%s: step %q failed: %s", name, s.Name, s.Detail))
			}
		}
		switch f.Outcome {
		case "completed":
			fenced, promoted := chkStepIndex(f.Steps, "fenced"), chkStepIndex(f.Steps, "promoted")
			switch {
			case fenced < 0:
				out = append(out, fmt.Sprintf("%s: completed without a %q step (steps: %s)", name, "fenced", chkStepNames(f.Steps)))
			case promoted >= 0 && promoted < fenced:
				out = append(out, fmt.Sprintf("%s: %q before %q (steps: %s)", name, "promoted", "fenced", chkStepNames(f.Steps)))
			}
			if promoted < 0 {
				out = append(out, fmt.Sprintf("%s: completed without a %q step (steps: %s)", name, "promoted", chkStepNames(f.Steps)))
			}
			if routes && chkStepIndex(f.Steps, "rerouted") < 0 {
				out = append(out, fmt.Sprintf("%s: completed without a %q step (steps: %s)", name, "rerouted", chkStepNames(f.Steps)))
			}
		case "aborted":
			if f.OutcomeDetail == "" {
				out = append(out, name+": aborted with no detail")
			}
		case "":
			what := name + ": never finished"
			if f.Epoch == c.h.Final.Active {
				what += " (still active at the end)"
			}
			out = append(out, what)
		default:
			out = append(out, fmt.Sprintf("%s: unknown outcome %q", name, f.Outcome))
		}
	}
	return out
}

// chkStepIndex is the index of the first step called name, -1 if none.
func chkStepIndex(steps []Step, name string) int {
	return slices.IndexFunc(steps, func(s Step) bool { return s.Name == name })
}

// chkStepNames lists the steps, marking failed ones.
func chkStepNames(steps []Step) string {
	if len(steps) == 0 {
		return "none"
	}
	s := make([]string, len(steps))
	for i, st := range steps {
		s[i] = st.Name
		if st.Failed {
			s[i] += " (failed)"
		}
	}
	return strings.Join(s, ", ")
}

// strandedAfterT0 counts the acknowledged writes of stranded clients that
// ended after a justifying fault against their member started, when that
// fault was followed by a completed failover of the member.
func (c *chkRun) strandedAfterT0() int {
	t0s := map[string][]time.Time{} // member -> starts of faults failed over
	for _, x := range c.h.Faults {
		if !x.Justifies || x.Kind == KindSwitchover {
			continue
		}
		for _, f := range c.failovers {
			if f.Old == x.Target && f.Outcome == "completed" && c.covers(x, f.SeenAt) {
				t0s[x.Target] = append(t0s[x.Target], x.Start)
				break
			}
		}
	}
	n := 0
	for _, a := range c.h.Attempts {
		member, ok := strings.CutPrefix(a.Client, chkStrandedPrefix)
		if !ok || a.Outcome != OK {
			continue
		}
		if slices.ContainsFunc(t0s[member], func(t0 time.Time) bool { return a.End.After(t0) }) {
			n++
		}
	}
	return n
}

// recovery measures, per fault kind, how long clients going through the
// VIP or HAProxy had to wait for a write to be acknowledged again
// elsewhere after a fault that was failed over.
func (c *chkRun) recovery() map[string][]time.Duration {
	out := map[string][]time.Duration{}
	faults := slices.Clone(c.h.Faults)
	sort.SliceStable(faults, func(i, j int) bool { return faults[i].Start.Before(faults[j].Start) })
	for i, x := range faults {
		if !x.Justifies && x.Kind != KindSwitchover {
			continue
		}
		hit, ok := c.failedOverMember(x)
		if !ok {
			continue
		}
		// The next fault bounds the measure: a write after it may have
		// waited for that fault instead.
		var next time.Time
		for _, y := range faults[i+1:] {
			if y.Start.After(x.Start) {
				next = y.Start
				break
			}
		}
		var first time.Time
		for _, a := range c.h.Attempts {
			if a.Outcome != OK || (a.Client != chkClientVIP && a.Client != chkClientHAProxy) {
				continue
			}
			if a.Server == "" || a.Server == hit || !a.End.After(x.Start) || (!next.IsZero() && !a.End.Before(next)) {
				continue
			}
			if first.IsZero() || a.End.Before(first) {
				first = a.End
			}
		}
		if !first.IsZero() {
			out[x.Kind] = append(out[x.Kind], first.Sub(x.Start))
		}
	}
	return out
}

// failedOverMember returns the member fault x hit and whether a completed
// failover away from it followed. For a switchover the Target is the
// requested new primary, so the member hit is the switchover's Old.
func (c *chkRun) failedOverMember(x Fault) (string, bool) {
	for _, f := range c.failovers {
		if f.Outcome != "completed" || !c.covers(x, f.SeenAt) {
			continue
		}
		if x.Kind == KindSwitchover {
			if f.Kind != "failover" {
				return f.Old, true
			}
			continue
		}
		if f.Old == x.Target {
			return x.Target, true
		}
	}
	return "", false
}

// chkSorted returns a sorted copy of members without duplicates.
func chkSorted(m []string) []string {
	s := slices.Clone(m)
	sort.Strings(s)
	return slices.Compact(s)
}

// chkList writes members as "[pg0 pg1]", "[]" when none.
func chkList(m []string) string {
	return "[" + strings.Join(m, " ") + "]"
}

// Timeline writes a failing run as text, one event a line in time order:
// faults injected and healed, failovers, each change of the sampled
// routing and writability, and the first and last acknowledged write of
// each client on each server. It is what one reads to see how a
// violation came about.
func Timeline(h *History) string {
	if h == nil {
		h = &History{}
	}
	c := newChkRun(h)
	type event struct {
		at   time.Time
		text string
	}
	var evs []event
	add := func(t time.Time, format string, args ...any) {
		evs = append(evs, event{t, fmt.Sprintf(format, args...)})
	}
	for _, f := range h.Faults {
		detail := ""
		if f.Detail != "" {
			detail = " (" + f.Detail + ")"
		}
		add(f.Start, "fault %s %s injected, justifies failover: %t%s", f.Kind, f.Target, f.Justifies, detail)
		if !f.End.IsZero() {
			add(f.End, "fault %s %s healed", f.Kind, f.Target)
		}
	}
	for _, f := range c.failovers {
		outcome := f.Outcome
		switch {
		case outcome == "":
			outcome = "never finished"
		case f.OutcomeDetail != "":
			outcome += ": " + f.OutcomeDetail
		}
		var steps []string
		for _, s := range f.Steps {
			st := s.Name
			if s.Failed {
				st += " (failed)"
			}
			if s.Detail != "" {
				st += " [" + s.Detail + "]"
			}
			steps = append(steps, st)
		}
		stepText := "none"
		if len(steps) > 0 {
			stepText = strings.Join(steps, ", ")
		}
		add(f.SeenAt, "failover epoch %d %s %s -> %s seen (reason %q); steps: %s; outcome: %s",
			f.Epoch, f.Kind, f.Old, f.New, f.Reason, stepText, outcome)
	}
	prev := ""
	for _, s := range c.samples {
		st := fmt.Sprintf("vip=%s haproxy=%s writable=%s", chkList(chkSorted(s.VIP)), chkList(chkSorted(s.HAProxy)), chkList(chkSorted(s.Writable)))
		if st != prev {
			add(s.At, "sampled %s", st)
			prev = st
		}
	}
	type clientServer struct{ client, server string }
	firstOK, lastOK := map[clientServer]Attempt{}, map[clientServer]Attempt{}
	var keys []clientServer
	for _, a := range h.Attempts {
		if a.Outcome != OK {
			continue
		}
		k := clientServer{a.Client, a.Server}
		f, ok := firstOK[k]
		if !ok {
			keys = append(keys, k)
		}
		if !ok || a.End.Before(f.End) {
			firstOK[k] = a
		}
		if l, ok := lastOK[k]; !ok || a.End.After(l.End) {
			lastOK[k] = a
		}
	}
	for _, k := range keys {
		f, l := firstOK[k], lastOK[k]
		if f.ID == l.ID && f.End.Equal(l.End) {
			add(f.End, "client %s: only acknowledged write on %s (id %d)", k.client, k.server, f.ID)
			continue
		}
		add(f.End, "client %s: first acknowledged write on %s (id %d)", k.client, k.server, f.ID)
		add(l.End, "client %s: last acknowledged write on %s (id %d)", k.client, k.server, l.ID)
	}
	if !h.Healed.IsZero() {
		add(h.Healed, "every fault healed")
	}
	if !h.End.IsZero() {
		fin := h.Final
		add(h.End, "final: primary %s epoch %d active %d writable=%s vip=%s haproxy=%s streaming=%s needs_rejoin=%s",
			fin.Primary, fin.Epoch, fin.Active, chkList(chkSorted(fin.Writable)), chkList(chkSorted(fin.VIP)),
			chkList(chkSorted(fin.HAProxy)), chkList(chkSorted(fin.Streaming)), chkList(chkSorted(fin.NeedsRejoin)))
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].at.Before(evs[j].at) })

	var b strings.Builder
	mode := "async"
	if h.Sync {
		mode = "sync"
	}
	fmt.Fprintf(&b, "seed %d (%s), rerun: VIGIL_NEMESIS_SEEDS=%d\n", h.Seed, mode, h.Seed)
	fmt.Fprintf(&b, "members %s, observers %s, initial primary %s at epoch %d, down_after %s, sample_every %s\n",
		chkList(h.Members), chkList(h.Observers), h.InitialPrimary, h.InitialEpoch, h.DownAfter, h.SampleEvery)
	for _, e := range evs {
		fmt.Fprintf(&b, "%10s  %s\n", c.at(e.at), e.text)
	}
	if h.Final.Error != "" {
		fmt.Fprintf(&b, "final state error: %s\n", h.Final.Error)
	}
	return b.String()
}
