package main

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func ts(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

// colSep splits a tabwriter line into cells: columns are padded with at
// least three spaces, cells never contain more than one in a row.
var colSep = regexp.MustCompile(` {3,}`)

// rows returns the cells of every non-empty line of out.
func rows(out string) [][]string {
	var r [][]string
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		r = append(r, colSep.Split(strings.TrimRight(l, " "), -1))
	}
	return r
}

// rowStarting returns the cells of the first line whose first cell is first.
func rowStarting(t *testing.T, out, first string) []string {
	t.Helper()
	for _, r := range rows(out) {
		if r[0] == first {
			return r
		}
	}
	t.Fatalf("no row starting with %q in:\n%s", first, out)
	return nil
}

func assertCells(t *testing.T, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("row\n got %q\nwant %q", got, want)
	}
}

func testStatus() *vigilv1.StatusResponse {
	return &vigilv1.StatusResponse{
		AnsweredBy: "obs1", LeaderId: "obs2", LeaderRaftAddress: "10.0.0.2:7300",
		Term: 3, LastLogIndex: 42, CommitIndex: 42, AppliedIndex: 41, Quorum: 2,
		Observers: []*vigilv1.ObserverStatus{
			{Id: "obs1", RaftAddress: "10.0.0.1:7300", GossipAddress: "10.0.0.1:7302", GrpcAddress: "10.0.0.1:7301",
				RaftRole: "follower", Term: 3, LastLogIndex: 42, CommitIndex: 42, AppliedIndex: 41, LeaderId: "obs2",
				GossipState: "alive", Reachable: true},
			{Id: "obs2", RaftAddress: "10.0.0.2:7300", GossipAddress: "10.0.0.2:7302", GrpcAddress: "10.0.0.2:7301",
				RaftRole: "leader", Term: 3, LastLogIndex: 42, CommitIndex: 42, AppliedIndex: 42, LeaderId: "obs2",
				GossipState: "alive", Reachable: true},
			{Id: "obs3", RaftAddress: "10.0.0.3:7300", GossipAddress: "10.0.0.3:7302", GrpcAddress: "10.0.0.3:7301",
				RaftRole: "unknown", GossipState: "dead", Error: "connection refused"},
		},
	}
}

func TestPrintStatus(t *testing.T) {
	var b bytes.Buffer
	if err := printStatus(&b, testStatus()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	first, _, _ := strings.Cut(out, "\n")
	if want := "leader: obs2   term: 3   quorum: 2 of 3   answered by: obs1"; first != want {
		t.Errorf("header %q, want %q", first, want)
	}
	assertCells(t, rowStarting(t, out, "OBSERVER"),
		"OBSERVER", "RAFT ROLE", "TERM", "LAST INDEX", "APPLIED", "GOSSIP", "RAFT ADDR", "GRPC ADDR", "ERROR")
	assertCells(t, rowStarting(t, out, "obs1"),
		"obs1", "follower", "3", "42", "41", "alive", "10.0.0.1:7300", "10.0.0.1:7301", "-")
	assertCells(t, rowStarting(t, out, "obs2"),
		"obs2", "leader", "3", "42", "42", "alive", "10.0.0.2:7300", "10.0.0.2:7301", "-")
	assertCells(t, rowStarting(t, out, "obs3"),
		"obs3", "unknown", "-", "-", "-", "dead", "10.0.0.3:7300", "10.0.0.3:7301", "connection refused")
}

func TestPrintStatusNoErrorsNoLeader(t *testing.T) {
	r := testStatus()
	r.LeaderId = ""
	r.Observers = r.Observers[:2]
	var b bytes.Buffer
	if err := printStatus(&b, r); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if !strings.HasPrefix(out, "leader: none   term: 3   quorum: 2 of 2   answered by: obs1\n") {
		t.Errorf("header:\n%s", out)
	}
	if strings.Contains(out, "ERROR") {
		t.Errorf("ERROR column without errors:\n%s", out)
	}
	assertCells(t, rowStarting(t, out, "obs1"),
		"obs1", "follower", "3", "42", "41", "alive", "10.0.0.1:7300", "10.0.0.1:7301")
}

func testGroup() *vigilv1.Group {
	return &vigilv1.Group{
		Spec: &vigilv1.GroupSpec{
			Name: "pg-main", Kind: "postgres", InitialPrimary: "pg1",
			Members: []*vigilv1.MemberSpec{
				{Name: "pg1", Address: "10.1.0.1:5432", Priority: 100, Datacenter: "dc1"},
				{Name: "pg2", Address: "10.1.0.2:5432", Priority: 50, Datacenter: "dc2"},
				{Name: "pg3", Address: "10.1.0.3:5432", Priority: 0},
			},
			DownAfterMs: 10_000, MaxLagBytes: 16 << 20, CooldownMs: 300_000,
			ProbeType: "tcp", ProbeIntervalMs: 1000, ProbeTimeoutMs: 500,
		},
		Primary: "pg2", Epoch: 4,
		Paused: true, PausedReason: "kernel\tupgrade", PausedAt: ts(testNow.Add(-3 * time.Minute)),
		CreatedAt:      ts(testNow.Add(-72 * time.Hour)),
		UpdatedAt:      ts(testNow.Add(-3*time.Minute - 20*time.Second)),
		LastFailoverAt: ts(testNow.Add(-5 * time.Hour)),
		History: []*vigilv1.Event{
			{Index: 3, At: ts(testNow.Add(-72 * time.Hour)), Kind: "group_created", Detail: "primary pg1, 3 members", Actor: "config"},
			{Index: 17, At: ts(testNow.Add(-5 * time.Hour)), Kind: "failover", Detail: "pg1 down", Epoch: 4, Actor: "controller"},
			{Index: 23, At: ts(testNow.Add(-3 * time.Minute)), Kind: "paused", Detail: "", Epoch: 4, Actor: "admin-api"},
		},
	}
}

func TestPrintGroups(t *testing.T) {
	other := &vigilv1.Group{
		Spec:    &vigilv1.GroupSpec{Name: "redis-a", Kind: "redis", Members: []*vigilv1.MemberSpec{{Name: "r1"}, {Name: "r2"}}},
		Primary: "r1", UpdatedAt: ts(testNow.Add(-45 * time.Second)),
	}
	var b bytes.Buffer
	err := printGroups(&b, &vigilv1.ListGroupsResponse{Groups: []*vigilv1.Group{testGroup(), other}, AppliedIndex: 23}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	out := b.String()
	assertCells(t, rowStarting(t, out, "GROUP"), "GROUP", "KIND", "PRIMARY", "EPOCH", "MEMBERS", "PAUSED", "UPDATED")
	assertCells(t, rowStarting(t, out, "pg-main"), "pg-main", "postgres", "pg2", "4", "pg1,pg2,pg3", "yes", "3m ago")
	assertCells(t, rowStarting(t, out, "redis-a"), "redis-a", "redis", "r1", "0", "r1,r2", "no", "45s ago")

	b.Reset()
	if err := printGroups(&b, &vigilv1.ListGroupsResponse{}, testNow); err != nil {
		t.Fatal(err)
	}
	if b.String() != "no groups\n" {
		t.Errorf("empty list: %q", b.String())
	}
}

func TestPrintGroup(t *testing.T) {
	var b bytes.Buffer
	if err := printGroup(&b, &vigilv1.GetGroupResponse{Group: testGroup(), AppliedIndex: 23}, testNow); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range [][]string{
		{"group:", "pg-main"},
		{"kind:", "postgres"},
		{"primary:", "pg2"},
		{"epoch:", "4"},
		{"paused:", "yes"},
		{"pause reason:", "kernel upgrade"}, // the tab cannot break the layout
		{"paused since:", "2026-03-01T11:57:00Z (3m ago)"},
		{"down after:", "10s"},
		{"max lag:", "16777216 bytes (16 MiB)"},
		{"cooldown:", "5m0s"},
		{"probe:", "tcp"},
		{"probe interval:", "1s"},
		{"probe timeout:", "500ms"},
		{"created:", "2026-02-26T12:00:00Z (3d ago)"},
		{"last failover:", "2026-03-01T07:00:00Z (5h ago)"},
		{"applied index:", "23"},
		{"NAME", "ADDRESS", "PRIORITY", "DATACENTER", "ROLE"},
		{"pg1", "10.1.0.1:5432", "100", "dc1", "standby"},
		{"pg2", "10.1.0.2:5432", "50", "dc2", "primary"},
		{"pg3", "10.1.0.3:5432", "0", "-", "standby"},
		{"AT", "INDEX", "EPOCH", "KIND", "ACTOR", "DETAIL"},
		{"2026-02-26T12:00:00Z", "3", "0", "group_created", "config", "primary pg1, 3 members"},
		{"2026-03-01T07:00:00Z", "17", "4", "failover", "controller", "pg1 down"},
		{"2026-03-01T11:57:00Z", "23", "4", "paused", "admin-api", "-"},
	} {
		assertCells(t, rowStarting(t, out, want[0]), want...)
	}
	if !strings.Contains(out, "\nhistory (newest last)\n") {
		t.Errorf("no history title:\n%s", out)
	}
	// History rows keep their order, newest last.
	if i, j := strings.Index(out, "group_created"), strings.Index(out, "admin-api"); i < 0 || j < i {
		t.Errorf("history out of order:\n%s", out)
	}

	// A running group shows neither reason nor since.
	g := testGroup()
	g.Paused, g.PausedReason, g.PausedAt, g.History = false, "", nil, nil
	b.Reset()
	if err := printGroup(&b, &vigilv1.GetGroupResponse{Group: g}, testNow); err != nil {
		t.Fatal(err)
	}
	out = b.String()
	assertCells(t, rowStarting(t, out, "paused:"), "paused:", "no")
	if strings.Contains(out, "pause reason") || strings.Contains(out, "paused since") {
		t.Errorf("running group shows pause details:\n%s", out)
	}
	if !strings.Contains(out, "history: none") {
		t.Errorf("empty history not stated:\n%s", out)
	}
}

func TestPrintPauseResume(t *testing.T) {
	var b bytes.Buffer
	g := testGroup()
	g.PausedReason = "kernel upgrade"
	if err := printPaused(&b, &vigilv1.PauseGroupResponse{Group: g, Index: 23}, testNow); err != nil {
		t.Fatal(err)
	}
	if want := "pg-main paused at index 23 (reason: kernel upgrade)\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}

	// Committed at an index that recorded no event: it was paused before.
	b.Reset()
	if err := printPaused(&b, &vigilv1.PauseGroupResponse{Group: g, Index: 30}, testNow); err != nil {
		t.Fatal(err)
	}
	if want := "pg-main paused at index 30 (reason: kernel upgrade); it was already paused since 2026-03-01T11:57:00Z (3m ago), nothing changed\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}

	g = testGroup()
	g.Paused, g.PausedReason, g.PausedAt = false, "", nil
	g.History = append(g.History, &vigilv1.Event{Index: 31, Kind: "resumed"})
	b.Reset()
	if err := printResumed(&b, &vigilv1.ResumeGroupResponse{Group: g, Index: 31}); err != nil {
		t.Fatal(err)
	}
	if want := "pg-main resumed at index 31\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

func TestPrintJSONRoundTrip(t *testing.T) {
	for _, m := range []proto.Message{
		testStatus(),
		&vigilv1.ListGroupsResponse{Groups: []*vigilv1.Group{testGroup()}, AppliedIndex: 23},
		&vigilv1.GetGroupResponse{Group: testGroup(), AppliedIndex: 23},
		&vigilv1.PauseGroupResponse{Group: testGroup(), Index: 23},
	} {
		var b bytes.Buffer
		if err := printJSON(&b, m); err != nil {
			t.Fatal(err)
		}
		got := m.ProtoReflect().New().Interface()
		if err := protojson.Unmarshal(b.Bytes(), got); err != nil {
			t.Fatalf("%T: %v\n%s", m, err, b.String())
		}
		if !proto.Equal(got, m) {
			t.Errorf("%T: round trip differs:\n%s", m, b.String())
		}
	}
	// The documented shape: proto field names, every field present (zero
	// values too), 64-bit numbers as numbers, sorted keys, two spaces.
	var b bytes.Buffer
	if err := printJSON(&b, &vigilv1.StatusResponse{AnsweredBy: "obs1", Term: 7, AppliedIndex: 1 << 40}); err != nil {
		t.Fatal(err)
	}
	want := `{
  "answered_by": "obs1",
  "applied_index": 1099511627776,
  "commit_index": 0,
  "last_log_index": 0,
  "leader_id": "",
  "leader_raft_address": "",
  "observers": [],
  "quorum": 0,
  "term": 7
}
`
	if b.String() != want {
		t.Errorf("json:\n%s\nwant:\n%s", b.String(), want)
	}
	// Enums by name, timestamps in RFC 3339 UTC, an unset message null;
	// the same bytes every time (protojson randomizes its spacing).
	g := testGroup()
	var one, two bytes.Buffer
	if err := printJSON(&one, &vigilv1.GetGroupResponse{Group: g}); err != nil {
		t.Fatal(err)
	}
	if err := printJSON(&two, &vigilv1.GetGroupResponse{Group: g}); err != nil {
		t.Fatal(err)
	}
	if one.String() != two.String() {
		t.Error("two encodings of one message differ")
	}
	var doc map[string]any
	if err := json.Unmarshal(one.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	grp, _ := doc["group"].(map[string]any)
	if _, isNum := grp["epoch"].(float64); !isNum {
		t.Errorf("group.epoch is %T (%v), want a number", grp["epoch"], grp["epoch"])
	}
	if grp["active_failover"] != nil {
		t.Errorf("unset active_failover is %v, want null", grp["active_failover"])
	}
	if at, ok := grp["paused_at"].(string); g.GetPausedAt() != nil && (!ok || !strings.HasSuffix(at, "Z")) {
		t.Errorf("paused_at %v, want an RFC 3339 UTC string", grp["paused_at"])
	}
}

func TestAge(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s ago"},
		{59 * time.Second, "59s ago"},
		{3*time.Minute + 59*time.Second, "3m ago"},
		{5 * time.Hour, "5h ago"},
		{47 * time.Hour, "47h ago"},
		{72 * time.Hour, "3d ago"},
		{-3 * time.Second, "in 3s"},
	} {
		if got := age(testNow, ts(testNow.Add(-c.d))); got != c.want {
			t.Errorf("age(%s) = %q, want %q", c.d, got, c.want)
		}
	}
	if got := age(testNow, nil); got != "-" {
		t.Errorf("age(nil) = %q", got)
	}
}

func TestBytesize(t *testing.T) {
	for n, want := range map[int64]string{
		0:             "0 bytes",
		1023:          "1023 bytes",
		1536:          "1536 bytes (1.5 KiB)",
		16 << 20:      "16777216 bytes (16 MiB)",
		5 << 30:       "5368709120 bytes (5 GiB)",
		1<<40 + 1<<39: "1649267441664 bytes (1.5 TiB)",
	} {
		if got := bytesize(n); got != want {
			t.Errorf("bytesize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestPrintGroupRoutingNotes(t *testing.T) {
	memberHealth := func(member, role, state string, primaryQuorum, rogue bool) *vigilv1.MemberHealth {
		return &vigilv1.MemberHealth{Group: "pg-main", Member: member, State: state, Observers: 3, Quorum: 2,
			ExpectedRole: role, RoleSeen: "primary", Odown: state == "odown", PrimaryQuorum: primaryQuorum, RoguePrimary: rogue}
	}
	render := func(hs ...*vigilv1.MemberHealth) string {
		t.Helper()
		var b bytes.Buffer
		if err := printGroup(&b, &vigilv1.GetGroupResponse{Group: testGroup(), Health: hs}, testNow); err != nil {
			t.Fatal(err)
		}
		return section(t, b.String(), "members")
	}

	// pg2 is the state's primary but no quorum sees it writable; pg1, a
	// standby for the state, was seen writable by an observer.
	members := render(
		memberHealth("pg1", "standby", "up", false, true),
		memberHealth("pg2", "primary", "up", false, false),
		memberHealth("pg3", "standby", "up", false, false),
	)
	assertCells(t, rowStarting(t, members, "NAME"), "NAME", "ADDRESS", "PRIORITY", "DATACENTER", "ROLE", "ROUTING")
	assertCells(t, rowStarting(t, members, "pg1"), "pg1", "10.1.0.1:5432", "100", "dc1", "standby",
		"ROGUE PRIMARY (writable while pg2 is primary; being fenced)")
	assertCells(t, rowStarting(t, members, "pg2"), "pg2", "10.1.0.2:5432", "50", "dc2", "primary",
		"not routed: no quorum sees it as a writable primary")
	assertCells(t, rowStarting(t, members, "pg3"), "pg3", "10.1.0.3:5432", "0", "-", "standby", "-")

	// A rogue primary is flagged whatever else holds, even with a quorum
	// seeing it writable.
	members = render(memberHealth("pg3", "standby", "sdown", true, true), memberHealth("pg2", "primary", "up", true, false))
	assertCells(t, rowStarting(t, members, "pg3"), "pg3", "10.1.0.3:5432", "0", "-", "standby",
		"ROGUE PRIMARY (writable while pg2 is primary; being fenced)")
	assertCells(t, rowStarting(t, members, "pg2"), "pg2", "10.1.0.2:5432", "50", "dc2", "primary", "-")

	// Nothing to say: a routable primary, or an ODOWN one (the health
	// section and the failover lines say why), and the table keeps its
	// columns.
	for _, primary := range []*vigilv1.MemberHealth{
		memberHealth("pg2", "primary", "up", true, false),
		memberHealth("pg2", "primary", "odown", false, false),
	} {
		members = render(memberHealth("pg1", "standby", "up", false, false), primary)
		assertCells(t, rowStarting(t, members, "NAME"), "NAME", "ADDRESS", "PRIORITY", "DATACENTER", "ROLE")
		assertCells(t, rowStarting(t, members, "pg2"), "pg2", "10.1.0.2:5432", "50", "dc2", "primary")
	}
}

func TestRoutingNote(t *testing.T) {
	rogue := &vigilv1.MemberHealth{Member: "db2", ExpectedRole: "standby", RoguePrimary: true}
	if got, want := routingNote(rogue, ""), "ROGUE PRIMARY (writable while no member is primary; being fenced)"; got != want {
		t.Errorf("no primary: %q, want %q", got, want)
	}
	if got := routingNote(rogue, "db1\x1b[2J"); strings.ContainsRune(got, '\x1b') || !strings.Contains(got, "while db1 [2J is primary") {
		t.Errorf("primary name not sanitized: %q", got)
	}
	// A standby that is not rogue, seen by nobody as primary, needs no note.
	if got := routingNote(&vigilv1.MemberHealth{Member: "db3", ExpectedRole: "standby"}, "db1"); got != "" {
		t.Errorf("plain standby: %q", got)
	}
}

// The node agents section shows what the answering observer's leases
// learnt: a self-fenced primary and a refused lease are called out.
func TestPrintGroupAgents(t *testing.T) {
	var b bytes.Buffer
	r := &vigilv1.GetGroupResponse{Group: testGroup(), AnsweredBy: "obs1", Agents: []*vigilv1.AgentView{
		{Member: "pg1", Address: "10.1.0.1:7501", LastAnswerAgeMs: 120, LastErrorAgeMs: -1, SelfFenced: true, DatabaseFence: true},
		{Member: "pg2", Address: "10.1.0.2:7501", LastAnswerAgeMs: 5000, LastErrorAgeMs: 200, Refused: true, LastError: "stale epoch 3"},
		{Member: "pg3", Address: "10.1.0.3:7501", LastAnswerAgeMs: -1, LastErrorAgeMs: 300, LastError: "i/o timeout"},
	}}
	if err := printGroup(&b, r, testNow); err != nil {
		t.Fatal(err)
	}
	agents := section(t, b.String(), "node agents (leases from obs1)")
	assertCells(t, rowStarting(t, agents, "MEMBER"), "MEMBER", "AGENT", "LAST ANSWER", "STATE", "LAST FAILURE")
	assertCells(t, rowStarting(t, agents, "pg1"), "pg1", "10.1.0.1:7501", "120ms ago", "SELF-FENCED, db fence", "-")
	assertCells(t, rowStarting(t, agents, "pg2"), "pg2", "10.1.0.2:7501", "5s ago", "-", "REFUSED 200ms ago: stale epoch 3")
	assertCells(t, rowStarting(t, agents, "pg3"), "pg3", "10.1.0.3:7501", "never", "-", "not delivered 300ms ago: i/o timeout")

	b.Reset()
	r.Agents = nil
	if err := printGroup(&b, r, testNow); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "node agents") {
		t.Fatal("a group without agents shows a node agents section")
	}
}
