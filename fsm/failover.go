package fsm

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// Failover step names, in the order they are committed.
const (
	StepFenced            = "fenced"
	StepPromoted          = "promoted"
	StepRerouted          = "rerouted"
	StepStandbysRepointed = "standbys_repointed"
)

// StepOrder is the order in which failover steps are committed.
var StepOrder = []string{StepFenced, StepPromoted, StepRerouted, StepStandbysRepointed}

// Failover outcomes and kinds.
const (
	OutcomeCompleted = "completed"
	OutcomeAborted   = "aborted"

	KindFailover   = "failover"
	KindSwitchover = "switchover"
	KindForced     = "forced"
)

// Failover history event kinds.
const (
	EventFailoverStarted   = "failover-started"
	EventFailoverStep      = "failover-step"
	EventFailoverCompleted = "failover-completed"
	EventFailoverAborted   = "failover-aborted"
)

// DefaultFailoverLimit bounds the finished failovers kept per group.
const DefaultFailoverLimit = 50

// ErrFailoverConflict is returned when a failover command does not fit the
// group's state: a wrong epoch, a failover already in progress, a step out
// of order. It is how a deposed or confused leader is stopped.
var ErrFailoverConflict = errors.New("failover conflict")

func (f *FSM) applyStartFailover(index uint64, cmd *vigilv1.Command, c *vigilv1.StartFailover) error {
	g, ok := f.groups[c.GetGroup()]
	if !ok {
		return fmt.Errorf("start_failover: %w: %q", ErrGroupNotFound, c.GetGroup())
	}
	if a := g.GetActiveFailover(); a != nil {
		return fmt.Errorf("start_failover: %w: group %q has failover of epoch %d in progress", ErrFailoverConflict, c.GetGroup(), a.GetEpoch())
	}
	if c.GetEpoch() != g.GetEpoch()+1 {
		return fmt.Errorf("start_failover: %w: group %q: epoch %d, want %d", ErrFailoverConflict, c.GetGroup(), c.GetEpoch(), g.GetEpoch()+1)
	}
	switch c.GetKind() {
	case KindFailover, KindSwitchover, KindForced:
	default:
		return fmt.Errorf("start_failover: %w: kind %q", ErrInvalidCommand, c.GetKind())
	}
	if c.GetOldPrimary() != g.GetPrimary() {
		return fmt.Errorf("start_failover: %w: old primary %q is not the current primary %q", ErrFailoverConflict, c.GetOldPrimary(), g.GetPrimary())
	}
	if !hasMember(g.GetSpec(), c.GetNewPrimary()) || c.GetNewPrimary() == c.GetOldPrimary() {
		return fmt.Errorf("start_failover: %w: new primary %q is not another member of %q", ErrInvalidCommand, c.GetNewPrimary(), c.GetGroup())
	}
	g.Epoch = c.GetEpoch()
	g.UpdatedAt = cmd.GetAt()
	g.ActiveFailover = &vigilv1.Failover{
		Epoch: c.GetEpoch(), Kind: c.GetKind(), OldPrimary: c.GetOldPrimary(), NewPrimary: c.GetNewPrimary(),
		Reason: c.GetReason(), StartedBy: cmd.GetActor(), StartedAt: cmd.GetAt(), OdownAt: c.GetOdownAt(),
	}
	f.record(g, index, cmd, EventFailoverStarted, fmt.Sprintf("%s %s -> %s: %s", c.GetKind(), c.GetOldPrimary(), c.GetNewPrimary(), c.GetReason()))
	return nil
}

// activeOf returns the group's active failover of exactly epoch.
func (f *FSM) activeOf(op, group string, epoch uint64) (*vigilv1.Group, *vigilv1.Failover, error) {
	g, ok := f.groups[group]
	if !ok {
		return nil, nil, fmt.Errorf("%s: %w: %q", op, ErrGroupNotFound, group)
	}
	a := g.GetActiveFailover()
	if a == nil || a.GetEpoch() != epoch {
		return nil, nil, fmt.Errorf("%s: %w: group %q has no failover of epoch %d in progress", op, ErrFailoverConflict, group, epoch)
	}
	return g, a, nil
}

// NextStep returns the step a failover must commit next, "" when all are.
func NextStep(a *vigilv1.Failover) string {
	if n := len(a.GetSteps()); n < len(StepOrder) {
		return StepOrder[n]
	}
	return ""
}

// HasStep reports whether the failover committed step.
func HasStep(a *vigilv1.Failover, step string) bool {
	for _, s := range a.GetSteps() {
		if s.GetName() == step {
			return true
		}
	}
	return false
}

func (f *FSM) applyRecordFailoverStep(index uint64, cmd *vigilv1.Command, c *vigilv1.RecordFailoverStep) error {
	g, a, err := f.activeOf("record_failover_step", c.GetGroup(), c.GetEpoch())
	if err != nil {
		return err
	}
	name := c.GetStep().GetName()
	if HasStep(a, name) {
		return nil // a resumed leader repeating a committed step: no-op
	}
	if want := NextStep(a); name != want {
		return fmt.Errorf("record_failover_step: %w: step %q out of order, next is %q", ErrFailoverConflict, name, want)
	}
	step := proto.Clone(c.GetStep()).(*vigilv1.FailoverStep)
	step.At = cmd.GetAt()
	step.Observer = cmd.GetActor()
	a.Steps = append(a.Steps, step)
	g.UpdatedAt = cmd.GetAt()
	if name == StepPromoted {
		// From here the new primary is the group's primary: routing and
		// role endpoints follow the state, and there is no going back.
		g.Primary = a.GetNewPrimary()
	}
	f.record(g, index, cmd, EventFailoverStep, name+": "+c.GetStep().GetDetail())
	return nil
}

func (f *FSM) applyFinishFailover(index uint64, cmd *vigilv1.Command, c *vigilv1.FinishFailover) error {
	g, a, err := f.activeOf("finish_failover", c.GetGroup(), c.GetEpoch())
	if err != nil {
		return err
	}
	switch c.GetOutcome() {
	case OutcomeCompleted:
		if !HasStep(a, StepPromoted) {
			return fmt.Errorf("finish_failover: %w: cannot complete before %q", ErrFailoverConflict, StepPromoted)
		}
		g.LastFailoverAt = cmd.GetAt()
	case OutcomeAborted:
		if HasStep(a, StepPromoted) {
			return fmt.Errorf("finish_failover: %w: cannot abort after %q; roll forward", ErrFailoverConflict, StepPromoted)
		}
	default:
		return fmt.Errorf("finish_failover: %w: outcome %q", ErrInvalidCommand, c.GetOutcome())
	}
	if c.GetBackoffMs() < 0 {
		return fmt.Errorf("finish_failover: %w: negative backoff_ms %d", ErrInvalidCommand, c.GetBackoffMs())
	}
	a.Outcome = c.GetOutcome()
	a.OutcomeDetail = c.GetDetail()
	a.FinishedAt = cmd.GetAt()
	if c.GetOutcome() == OutcomeAborted && c.GetBackoffMs() > 0 {
		setBackoff(g, cmd, c.GetBackoffMs(), fmt.Sprintf("failover of epoch %d aborted: %s", a.GetEpoch(), c.GetDetail()))
	}
	g.ActiveFailover = nil
	g.Failovers = append(g.Failovers, a)
	if over := len(g.Failovers) - DefaultFailoverLimit; over > 0 {
		g.Failovers = append([]*vigilv1.Failover(nil), g.Failovers[over:]...)
	}
	g.UpdatedAt = cmd.GetAt()
	kind := EventFailoverCompleted
	if c.GetOutcome() == OutcomeAborted {
		kind = EventFailoverAborted
	}
	f.record(g, index, cmd, kind, fmt.Sprintf("epoch %d: %s", a.GetEpoch(), c.GetDetail()))
	return nil
}

// EventBackoff is the history kind of a back-off set or cleared.
const EventBackoff = "backoff"

// setBackoff holds automatic failovers of g off for ms from the command's
// time; 0 clears. The deadline is kept both as a wall-clock time (for
// display, and for an observer that did not see the command applied
// live) and as the duration, so that each observer can also count it on
// its own monotonic clock from when it applied the command.
func setBackoff(g *vigilv1.Group, cmd *vigilv1.Command, ms int64, reason string) {
	if ms == 0 {
		g.BackoffUntil, g.BackoffReason, g.BackoffMs, g.BackoffSetAt = nil, "", 0, nil
		return
	}
	at := cmd.GetAt().AsTime()
	g.BackoffUntil = timestamppb.New(at.Add(time.Duration(ms) * time.Millisecond))
	g.BackoffReason = reason
	g.BackoffMs = ms
	g.BackoffSetAt = cmd.GetAt()
}

func (f *FSM) applySetBackoff(index uint64, cmd *vigilv1.Command, c *vigilv1.SetBackoff) error {
	g, ok := f.groups[c.GetGroup()]
	if !ok {
		return fmt.Errorf("set_backoff: %w: %q", ErrGroupNotFound, c.GetGroup())
	}
	if c.GetDurationMs() < 0 {
		return fmt.Errorf("set_backoff: %w: negative duration_ms %d", ErrInvalidCommand, c.GetDurationMs())
	}
	setBackoff(g, cmd, c.GetDurationMs(), c.GetReason())
	g.UpdatedAt = cmd.GetAt()
	detail := "cleared"
	if c.GetDurationMs() > 0 {
		detail = fmt.Sprintf("no automatic failover for %s: %s", time.Duration(c.GetDurationMs())*time.Millisecond, c.GetReason())
	}
	f.record(g, index, cmd, EventBackoff, detail)
	return nil
}
