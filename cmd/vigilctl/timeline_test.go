package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

var failT0 = time.Date(2026, 11, 22, 1, 2, 3, 456_000_000, time.UTC)

// failAt is failT0 plus ms milliseconds.
func failAt(ms int) time.Time { return failT0.Add(time.Duration(ms) * time.Millisecond) }

// completedFailover is an automatic failover of epoch 2 from db1 to db2
// that obs1 started and obs3 resumed from the promotion on.
func completedFailover() *vigilv1.Failover {
	return &vigilv1.Failover{
		Epoch: 2, Kind: "failover", OldPrimary: "db1", NewPrimary: "db2",
		Reason: "primary db1 ODOWN since 01:02:03.456", StartedBy: "obs1",
		OdownAt: ts(failT0), StartedAt: ts(failAt(44)),
		Steps: []*vigilv1.FailoverStep{
			{Name: "fenced", At: ts(failAt(74)), Detail: "not accepting connections (refused)", Observer: "obs1", DurationMs: 12},
			{Name: "promoted", At: ts(failAt(244)), Detail: "db2 promoted and writable", Observer: "obs3", DurationMs: 160},
			{Name: "rerouted", At: ts(failAt(254)), Detail: "no router configured", Observer: "obs3", DurationMs: 1},
			{Name: "standbys_repointed", At: ts(failAt(444)), Detail: "following db2: [db3]", Observer: "obs3", DurationMs: 180},
		},
		Outcome: "completed", OutcomeDetail: "db2 is primary; 1 standby following", FinishedAt: ts(failAt(454)),
	}
}

var completedTimeline = []string{
	"epoch 2  failover  db1 -> db2  completed  (started by obs1: primary db1 ODOWN since 01:02:03.456)",
	"  01:02:03.456  +0ms    odown                      primary db1 objectively down",
	"  01:02:03.500  +44ms   started                    intent committed",
	"  01:02:03.530  +74ms   fenced              12ms   not accepting connections (refused)",
	"  01:02:03.700  +244ms  promoted            160ms  db2 promoted and writable  [obs3]",
	"  01:02:03.710  +254ms  rerouted            1ms    no router configured  [obs3]",
	"  01:02:03.900  +444ms  standbys_repointed  180ms  following db2: [db3]  [obs3]",
	"  01:02:03.910  +454ms  completed                  db2 is primary; 1 standby following",
}

// abortedSwitchover is a switchover of epoch 3 from db2 back to db1 that
// fenced db2 but could not promote db1; it has no ODOWN, so offsets count
// from its start.
func abortedSwitchover() *vigilv1.Failover {
	return &vigilv1.Failover{
		Epoch: 3, Kind: "switchover", OldPrimary: "db2", NewPrimary: "db1",
		Reason: "switchover requested by operator", StartedBy: "obs3",
		StartedAt: ts(failAt(60_000)),
		Steps: []*vigilv1.FailoverStep{
			{Name: "fenced", At: ts(failAt(60_020)), Detail: "db2 read-only", Observer: "obs3", DurationMs: 18},
		},
		Outcome: "aborted", OutcomeDetail: "db1 did not catch up within 30s", FinishedAt: ts(failAt(90_031)),
	}
}

var abortedTimeline = []string{
	"epoch 3  switchover  db2 -> db1  aborted  (started by obs3: switchover requested by operator)",
	"  01:03:03.456  +0ms     started                intent committed",
	"  01:03:03.476  +20ms    fenced          18ms   db2 read-only",
	"  01:03:33.487  +30.031s  aborted                db1 did not catch up within 30s",
}

func renderTimeline(t *testing.T, f *vigilv1.Failover, now time.Time) string {
	t.Helper()
	var b bytes.Buffer
	if err := printTimeline(&b, f, now); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestTimelineCompleted(t *testing.T) {
	assertLines(t, renderTimeline(t, completedFailover(), testNow), completedTimeline...)
}

func TestTimelineAbortedFromStart(t *testing.T) {
	out := renderTimeline(t, abortedSwitchover(), testNow)
	got := lines(out)
	if len(got) != len(abortedTimeline) || got[0] != abortedTimeline[0] {
		t.Fatalf("timeline:\n%s", out)
	}
	// Columns are aligned: compare the cells, not the padding.
	for i := 1; i < len(got); i++ {
		if g, w := strings.Fields(got[i]), strings.Fields(abortedTimeline[i]); strings.Join(g, " ") != strings.Join(w, " ") {
			t.Errorf("row %d: got %q, want %q", i, got[i], abortedTimeline[i])
		}
	}
	// The detail column starts at the same place on every row.
	col := strings.Index(got[1], "intent committed")
	if strings.Index(got[2], "18ms") >= col || strings.Index(got[3], "db1 did not") != col {
		t.Errorf("columns not aligned:\n%s", out)
	}
	// No step by another observer: no marker.
	if strings.Contains(out, "[obs") {
		t.Errorf("observer marker without a new leader:\n%s", out)
	}
}

func TestTimelineOffsetsFromODownElseStart(t *testing.T) {
	f := completedFailover()
	out := renderTimeline(t, f, testNow)
	assertCells(t, strings.Fields(lines(out)[2])[:3], "01:02:03.500", "+44ms", "started")

	// Without an ODOWN the start is +0ms and there is no odown row.
	f.OdownAt = nil
	out = renderTimeline(t, f, testNow)
	if strings.Contains(out, "odown ") {
		t.Errorf("odown row without odown_at:\n%s", out)
	}
	assertCells(t, strings.Fields(lines(out)[1])[:3], "01:02:03.500", "+0ms", "started")
	assertCells(t, strings.Fields(lines(out)[3])[:4], "01:02:03.700", "+200ms", "promoted", "160ms")
}

func TestTimelineInProgressAndSanitized(t *testing.T) {
	f := completedFailover()
	f.Outcome, f.OutcomeDetail, f.FinishedAt = "", "", nil
	f.Steps = f.Steps[:2]
	f.Steps[0].Detail = "refused\n\x1b[31mred"
	now := failAt(12_500)
	out := renderTimeline(t, f, now)
	got := lines(out)
	if want := "epoch 2  failover  db1 -> db2  (in progress)  (started by obs1: primary db1 ODOWN since 01:02:03.456)"; got[0] != want {
		t.Errorf("header %q, want %q", got[0], want)
	}
	if want := "  in progress for 12s, next step: rerouted"; got[len(got)-1] != want {
		t.Errorf("last line %q, want %q", got[len(got)-1], want)
	}
	if strings.Contains(out, "\x1b") || len(got) != 6 {
		t.Errorf("control characters or broken rows:\n%q", out)
	}
}

func TestFailoverSummary(t *testing.T) {
	for _, c := range []struct {
		f       *vigilv1.Failover
		primary string
		want    string
		ok      bool
	}{
		{completedFailover(), "db2", "pg-main: failover completed, epoch 2, primary is db2", true},
		{completedFailover(), "", "pg-main: failover completed, epoch 2, primary is db2", true},
		{abortedSwitchover(), "db2", "pg-main: switchover aborted at promotion: db1 did not catch up within 30s", false},
		{&vigilv1.Failover{Epoch: 5, Kind: "forced", Outcome: "aborted", OutcomeDetail: "db1 still writable"}, "",
			"pg-main: forced failover aborted at fencing: db1 still writable", false},
		{&vigilv1.Failover{Epoch: 5, Kind: "switchover", Steps: []*vigilv1.FailoverStep{{Name: "fenced"}}}, "",
			"pg-main: switchover still in progress, epoch 5, next step promoted", false},
		{nil, "", "pg-main: the observer returned no failover", false},
	} {
		got, ok := failoverSummary("pg-main", c.f, c.primary)
		if got != c.want || ok != c.ok {
			t.Errorf("got %q, %v; want %q, %v", got, ok, c.want, c.ok)
		}
	}
}

func TestPrintHistory(t *testing.T) {
	active := &vigilv1.Failover{
		Epoch: 4, Kind: "switchover", OldPrimary: "db2", NewPrimary: "db3", StartedBy: "obs3",
		Reason: "switchover requested by operator", StartedAt: ts(failAt(120_000)),
		Steps: []*vigilv1.FailoverStep{{Name: "fenced", At: ts(failAt(120_010)), Detail: "db2 read-only", Observer: "obs3", DurationMs: 9}},
	}
	r := &vigilv1.HistoryResponse{
		Group: "pg-main", Epoch: 4, Primary: "db2",
		Failovers: []*vigilv1.Failover{completedFailover(), abortedSwitchover()},
		Active:    active,
	}
	var b bytes.Buffer
	if err := printHistory(&b, r, failAt(125_000)); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	got := lines(out)
	if want := "pg-main: epoch 4, primary db2, 3 failovers (1 in progress)"; got[0] != want {
		t.Errorf("header %q, want %q", got[0], want)
	}
	// Newest last, blocks separated by an empty line, the active one last.
	blocks := strings.Split(out, "\n\n")
	if len(blocks) != 4 {
		t.Fatalf("%d blocks:\n%s", len(blocks), out)
	}
	if strings.Join(lines(blocks[1]), "\n") != strings.Join(completedTimeline, "\n") {
		t.Errorf("first block:\n%s", blocks[1])
	}
	if !strings.HasPrefix(blocks[2], "epoch 3  switchover  db2 -> db1  aborted") {
		t.Errorf("second block:\n%s", blocks[2])
	}
	if !strings.HasPrefix(blocks[3], "epoch 4  switchover  db2 -> db3  (in progress)  (started by obs3:") ||
		!strings.HasSuffix(blocks[3], "  in progress for 5s, next step: promoted\n") {
		t.Errorf("active block:\n%s", blocks[3])
	}

	// Only finished failovers; then none at all.
	r.Active = nil
	b.Reset()
	if err := printHistory(&b, r, testNow); err != nil {
		t.Fatal(err)
	}
	if got := lines(b.String())[0]; got != "pg-main: epoch 4, primary db2, 2 failovers" {
		t.Errorf("header %q", got)
	}
	b.Reset()
	if err := printHistory(&b, &vigilv1.HistoryResponse{Group: "pg-main", Primary: "db1"}, testNow); err != nil {
		t.Fatal(err)
	}
	if b.String() != "pg-main: epoch 0, primary db1, no failovers\n" {
		t.Errorf("empty history: %q", b.String())
	}
}

func TestPrintGroupFailoverState(t *testing.T) {
	g := testGroup()
	g.ActiveFailover = &vigilv1.Failover{
		Epoch: 5, Kind: "switchover", OldPrimary: "pg2", NewPrimary: "pg1",
		Steps: []*vigilv1.FailoverStep{{Name: "fenced"}},
	}
	last := completedFailover()
	last.OldPrimary, last.NewPrimary, last.Epoch = "pg1", "pg2", 4
	last.FinishedAt = ts(testNow.Add(-5 * time.Hour))
	g.Failovers = []*vigilv1.Failover{abortedSwitchover(), last}
	r := &vigilv1.GetGroupResponse{
		Group: g, AppliedIndex: 23, Health: testHealth(), AnsweredBy: "obs1",
		Candidates: []*vigilv1.CandidateStatus{
			{Member: "pg1", Eligible: true, Priority: 100, WalLsn: 0x3000148, LagBytes: 0},
			{Member: "pg3", Eligible: false, Reason: "priority 0: never promoted", Priority: 0, WalLsn: 0x3000000, LagBytes: 328},
			{Member: "pg4", Eligible: false, Reason: "no fresh vote", LagBytes: -1},
		},
		ControllerStatus: "cooldown\tuntil 12:05:00",
	}
	var b bytes.Buffer
	if err := printGroup(&b, r, testNow); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	// After the health section, before the history.
	i, j, k := strings.Index(out, "\nhealth (as seen by obs1)\n"), strings.Index(out, "\ncandidates (best first)\n"), strings.Index(out, "\nhistory (newest last)\n")
	if i < 0 || j < i || k < j {
		t.Fatalf("sections out of order (%d, %d, %d):\n%s", i, j, k, out)
	}
	cands := section(t, out, "candidates (best first)")
	assertCells(t, rowStarting(t, cands, "MEMBER"), "MEMBER", "ELIGIBLE", "PRIORITY", "WAL", "LAG", "REASON")
	assertCells(t, rowStarting(t, cands, "pg1"), "pg1", "yes", "100", "0/3000148", "0B", "-")
	assertCells(t, rowStarting(t, cands, "pg3"), "pg3", "no", "0", "0/3000000", "328B", "priority 0: never promoted")
	assertCells(t, rowStarting(t, cands, "pg4"), "pg4", "no", "0", "-", "-", "no fresh vote")
	for _, want := range []string{
		"\ncontroller: cooldown until 12:05:00\n",
		"\nfailover in progress: epoch 5 switchover pg2 -> pg1, next step promoted\n",
		"\nlast failover: epoch 4 at 2026-03-01T07:00:00Z (5h ago) pg1 -> pg2, completed\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}

	// An aborted last failover says where and why; without status,
	// active or finished failovers those lines are left out.
	g.Failovers = g.Failovers[:1]
	g.ActiveFailover = nil
	r.ControllerStatus, r.Candidates = "", nil
	b.Reset()
	if err := printGroup(&b, r, testNow); err != nil {
		t.Fatal(err)
	}
	out = b.String()
	if !strings.Contains(out, "\nlast failover: epoch 3 at 2026-11-22T01:03:33Z (in 265d) db2 -> db1, aborted at promotion: db1 did not catch up within 30s\n") {
		t.Errorf("aborted last failover:\n%s", out)
	}
	if strings.Contains(out, "controller:") || strings.Contains(out, "in progress") || !strings.Contains(out, "\ncandidates: none reported\n") {
		t.Errorf("empty failover state:\n%s", out)
	}

	g.Failovers = nil
	b.Reset()
	if err := printGroup(&b, r, testNow); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); strings.Contains(out, "last failover: epoch") {
		t.Errorf("last failover without failovers:\n%s", out)
	}
}
