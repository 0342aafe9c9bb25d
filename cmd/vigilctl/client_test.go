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

// fakeAdmin is a minimal in-memory Admin server for testing the client
// layer; it is no model of an observer.
type fakeAdmin struct {
	vigilv1.UnimplementedAdminServer
	name string
	// unavailable, when set, is the message of an Unavailable error every
	// call returns (an observer that knows no leader).
	unavailable string

	mu     sync.Mutex
	calls  int
	index  uint64
	groups map[string]*vigilv1.Group
}

// newFake returns a fake with one running group, pg-main, whose last event
// was at index 10.
func newFake(name string) *fakeAdmin {
	g := testGroup()
	g.Paused, g.PausedReason, g.PausedAt = false, "", nil
	g.History = g.History[:2]
	return &fakeAdmin{name: name, index: 10, groups: map[string]*vigilv1.Group{"pg-main": g}}
}

func (f *fakeAdmin) enter() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.unavailable != "" {
		return status.Error(codes.Unavailable, f.unavailable)
	}
	return nil
}

func (f *fakeAdmin) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeAdmin) Status(context.Context, *vigilv1.StatusRequest) (*vigilv1.StatusResponse, error) {
	if err := f.enter(); err != nil {
		return nil, err
	}
	r := testStatus()
	r.AnsweredBy = f.name
	return r, nil
}

func (f *fakeAdmin) ListGroups(context.Context, *vigilv1.ListGroupsRequest) (*vigilv1.ListGroupsResponse, error) {
	if err := f.enter(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	r := &vigilv1.ListGroupsResponse{AppliedIndex: f.index}
	for _, g := range f.groups {
		r.Groups = append(r.Groups, proto.Clone(g).(*vigilv1.Group))
	}
	return r, nil
}

func (f *fakeAdmin) GetGroup(_ context.Context, req *vigilv1.GetGroupRequest) (*vigilv1.GetGroupResponse, error) {
	if err := f.enter(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	g, ok := f.groups[req.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "group %q not found", req.GetName())
	}
	return &vigilv1.GetGroupResponse{Group: proto.Clone(g).(*vigilv1.Group), AppliedIndex: f.index}, nil
}

func (f *fakeAdmin) PauseGroup(_ context.Context, req *vigilv1.PauseGroupRequest) (*vigilv1.PauseGroupResponse, error) {
	if err := f.enter(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	g, ok := f.groups[req.GetGroup()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "group %q not found", req.GetGroup())
	}
	f.index++
	if !g.GetPaused() {
		g.Paused, g.PausedReason, g.PausedAt = true, req.GetReason(), ts(testNow)
		g.History = append(g.History, &vigilv1.Event{Index: f.index, At: ts(testNow), Kind: "paused", Detail: req.GetReason()})
	}
	return &vigilv1.PauseGroupResponse{Group: proto.Clone(g).(*vigilv1.Group), Index: f.index}, nil
}

func (f *fakeAdmin) ResumeGroup(_ context.Context, req *vigilv1.ResumeGroupRequest) (*vigilv1.ResumeGroupResponse, error) {
	if err := f.enter(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	g, ok := f.groups[req.GetGroup()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "group %q not found", req.GetGroup())
	}
	f.index++
	if g.GetPaused() {
		g.Paused, g.PausedReason, g.PausedAt = false, "", nil
		g.History = append(g.History, &vigilv1.Event{Index: f.index, At: ts(testNow), Kind: "resumed"})
	}
	return &vigilv1.ResumeGroupResponse{Group: proto.Clone(g).(*vigilv1.Group), Index: f.index}, nil
}

// serve starts a gRPC server with f on a free local port and returns its
// address.
func serve(t *testing.T, f *fakeAdmin) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	vigilv1.RegisterAdminServer(s, f)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

// deadAddr returns a local address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// silentAddr returns a local address that accepts connections and never
// says a word.
func silentAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// runApp runs vigilctl in-process with the test clock and the given
// environment instead of the process's.
func runApp(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb, now: func() time.Time { return testNow }, getenv: func(k string) string { return env[k] }}
	code = a.run(args)
	return code, out.String(), errb.String()
}

func TestFailoverToSecondAddress(t *testing.T) {
	f := newFake("obs-fake")
	addr := serve(t, f)
	var out, errb bytes.Buffer
	code := run([]string{"--addr", "127.0.0.1:1," + addr, "status", "-o", "json"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errb.String())
	}
	if errb.Len() != 0 {
		t.Errorf("stderr on success: %s", errb.String())
	}
	var r vigilv1.StatusResponse
	if err := protojson.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("stdout is no StatusResponse: %v\n%s", err, out.String())
	}
	if r.GetAnsweredBy() != "obs-fake" || r.GetLeaderId() != "obs2" || len(r.GetObservers()) != 3 {
		t.Errorf("unexpected response: %v", &r)
	}
	if f.callCount() != 1 {
		t.Errorf("server called %d times, want 1", f.callCount())
	}
}

func TestAllAddressesDead(t *testing.T) {
	dead := deadAddr(t)
	var out, errb bytes.Buffer
	code := run([]string{"--addr", "127.0.0.1:1," + dead, "status"}, &out, &errb)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, errb.String())
	}
	if out.Len() != 0 {
		t.Errorf("stdout on failure: %s", out.String())
	}
	msg := errb.String()
	if !strings.HasPrefix(msg, "vigilctl: get status: ") {
		t.Errorf("stderr does not say what failed:\n%s", msg)
	}
	for _, a := range []string{"127.0.0.1:1: ", dead + ": "} {
		if !strings.Contains(msg, a) {
			t.Errorf("stderr does not name %s:\n%s", a, msg)
		}
	}
	if strings.Count(msg, "connection refused") != 2 {
		t.Errorf("stderr does not give each address's error:\n%s", msg)
	}
}

func TestNotFoundIsFinal(t *testing.T) {
	first, second := newFake("obs1"), newFake("obs2")
	addrs := serve(t, first) + "," + serve(t, second)
	var out, errb bytes.Buffer
	code := run([]string{"--addr", addrs, "group", "nope"}, &out, &errb)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, errb.String())
	}
	if want := "vigilctl: get group nope: group \"nope\" not found\n"; errb.String() != want {
		t.Errorf("stderr %q, want %q", errb.String(), want)
	}
	if first.callCount() != 1 || second.callCount() != 0 {
		t.Errorf("calls: first %d, second %d; an observer's answer must not be retried elsewhere",
			first.callCount(), second.callCount())
	}
}

func TestUnavailableTriesNext(t *testing.T) {
	noLeader := newFake("obs1")
	noLeader.unavailable = "no leader: an election is in progress"
	good := newFake("obs2")
	addrs := serve(t, noLeader) + "," + serve(t, good)

	code, out, errOut := runApp(t, nil, "--addr", addrs, "pause", "pg-main", "--reason", "upgrade")
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	if want := "pg-main paused at index 11 (reason: upgrade)\n"; out != want {
		t.Errorf("stdout %q, want %q", out, want)
	}
	if noLeader.callCount() != 1 || good.callCount() != 1 {
		t.Errorf("calls: %d, %d; want 1, 1", noLeader.callCount(), good.callCount())
	}

	// Only observers without a leader: every message is shown.
	code, _, errOut = runApp(t, nil, "--addr", addrs[:strings.Index(addrs, ",")], "resume", "pg-main")
	if code != 1 || !strings.Contains(errOut, "vigilctl: resume group pg-main: ") || !strings.Contains(errOut, "no leader: an election is in progress") {
		t.Errorf("exit %d, stderr:\n%s", code, errOut)
	}
}

func TestSilentObserverTimesOut(t *testing.T) {
	silent := silentAddr(t)
	good := serve(t, newFake("obs2"))

	start := time.Now()
	code, out, errOut := runApp(t, nil, "--addr", silent+","+good, "--timeout", "300ms", "groups")
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Errorf("took %s", elapsed)
	}
	assertCells(t, rowStarting(t, out, "pg-main"), "pg-main", "postgres", "pg2", "4", "pg1,pg2,pg3", "no", "3m ago")

	code, _, errOut = runApp(t, nil, "--addr", silent, "--timeout", "300ms", "groups")
	if code != 1 || !strings.Contains(errOut, silent+": no answer within 300ms") {
		t.Errorf("exit %d, stderr:\n%s", code, errOut)
	}
}

func TestCommandsThroughServer(t *testing.T) {
	addr := serve(t, newFake("obs1"))

	code, out, errOut := runApp(t, nil, "-a", addr, "status")
	if code != 0 || !strings.HasPrefix(out, "leader: obs2   term: 3   quorum: 2 of 3   answered by: obs1\n") {
		t.Errorf("status: exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	code, out, errOut = runApp(t, nil, "-a", addr, "group", "pg-main")
	if code != 0 {
		t.Fatalf("group: exit %d, stderr:\n%s", code, errOut)
	}
	assertCells(t, rowStarting(t, out, "pg2"), "pg2", "10.1.0.2:5432", "50", "dc2", "primary")

	// explain asks for the status, then the group (from the leader when it
	// can reach it: obs2 is not served here, so obs1 answers and says so).
	code, out, errOut = runApp(t, nil, "-a", addr, "explain", "pg-main")
	if code != 0 || !strings.Contains(out, "pg-main: primary pg2") || !strings.Contains(out, "not the leader's view") {
		t.Errorf("explain: exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	code, out, _ = runApp(t, nil, "-a", addr, "pause", "pg-main")
	if want := "pg-main paused at index 11\n"; code != 0 || out != want {
		t.Errorf("pause: exit %d, stdout %q, want %q", code, out, want)
	}
	code, out, _ = runApp(t, nil, "-a", addr, "pause", "pg-main", "--reason", "again")
	if want := "pg-main paused at index 12; it was already paused since 2026-03-01T12:00:00Z (0s ago), nothing changed\n"; code != 0 || out != want {
		t.Errorf("repeated pause: exit %d, stdout %q, want %q", code, out, want)
	}

	code, out, errOut = runApp(t, nil, "-a", addr, "resume", "pg-main", "-o", "json")
	if code != 0 {
		t.Fatalf("resume: exit %d, stderr:\n%s", code, errOut)
	}
	var rr vigilv1.ResumeGroupResponse
	if err := protojson.Unmarshal([]byte(out), &rr); err != nil || rr.GetIndex() != 13 || rr.GetGroup().GetPaused() {
		t.Errorf("resume json: %v, %v\n%s", err, &rr, out)
	}

	code, out, _ = runApp(t, nil, "-a", addr, "resume", "pg-main")
	if want := "pg-main resumed at index 14; it was not paused, nothing changed\n"; code != 0 || out != want {
		t.Errorf("repeated resume: exit %d, stdout %q, want %q", code, out, want)
	}
}

func TestAddrFromEnvironment(t *testing.T) {
	addr := serve(t, newFake("obs1"))
	code, out, errOut := runApp(t, map[string]string{"VIGIL_ADDR": deadAddr(t) + ", " + addr}, "groups", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	var r vigilv1.ListGroupsResponse
	if err := protojson.Unmarshal([]byte(out), &r); err != nil || len(r.GetGroups()) != 1 {
		t.Errorf("%v: %s", err, out)
	}
}

func TestUsageErrors(t *testing.T) {
	f := newFake("obs1")
	addr := serve(t, f)
	for _, args := range [][]string{
		{"--bogus", "status"},
		{"-a", addr, "status", "--bogus"},
		{"-a", addr, "status", "-o", "yaml"},
		{"-a", addr, "status", "--timeout", "soon"},
		{"-a", addr, "status", "--timeout", "0s"},
		{"-a", addr, "status", "extra"},
		{"-a", addr, "group"},
		{"-a", addr, "pause", "a", "b"},
		{"-a", addr, "frobnicate"},
		{"-a", "no-port", "status"},
		{"-a", " , ", "status"},
	} {
		code, out, errOut := runApp(t, nil, args...)
		if code != 2 {
			t.Errorf("%q: exit %d, want 2; stderr:\n%s", args, code, errOut)
		}
		if !strings.HasPrefix(errOut, "vigilctl: ") || !strings.Contains(errOut, "--help' for usage") {
			t.Errorf("%q: stderr:\n%s", args, errOut)
		}
		if out != "" {
			t.Errorf("%q: stdout %q", args, out)
		}
	}
	if f.callCount() != 0 {
		t.Errorf("usage errors reached the server %d times", f.callCount())
	}
	var out, errb bytes.Buffer
	if code := run([]string{"--bogus"}, &out, &errb); code != 2 {
		t.Errorf("run --bogus: exit %d, want 2", code)
	}
}

func TestHelpAndVersion(t *testing.T) {
	code, out, _ := runApp(t, nil, "group", "--help")
	if code != 0 || !strings.Contains(out, "history") || !strings.Contains(out, "vigilctl group pg-main") {
		t.Errorf("group --help: exit %d\n%s", code, out)
	}
	code, out, _ = runApp(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "vigilctl "+version) {
		t.Errorf("version: exit %d, %q", code, out)
	}
	code, out, _ = runApp(t, nil, "version", "-o", "json")
	if code != 0 || !strings.Contains(out, `"version": "`+version+`"`) {
		t.Errorf("version json: exit %d, %q", code, out)
	}
}

// A plaintext vigilctl against an observer that closes the connection
// before speaking gRPC (as a TLS observer does) is told TLS is likely
// needed, not only "error reading server preface: EOF".
func TestPlaintextAgainstTLSObserverSaysSo(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var out, errb bytes.Buffer
	if code := run([]string{"--addr", ln.Addr().String(), "status"}, &out, &errb); code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, errb.String())
	}
	if !strings.Contains(errb.String(), "if it serves TLS, pass --ca, --cert and --key") {
		t.Fatalf("stderr does not say TLS is likely needed:\n%s", errb.String())
	}
}
