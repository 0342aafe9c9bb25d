package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// none is shown for an empty cell.
const none = "-"

// printJSON writes m in the -o json shape (jsonout.go), indented,
// followed by a newline.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := marshalJSON(m, "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

// table writes tab-separated rows aligned in columns; cells are sanitized
// so that no value can break the layout or emit terminal control codes.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if i > 0 {
			io.WriteString(t.tw, "\t")
		}
		io.WriteString(t.tw, cell(c))
	}
	io.WriteString(t.tw, "\n")
}

func (t *table) flush() error { return t.tw.Flush() }

// cell makes s printable in one table cell: control characters (tabs,
// newlines, escape sequences) become spaces and an empty value shows as "-".
func cell(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if strings.TrimSpace(s) == "" {
		return none
	}
	return s
}

func u64(n uint64) string { return strconv.FormatUint(n, 10) }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// printStatus renders a Status response: a header line with the leader,
// term and quorum, then one row per observer as it sees itself.
func printStatus(w io.Writer, r *vigilv1.StatusResponse) error {
	leader := r.GetLeaderId()
	if leader == "" {
		leader = "none"
	}
	quorum := strconv.Itoa(int(r.GetQuorum()))
	if n := len(r.GetObservers()); n > 0 {
		quorum += " of " + strconv.Itoa(n)
	}
	if _, err := fmt.Fprintf(w, "leader: %s   term: %d   quorum: %s   answered by: %s\n\n",
		cell(leader), r.GetTerm(), quorum, cell(r.GetAnsweredBy())); err != nil {
		return err
	}

	withErr := false
	for _, o := range r.GetObservers() {
		if o.GetError() != "" {
			withErr = true
		}
	}
	header := []string{"OBSERVER", "RAFT ROLE", "TERM", "LAST INDEX", "APPLIED", "GOSSIP", "RAFT ADDR", "GRPC ADDR"}
	if withErr {
		header = append(header, "ERROR")
	}
	t := newTable(w, header...)
	for _, o := range r.GetObservers() {
		role := o.GetRaftRole()
		term, last, applied := u64(o.GetTerm()), u64(o.GetLastLogIndex()), u64(o.GetAppliedIndex())
		if !o.GetReachable() {
			// Its numbers were never reported; zeros would mislead.
			role, term, last, applied = "unknown", none, none, none
		}
		row := []string{o.GetId(), role, term, last, applied, o.GetGossipState(), o.GetRaftAddress(), o.GetGrpcAddress()}
		if withErr {
			row = append(row, o.GetError())
		}
		t.row(row...)
	}
	return t.flush()
}

// printGroups renders a ListGroups response, one row per group; UPDATED is
// the age of the last change relative to now.
func printGroups(w io.Writer, r *vigilv1.ListGroupsResponse, now time.Time) error {
	if len(r.GetGroups()) == 0 {
		_, err := io.WriteString(w, "no groups\n")
		return err
	}
	t := newTable(w, "GROUP", "KIND", "PRIMARY", "EPOCH", "MEMBERS", "PAUSED", "UPDATED")
	for _, g := range r.GetGroups() {
		var members []string
		for _, m := range g.GetSpec().GetMembers() {
			members = append(members, m.GetName())
		}
		t.row(g.GetSpec().GetName(), g.GetSpec().GetKind(), g.GetPrimary(), u64(g.GetEpoch()),
			strings.Join(members, ","), yesNo(g.GetPaused()), age(now, g.GetUpdatedAt()))
	}
	return t.flush()
}

// printGroup renders a GetGroup response: a summary of the group and its
// configuration, its members, their health as the answering observer
// aggregates it, the candidates for promotion and the state of failover
// (see printFailoverState), and its history (newest last).
func printGroup(w io.Writer, r *vigilv1.GetGroupResponse, now time.Time) error {
	g := r.GetGroup()
	spec := g.GetSpec()

	s := newTable(w)
	kv := func(k, v string) { s.row(k+":", v) }
	kv("group", spec.GetName())
	kv("kind", spec.GetKind())
	kv("primary", g.GetPrimary())
	kv("epoch", u64(g.GetEpoch()))
	kv("paused", yesNo(g.GetPaused()))
	if g.GetPaused() {
		kv("pause reason", g.GetPausedReason())
		kv("paused since", when(now, g.GetPausedAt()))
	}
	kv("down after", millis(spec.GetDownAfterMs()))
	kv("max lag", bytesize(spec.GetMaxLagBytes()))
	kv("cooldown", millis(spec.GetCooldownMs()))
	kv("probe", spec.GetProbeType())
	kv("probe interval", millis(spec.GetProbeIntervalMs()))
	kv("probe timeout", millis(spec.GetProbeTimeoutMs()))
	kv("created", when(now, g.GetCreatedAt()))
	kv("updated", when(now, g.GetUpdatedAt()))
	kv("last failover", when(now, g.GetLastFailoverAt()))
	kv("applied index", u64(r.GetAppliedIndex()))
	if err := s.flush(); err != nil {
		return err
	}

	if _, err := io.WriteString(w, "\nmembers\n"); err != nil {
		return err
	}
	notes := map[string]string{}
	for _, h := range r.GetHealth() {
		if n := routingNote(h, g.GetPrimary()); n != "" {
			notes[h.GetMember()] = n
		}
	}
	header := []string{"NAME", "ADDRESS", "PRIORITY", "DATACENTER", "ROLE"}
	if len(notes) > 0 {
		header = append(header, "ROUTING")
	}
	m := newTable(w, header...)
	for _, mem := range spec.GetMembers() {
		role := "standby"
		if mem.GetName() == g.GetPrimary() {
			role = "primary"
		}
		row := []string{mem.GetName(), mem.GetAddress(), strconv.Itoa(int(mem.GetPriority())), mem.GetDatacenter(), role}
		if len(notes) > 0 {
			row = append(row, notes[mem.GetName()])
		}
		m.row(row...)
	}
	if err := m.flush(); err != nil {
		return err
	}

	// GetGroupResponse does not name the observer that answered.
	if err := printHealth(w, r.GetHealth(), r.GetAnsweredBy(), now); err != nil {
		return err
	}
	if err := printFailoverState(w, r, now); err != nil {
		return err
	}
	if err := printAgents(w, r.GetAgents(), r.GetAnsweredBy()); err != nil {
		return err
	}

	if len(g.GetHistory()) == 0 {
		_, err := io.WriteString(w, "\nhistory: none\n")
		return err
	}
	if _, err := io.WriteString(w, "\nhistory (newest last)\n"); err != nil {
		return err
	}
	h := newTable(w, "AT", "INDEX", "EPOCH", "KIND", "ACTOR", "DETAIL")
	for _, e := range g.GetHistory() {
		h.row(timestamp(e.GetAt()), u64(e.GetIndex()), u64(e.GetEpoch()), e.GetKind(), e.GetActor(), e.GetDetail())
	}
	return h.flush()
}

// printAgents shows the members' node agents as the answering observer's
// leases see them: when each last answered, and the last lease it refused
// or that did not get through. Nothing for groups without a VIP.
func printAgents(w io.Writer, agents []*vigilv1.AgentView, observer string) error {
	if len(agents) == 0 {
		return nil
	}
	if _, err := fmt.Fprintf(w, "\nnode agents (leases from %s)\n", cell(observer)); err != nil {
		return err
	}
	t := newTable(w, "MEMBER", "AGENT", "LAST ANSWER", "STATE", "LAST FAILURE")
	for _, a := range agents {
		last := "never"
		if a.GetLastAnswerAgeMs() >= 0 {
			last = millis(a.GetLastAnswerAgeMs()) + " ago"
		}
		var state []string
		if a.GetSelfFenced() {
			state = append(state, "SELF-FENCED")
		}
		if a.GetDatabaseFence() {
			state = append(state, "db fence")
		}
		fail := "-"
		if a.GetLastErrorAgeMs() >= 0 {
			kind := "not delivered"
			if a.GetRefused() {
				kind = "REFUSED"
			}
			fail = fmt.Sprintf("%s %s ago: %s", kind, millis(a.GetLastErrorAgeMs()), a.GetLastError())
		}
		st := "-"
		if len(state) > 0 {
			st = strings.Join(state, ", ")
		}
		t.row(a.GetMember(), a.GetAddress(), last, st, fail)
	}
	return t.flush()
}

// routingNote is what the members table says about routing to a member,
// from the answering observer's aggregate of it: a rogue primary (a
// member expected to be a standby that a fresh vote saw answer as a
// writable primary), or an expected primary that no quorum of fresh votes
// sees as a writable primary, so that it is not routed to. An ODOWN
// primary is left unmarked: the health section says ODOWN and the
// failover lines say what is done about it. "" otherwise.
func routingNote(h *vigilv1.MemberHealth, primary string) string {
	switch {
	case h.GetRoguePrimary():
		p := strings.TrimSpace(cell(primary))
		if p == none {
			return "ROGUE PRIMARY (writable while no member is primary; being fenced)"
		}
		return "ROGUE PRIMARY (writable while " + p + " is primary; being fenced)"
	case h.GetExpectedRole() == "primary" && !h.GetPrimaryQuorum() && !h.GetOdown():
		return "not routed: no quorum sees it as a writable primary"
	}
	return ""
}

// printPaused renders a PauseGroup response.
func printPaused(w io.Writer, r *vigilv1.PauseGroupResponse, now time.Time) error {
	g := r.GetGroup()
	msg := fmt.Sprintf("%s paused at index %d", g.GetSpec().GetName(), r.GetIndex())
	if reason := g.GetPausedReason(); reason != "" {
		msg += " (reason: " + cell(reason) + ")"
	}
	if unchanged(g, r.GetIndex()) {
		msg += "; it was already paused since " + when(now, g.GetPausedAt()) + ", nothing changed"
	}
	_, err := fmt.Fprintln(w, msg)
	return err
}

// printResumed renders a ResumeGroup response.
func printResumed(w io.Writer, r *vigilv1.ResumeGroupResponse) error {
	g := r.GetGroup()
	msg := fmt.Sprintf("%s resumed at index %d", g.GetSpec().GetName(), r.GetIndex())
	if unchanged(g, r.GetIndex()) {
		msg += "; it was not paused, nothing changed"
	}
	_, err := fmt.Fprintln(w, msg)
	return err
}

// unchanged reports whether the command committed at index left no event
// in the group's history: pausing a paused group (or resuming a running
// one) is committed but changes nothing. Without history it cannot tell
// and says false.
func unchanged(g *vigilv1.Group, index uint64) bool {
	h := g.GetHistory()
	if len(h) == 0 {
		return false
	}
	for _, e := range h {
		if e.GetIndex() == index {
			return false
		}
	}
	return true
}

// timestamp formats ts as RFC 3339 in UTC, or "-" when unset.
func timestamp(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return none
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// when formats ts as RFC 3339 in UTC followed by its age, or "-" when unset.
func when(now time.Time, ts *timestamppb.Timestamp) string {
	if ts == nil {
		return none
	}
	return timestamp(ts) + " (" + age(now, ts) + ")"
}

// age is how long before now ts was, in its largest whole unit: "45s ago",
// "3m ago", "5h ago", "2d ago"; "-" when unset. A time after now (clock
// skew between observer and client) reads "in 3s".
func age(now time.Time, ts *timestamppb.Timestamp) string {
	if ts == nil {
		return none
	}
	d := now.Sub(ts.AsTime())
	if d < 0 {
		return "in " + shortDuration(-d)
	}
	return shortDuration(d) + " ago"
}

func shortDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int64(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int64(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int64(d/time.Hour))
	default:
		return fmt.Sprintf("%dd", int64(d/(24*time.Hour)))
	}
}

// millis formats a duration given in milliseconds, e.g. "1.5s".
func millis(ms int64) string {
	return (time.Duration(ms) * time.Millisecond).String()
}

// bytesize formats n bytes exactly, followed by an approximation in
// binary units from 1 KiB on: "16777216 bytes (16 MiB)".
func bytesize(n int64) string {
	s := strconv.FormatInt(n, 10) + " bytes"
	const unit = 1024
	if n < unit {
		return s
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v, i := float64(n)/unit, 0
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	num := strings.TrimSuffix(strconv.FormatFloat(v, 'f', 1, 64), ".0")
	return s + " (" + num + " " + units[i] + ")"
}
