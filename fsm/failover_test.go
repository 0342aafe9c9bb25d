package fsm

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

func startCmd(epoch uint64, old, new string) *vigilv1.Command {
	return &vigilv1.Command{At: timestamppb.New(t0.Add(10 * time.Second)), Actor: "obs1",
		Cmd: &vigilv1.Command_StartFailover{StartFailover: &vigilv1.StartFailover{Group: "pg-main", Epoch: epoch, Kind: KindFailover, OldPrimary: old, NewPrimary: new, Reason: "odown"}}}
}

func stepCmd(epoch uint64, step string) *vigilv1.Command {
	return &vigilv1.Command{At: timestamppb.New(t0.Add(11 * time.Second)), Actor: "obs2",
		Cmd: &vigilv1.Command_RecordFailoverStep{RecordFailoverStep: &vigilv1.RecordFailoverStep{Group: "pg-main", Epoch: epoch, Step: &vigilv1.FailoverStep{Name: step, Detail: "ok", DurationMs: 5}}}}
}

func finishCmd(epoch uint64, outcome string) *vigilv1.Command {
	return &vigilv1.Command{At: timestamppb.New(t0.Add(12 * time.Second)), Actor: "obs2",
		Cmd: &vigilv1.Command_FinishFailover{FinishFailover: &vigilv1.FinishFailover{Group: "pg-main", Epoch: epoch, Outcome: outcome, Detail: "done"}}}
}

func TestFailoverLifecycle(t *testing.T) {
	f := New()
	mustApply(t, f, 1, syncCmd(t0, spec("pg-main", "db1", "db2", "db3")))
	mustApply(t, f, 2, startCmd(1, "db1", "db2"))
	g, _ := f.Group("pg-main")
	if g.GetEpoch() != 1 || g.GetActiveFailover() == nil || g.GetPrimary() != "db1" {
		t.Fatalf("after start: %v", g)
	}
	// A second start for the same or the next epoch is refused: one at a time.
	for _, e := range []uint64{1, 2} {
		if r := apply(t, f, 3, startCmd(e, "db1", "db3")); !errors.Is(r.Err, ErrFailoverConflict) {
			t.Fatalf("second start (epoch %d): %v", e, r.Err)
		}
	}
	// Out of order, and for the wrong epoch: refused.
	if r := apply(t, f, 4, stepCmd(1, StepPromoted)); !errors.Is(r.Err, ErrFailoverConflict) {
		t.Fatalf("promoted before fenced: %v", r.Err)
	}
	if r := apply(t, f, 5, stepCmd(0, StepFenced)); !errors.Is(r.Err, ErrFailoverConflict) {
		t.Fatalf("step of a stale epoch: %v", r.Err)
	}
	if r := apply(t, f, 6, finishCmd(1, OutcomeCompleted)); !errors.Is(r.Err, ErrFailoverConflict) {
		t.Fatalf("complete before promotion: %v", r.Err)
	}
	mustApply(t, f, 7, stepCmd(1, StepFenced))
	mustApply(t, f, 8, stepCmd(1, StepFenced)) // repeated by a resuming leader: no-op
	mustApply(t, f, 9, stepCmd(1, StepPromoted))
	g, _ = f.Group("pg-main")
	if g.GetPrimary() != "db2" || len(g.GetActiveFailover().GetSteps()) != 2 {
		t.Fatalf("after promoted: primary %s, steps %v", g.GetPrimary(), g.GetActiveFailover().GetSteps())
	}
	if r := apply(t, f, 10, finishCmd(1, OutcomeAborted)); !errors.Is(r.Err, ErrFailoverConflict) {
		t.Fatalf("abort after promotion: %v", r.Err)
	}
	mustApply(t, f, 11, stepCmd(1, StepRerouted))
	mustApply(t, f, 12, stepCmd(1, StepStandbysRepointed))
	mustApply(t, f, 13, finishCmd(1, OutcomeCompleted))
	g, _ = f.Group("pg-main")
	if g.GetActiveFailover() != nil || len(g.GetFailovers()) != 1 || g.GetFailovers()[0].GetOutcome() != OutcomeCompleted ||
		!g.GetLastFailoverAt().AsTime().Equal(t0.Add(12*time.Second)) || g.GetEpoch() != 1 {
		t.Fatalf("after completion: %v", g)
	}
	// Next failover must name the new primary as old.
	if r := apply(t, f, 14, startCmd(2, "db1", "db3")); !errors.Is(r.Err, ErrFailoverConflict) {
		t.Fatalf("start naming a stale primary: %v", r.Err)
	}
	mustApply(t, f, 15, startCmd(2, "db2", "db3"))
	mustApply(t, f, 16, finishCmd(2, OutcomeAborted))
	g, _ = f.Group("pg-main")
	if g.GetPrimary() != "db2" || g.GetEpoch() != 2 || len(g.GetFailovers()) != 2 || !g.GetLastFailoverAt().AsTime().Equal(t0.Add(12*time.Second)) {
		t.Fatalf("after abort: %v", g)
	}
}

func TestStartFailoverRefusesBadInput(t *testing.T) {
	f := New()
	mustApply(t, f, 1, syncCmd(t0, spec("pg-main", "db1", "db2")))
	bad := []*vigilv1.Command{startCmd(1, "db1", "db1"), startCmd(1, "db1", "nope"), startCmd(1, "db2", "db1")}
	k := startCmd(1, "db1", "db2")
	k.GetStartFailover().Kind = "whatever"
	bad = append(bad, k)
	for i, c := range bad {
		if r := apply(t, f, uint64(2+i), c); r.Err == nil {
			t.Fatalf("case %d accepted", i)
		}
	}
	g, _ := f.Group("pg-main")
	if g.GetEpoch() != 0 || g.GetActiveFailover() != nil {
		t.Fatalf("refused starts changed the group: %v", g)
	}
}

func TestBackoffIsReplicated(t *testing.T) {
	f := New()
	mustApply(t, f, 1, syncCmd(t0, spec("pg-main", "db1", "db2", "db3")))
	mustApply(t, f, 2, startCmd(1, "db1", "db2"))
	abort := finishCmd(1, OutcomeAborted)
	abort.GetFinishFailover().BackoffMs = 30_000
	mustApply(t, f, 3, abort)
	g, _ := f.Group("pg-main")
	want := t0.Add(12*time.Second + 30*time.Second)
	if !g.GetBackoffUntil().AsTime().Equal(want) || g.GetBackoffMs() != 30_000 || g.GetBackoffReason() == "" {
		t.Fatalf("back-off after abort: until %v (want %v), ms %d, reason %q", g.GetBackoffUntil().AsTime(), want, g.GetBackoffMs(), g.GetBackoffReason())
	}
	veto := &vigilv1.Command{At: timestamppb.New(t0.Add(20 * time.Second)), Actor: "obs1",
		Cmd: &vigilv1.Command_SetBackoff{SetBackoff: &vigilv1.SetBackoff{Group: "pg-main", DurationMs: 5000, Reason: "vetoed"}}}
	mustApply(t, f, 4, veto)
	g, _ = f.Group("pg-main")
	if !g.GetBackoffUntil().AsTime().Equal(t0.Add(25*time.Second)) || g.GetBackoffReason() != "vetoed" {
		t.Fatalf("back-off after veto: %v %q", g.GetBackoffUntil().AsTime(), g.GetBackoffReason())
	}
	bad := &vigilv1.Command{At: timestamppb.New(t0), Cmd: &vigilv1.Command_SetBackoff{SetBackoff: &vigilv1.SetBackoff{Group: "pg-main", DurationMs: -1}}}
	b, _ := Encode(bad)
	if res := f.Apply(5, b); !errors.Is(res.Err, ErrInvalidCommand) {
		t.Fatalf("negative back-off: %v", res.Err)
	}
	if g2, _ := f.Group("pg-main"); g2.GetBackoffMs() != 5000 {
		t.Fatal("a refused command changed the back-off")
	}
}
