package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

var t0 = time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC)

func spec(name string, members ...string) *vigilv1.GroupSpec {
	s := &vigilv1.GroupSpec{Name: name, Kind: "postgres", InitialPrimary: members[0], DownAfterMs: 2000}
	for i, m := range members {
		s.Members = append(s.Members, &vigilv1.MemberSpec{Name: m, Address: fmt.Sprintf("10.0.0.%d:5432", i+1), Priority: 100})
	}
	return s
}

func syncCmd(at time.Time, specs ...*vigilv1.GroupSpec) *vigilv1.Command {
	return &vigilv1.Command{At: timestamppb.New(at), Actor: "config",
		Cmd: &vigilv1.Command_SyncGroups{SyncGroups: &vigilv1.SyncGroups{Groups: specs}}}
}

func pauseCmd(at time.Time, group string, paused bool) *vigilv1.Command {
	return &vigilv1.Command{At: timestamppb.New(at), Actor: "alice",
		Cmd: &vigilv1.Command_SetPaused{SetPaused: &vigilv1.SetPaused{Group: group, Paused: paused, Reason: "maintenance"}}}
}

// apply encodes and applies cmd at index, failing the test on encode errors.
func apply(t *testing.T, f *FSM, index uint64, cmd *vigilv1.Command) Result {
	t.Helper()
	b, err := Encode(cmd)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return f.Apply(index, b)
}

func mustApply(t *testing.T, f *FSM, index uint64, cmd *vigilv1.Command) {
	t.Helper()
	if r := apply(t, f, index, cmd); r.Err != nil {
		t.Fatalf("apply %d (%s): %v", index, r.Kind, r.Err)
	}
}

func TestSyncGroupsCreatesUpdatesAndRemoves(t *testing.T) {
	f := New()
	mustApply(t, f, 1, syncCmd(t0, spec("pg-main", "db1", "db2"), spec("pg-b", "b1", "b2")))
	g, ok := f.Group("pg-main")
	if !ok || g.GetPrimary() != "db1" || g.GetEpoch() != 0 || len(g.GetHistory()) != 1 || g.GetHistory()[0].GetKind() != EventGroupCreated {
		t.Fatalf("after create: %v", g)
	}
	if names := groupNames(f); fmt.Sprint(names) != "[pg-b pg-main]" {
		t.Fatalf("groups = %v, want sorted [pg-b pg-main]", names)
	}

	// Same specs again: no change, no history entry.
	mustApply(t, f, 2, syncCmd(t0.Add(time.Second), spec("pg-main", "db1", "db2"), spec("pg-b", "b1", "b2")))
	if g, _ := f.Group("pg-main"); len(g.GetHistory()) != 1 || !g.GetUpdatedAt().AsTime().Equal(t0) {
		t.Fatalf("identical sync changed the group: %v", g)
	}

	// A changed spec keeps primary and pause flag; pg-b disappears.
	mustApply(t, f, 3, pauseCmd(t0.Add(2*time.Second), "pg-main", true))
	mustApply(t, f, 4, syncCmd(t0.Add(3*time.Second), spec("pg-main", "db1", "db2", "db3")))
	g, _ = f.Group("pg-main")
	if len(g.GetSpec().GetMembers()) != 3 || g.GetPrimary() != "db1" || !g.GetPaused() {
		t.Fatalf("after update: %v", g)
	}
	if last := g.GetHistory()[len(g.GetHistory())-1]; last.GetKind() != EventGroupUpdated || last.GetIndex() != 4 {
		t.Fatalf("last event = %v", last)
	}
	if _, ok := f.Group("pg-b"); ok {
		t.Fatal("pg-b should have been removed")
	}
	if f.AppliedIndex() != 4 {
		t.Fatalf("applied index = %d, want 4", f.AppliedIndex())
	}
}

func TestSyncGroupsRefusesBadSpecsWholly(t *testing.T) {
	cases := map[string]*vigilv1.Command{
		"empty name":         syncCmd(t0, spec("", "a", "b")),
		"duplicate group":    syncCmd(t0, spec("g", "a", "b"), spec("g", "c", "d")),
		"duplicate member":   syncCmd(t0, spec("g", "a", "a")),
		"primary not member": syncCmd(t0, &vigilv1.GroupSpec{Name: "g", InitialPrimary: "zz", Members: []*vigilv1.MemberSpec{{Name: "a"}}}),
		"drops the primary":  syncCmd(t0, spec("pg-main", "db2", "db3")),
	}
	for name, cmd := range cases {
		t.Run(name, func(t *testing.T) {
			f := New()
			mustApply(t, f, 1, syncCmd(t0, spec("pg-main", "db1", "db2"), spec("keep", "k1", "k2")))
			before, _ := f.Snapshot()
			r := apply(t, f, 2, cmd)
			if !errors.Is(r.Err, ErrInvalidCommand) {
				t.Fatalf("err = %v, want ErrInvalidCommand", r.Err)
			}
			after, _ := f.Snapshot()
			// Only the applied index may move.
			if !sameGroups(t, before, after) {
				t.Fatal("refused command changed the groups")
			}
		})
	}
}

func TestPauseResumeIdempotentAndRecorded(t *testing.T) {
	f := New()
	mustApply(t, f, 1, syncCmd(t0, spec("pg-main", "db1", "db2")))
	mustApply(t, f, 2, pauseCmd(t0.Add(time.Second), "pg-main", true))
	mustApply(t, f, 3, pauseCmd(t0.Add(2*time.Second), "pg-main", true))
	g, _ := f.Group("pg-main")
	if !g.GetPaused() || g.GetPausedReason() != "maintenance" || !g.GetPausedAt().AsTime().Equal(t0.Add(time.Second)) {
		t.Fatalf("paused group = %v", g)
	}
	if len(g.GetHistory()) != 2 {
		t.Fatalf("history len = %d, want 2 (repeated pause records nothing)", len(g.GetHistory()))
	}
	mustApply(t, f, 4, pauseCmd(t0.Add(3*time.Second), "pg-main", false))
	g, _ = f.Group("pg-main")
	if g.GetPaused() || g.GetPausedAt() != nil || g.GetHistory()[2].GetKind() != EventResumed || g.GetHistory()[2].GetActor() != "alice" {
		t.Fatalf("resumed group = %v", g)
	}
	if r := apply(t, f, 5, pauseCmd(t0, "nope", true)); !errors.Is(r.Err, ErrGroupNotFound) {
		t.Fatalf("pause unknown group: err = %v", r.Err)
	}
}

func TestHistoryIsBounded(t *testing.T) {
	f := New()
	f.historyLimit = 5
	mustApply(t, f, 1, syncCmd(t0, spec("g", "a", "b")))
	for i := 0; i < 20; i++ {
		mustApply(t, f, uint64(i+2), pauseCmd(t0.Add(time.Duration(i)*time.Second), "g", i%2 == 0))
	}
	g, _ := f.Group("g")
	if len(g.GetHistory()) != 5 {
		t.Fatalf("history len = %d, want 5", len(g.GetHistory()))
	}
	if first, last := g.GetHistory()[0].GetIndex(), g.GetHistory()[4].GetIndex(); first != 17 || last != 21 {
		t.Fatalf("kept indexes %d..%d, want the newest 17..21", first, last)
	}
}

func TestUnknownAndUndecodableCommands(t *testing.T) {
	f := New()
	mustApply(t, f, 1, syncCmd(t0, spec("g", "a", "b")))
	before, _ := f.Snapshot()

	// A command from a newer version: a oneof field number we do not know.
	unknown := func(ignore bool) []byte {
		b, _ := Encode(&vigilv1.Command{At: timestamppb.New(t0), IgnoreUnknown: ignore})
		b = protowire.AppendTag(b, 99, protowire.BytesType)
		return protowire.AppendBytes(b, []byte{0x08, 0x01})
	}
	if r := f.Apply(2, unknown(true)); r.Err != nil || r.Kind != "ignored" {
		t.Fatalf("ignorable unknown command: %+v", r)
	}
	if r := f.Apply(3, unknown(false)); !errors.Is(r.Err, ErrInvalidCommand) {
		t.Fatalf("unknown command: err = %v", r.Err)
	}
	if r := f.Apply(4, []byte{0xff, 0xff, 0xff}); !errors.Is(r.Err, ErrInvalidCommand) {
		t.Fatalf("garbage: err = %v", r.Err)
	}
	noTime, _ := proto.Marshal(&vigilv1.Command{Cmd: &vigilv1.Command_SetPaused{SetPaused: &vigilv1.SetPaused{Group: "g", Paused: true}}})
	if r := f.Apply(5, noTime); !errors.Is(r.Err, ErrInvalidCommand) {
		t.Fatalf("command without time: err = %v", r.Err)
	}
	after, _ := f.Snapshot()
	if !sameGroups(t, before, after) {
		t.Fatal("refused commands changed the state")
	}
	if f.AppliedIndex() != 5 {
		t.Fatalf("applied index = %d, want 5 (refused entries are still consumed)", f.AppliedIndex())
	}
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	f := New()
	mustApply(t, f, 1, syncCmd(t0, spec("pg-main", "db1", "db2"), spec("pg-b", "b1", "b2")))
	mustApply(t, f, 2, pauseCmd(t0.Add(time.Second), "pg-b", true))
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	again, _ := f.Snapshot()
	if !bytes.Equal(snap, again) {
		t.Fatal("snapshot encoding is not deterministic")
	}

	g := New()
	mustApply(t, g, 1, syncCmd(t0, spec("other", "x", "y")))
	if err := g.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	restored, _ := g.Snapshot()
	if !bytes.Equal(snap, restored) {
		t.Fatal("restored state differs from the snapshot")
	}
	if g.AppliedIndex() != 2 {
		t.Fatalf("applied index after restore = %d, want 2", g.AppliedIndex())
	}
	// Applying the same next command to both keeps them identical.
	mustApply(t, f, 3, pauseCmd(t0.Add(2*time.Second), "pg-main", true))
	mustApply(t, g, 3, pauseCmd(t0.Add(2*time.Second), "pg-main", true))
	a, _ := f.Snapshot()
	b, _ := g.Snapshot()
	if !bytes.Equal(a, b) {
		t.Fatal("states diverged after the same command")
	}
}

func TestRestoreRefusesBadSnapshots(t *testing.T) {
	f := New()
	mustApply(t, f, 1, syncCmd(t0, spec("g", "a", "b")))
	before, _ := f.Snapshot()
	dup, _ := proto.Marshal(&vigilv1.State{Groups: []*vigilv1.Group{{Spec: spec("x", "a", "b")}, {Spec: spec("x", "a", "b")}}})
	for name, b := range map[string][]byte{"garbage": {0xff, 0x01}, "duplicate": dup} {
		if err := f.Restore(bytes.NewReader(b)); err == nil {
			t.Fatalf("%s snapshot accepted", name)
		}
	}
	after, _ := f.Snapshot()
	if !bytes.Equal(before, after) {
		t.Fatal("a refused snapshot changed the state")
	}
}

func FuzzApply(f *testing.F) {
	for _, c := range []*vigilv1.Command{syncCmd(t0, spec("g", "a", "b")), pauseCmd(t0, "g", true)} {
		b, _ := Encode(c)
		f.Add(b)
	}
	f.Add([]byte{0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		m := New()
		mustApply(t, m, 1, syncCmd(t0, spec("g", "a", "b")))
		r := m.Apply(2, data)
		if r.Err == nil {
			if _, err := m.Snapshot(); err != nil {
				t.Fatalf("snapshot after accepted command: %v", err)
			}
		}
	})
}

func groupNames(f *FSM) []string {
	var out []string
	for _, g := range f.Groups() {
		out = append(out, g.GetSpec().GetName())
	}
	return out
}

func sameGroups(t *testing.T, a, b []byte) bool {
	t.Helper()
	var sa, sb vigilv1.State
	if err := proto.Unmarshal(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(b, &sb); err != nil {
		t.Fatal(err)
	}
	return proto.Equal(&vigilv1.State{Groups: sa.Groups}, &vigilv1.State{Groups: sb.Groups})
}
