package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// failoverFake answers Switchover, Failover and History as told; every
// other call is unimplemented.
type failoverFake struct {
	vigilv1.UnimplementedAdminServer
	// answer gives the response (or error) to a Switchover or Failover;
	// it may block on ctx.
	answer  func(ctx context.Context) (*vigilv1.FailoverResponse, error)
	history *vigilv1.HistoryResponse

	mu          sync.Mutex
	switchovers []*vigilv1.SwitchoverRequest
	failovers   []*vigilv1.FailoverRequest
	histories   int
}

func (f *failoverFake) Switchover(ctx context.Context, req *vigilv1.SwitchoverRequest) (*vigilv1.FailoverResponse, error) {
	f.mu.Lock()
	f.switchovers = append(f.switchovers, req)
	f.mu.Unlock()
	return f.answer(ctx)
}

func (f *failoverFake) Failover(ctx context.Context, req *vigilv1.FailoverRequest) (*vigilv1.FailoverResponse, error) {
	f.mu.Lock()
	f.failovers = append(f.failovers, req)
	f.mu.Unlock()
	return f.answer(ctx)
}

func (f *failoverFake) History(_ context.Context, req *vigilv1.HistoryRequest) (*vigilv1.HistoryResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.histories++
	if f.history == nil {
		return nil, status.Errorf(codes.NotFound, "group %q not found", req.GetGroup())
	}
	return proto.Clone(f.history).(*vigilv1.HistoryResponse), nil
}

// requests returns the Switchover and Failover requests that arrived.
func (f *failoverFake) requests() ([]*vigilv1.SwitchoverRequest, []*vigilv1.FailoverRequest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*vigilv1.SwitchoverRequest(nil), f.switchovers...), append([]*vigilv1.FailoverRequest(nil), f.failovers...)
}

// counts returns how many Switchover, Failover and History calls arrived.
func (f *failoverFake) counts() (switchovers, failovers, histories int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.switchovers), len(f.failovers), f.histories
}

func respond(fo *vigilv1.Failover, primary string) func(context.Context) (*vigilv1.FailoverResponse, error) {
	return func(context.Context) (*vigilv1.FailoverResponse, error) {
		g := testGroup()
		g.Primary = primary
		return &vigilv1.FailoverResponse{Failover: proto.Clone(fo).(*vigilv1.Failover), Group: g}, nil
	}
}

func fail(code codes.Code, msg string) func(context.Context) (*vigilv1.FailoverResponse, error) {
	return func(context.Context) (*vigilv1.FailoverResponse, error) { return nil, status.Error(code, msg) }
}

func switchoverDone() *vigilv1.Failover {
	f := completedFailover()
	f.Kind, f.OdownAt, f.Reason = "switchover", nil, "switchover requested by operator"
	return f
}

func TestSwitchoverCompleted(t *testing.T) {
	f := &failoverFake{answer: respond(switchoverDone(), "db2")}
	addr := serveAdmin(t, f)
	code, out, errOut := runApp(t, nil, "-a", addr, "switchover", "pg-main", "--to", "db2")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	got := lines(out)
	if want := "epoch 2  switchover  db1 -> db2  completed  (started by obs1: switchover requested by operator)"; got[0] != want {
		t.Errorf("header %q, want %q", got[0], want)
	}
	assertCells(t, strings.Fields(got[1])[:3], "01:02:03.500", "+0ms", "started")
	if want := "pg-main: switchover completed, epoch 2, primary is db2"; got[len(got)-1] != want {
		t.Errorf("last line %q, want %q", got[len(got)-1], want)
	}
	if reqs, _ := f.requests(); len(reqs) != 1 || reqs[0].GetGroup() != "pg-main" || reqs[0].GetTo() != "db2" {
		t.Errorf("requests: %v", reqs)
	}

	// Without --to the server picks; -o json prints the response.
	code, out, errOut = runApp(t, nil, "-a", addr, "switchover", "pg-main", "-o", "json")
	if code != 0 || errOut != "" {
		t.Fatalf("json: exit %d, stderr:\n%s", code, errOut)
	}
	var r vigilv1.FailoverResponse
	if err := protojson.Unmarshal([]byte(out), &r); err != nil || r.GetFailover().GetOutcome() != "completed" || r.GetGroup().GetPrimary() != "db2" {
		t.Errorf("json: %v\n%s", err, out)
	}
	if reqs, _ := f.requests(); len(reqs) != 2 || reqs[1].GetTo() != "" {
		t.Errorf("requests without --to: %v", reqs)
	}
}

func TestSwitchoverAborted(t *testing.T) {
	f := &failoverFake{answer: respond(abortedSwitchover(), "db2")}
	addr := serveAdmin(t, f)
	code, out, errOut := runApp(t, nil, "-a", addr, "switchover", "pg-main")
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, errOut)
	}
	// The output says it all; stderr adds nothing.
	if errOut != "" {
		t.Errorf("stderr: %s", errOut)
	}
	got := lines(out)
	if !strings.HasPrefix(got[0], "epoch 3  switchover  db2 -> db1  aborted") || !strings.HasPrefix(strings.TrimSpace(got[3]), "01:03:33.487") {
		t.Errorf("timeline:\n%s", out)
	}
	if want := "pg-main: switchover aborted at promotion: db1 did not catch up within 30s"; got[len(got)-1] != want {
		t.Errorf("last line %q, want %q", got[len(got)-1], want)
	}

	// With -o json the JSON goes to stdout and why it failed to stderr.
	code, out, errOut = runApp(t, nil, "-a", addr, "switchover", "pg-main", "-o", "json")
	var r vigilv1.FailoverResponse
	if code != 1 || protojson.Unmarshal([]byte(out), &r) != nil {
		t.Errorf("json: exit %d, stdout:\n%s", code, out)
	}
	if want := "vigilctl: switchover pg-main: switchover aborted at promotion: db1 did not catch up within 30s\n"; errOut != want {
		t.Errorf("json: stderr %q, want %q", errOut, want)
	}
}

func TestSwitchoverInProgress(t *testing.T) {
	fo := switchoverDone()
	fo.Outcome, fo.OutcomeDetail, fo.FinishedAt = "", "", nil
	fo.Steps = fo.Steps[:1]
	addr := serveAdmin(t, &failoverFake{answer: respond(fo, "db1")})
	code, out, errOut := runApp(t, nil, "-a", addr, "switchover", "pg-main")
	if code != 1 || errOut != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	got := lines(out)
	assertLines(t, strings.Join(got[len(got)-2:], "\n"),
		"pg-main: switchover still in progress, epoch 2, next step promoted",
		`it goes on in the background; "vigilctl history pg-main" shows how it ends`)
}

func TestSwitchoverRefused(t *testing.T) {
	first := &failoverFake{answer: fail(codes.FailedPrecondition, "failover refused: failover of epoch 4 is in progress")}
	second := &failoverFake{answer: respond(switchoverDone(), "db2")}
	code, out, errOut := runApp(t, nil, "-a", serveAdmin(t, first)+","+serveAdmin(t, second), "switchover", "pg-main")
	if code != 1 || out != "" {
		t.Fatalf("exit %d, stdout:\n%s", code, out)
	}
	if !strings.HasPrefix(errOut, "vigilctl: switchover pg-main: 127.0.0.1:") ||
		!strings.HasSuffix(errOut, ": failover refused: failover of epoch 4 is in progress\n") {
		t.Errorf("stderr: %q", errOut)
	}
	if n, _, _ := second.counts(); n != 0 {
		t.Errorf("refusal retried on the second address %d times", n)
	}
}

func TestSwitchoverNotRetriedAfterSend(t *testing.T) {
	noLeader := &failoverFake{answer: fail(codes.Unavailable, "no leader: an election is in progress")}
	second := &failoverFake{answer: respond(switchoverDone(), "db2")}
	first := serveAdmin(t, noLeader)
	code, out, errOut := runApp(t, nil, "-a", first+","+serveAdmin(t, second), "switchover", "pg-main")
	if code != 1 || out != "" {
		t.Fatalf("exit %d, stdout:\n%s", code, out)
	}
	if n, _, _ := noLeader.counts(); n != 1 {
		t.Errorf("first address called %d times, want 1", n)
	}
	if n, _, _ := second.counts(); n != 0 {
		t.Errorf("second address called %d times after the request was sent; want 0", n)
	}
	want := "vigilctl: switchover pg-main: " + first + ": no leader: an election is in progress; " +
		`it was not sent to another observer, as that could start a second failover; "vigilctl history pg-main" shows whether one started` + "\n"
	if errOut != want {
		t.Errorf("stderr\n got %q\nwant %q", errOut, want)
	}
}

func TestSwitchoverSkipsUnreachable(t *testing.T) {
	good := &failoverFake{answer: respond(switchoverDone(), "db2")}
	addr := serveAdmin(t, good)

	// Connection refused: nothing was sent, the next address is used.
	code, out, errOut := runApp(t, nil, "-a", deadAddr(t)+","+addr, "switchover", "pg-main")
	if code != 0 || errOut != "" || !strings.HasSuffix(out, "pg-main: switchover completed, epoch 2, primary is db2\n") {
		t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	// An observer that accepts the connection but never speaks gRPC is
	// given up after --timeout; the request was never sent.
	start := time.Now()
	code, _, errOut = runApp(t, nil, "-a", silentAddr(t)+","+addr, "--timeout", "300ms", "switchover", "pg-main")
	if code != 0 || errOut != "" {
		t.Fatalf("silent: exit %d, stderr:\n%s", code, errOut)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("silent: took %s", d)
	}
	if n, _, _ := good.counts(); n != 2 {
		t.Errorf("good observer called %d times, want 2", n)
	}

	// Every address down: each is named, as for the other commands.
	dead := deadAddr(t)
	code, _, errOut = runApp(t, nil, "-a", "127.0.0.1:1,"+dead, "switchover", "pg-main")
	if code != 1 || !strings.HasPrefix(errOut, "vigilctl: switchover pg-main: every address failed:") ||
		strings.Count(errOut, "connection refused") != 2 || !strings.Contains(errOut, dead+": ") {
		t.Errorf("all dead: exit %d, stderr:\n%s", code, errOut)
	}
}

func TestSwitchoverWaitExpires(t *testing.T) {
	active := switchoverDone()
	active.Outcome, active.OutcomeDetail, active.FinishedAt = "", "", nil
	active.Steps = active.Steps[:2]
	slow := &failoverFake{
		answer: func(ctx context.Context) (*vigilv1.FailoverResponse, error) {
			<-ctx.Done()
			return nil, status.FromContextError(ctx.Err()).Err()
		},
		history: &vigilv1.HistoryResponse{Group: "pg-main", Epoch: 2, Primary: "db1", Active: active},
	}
	second := &failoverFake{answer: respond(switchoverDone(), "db2")}
	first := serveAdmin(t, slow)
	code, out, errOut := runApp(t, nil, "-a", first+","+serveAdmin(t, second), "switchover", "pg-main", "--wait", "300ms")
	if code != 1 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	if want := "vigilctl: switchover pg-main: " + first + ": no answer within 300ms\n"; errOut != want {
		t.Errorf("stderr %q, want %q", errOut, want)
	}
	// The failover in progress, as the observers know it.
	got := lines(out)
	if !strings.HasPrefix(got[0], "epoch 2  switchover  db1 -> db2  (in progress)") {
		t.Errorf("stdout:\n%s", out)
	}
	assertLines(t, strings.Join(got[len(got)-2:], "\n"),
		"pg-main: switchover still in progress, epoch 2, next step rerouted",
		`it goes on in the background; "vigilctl history pg-main" shows how it ends`)
	if n, _, _ := second.counts(); n != 0 {
		t.Errorf("second address got the switchover %d times", n)
	}

	// Nothing in progress: the error says where to look.
	slow.mu.Lock()
	slow.history.Active = nil
	slow.mu.Unlock()
	code, out, errOut = runApp(t, nil, "-a", first, "switchover", "pg-main", "--wait", "200ms")
	want := "vigilctl: switchover pg-main: " + first + `: no answer within 200ms; the failover may go on in the background; "vigilctl history pg-main" shows how it ends` + "\n"
	if code != 1 || out != "" || errOut != want {
		t.Errorf("exit %d, stdout %q\nstderr %q\nwant   %q", code, out, errOut, want)
	}
}

func TestFailoverCommand(t *testing.T) {
	forced := completedFailover()
	forced.Kind, forced.NewPrimary = "forced", "db3"
	f := &failoverFake{answer: respond(forced, "db3")}
	addr := serveAdmin(t, f)

	for _, args := range [][]string{
		{"failover", "pg-main", "--to", "db3"},
		{"failover", "pg-main", "--force"},
		{"failover", "pg-main", "--to", " ", "--force"},
		{"failover", "pg-main", "--to", "db3", "--force", "--wait", "0s"},
		{"switchover", "pg-main", "--wait", "-1s"},
		{"failover", "--to", "db3", "--force"},
	} {
		code, out, errOut := runApp(t, nil, append([]string{"-a", addr}, args...)...)
		if code != 2 || out != "" || !strings.Contains(errOut, "--help' for usage") {
			t.Errorf("%q: exit %d, stdout %q, stderr:\n%s", args, code, out, errOut)
		}
	}
	code, _, errOut := runApp(t, nil, "-a", addr, "failover", "pg-main", "--to", "db3")
	if code != 2 || !strings.Contains(errOut, "failover needs --force") || !strings.Contains(errOut, "ODOWN") ||
		!strings.Contains(errOut, "cooldown") || !strings.Contains(errOut, "lag") {
		t.Errorf("without --force: exit %d, stderr:\n%s", code, errOut)
	}
	if s, fo, h := f.counts(); s+fo+h != 0 {
		t.Fatalf("usage errors reached the server: %d, %d, %d", s, fo, h)
	}

	code, out, errOut := runApp(t, nil, "-a", addr, "failover", "pg-main", "--to", "db3", "--force")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	if !strings.HasPrefix(out, "epoch 2  forced  db1 -> db3  completed") ||
		!strings.HasSuffix(out, "\npg-main: forced failover completed, epoch 2, primary is db3\n") {
		t.Errorf("stdout:\n%s", out)
	}
	if _, reqs := f.requests(); len(reqs) != 1 || reqs[0].GetGroup() != "pg-main" || reqs[0].GetTo() != "db3" || !reqs[0].GetForce() {
		t.Errorf("requests %v", reqs)
	}

	// Unavailable after sending is not retried either.
	noLeader := &failoverFake{answer: fail(codes.Unavailable, "no leader")}
	code, _, _ = runApp(t, nil, "-a", serveAdmin(t, noLeader)+","+addr, "failover", "pg-main", "--to", "db3", "--force")
	if _, n, _ := f.counts(); code != 1 || n != 1 {
		t.Errorf("exit %d, second address called %d times in all, want 1", code, n)
	}
}

func TestHistoryCommand(t *testing.T) {
	f := &failoverFake{history: &vigilv1.HistoryResponse{
		Group: "pg-main", Epoch: 3, Primary: "db2",
		Failovers: []*vigilv1.Failover{completedFailover(), abortedSwitchover()},
	}}
	// A read: an unreachable observer is skipped.
	noLeader := &failoverFake{}
	addr := serveAdmin(t, f)
	code, out, errOut := runApp(t, nil, "-a", deadAddr(t)+","+addr, "history", "pg-main")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	if !strings.HasPrefix(out, "pg-main: epoch 3, primary db2, 2 failovers\n\n"+strings.Join(completedTimeline, "\n")+"\n\nepoch 3  switchover") {
		t.Errorf("stdout:\n%s", out)
	}

	code, out, _ = runApp(t, nil, "-a", addr, "history", "pg-main", "-o", "json")
	var r vigilv1.HistoryResponse
	if err := protojson.Unmarshal([]byte(out), &r); code != 0 || err != nil || !proto.Equal(&r, f.history) {
		t.Errorf("json: exit %d, %v\n%s", code, err, out)
	}
	if !strings.Contains(out, `"old_primary"`) {
		t.Errorf("json without proto names:\n%s", out)
	}

	code, _, errOut = runApp(t, nil, "-a", serveAdmin(t, noLeader), "history", "nope")
	if code != 1 || errOut != "vigilctl: history of nope: group \"nope\" not found\n" {
		t.Errorf("not found: exit %d, stderr %q", code, errOut)
	}
}

func TestFailoverHelp(t *testing.T) {
	for cmd, wants := range map[string][]string{
		"switchover": {"without losing data", "--wait", "Examples:", "vigilctl switchover pg-main --to db2", "never sent to another observer"},
		"failover":   {"--force", "ODOWN", "cooldown", "Examples:", "vigilctl failover pg-main --to db3 --force"},
		"history":    {"(in progress)", "Examples:", "vigilctl history pg-main", "epoch 2  failover  db1 -> db2  completed"},
	} {
		code, out, _ := runApp(t, nil, cmd, "--help")
		if code != 0 {
			t.Errorf("%s --help: exit %d", cmd, code)
		}
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("%s --help lacks %q", cmd, w)
			}
		}
	}
	code, out, _ := runApp(t, nil, "--help")
	if code != 0 || !strings.Contains(out, "switchover") || !strings.Contains(out, "history") {
		t.Errorf("--help: exit %d\n%s", code, out)
	}
}
