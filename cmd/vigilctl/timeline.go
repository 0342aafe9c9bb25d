package main

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// Outcomes of a failover and the names of its steps, in the order they are
// taken, as the observers record them.
const (
	outcomeCompleted = "completed"
	outcomeAborted   = "aborted"

	kindForced = "forced"
)

var stepOrder = []string{"fenced", "promoted", "rerouted", "standbys_repointed"}

// stepStage names what was under way while the step was the next one:
// "aborted at fencing".
var stepStage = map[string]string{
	"fenced":             "fencing",
	"promoted":           "promotion",
	"rerouted":           "rerouting",
	"standbys_repointed": "repointing standbys",
}

// finishStep is the next step of a failover that took all of its steps
// and has yet to be finished.
const finishStep = "finish"

// clockLayout is the time of a timeline row: UTC with milliseconds.
const clockLayout = "15:04:05.000"

// nextStep is the first step of stepOrder that f has not recorded, or
// finishStep when it took them all.
func nextStep(f *vigilv1.Failover) string {
	done := map[string]bool{}
	for _, s := range f.GetSteps() {
		done[s.GetName()] = true
	}
	for _, name := range stepOrder {
		if !done[name] {
			return name
		}
	}
	return finishStep
}

// abortedAt is the stage a failover was in when it ended without
// completing: the one of its next step, "fencing" for one that took none.
func abortedAt(f *vigilv1.Failover) string {
	next := nextStep(f)
	if s, ok := stepStage[next]; ok {
		return s
	}
	return "completion"
}

// kindLabel is the kind of a failover in a sentence: "switchover",
// "failover", "forced failover".
func kindLabel(kind string) string {
	switch strings.TrimSpace(kind) {
	case kindForced:
		return "forced failover"
	case "":
		return "failover"
	}
	return cellText(kind)
}

// cellText sanitizes s like cell but leaves an empty value empty.
func cellText(s string) string {
	if strings.TrimSpace(s) == "" {
		return ""
	}
	return cell(s)
}

// clock formats ts as HH:MM:SS.mmm in UTC, or "-" when unset.
func clock(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return none
	}
	return ts.AsTime().UTC().Format(clockLayout)
}

// offset is how long after base ts was, "+44ms", "+1.5s", "+2m3.004s";
// "-" when either is unset.
func offset(base, ts *timestamppb.Timestamp) string {
	if base == nil || ts == nil {
		return none
	}
	d := ts.AsTime().Sub(base.AsTime())
	if d < 0 {
		return "-" + durationMs(-d)
	}
	return "+" + durationMs(d)
}

// durationMs formats d to the millisecond: "0ms", "160ms", "1.5s",
// "2m3.004s".
func durationMs(d time.Duration) string {
	d = d.Round(time.Millisecond)
	if d < time.Second {
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	}
	return d.String()
}

// printTimeline renders one failover as a block an operator can follow
// in an incident: a header with epoch, kind, old and new primary, outcome
// and who started it why, then one row per event with its time (UTC), its
// offset from the ODOWN of the old primary (or, without one, from the
// start), its name, how long the action took and what it did. A step
// performed by another observer than the one that started the failover (a
// new leader resumed it) is marked with that observer. A failover still
// in progress says for how long (relative to now) and what comes next.
//
//	epoch 2  failover  db1 -> db2  completed  (started by obs1: primary db1 ODOWN since 01:02:03.456)
//	  01:02:03.456  +0ms    odown      primary db1 objectively down
//	  01:02:03.500  +44ms   started    intent committed
//	  01:02:03.530  +74ms   fenced     12ms   not accepting connections (refused)
//	  ...
func printTimeline(w io.Writer, f *vigilv1.Failover, now time.Time) error {
	if _, err := io.WriteString(w, timelineHeader(f)+"\n"); err != nil {
		return err
	}

	base := f.GetStartedAt()
	if f.GetOdownAt() != nil {
		base = f.GetOdownAt()
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 8, 2, ' ', 0)
	row := func(at *timestamppb.Timestamp, name, took, detail string) {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", clock(at), offset(base, at), cellText(name), cellText(took), cellText(detail))
	}
	if f.GetOdownAt() != nil {
		row(f.GetOdownAt(), "odown", "", "primary "+f.GetOldPrimary()+" objectively down")
	}
	row(f.GetStartedAt(), "started", "", "intent committed")
	for _, s := range f.GetSteps() {
		detail := s.GetDetail()
		if o := s.GetObserver(); o != "" && o != f.GetStartedBy() {
			detail = strings.TrimSpace(detail + "  [" + cell(o) + "]")
		}
		row(s.GetAt(), s.GetName(), durationMs(time.Duration(s.GetDurationMs())*time.Millisecond), detail)
	}
	switch out := f.GetOutcome(); out {
	case "":
	case outcomeCompleted:
		detail := f.GetOutcomeDetail()
		if strings.TrimSpace(detail) == "" {
			detail = f.GetNewPrimary() + " is primary"
		}
		row(f.GetFinishedAt(), out, "", detail)
	default:
		row(f.GetFinishedAt(), out, "", f.GetOutcomeDetail())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// An empty last cell leaves the padding of the one before it.
	for _, l := range strings.SplitAfter(buf.String(), "\n") {
		if l == "" {
			continue
		}
		if _, err := io.WriteString(w, strings.TrimRight(l, " \n")+"\n"); err != nil {
			return err
		}
	}
	if f.GetOutcome() == "" {
		msg := "  next step: " + nextStep(f)
		if started := f.GetStartedAt(); started != nil {
			msg = fmt.Sprintf("  in progress for %s, next step: %s", shortDuration(max(now.Sub(started.AsTime()), 0)), nextStep(f))
		}
		if _, err := io.WriteString(w, msg+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// timelineHeader is the first line of a timeline:
//
//	epoch 2  failover  db1 -> db2  completed  (started by obs1: primary db1 ODOWN since 01:02:03.456)
func timelineHeader(f *vigilv1.Failover) string {
	outcome := cell(f.GetOutcome())
	if f.GetOutcome() == "" {
		outcome = "(in progress)"
	}
	h := fmt.Sprintf("epoch %d  %s  %s -> %s  %s", f.GetEpoch(), cell(f.GetKind()), cell(f.GetOldPrimary()), cell(f.GetNewPrimary()), outcome)
	by, reason := cellText(f.GetStartedBy()), cellText(f.GetReason())
	switch {
	case by != "" && reason != "":
		h += "  (started by " + by + ": " + reason + ")"
	case by != "":
		h += "  (started by " + by + ")"
	case reason != "":
		h += "  (" + reason + ")"
	}
	return h
}

// failoverSummary is the line that ends the output of a switchover or
// failover of group, and whether the failover completed:
//
//	pg-main: switchover completed, epoch 3, primary is db2
//	pg-main: failover aborted at fencing: db1 still accepts writes
//	pg-main: switchover still in progress, epoch 3, next step promoted
//
// primary is the group's primary after the failover, if known.
func failoverSummary(group string, f *vigilv1.Failover, primary string) (string, bool) {
	s, ok := failoverOutcome(f, primary)
	return cell(group) + ": " + s, ok
}

// failoverOutcome is failoverSummary without the group.
func failoverOutcome(f *vigilv1.Failover, primary string) (string, bool) {
	if f == nil {
		return "the observer returned no failover", false
	}
	kind := kindLabel(f.GetKind())
	switch f.GetOutcome() {
	case outcomeCompleted:
		if strings.TrimSpace(primary) == "" {
			primary = f.GetNewPrimary()
		}
		return fmt.Sprintf("%s completed, epoch %d, primary is %s", kind, f.GetEpoch(), cell(primary)), true
	case outcomeAborted:
		s := fmt.Sprintf("%s aborted at %s", kind, abortedAt(f))
		if d := cellText(f.GetOutcomeDetail()); d != "" {
			s += ": " + d
		}
		return s, false
	case "":
		return fmt.Sprintf("%s still in progress, epoch %d, next step %s", kind, f.GetEpoch(), nextStep(f)), false
	default:
		s := fmt.Sprintf("%s ended %s", kind, cell(f.GetOutcome()))
		if d := cellText(f.GetOutcomeDetail()); d != "" {
			s += ": " + d
		}
		return s, false
	}
}

// backgroundNote is said of a failover of group that has not finished
// while vigilctl waited for it.
func backgroundNote(group string) string {
	return fmt.Sprintf("it goes on in the background; \"vigilctl history %s\" shows how it ends", cell(group))
}

// printFailoverResult renders the answer to a switchover or failover of
// group: the failover's timeline and the summary line (see
// failoverSummary), followed for one still in progress by a note that it
// goes on. It reports whether the failover completed.
func printFailoverResult(w io.Writer, r *vigilv1.FailoverResponse, group string, now time.Time) (bool, error) {
	f := r.GetFailover()
	if f != nil {
		if err := printTimeline(w, f, now); err != nil {
			return false, err
		}
	}
	line, ok := failoverSummary(group, f, r.GetGroup().GetPrimary())
	if f != nil && f.GetOutcome() == "" {
		line += "\n" + backgroundNote(group)
	}
	_, err := io.WriteString(w, line+"\n")
	return ok, err
}

// printHistory renders a History response: a header with the group's
// epoch, primary and number of failovers, then the timeline of every
// failover, newest last, the one in progress (if any) at the end.
//
//	pg-main: epoch 3, primary db2, 2 failovers
func printHistory(w io.Writer, r *vigilv1.HistoryResponse, now time.Time) error {
	all := append([]*vigilv1.Failover(nil), r.GetFailovers()...)
	active := r.GetActive()
	for _, f := range all {
		if active != nil && f.GetEpoch() == active.GetEpoch() {
			active = nil // finished meanwhile: listed already
		}
	}
	if active != nil {
		all = append(all, active)
	}

	primary := r.GetPrimary()
	if strings.TrimSpace(primary) == "" {
		primary = "none"
	}
	count := "no failovers"
	switch len(all) {
	case 0:
	case 1:
		count = "1 failover"
	default:
		count = strconv.Itoa(len(all)) + " failovers"
	}
	if active != nil {
		count += " (1 in progress)"
	}
	if _, err := fmt.Fprintf(w, "%s: epoch %d, primary %s, %s\n", cell(r.GetGroup()), r.GetEpoch(), cell(primary), count); err != nil {
		return err
	}
	for _, f := range all {
		if _, err := io.WriteString(w, "\n"); err != nil {
			return err
		}
		if err := printTimeline(w, f, now); err != nil {
			return err
		}
	}
	return nil
}

// printFailoverState renders what the failover controller says about a
// group, after its health: the standbys ranked for promotion, why the
// leader does not act (controller status), the failover in progress and
// the last finished one.
func printFailoverState(w io.Writer, r *vigilv1.GetGroupResponse, now time.Time) error {
	g := r.GetGroup()
	if len(r.GetCandidates()) == 0 {
		if _, err := io.WriteString(w, "\ncandidates: none reported\n"); err != nil {
			return err
		}
	} else {
		if _, err := io.WriteString(w, "\ncandidates (best first)\n"); err != nil {
			return err
		}
		t := newTable(w, "MEMBER", "ELIGIBLE", "PRIORITY", "WAL", "LAG", "REASON")
		for _, c := range r.GetCandidates() {
			wal, lag := none, none
			if c.GetWalLsn() != 0 {
				wal = lsn(c.GetWalLsn())
				if c.GetLagBytes() >= 0 {
					lag = compactBytes(c.GetLagBytes())
				}
			}
			t.row(c.GetMember(), yesNo(c.GetEligible()), strconv.Itoa(int(c.GetPriority())), wal, lag, c.GetReason())
		}
		if err := t.flush(); err != nil {
			return err
		}
	}

	var lines []string
	if s := cellText(r.GetControllerStatus()); s != "" {
		lines = append(lines, "controller: "+s)
	}
	if a := g.GetActiveFailover(); a != nil {
		lines = append(lines, fmt.Sprintf("failover in progress: epoch %d %s %s -> %s, next step %s",
			a.GetEpoch(), cell(a.GetKind()), cell(a.GetOldPrimary()), cell(a.GetNewPrimary()), nextStep(a)))
	}
	if fs := g.GetFailovers(); len(fs) > 0 {
		f := fs[len(fs)-1]
		at := f.GetFinishedAt()
		if at == nil {
			at = f.GetStartedAt()
		}
		outcome := cell(f.GetOutcome())
		if f.GetOutcome() == outcomeAborted {
			outcome = "aborted at " + abortedAt(f)
			if d := cellText(f.GetOutcomeDetail()); d != "" {
				outcome += ": " + d
			}
		}
		lines = append(lines, fmt.Sprintf("last failover: epoch %d at %s %s -> %s, %s",
			f.GetEpoch(), when(now, at), cell(f.GetOldPrimary()), cell(f.GetNewPrimary()), outcome))
	}
	if len(lines) == 0 {
		return nil
	}
	_, err := io.WriteString(w, "\n"+strings.Join(lines, "\n")+"\n")
	return err
}
