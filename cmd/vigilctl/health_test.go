package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// testHealth is the health of testGroup's members as obs1 might report
// it: pg1 up, pg2 (the primary) ODOWN, pg3 SDOWN with a stale vote, and
// pg4 without any vote.
func testHealth() []*vigilv1.MemberHealth {
	vote := func(obs, verdict, role string, ageMs int64, fresh bool, lsn uint64, lag int64) *vigilv1.ObserverVote {
		return &vigilv1.ObserverVote{Observer: obs, Verdict: verdict, Role: role, AgeMs: ageMs, Fresh: fresh, WalLsn: lsn, LagBytes: lag}
	}
	return []*vigilv1.MemberHealth{
		{
			Group: "pg-main", Member: "pg1", State: "up", UpVotes: 2, Observers: 3, Quorum: 2,
			ExpectedRole: "standby", RoleSeen: "standby",
			Votes: []*vigilv1.ObserverVote{
				vote("obs1", "up", "standby", 300, true, 0x3000148, 0),
				vote("obs2", "up", "standby", 1249, true, 0x3000100, 72),
				vote("obs3", "none", "unknown", -1, false, 0, 0),
			},
			Summary: "UP on 2 of 3",
		},
		{
			Group: "pg-main", Member: "pg2", State: "odown", DownVotes: 3, Observers: 3, Quorum: 2,
			Sdown: true, Odown: true, DownSince: ts(testNow.Add(-20 * time.Second)), OdownSince: ts(testNow.Add(-12 * time.Second)),
			ExpectedRole: "primary", RoleSeen: "unknown",
			Votes: []*vigilv1.ObserverVote{
				vote("obs1", "down", "unknown", 1200, true, 0, 0),
				vote("obs2", "down", "primary", 2000, true, 0x16_B374D848, 0),
				vote("obs3", "down", "unknown", 450, true, 0, 0),
			},
			Summary: "ODOWN since 11:59:48.000 (down on 3 of 3, quorum 2)",
		},
		{
			Group: "pg-main", Member: "pg3", State: "sdown", DownVotes: 2, Observers: 3, Quorum: 2,
			Sdown: true, DownSince: ts(testNow.Add(-4 * time.Second)),
			ExpectedRole: "standby", RoleSeen: "unknown",
			Votes: []*vigilv1.ObserverVote{
				vote("obs1", "down", "unknown", 800, true, 0, 0),
				vote("obs2", "up", "standby", 42_000, false, 0x1_00000020, 0),
				vote("obs3", "down", "unknown", 100, true, 0x1_00000010, 5<<20),
			},
			Summary: "SDOWN on 2 of 3 (quorum 2)",
		},
		{Group: "pg-main", Member: "pg4", Observers: 3, Quorum: 2, ExpectedRole: "standby"},
	}
}

// section returns the part of out from the line title up to the next
// empty line.
func section(t *testing.T, out, title string) string {
	t.Helper()
	_, rest, ok := strings.Cut(out, "\n"+title+"\n")
	if !ok {
		t.Fatalf("no section %q in:\n%s", title, out)
	}
	s, _, _ := strings.Cut(rest, "\n\n")
	return s
}

func TestPrintGroupHealth(t *testing.T) {
	var b bytes.Buffer
	r := &vigilv1.GetGroupResponse{Group: testGroup(), AppliedIndex: 23, Health: testHealth()}
	if err := printGroup(&b, r, testNow); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	// After the members, before the history.
	if m, h, hi := strings.Index(out, "\nmembers\n"), strings.Index(out, "\nhealth\n"), strings.Index(out, "\nhistory"); m < 0 || h < m || hi < h {
		t.Fatalf("sections out of order:\n%s", out)
	}
	// The members table is unchanged.
	assertCells(t, rowStarting(t, section(t, out, "members"), "pg2"), "pg2", "10.1.0.2:5432", "50", "dc2", "primary")

	health := section(t, out, "health")
	if n := len(rows(health)); n != 5 {
		t.Errorf("%d health rows, want header and 4 members:\n%s", n, health)
	}
	for _, want := range [][]string{
		{"MEMBER", "STATE", "DOWN VOTES", "ROLE SEEN", "EXPECTED ROLE", "SINCE", "WAL / LAG", "obs1", "obs2", "obs3"},
		{"pg1", "UP", "0 of 3 (quorum 2)", "standby", "standby", "-", "0/3000148 lag 0B", "up 0.3s", "up 1.2s", "-"},
		{"pg2", "ODOWN", "3 of 3 (quorum 2)", "unknown", "primary", "12s ago", "16/B374D848", "down 1.2s", "down 2.0s", "down 0.5s"},
		{"pg3", "SDOWN", "2 of 3 (quorum 2)", "unknown", "standby", "4s ago", "1/10 lag 5MiB", "down 0.8s", "- (stale 42.0s)", "down 0.1s"},
		{"pg4", "UNKNOWN", "0 of 3 (quorum 2)", "-", "standby", "-", "-", "-", "-", "-"},
	} {
		assertCells(t, rowStarting(t, health, want[0]), want...)
	}
}

func TestPrintHealthTitleAndEmpty(t *testing.T) {
	var b bytes.Buffer
	if err := printHealth(&b, testHealth()[:1], "obs1", testNow); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(b.String(), "\nhealth (as seen by obs1)\nMEMBER ") {
		t.Errorf("title:\n%s", b.String())
	}

	b.Reset()
	if err := printGroup(&b, &vigilv1.GetGroupResponse{Group: testGroup()}, testNow); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); !strings.Contains(out, "\nhealth: no votes yet\n") || strings.Contains(out, "MEMBER") {
		t.Errorf("empty health:\n%s", out)
	}
}

func TestPrintHealthSanitizes(t *testing.T) {
	h := testHealth()[:1]
	h[0].Member = "pg1\x1b[31m"
	h[0].Votes[0].Observer = "obs\n1"
	var b bytes.Buffer
	if err := printHealth(&b, h, "", testNow); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if strings.ContainsRune(out, '\x1b') || strings.Contains(out, "obs\n1") {
		t.Errorf("control characters printed: %q", out)
	}
	assertCells(t, rowStarting(t, out, "pg1 [31m"), "pg1 [31m", "UP", "0 of 3 (quorum 2)", "standby", "standby", "-", "0/3000148 lag 0B", "up 0.3s", "up 1.2s", "-")
}

func TestHealthFormats(t *testing.T) {
	for ms, want := range map[int64]string{
		0: "0.0s", 49: "0.0s", 50: "0.1s", 300: "0.3s", 1249: "1.2s", 1250: "1.3s",
		59_949: "59.9s", 60_000: "1m", 3_600_000: "1h",
	} {
		if got := voteAge(ms); got != want {
			t.Errorf("voteAge(%d) = %q, want %q", ms, got, want)
		}
	}
	for n, want := range map[uint64]string{
		0x3000148: "0/3000148", 0x16_B374D848: "16/B374D848", 1 << 32: "1/0", 0xFFFFFFFF_FFFFFFFF: "FFFFFFFF/FFFFFFFF",
	} {
		if got := lsn(n); got != want {
			t.Errorf("lsn(%#x) = %q, want %q", n, got, want)
		}
	}
	for n, want := range map[int64]string{0: "0B", 1023: "1023B", 1536: "1.5KiB", 5 << 20: "5MiB", 3 << 30: "3GiB"} {
		if got := compactBytes(n); got != want {
			t.Errorf("compactBytes(%d) = %q, want %q", n, got, want)
		}
	}
	for _, c := range []struct {
		v    *vigilv1.ObserverVote
		want string
	}{
		{nil, "-"},
		{&vigilv1.ObserverVote{Verdict: "none", AgeMs: -1}, "-"},
		{&vigilv1.ObserverVote{Verdict: "none", AgeMs: 300, Fresh: true}, "-"},
		{&vigilv1.ObserverVote{Verdict: "unknown", AgeMs: 300, Fresh: true}, "unknown 0.3s"},
		{&vigilv1.ObserverVote{Verdict: "down", AgeMs: 90_000}, "- (stale 1m)"},
	} {
		if got := voteCell(c.v); got != c.want {
			t.Errorf("voteCell(%v) = %q, want %q", c.v, got, c.want)
		}
	}
}

func TestGetGroupHealthJSON(t *testing.T) {
	m := &vigilv1.GetGroupResponse{Group: testGroup(), AppliedIndex: 23, Health: testHealth()}
	var b bytes.Buffer
	if err := printJSON(&b, m); err != nil {
		t.Fatal(err)
	}
	var got vigilv1.GetGroupResponse
	if err := protojson.Unmarshal(b.Bytes(), &got); err != nil || !proto.Equal(&got, m) {
		t.Errorf("round trip: %v\n%s", err, b.String())
	}
	if !strings.Contains(b.String(), `"odown_since"`) || !strings.Contains(b.String(), `"wal_lsn"`) {
		t.Errorf("json lacks health fields:\n%s", b.String())
	}
}
