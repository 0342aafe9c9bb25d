package nemesis

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// ctStart is the synthetic histories' start; offsets in them are written
// in milliseconds from it, as the checker's messages are.
var ctStart = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// ctAt is ctStart plus ms milliseconds.
func ctAt(ms int) time.Time { return ctStart.Add(time.Duration(ms) * time.Millisecond) }

// ctWrite is one attempt of client on server, started at ms and answered
// 10ms later.
func ctWrite(client string, id int64, server string, ms int, o Outcome) Attempt {
	return Attempt{Client: client, ID: id, Start: ctAt(ms), End: ctAt(ms + 10), Outcome: o, Server: server}
}

// ctSample is one sample; nil lists are "none".
func ctSample(ms int, vip, haproxy, writable []string) Sample {
	return Sample{At: ctAt(ms), VIP: vip, HAProxy: haproxy, Writable: writable}
}

// ctFault is one fault from startMs to endMs (endMs < 0: never healed).
func ctFault(kind, target string, justifies bool, startMs, endMs int) Fault {
	f := Fault{Kind: kind, Target: target, Justifies: justifies, Start: ctAt(startMs)}
	if endMs >= 0 {
		f.End = ctAt(endMs)
	}
	return f
}

// ctSteps are the steps of a failover that went through everything.
func ctSteps() []Step {
	return []Step{{Name: "fenced"}, {Name: "promoted"}, {Name: "rerouted"}, {Name: "standbys_repointed"}}
}

// ctFailover is one completed failover seen at seenMs.
func ctFailover(epoch uint64, kind, old, new string, seenMs int) Failover {
	return Failover{Epoch: epoch, Kind: kind, Old: old, New: new, Reason: old + " down",
		Outcome: "completed", Steps: ctSteps(), SeenAt: ctAt(seenMs)}
}

// ctHistory is a clean run: pg0 is cut from every observer at +1000ms,
// failed over to pg1 (seen +3000ms, fenced by +3100ms, pg1 writable and
// routed from +3300ms), healed at +5000ms; every acknowledged write is in
// the final table.
func ctHistory() *History {
	h := &History{
		Seed: 42, Members: []string{"pg0", "pg1", "pg2"}, Observers: []string{"obs1", "obs2", "obs3"},
		DownAfter: 2 * time.Second, SampleEvery: 100 * time.Millisecond,
		InitialPrimary: "pg0", InitialEpoch: 1, Start: ctStart, Healed: ctAt(5000), End: ctAt(9000),
		Faults:    []Fault{ctFault(KindPartitionPrimary, "pg0", true, 1000, 5000)},
		Failovers: []Failover{ctFailover(2, "failover", "pg0", "pg1", 3000)},
	}
	for ms := 0; ms <= 8000; ms += 100 {
		switch {
		case ms < 3100:
			h.Samples = append(h.Samples, ctSample(ms, []string{"pg0"}, []string{"pg0"}, []string{"pg0"}))
		case ms < 3300:
			h.Samples = append(h.Samples, ctSample(ms, nil, nil, nil))
		default:
			h.Samples = append(h.Samples, ctSample(ms, []string{"pg1"}, []string{"pg1"}, []string{"pg1"}))
		}
	}
	id := int64(0)
	for ms := 0; ms <= 8000; ms += 100 {
		id++
		switch {
		case ms <= 3000:
			h.Attempts = append(h.Attempts, ctWrite("vip", id, "pg0", ms, OK), ctWrite("stranded-pg0", id, "pg0", ms, OK))
		case ms < 3400:
			h.Attempts = append(h.Attempts, ctWrite("vip", id, "", ms, Failed), ctWrite("stranded-pg0", id, "pg0", ms, Failed))
		default:
			h.Attempts = append(h.Attempts, ctWrite("vip", id, "pg1", ms, OK), ctWrite("stranded-pg0", id, "pg0", ms, Failed))
		}
	}
	h.Final = Final{
		Primary: "pg1", Epoch: 2, Writable: []string{"pg1"}, VIP: []string{"pg1"}, HAProxy: []string{"pg1"},
		Streaming: []string{"pg2"}, NeedsRejoin: []string{"pg0"},
		ObserverState: map[string]string{"obs1": "0123456789abcdef", "obs2": "0123456789abcdef", "obs3": "0123456789abcdef"},
		Present:       map[string][]int64{},
	}
	for _, a := range h.Attempts {
		if a.Outcome == OK {
			h.Final.Present[a.Client] = append(h.Final.Present[a.Client], a.ID)
		}
	}
	return h
}

// ctAck adds an acknowledged write that is in the final table.
func ctAck(h *History, a Attempt) {
	h.Attempts = append(h.Attempts, a)
	h.Final.Present[a.Client] = append(h.Final.Present[a.Client], a.ID)
}

// ctLose removes the write (client, id) from the final table.
func ctLose(h *History, client string, id int64) {
	h.Final.Present[client] = slices.DeleteFunc(h.Final.Present[client], func(x int64) bool { return x == id })
}

// ctID is the id of client's write started at ms in ctHistory.
func ctID(ms int) int64 { return int64(ms/100 + 1) }

func TestCheckCleanHistoryPasses(t *testing.T) {
	for _, sync := range []bool{false, true} {
		h := ctHistory()
		h.Sync = sync
		r := Check(h)
		if !r.OK() {
			t.Fatalf("sync=%t: clean history fails: %+v", sync, r.Verdicts)
		}
		if len(r.Verdicts) != 5 {
			t.Fatalf("got %d verdicts, want 5", len(r.Verdicts))
		}
		for i, v := range r.Verdicts {
			if want := string(rune('a' + i)); v.Property != want || v.Name == "" {
				t.Errorf("verdict %d is %q %q, want property %q with a name", i, v.Property, v.Name, want)
			}
		}
		// 31 vip and 31 stranded writes up to +3000ms, 47 vip ones on pg1.
		if r.Acked != 31+31+47 || r.Lost != 0 || r.LostBounded != 0 {
			t.Errorf("acked %d lost %d bounded %d, want 109 0 0", r.Acked, r.Lost, r.LostBounded)
		}
		if r.Failovers != 1 || r.FalseFailovers != 0 {
			t.Errorf("failovers %d false %d, want 1 0", r.Failovers, r.FalseFailovers)
		}
		if r.Faults[KindPartitionPrimary] != 1 {
			t.Errorf("faults %v, want one %s", r.Faults, KindPartitionPrimary)
		}
		// Stranded writes ended +1010ms..+3010ms: 21 after the fault.
		if r.StrandedAfterT0 != 21 {
			t.Errorf("stranded after t0 %d, want 21", r.StrandedAfterT0)
		}
		// First vip write on pg1 ends at +3410ms, the fault started +1000ms.
		if got := r.Recovery[KindPartitionPrimary]; len(got) != 1 || got[0] != 2410*time.Millisecond {
			t.Errorf("recovery %v, want [2.41s]", got)
		}
		if r.Seed != 42 || r.Sync != sync {
			t.Errorf("seed %d sync %t, want 42 %t", r.Seed, r.Sync, sync)
		}
	}
}

func TestCheckProperties(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(h *History)
		prop   string // the property the case is about
		ok     bool
		want   string                // a substring of a violation line when !ok
		check  func(r Report) string // further checks; "" when fine
	}{
		// (a)
		{name: "two writable routed members", prop: "a", want: "+3150ms: pg0 (vip) and pg1 (haproxy) both writable and routed",
			mutate: func(h *History) {
				h.Samples = append(h.Samples, ctSample(3150, []string{"pg0"}, []string{"pg1"}, []string{"pg1", "pg0"}))
			}},
		{name: "second writable member not routed", prop: "a", ok: true,
			mutate: func(h *History) {
				h.Samples = append(h.Samples, ctSample(3150, []string{"pg1"}, []string{"pg1"}, []string{"pg0", "pg1"}))
			}},
		{name: "consecutive violating samples merged", prop: "a", want: "+3150ms..+3160ms (2 samples): pg0 (vip+haproxy) and pg1 (haproxy)",
			mutate: func(h *History) {
				for _, ms := range []int{3150, 3160} {
					h.Samples = append(h.Samples, ctSample(ms, []string{"pg0"}, []string{"pg0", "pg1"}, []string{"pg0", "pg1"}))
				}
			},
			check: func(r Report) string {
				if r.Verdicts[0].Count != 1 {
					return "want one merged line"
				}
				return ""
			}},
		{name: "no samples", prop: "a", want: "no samples recorded",
			mutate: func(h *History) { h.Samples = nil }},

		// (b)
		{name: "lost write in sync mode", prop: "b", want: "vip: acknowledged write id 6 (acked by pg0 at +510ms) lost in sync mode (epoch 2 failover pg0 -> pg1",
			mutate: func(h *History) { h.Sync = true; ctLose(h, "vip", ctID(500)) },
			check: func(r Report) string {
				if r.Lost != 1 || r.LostBounded != 0 {
					return "want lost 1, bounded 0"
				}
				return ""
			}},
		{name: "stranded write lost in sync mode even inside the window", prop: "b", want: "lost in sync mode",
			mutate: func(h *History) { h.Sync = true; ctLose(h, "stranded-pg0", ctID(3000)) }},
		{name: "async loss inside the stranded window allowed", prop: "b", ok: true,
			// Acked +3010ms; pg1 first writable at +3300ms, window to +3500ms.
			mutate: func(h *History) { ctLose(h, "stranded-pg0", ctID(3000)) },
			check: func(r Report) string {
				if r.Lost != 1 || r.LostBounded != 1 {
					return "want lost 1, bounded 1"
				}
				return ""
			}},
		{name: "async loss after the promotion", prop: "b", want: "lost outside the stranded window (epoch 2 failover pg0 -> pg1 seen at +3000ms; pg1 writable at +3300ms, window ended +3500ms)",
			mutate: func(h *History) {
				ctAck(h, ctWrite("stranded-pg0", 1000, "pg0", 3600, OK))
				ctLose(h, "stranded-pg0", 1000)
			},
			check: func(r Report) string {
				if r.Lost != 1 || r.LostBounded != 0 {
					return "want lost 1, bounded 0"
				}
				return ""
			}},
		{name: "async loss after a failback's promotion", prop: "b",
			// pg0 was writable at the start: the edge that counts for epoch
			// 3 is the one after epoch 2 was seen, at +6100ms.
			want: "lost outside the stranded window (epoch 3 failover pg1 -> pg0 seen at +6000ms; pg0 writable at +6100ms, window ended +6300ms)",
			mutate: func(h *History) {
				h.Faults = append(h.Faults, ctFault(KindKillPostgres, "pg1", true, 5500, 7000))
				h.Failovers = append(h.Failovers, ctFailover(3, "failover", "pg1", "pg0", 6000))
				for i := range h.Samples {
					if !h.Samples[i].At.Before(ctAt(6100)) {
						h.Samples[i].Writable = []string{"pg0"}
					}
				}
				ctLose(h, "vip", ctID(6400))
			}},
		{name: "async loss on a switchover", prop: "b", want: "lost on a switchover (epoch 2 switchover pg0 -> pg1",
			mutate: func(h *History) {
				h.Faults = []Fault{ctFault(KindSwitchover, "pg1", true, 2900, 3500)}
				h.Failovers[0].Kind = "switchover"
				ctLose(h, "stranded-pg0", ctID(3000))
			}},
		{name: "async loss with no failover to explain it", prop: "b", want: "lost with no failover of pg1 to explain it",
			mutate: func(h *History) { ctLose(h, "vip", ctID(5000)) }},
		{name: "final data unreadable", prop: "b", want: "final data could not be read: connection refused",
			mutate: func(h *History) { h.Final.Present = nil; h.Final.Error = "connection refused" }},
		{name: "lost writes grouped and capped", prop: "b", want: "… and 2 more",
			mutate: func(h *History) {
				h.Sync = true
				// 12 servers with no failover: 12 lines, one per group.
				for i := range 12 {
					srv := "pgx" + string(rune('a'+i))
					for j := range 3 {
						id := int64(2000 + 10*i + j)
						ctAck(h, ctWrite("vip", id, srv, 6000+j, OK))
						ctLose(h, "vip", id)
					}
				}
			},
			check: func(r Report) string {
				v := r.Verdicts[1]
				if v.Count != 12 || len(v.Violations) != 11 || r.Lost != 36 {
					return "want 12 lines, 11 kept, 36 lost"
				}
				if !strings.Contains(v.Violations[0], "3 acknowledged writes (ids 2000, 2001, 2002, acked by pgxa +6010ms..+6012ms)") {
					return "first line does not group the three writes"
				}
				return ""
			}},

		// (c)
		{name: "failover with no fault", prop: "c", want: "false failover of epoch 2: pg0 -> pg1 at +3000ms (reason \"pg0 down\"); faults in force: none",
			mutate: func(h *History) { h.Faults = nil },
			check: func(r Report) string {
				if r.FalseFailovers != 1 {
					return "want one false failover"
				}
				return ""
			}},
		{name: "failover with only a non-justifying fault", prop: "c", want: "faults in force: kill-leader obs1 (justifies false) from +1000ms, healed +5000ms",
			mutate: func(h *History) { h.Faults = []Fault{ctFault(KindKillLeader, "obs1", false, 1000, 5000)} }},
		{name: "failover too long after the heal", prop: "c", want: "false failover of epoch 2",
			// grace is down_after 2s + 5s: healed +100ms, seen +3000ms is
			// fine with the default, not with a fault healed 8s before.
			mutate: func(h *History) { h.Faults[0].Start, h.Faults[0].End = ctAt(-9000), ctAt(-5001) }},
		{name: "failover within the grace after the heal", prop: "c", ok: true,
			mutate: func(h *History) { h.Faults[0].Start, h.Faults[0].End = ctAt(-9000), ctAt(-4000) }},
		{name: "fault on another member", prop: "c", want: "false failover",
			mutate: func(h *History) { h.Faults[0].Target = "pg2" }},
		{name: "skipped epoch", prop: "c", want: "epoch 3 skipped",
			mutate: func(h *History) {
				h.Faults = append(h.Faults, ctFault(KindKillPostgres, "pg1", true, 6000, 7000))
				h.Failovers = append(h.Failovers, ctFailover(4, "failover", "pg1", "pg2", 6500))
			}},
		{name: "skipped epochs", prop: "c", want: "epochs 3..4 skipped",
			mutate: func(h *History) {
				h.Faults = append(h.Faults, ctFault(KindKillPostgres, "pg1", true, 6000, 7000))
				h.Failovers = append(h.Failovers, ctFailover(5, "failover", "pg1", "pg2", 6500))
			}},
		{name: "epoch twice", prop: "c", want: "epoch 2 twice",
			mutate: func(h *History) { h.Failovers = append(h.Failovers, h.Failovers[0]) }},
		{name: "wrong first epoch", prop: "c", want: "first epoch 2, want 6",
			mutate: func(h *History) { h.InitialEpoch = 5 }},
		{name: "unrequested switchover", prop: "c", want: "unrequested switchover of epoch 2",
			mutate: func(h *History) { h.Failovers[0].Kind = "switchover" }},
		{name: "requested switchover", prop: "c", ok: true,
			mutate: func(h *History) {
				h.Faults = []Fault{ctFault(KindSwitchover, "pg1", true, 2900, 3500)}
				h.Failovers[0].Kind = "switchover"
			}},

		// (d)
		{name: "two writable at the end", prop: "d", want: "writable at the end: [pg0 pg1], want [pg1]",
			mutate: func(h *History) { h.Final.Writable = []string{"pg1", "pg0"} }},
		{name: "observer digests differ", prop: "d", want: "observers disagree: obs1=0123456789ab, obs2=fedcba987654, obs3=0123456789ab",
			mutate: func(h *History) { h.Final.ObserverState["obs2"] = "fedcba9876543210" }},
		{name: "observer state unreadable", prop: "d", want: "obs3: state could not be read",
			mutate: func(h *History) { h.Final.ObserverState["obs3"] = "" }},
		{name: "observer state missing", prop: "d", want: "observer state read from 2 observers, want 3",
			mutate: func(h *History) { delete(h.Final.ObserverState, "obs3") }},
		{name: "member neither streaming nor needing a rejoin", prop: "d", want: "pg0 neither streaming from pg1 nor reported as needing a rejoin",
			mutate: func(h *History) { h.Final.NeedsRejoin = nil }},
		{name: "failover still in progress", prop: "d", want: "failover of epoch 3 still in progress",
			mutate: func(h *History) { h.Final.Active = 3 }},
		{name: "VIP left on the old primary", prop: "d", want: "VIP held at the end by [pg0], want [pg1]",
			mutate: func(h *History) { h.Final.VIP = []string{"pg0"} }},
		{name: "HAProxy routing nowhere", prop: "d", want: "HAProxy routes at the end to [], want [pg1]",
			mutate: func(h *History) { h.Final.HAProxy = nil }},
		{name: "no routing at all is fine", prop: "d", ok: true,
			mutate: func(h *History) {
				for i := range h.Samples {
					h.Samples[i].VIP, h.Samples[i].HAProxy = nil, nil
				}
				h.Final.VIP, h.Final.HAProxy = nil, nil
			}},
		{name: "final state error", prop: "d", want: "final state could not be read fully: timeout",
			mutate: func(h *History) { h.Final.Error = "timeout" }},

		// (e)
		{name: "completed without fenced", prop: "e", want: "epoch 2 (failover pg0 -> pg1, seen +3000ms): completed without a \"fenced\" step (steps: promoted, rerouted)",
			mutate: func(h *History) { h.Failovers[0].Steps = []Step{{Name: "promoted"}, {Name: "rerouted"}} }},
		{name: "promoted before fenced", prop: "e", want: "\"promoted\" before \"fenced\"",
			mutate: func(h *History) {
				h.Failovers[0].Steps = []Step{{Name: "promoted"}, {Name: "fenced"}, {Name: "rerouted"}}
			}},
		{name: "completed without rerouted", prop: "e", want: "completed without a \"rerouted\" step",
			mutate: func(h *History) { h.Failovers[0].Steps = []Step{{Name: "fenced"}, {Name: "promoted"}} }},
		{name: "no reroute needed without routing", prop: "e", ok: true,
			mutate: func(h *History) {
				for i := range h.Samples {
					h.Samples[i].VIP, h.Samples[i].HAProxy = nil, nil
				}
				h.Failovers[0].Steps = []Step{{Name: "fenced"}, {Name: "promoted"}}
			}},
		{name: "failed reroute", prop: "e", want: "step \"rerouted\" failed: no router answered",
			mutate: func(h *History) {
				h.Failovers[0].Steps[2] = Step{Name: "rerouted", Failed: true, Detail: "no router answered"}
			}},
		{name: "failed standby repoint allowed", prop: "e", ok: true,
			mutate: func(h *History) { h.Failovers[0].Steps[3].Failed = true }},
		{name: "no reason", prop: "e", want: "no reason recorded",
			mutate: func(h *History) { h.Failovers[0].Reason = "" }},
		{name: "aborted without detail", prop: "e", want: "aborted with no detail",
			mutate: func(h *History) { h.Failovers[0].Outcome = "aborted"; h.Failovers[0].Steps = nil }},
		{name: "aborted with detail", prop: "e", ok: true,
			mutate: func(h *History) {
				h.Failovers[0].Outcome, h.Failovers[0].OutcomeDetail = "aborted", "fence refused"
				h.Failovers[0].Steps = nil
			}},
		{name: "never finished", prop: "e", want: "never finished (still active at the end)",
			mutate: func(h *History) { h.Failovers[0].Outcome = ""; h.Final.Active = 2 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := ctHistory()
			tc.mutate(h)
			r := Check(h)
			v := r.Verdicts[int(tc.prop[0]-'a')]
			if v.Property != tc.prop {
				t.Fatalf("verdict %q at the index of %q", v.Property, tc.prop)
			}
			if v.OK != tc.ok || v.OK != (len(v.Violations) == 0) {
				t.Fatalf("(%s) OK=%t with violations %q, want OK=%t", tc.prop, v.OK, v.Violations, tc.ok)
			}
			if !tc.ok {
				if r.OK() {
					t.Errorf("report OK despite (%s) failing", tc.prop)
				}
				if !slices.ContainsFunc(v.Violations, func(s string) bool { return strings.Contains(s, tc.want) }) {
					t.Errorf("(%s) violations %q, want one containing %q", tc.prop, v.Violations, tc.want)
				}
			}
			if tc.check != nil {
				if msg := tc.check(r); msg != "" {
					t.Errorf("%s; report %+v", msg, r)
				}
			}
		})
	}
}

func TestCheckNilAndEmptyHistoryFail(t *testing.T) {
	for _, h := range []*History{nil, {}} {
		r := Check(h)
		if r.OK() || len(r.Verdicts) != 5 {
			t.Errorf("empty history: OK=%t with %d verdicts, want a failing report of 5", r.OK(), len(r.Verdicts))
		}
	}
	if (Report{}).OK() {
		t.Error("a zero Report is OK")
	}
}

func TestSummarizeMarkdown(t *testing.T) {
	clean := Check(ctHistory())
	sync := ctHistory()
	sync.Seed, sync.Sync = 7, true
	ctLose(sync, "vip", ctID(500))
	broken := ctHistory()
	broken.Seed = 3
	broken.Faults = nil
	ctLose(broken, "stranded-pg0", ctID(3000)) // bounded
	reports := []Report{clean, Check(sync), Check(broken)}

	s := Summarize(reports)
	if s.Runs != 3 || s.SyncRuns != 1 || s.AsyncRuns != 2 {
		t.Errorf("runs %d sync %d async %d, want 3 1 2", s.Runs, s.SyncRuns, s.AsyncRuns)
	}
	if s.Failovers != 3 || s.FalseFailovers != 1 || s.Acked != 3*109 {
		t.Errorf("failovers %d false %d acked %d, want 3 1 327", s.Failovers, s.FalseFailovers, s.Acked)
	}
	if s.LostSync != 1 || s.LostAsyncBounded != 1 || s.LostAsyncOutside != 0 {
		t.Errorf("lost sync %d async bounded %d outside %d, want 1 1 0", s.LostSync, s.LostAsyncBounded, s.LostAsyncOutside)
	}
	if len(s.Failing) != 2 || s.Failing[0].Seed != 3 || s.Failing[1].Seed != 7 {
		t.Errorf("failing %+v, want seeds 3 and 7", s.Failing)
	}
	md := s.Markdown()
	for _, want := range []string{
		"| runs | sync runs | async runs | faults | failovers | false failovers | acked writes | lost (sync) | lost (async, within window) | lost (async, outside) |",
		"| 3 | 1 | 2 | 2 | 3 | 1 | 327 | 1 | 1 | 0 |",
		"| partition-primary | 2 | 2 | 2410 | 2410 | 2410 |",
		"| a | never two writable routed members | 0 | 0 |",
		"| b | no acknowledged write lost | 1 | 1 |",
		"| c | no false failover, one per epoch | 1 | 1 |",
		"- 3 (async): c — rerun: VIGIL_NEMESIS_SEEDS=3",
		"- 7 (sync): b — rerun: VIGIL_NEMESIS_SEEDS=7",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if md != Summarize(reports).Markdown() {
		t.Error("markdown not deterministic")
	}

	none := Summarize([]Report{clean}).Markdown()
	if !strings.Contains(none, "failing seeds: none") {
		t.Errorf("clean summary lacks \"failing seeds: none\":\n%s", none)
	}
	noRecovery := Summarize([]Report{{Faults: map[string]int{KindClockOffset: 1}}}).Markdown()
	if !strings.Contains(noRecovery, "| clock-offset | 1 | 0 | — | — | — |") {
		t.Errorf("fault without recovery not shown with dashes:\n%s", noRecovery)
	}
}

func TestSummaryPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0.1, time.Millisecond}} {
		if got := sumPercentile(d, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if got := sumPercentile(d[:3], 50); got != 2*time.Millisecond {
		t.Errorf("median of 1,2,3ms = %v, want 2ms", got)
	}
	if got := sumPercentile(nil, 50); got != 0 {
		t.Errorf("median of nothing = %v, want 0", got)
	}
}

func TestTimeline(t *testing.T) {
	h := ctHistory()
	tl := Timeline(h)
	lines := strings.Split(tl, "\n")
	if lines[0] != "seed 42 (async), rerun: VIGIL_NEMESIS_SEEDS=42" {
		t.Errorf("first line %q", lines[0])
	}
	idx := func(sub string) int {
		return slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, sub) })
	}
	fault := idx("+1000ms  fault partition-primary pg0 injected")
	healed := idx("+5000ms  fault partition-primary pg0 healed")
	failover := idx("+3000ms  failover epoch 2 failover pg0 -> pg1 seen (reason \"pg0 down\"); steps: fenced, promoted, rerouted, standbys_repointed; outcome: completed")
	moved := idx("+3300ms  sampled vip=[pg1] haproxy=[pg1] writable=[pg1]")
	firstPg1 := idx("+3410ms  client vip: first acknowledged write on pg1 (id 35)")
	lastPg0 := idx("+3010ms  client stranded-pg0: last acknowledged write on pg0 (id 31)")
	for name, i := range map[string]int{"fault": fault, "healed": healed, "failover": failover, "moved": moved, "first pg1": firstPg1, "last pg0": lastPg0} {
		if i < 0 {
			t.Errorf("timeline lacks the %s line:\n%s", name, tl)
		}
	}
	if !(fault < lastPg0 && lastPg0 < moved && failover < moved && moved < firstPg1 && firstPg1 < healed) {
		t.Errorf("timeline out of order:\n%s", tl)
	}
	// Only changes of the sampled state: 3 states in 81 samples.
	if n := strings.Count(tl, "sampled "); n != 3 {
		t.Errorf("%d sampled lines, want 3:\n%s", n, tl)
	}
	h.Sync = true
	if !strings.HasPrefix(Timeline(h), "seed 42 (sync), rerun: VIGIL_NEMESIS_SEEDS=42\n") {
		t.Error("sync timeline does not say sync")
	}
}
