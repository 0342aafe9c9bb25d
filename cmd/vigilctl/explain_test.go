package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// explainInput is a healthy group pg-main (primary pg2, standbys pg1 and
// pg3) as the leader obs1 answers it; each case mutates it.
func explainInput() (*vigilv1.GetGroupResponse, *vigilv1.StatusResponse) {
	g := testGroup()
	g.Paused, g.PausedReason, g.PausedAt = false, "", nil
	g.LastFailoverAt = ts(testNow.Add(-5 * time.Hour))
	vote := func(o, verdict string) *vigilv1.ObserverVote {
		return &vigilv1.ObserverVote{Observer: o, Verdict: verdict, Role: "primary", AgeMs: 200, Fresh: true}
	}
	resp := &vigilv1.GetGroupResponse{Group: g, AnsweredBy: "obs1",
		Health: []*vigilv1.MemberHealth{{Member: "pg2", State: "up", UpVotes: 3, Quorum: 2, Observers: 3,
			Votes: []*vigilv1.ObserverVote{vote("obs1", "up"), vote("obs2", "up"), vote("obs3", "up")}}},
		Candidates: []*vigilv1.CandidateStatus{
			{Member: "pg1", Eligible: true, Priority: 100, WalLsn: 0x3000060},
			{Member: "pg3", Eligible: false, Reason: "priority 0 (never promoted automatically)"},
		},
		Agents: []*vigilv1.AgentView{{Member: "pg2", Address: "10.1.0.2:7501", LastAnswerAgeMs: 120, LastErrorAgeMs: -1, DatabaseFence: true}},
	}
	st := &vigilv1.StatusResponse{LeaderId: "obs1", Observers: []*vigilv1.ObserverStatus{{Id: "obs1", GrpcAddress: "10.0.0.1:7300"}}}
	return resp, st
}

func TestExplainStates(t *testing.T) {
	for _, c := range []struct {
		name    string
		mutate  func(*vigilv1.GetGroupResponse, *vigilv1.StatusResponse)
		verdict string
		blocker string
	}{
		{"healthy", func(*vigilv1.GetGroupResponse, *vigilv1.StatusResponse) {},
			"pg2 is up: nothing to do. Were a quorum to see it down for 10s, vigil would promote pg1.", ""},
		{"paused", func(r *vigilv1.GetGroupResponse, _ *vigilv1.StatusResponse) {
			r.Group.Paused, r.Group.PausedReason, r.Group.PausedAt = true, "kernel upgrade", ts(testNow.Add(-time.Minute))
			r.Health[0].Odown, r.Health[0].State, r.Health[0].DownVotes = true, "odown", 3
		}, "pg2 is ODOWN, but vigil will not fail it over now: paused 1m ago", `paused 1m ago: "kernel upgrade" (vigilctl resume pg-main)`},
		{"cooldown", func(r *vigilv1.GetGroupResponse, _ *vigilv1.StatusResponse) {
			r.Group.LastFailoverAt = ts(testNow.Add(-time.Minute))
		}, "Were it to go down, vigil would not fail it over: cooldown", "cooldown: the last failover was 1m ago and cooldown is 5m0s: 4m0s left"},
		{"back-off", func(r *vigilv1.GetGroupResponse, _ *vigilv1.StatusResponse) {
			r.Group.BackoffUntil, r.Group.BackoffReason = ts(testNow.Add(30*time.Second)), "pre_failover hook vetoed"
		}, "would not fail it over: back-off", "back-off: 30s left (pre_failover hook vetoed)"},
		{"no eligible candidate", func(r *vigilv1.GetGroupResponse, _ *vigilv1.StatusResponse) {
			r.Candidates[0].Eligible, r.Candidates[0].Reason = false, "lag 20 MiB over max_lag 16 MiB"
		}, "would not fail it over: no eligible candidate", "no eligible candidate (pg1: lag 20 MiB over max_lag 16 MiB; pg3: priority 0 (never promoted automatically))"},
		{"no leader", func(_ *vigilv1.GetGroupResponse, s *vigilv1.StatusResponse) { s.LeaderId = "" },
			"would not fail it over: no leader", "no leader: the observers do not form a quorum"},
		{"down streak", func(r *vigilv1.GetGroupResponse, _ *vigilv1.StatusResponse) {
			r.Health[0].State, r.Health[0].DownVotes, r.Health[0].DownSince = "sdown", 2, ts(testNow.Add(-4*time.Second))
		}, "pg2 is down on 2 observers (quorum 2): ODOWN in 6s if that holds, then a failover to pg1.", ""},
		{"one observer", func(r *vigilv1.GetGroupResponse, _ *vigilv1.StatusResponse) {
			r.Health[0].State, r.Health[0].DownVotes = "sdown", 1
		}, "pg2 is down on 1 of 3 observers; quorum is 2: no failover until 1 more see it down for 10s.", ""},
		{"odown, leader says", func(r *vigilv1.GetGroupResponse, _ *vigilv1.StatusResponse) {
			r.Health[0].Odown, r.Health[0].State = true, "odown"
			r.ControllerStatus = "the leader's own probe sees pg2 up"
		}, "pg2 is ODOWN and the leader is not failing it over: the leader says: the leader's own probe sees pg2 up.", "the leader says: the leader's own probe sees pg2 up"},
		{"in progress", func(r *vigilv1.GetGroupResponse, _ *vigilv1.StatusResponse) {
			r.Group.ActiveFailover = &vigilv1.Failover{Epoch: 5, Kind: "failover", OldPrimary: "pg2", NewPrimary: "pg1",
				Steps: []*vigilv1.FailoverStep{{Name: "fenced"}}}
		}, "A failover is in progress: pg2 -> pg1 (epoch 5)", "a failover of epoch 5 is in progress (pg2 -> pg1, last step: fenced)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, st := explainInput()
			c.mutate(resp, st)
			e := explain(resp, st, testNow)
			if !strings.Contains(e.Verdict, c.verdict) {
				t.Errorf("verdict %q does not contain %q", e.Verdict, c.verdict)
			}
			if c.blocker == "" && len(e.Blockers) > 0 && c.name != "odown, leader says" {
				t.Errorf("blockers %q, want none", e.Blockers)
			}
			if c.blocker != "" && !hasPrefix(e.Blockers, c.blocker) {
				t.Errorf("blockers %q lack %q", e.Blockers, c.blocker)
			}
			var b bytes.Buffer
			printExplanation(&b, e)
			if !strings.Contains(b.String(), e.Verdict) || !strings.Contains(b.String(), "1. pg1") {
				t.Errorf("text output:\n%s", b.String())
			}
		})
	}
}

// The JSON shape: every field present, the leader view, fence paths.
func TestExplainJSONAndFencePaths(t *testing.T) {
	resp, st := explainInput()
	e := explain(resp, st, testNow)
	if !e.LeaderView || len(e.FencePaths) != 2 || !strings.Contains(e.FencePaths[0], "has a database fence") {
		t.Fatalf("leader view %v, fence paths %q", e.LeaderView, e.FencePaths)
	}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"group", "primary", "epoch", "leader", "primary_votes", "odown_in_ms", "candidates", "blockers", "fence_paths", "verdict", "active_failover"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("json lacks %q: %s", k, b)
		}
	}
	resp.AnsweredBy = "obs2"
	if e := explain(resp, st, testNow); e.LeaderView {
		t.Error("an answer from obs2 counted as the leader's (obs1)")
	}
}
