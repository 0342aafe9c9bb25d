package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// watchFake serves Watch streams as its script says; every other call is
// unimplemented.
type watchFake struct {
	vigilv1.UnimplementedAdminServer
	// script gives, for the nth Watch call (from 1), the events to send,
	// whether to then keep the stream open until the client leaves, and
	// otherwise the error to end the stream with (nil: a normal end).
	script func(n int) (events []*vigilv1.WatchEvent, hold bool, err error)

	mu    sync.Mutex
	calls int
	reqs  []*vigilv1.WatchRequest
}

func (f *watchFake) Watch(req *vigilv1.WatchRequest, stream grpc.ServerStreamingServer[vigilv1.WatchEvent]) error {
	f.mu.Lock()
	f.calls++
	n := f.calls
	f.reqs = append(f.reqs, req)
	f.mu.Unlock()
	events, hold, err := f.script(n)
	for _, ev := range events {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	if hold {
		<-stream.Context().Done()
		return nil
	}
	return err
}

func (f *watchFake) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *watchFake) lastGroup() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		return "<none>"
	}
	return f.reqs[len(f.reqs)-1].GetGroup()
}

// serveAdmin starts a gRPC server with srv on a free local port and
// returns its address.
func serveAdmin(t *testing.T, srv vigilv1.AdminServer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	vigilv1.RegisterAdminServer(s, srv)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

var watchT0 = time.Date(2026, 11, 22, 1, 2, 3, 456_000_000, time.UTC)

func watchEvent(member, prev, state string, down int32, at time.Time, observer string) *vigilv1.WatchEvent {
	return &vigilv1.WatchEvent{
		At: ts(at), Observer: observer, PreviousState: prev,
		Health: &vigilv1.MemberHealth{
			Group: "pg-main", Member: member, State: state, DownVotes: down, UpVotes: 3 - down,
			Observers: 3, Quorum: 2, Sdown: state != "up", Odown: state == "odown",
			Votes:   []*vigilv1.ObserverVote{{Observer: "obs1", Verdict: "down", AgeMs: 300, Fresh: true, WalLsn: 0x3000148}},
			Summary: "summary of " + member,
		},
	}
}

// threeEvents are the snapshot of db1 and its change to SDOWN and ODOWN.
func threeEvents() []*vigilv1.WatchEvent {
	return []*vigilv1.WatchEvent{
		watchEvent("db1", "", "up", 0, watchT0, "obs2"),
		watchEvent("db1", "up", "sdown", 1, watchT0.Add(2*time.Second), "obs2"),
		watchEvent("db1", "sdown", "odown", 3, watchT0.Add(12*time.Second+4*time.Millisecond), "obs2"),
	}
}

var threeLines = []string{
	"2026-11-22T01:02:03.456Z  pg-main/db1  -> UP  (down 0 of 3, quorum 2)  [obs2]",
	"2026-11-22T01:02:05.456Z  pg-main/db1  UP -> SDOWN  (down 1 of 3, quorum 2)  [obs2]",
	"2026-11-22T01:02:15.460Z  pg-main/db1  SDOWN -> ODOWN  (down 3 of 3, quorum 2)  [obs2]",
}

func lines(s string) []string {
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

func assertLines(t *testing.T, got string, want ...string) {
	t.Helper()
	if g := lines(got); strings.Join(g, "\n") != strings.Join(want, "\n") {
		t.Errorf("output\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
}

func TestWatchPrintsEvents(t *testing.T) {
	f := &watchFake{script: func(int) ([]*vigilv1.WatchEvent, bool, error) { return threeEvents(), false, nil }}
	addr := serveAdmin(t, f)
	code, out, errOut := runApp(t, nil, "-a", addr, "watch", "pg-main")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	assertLines(t, out, threeLines...)
	if f.lastGroup() != "pg-main" || f.callCount() != 1 {
		t.Errorf("calls %d, group %q", f.callCount(), f.lastGroup())
	}

	// Without a group every group is watched.
	if code, _, errOut := runApp(t, nil, "-a", addr, "watch"); code != 0 || f.lastGroup() != "" {
		t.Errorf("exit %d, group %q, stderr:\n%s", code, f.lastGroup(), errOut)
	}
}

func TestFormatEvent(t *testing.T) {
	// No time: stamped with now; no observer: no brackets; control
	// characters cannot reach the terminal.
	ev := watchEvent("db\x1b[2J1", "", "", 0, watchT0, "")
	ev.At = nil
	want := "2026-03-01T12:00:00.000Z  pg-main/db [2J1  -> UNKNOWN  (down 0 of 3, quorum 2)"
	if got := formatEvent(ev, testNow); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

func TestWatchJSONLines(t *testing.T) {
	f := &watchFake{script: func(int) ([]*vigilv1.WatchEvent, bool, error) { return threeEvents(), false, nil }}
	addr := serveAdmin(t, f)
	code, out, errOut := runApp(t, nil, "-a", addr, "watch", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	got := lines(out)
	want := threeEvents()
	if len(got) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(got), len(want), out)
	}
	for i, l := range got {
		var ev vigilv1.WatchEvent
		if err := protojson.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("line %d: %v\n%s", i, err, l)
		}
		if !proto.Equal(&ev, want[i]) {
			t.Errorf("line %d differs: %s", i, l)
		}
		if !strings.Contains(l, `"previous_state"`) && i > 0 {
			t.Errorf("line %d lacks proto field names: %s", i, l)
		}
	}
}

func TestWatchOnce(t *testing.T) {
	// The snapshot, then nothing: the stream stays open.
	f := &watchFake{script: func(int) ([]*vigilv1.WatchEvent, bool, error) { return threeEvents()[:2], true, nil }}
	addr := serveAdmin(t, f)
	start := time.Now()
	code, out, errOut := runApp(t, nil, "-a", addr, "watch", "--once")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	assertLines(t, out, threeLines[:2]...)
	if d := time.Since(start); d < snapshotIdle || d > 3*time.Second {
		t.Errorf("took %s", d)
	}

	// No member at all: the command ends after --timeout.
	empty := &watchFake{script: func(int) ([]*vigilv1.WatchEvent, bool, error) { return nil, true, nil }}
	addr = serveAdmin(t, empty)
	start = time.Now()
	code, out, errOut = runApp(t, nil, "-a", addr, "--timeout", "300ms", "watch", "--once", "-o", "json")
	if code != 0 || out != "" || errOut != "" {
		t.Errorf("empty snapshot: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 3*time.Second {
		t.Errorf("empty snapshot took %s", d)
	}
}

func TestWatchOnceDiscardsBrokenSnapshot(t *testing.T) {
	// The first observer breaks off in the middle of its snapshot; the
	// second sends a whole one, which alone is printed.
	broken := &watchFake{script: func(int) ([]*vigilv1.WatchEvent, bool, error) {
		return threeEvents()[:1], false, status.Error(codes.Unavailable, "shutting down")
	}}
	good := &watchFake{script: func(int) ([]*vigilv1.WatchEvent, bool, error) { return threeEvents()[1:], true, nil }}
	code, out, errOut := runApp(t, nil, "-a", serveAdmin(t, broken)+","+serveAdmin(t, good), "watch", "--once")
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	assertLines(t, out, threeLines[1:]...)
	if broken.callCount() != 1 || good.callCount() != 1 {
		t.Errorf("calls %d, %d", broken.callCount(), good.callCount())
	}
}

func TestWatchReconnects(t *testing.T) {
	// obs1 sends the snapshot and goes away; obs2 takes over.
	first := &watchFake{script: func(int) ([]*vigilv1.WatchEvent, bool, error) {
		return threeEvents()[:1], false, status.Error(codes.Unavailable, "observer shutting down")
	}}
	second := &watchFake{script: func(int) ([]*vigilv1.WatchEvent, bool, error) { return threeEvents()[1:], false, nil }}
	a1, a2 := serveAdmin(t, first), serveAdmin(t, second)
	start := time.Now()
	code, out, errOut := runApp(t, nil, "-a", a1+","+a2, "watch", "pg-main")
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	assertLines(t, out, threeLines...)
	if first.callCount() != 1 || second.callCount() != 1 || second.lastGroup() != "pg-main" {
		t.Errorf("calls %d, %d; group %q", first.callCount(), second.callCount(), second.lastGroup())
	}
	wantNote := "vigilctl: watch broken: " + a1 + ": observer shutting down; reconnecting to " + a2 + " in 200ms\n"
	if errOut != wantNote {
		t.Errorf("stderr %q, want %q", errOut, wantNote)
	}
	if d := time.Since(start); d < watchBackoffMin {
		t.Errorf("reconnected after %s, before the backoff", d)
	}

	// With one address the same observer is asked again, with a longer
	// pause after each failure.
	var flaky *watchFake
	flaky = &watchFake{script: func(n int) ([]*vigilv1.WatchEvent, bool, error) {
		switch n {
		case 1:
			return threeEvents()[:1], false, status.Error(codes.Unavailable, "restarting")
		case 2:
			return nil, false, status.Error(codes.Unavailable, "still restarting")
		}
		return threeEvents()[1:], false, nil
	}}
	addr := serveAdmin(t, flaky)
	code, out, errOut = runApp(t, nil, "-a", addr, "watch")
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	assertLines(t, out, threeLines...)
	if flaky.callCount() != 3 {
		t.Errorf("%d calls, want 3", flaky.callCount())
	}
	assertLines(t, errOut,
		"vigilctl: watch broken: "+addr+": restarting; reconnecting to "+addr+" in 200ms",
		"vigilctl: watch broken: "+addr+": still restarting; reconnecting to "+addr+" in 400ms")
}

func TestWatchInterrupted(t *testing.T) {
	f := &watchFake{script: func(int) ([]*vigilv1.WatchEvent, bool, error) { return threeEvents()[:1], true, nil }}
	addr := serveAdmin(t, f)
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb, now: func() time.Time { return testNow }, getenv: func(string) string { return "" }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(500*time.Millisecond, cancel)
	if code := a.runContext(ctx, []string{"-a", addr, "watch"}); code != 0 {
		t.Errorf("exit %d after interrupt, stderr:\n%s", code, errb.String())
	}
	assertLines(t, out.String(), threeLines[0])
	if errb.Len() != 0 {
		t.Errorf("stderr: %s", errb.String())
	}
}

func TestWatchFailures(t *testing.T) {
	// Nothing to watch at the start: every address is named, exit 1.
	dead := deadAddr(t)
	code, out, errOut := runApp(t, nil, "-a", "127.0.0.1:1,"+dead, "watch")
	if code != 1 || out != "" || !strings.HasPrefix(errOut, "vigilctl: watch: every address failed:") ||
		strings.Count(errOut, "connection refused") != 2 {
		t.Errorf("dead: exit %d, stdout %q, stderr:\n%s", code, out, errOut)
	}

	// An observer that does not implement Watch (older version).
	code, _, errOut = runApp(t, nil, "-a", serve(t, newFake("obs1")), "watch", "pg-main")
	if code != 1 || !strings.Contains(errOut, "vigilctl: watch pg-main: ") || !strings.Contains(errOut, "method Watch not implemented") {
		t.Errorf("unimplemented: exit %d, stderr:\n%s", code, errOut)
	}

	// A silent observer: only the connection has a deadline.
	code, _, errOut = runApp(t, nil, "-a", silentAddr(t), "--timeout", "300ms", "watch")
	if code != 1 || !strings.Contains(errOut, "no answer within 300ms") {
		t.Errorf("silent: exit %d, stderr:\n%s", code, errOut)
	}

	// An answer is final: it is not asked elsewhere.
	notFound := &watchFake{script: func(int) ([]*vigilv1.WatchEvent, bool, error) {
		return nil, false, status.Error(codes.NotFound, `group "nope" not found`)
	}}
	other := &watchFake{script: func(int) ([]*vigilv1.WatchEvent, bool, error) { return nil, false, nil }}
	code, _, errOut = runApp(t, nil, "-a", serveAdmin(t, notFound)+","+serveAdmin(t, other), "watch", "nope")
	if want := "vigilctl: watch nope: group \"nope\" not found\n"; code != 1 || errOut != want {
		t.Errorf("not found: exit %d, stderr %q, want %q", code, errOut, want)
	}
	if notFound.callCount() != 1 || other.callCount() != 0 {
		t.Errorf("calls %d, %d", notFound.callCount(), other.callCount())
	}

	// Usage.
	code, _, errOut = runApp(t, nil, "-a", "127.0.0.1:1", "watch", "a", "b")
	if code != 2 || !strings.Contains(errOut, "watch takes at most 1 argument(s) (GROUP), got 2") {
		t.Errorf("usage: exit %d, stderr:\n%s", code, errOut)
	}
}

func TestWatchAndGroupHelp(t *testing.T) {
	code, out, _ := runApp(t, nil, "watch", "--help")
	for _, want := range []string{"Examples:", "vigilctl watch pg-main --once", "UP -> ODOWN", "--once", "200ms"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("watch --help: exit %d, lacks %q:\n%s", code, want, out)
		}
	}
	code, out, _ = runApp(t, nil, "group", "--help")
	for _, want := range []string{"Examples:", "DOWN VOTES", "WAL / LAG", "no votes yet"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("group --help: exit %d, lacks %q:\n%s", code, want, out)
		}
	}
}
