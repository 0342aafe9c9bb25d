package failover

import (
	"strings"
	"testing"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

func votes(verdict, role string, lsn uint64, lag int64, n int) []*vigilv1.ObserverVote {
	var out []*vigilv1.ObserverVote
	for i := 0; i < n; i++ {
		out = append(out, &vigilv1.ObserverVote{Observer: string(rune('a' + i)), Verdict: verdict, Role: role, Fresh: true, WalLsn: lsn, LagBytes: lag})
	}
	return out
}

func mh(member string, v []*vigilv1.ObserverVote) *vigilv1.MemberHealth {
	return &vigilv1.MemberHealth{Member: member, Quorum: 2, Observers: 3, Votes: v}
}

func input() CandidateInput {
	return CandidateInput{
		Spec: &vigilv1.GroupSpec{Name: "pg-main", MaxLagBytes: 1000, Members: []*vigilv1.MemberSpec{
			{Name: "db1", Priority: 100}, {Name: "db2", Priority: 100}, {Name: "db3", Priority: 100}, {Name: "db4", Priority: 0},
		}},
		Primary:    "db1",
		PrimaryLSN: 10_000,
		Health: []*vigilv1.MemberHealth{
			mh("db1", votes("down", "unknown", 0, 0, 3)),
			mh("db2", votes("up", "standby", 9_500, 0, 3)),
			mh("db3", votes("up", "standby", 9_900, 0, 3)),
			mh("db4", votes("up", "standby", 10_000, 0, 3)),
		},
	}
}

func TestRankPrefersPriorityThenWAL(t *testing.T) {
	in := input()
	best, err := Best(in)
	if err != nil || best.Name != "db3" {
		t.Fatalf("best = %+v, %v; want db3 (most advanced WAL at equal priority)", best, err)
	}
	in.Spec.Members[1].Priority = 200
	if best, _ := Best(in); best.Name != "db2" {
		t.Fatalf("best = %s; want db2 (higher priority beats WAL)", best.Name)
	}
	// Priority 0 never chosen automatically, even with the best WAL; an
	// operator may name it.
	for _, c := range Rank(in) {
		if c.Name == "db4" && (c.Eligible || !strings.Contains(c.Reason, "priority 0")) {
			t.Fatalf("db4: %+v", c)
		}
	}
	in.Manual = true
	for _, c := range Rank(in) {
		if c.Name == "db4" && !c.Eligible {
			t.Fatalf("an operator may name a priority-0 member: %+v", c)
		}
	}
}

func TestRankRefusesLagQuorumAndSync(t *testing.T) {
	in := input()
	in.Health[2] = mh("db3", votes("up", "standby", 8_000, 0, 3)) // 2000 behind the primary
	best, err := Best(in)
	if err != nil || best.Name != "db2" {
		t.Fatalf("best = %+v, %v; want db2 (db3 lags beyond max_lag)", best, err)
	}
	in.Health[1] = mh("db2", append(votes("up", "standby", 9_500, 0, 1), votes("down", "unknown", 0, 0, 2)...))
	if _, err := Best(in); err == nil || !strings.Contains(err.Error(), "db2: seen up by 1 observers") || !strings.Contains(err.Error(), "db3: lag 2000") {
		t.Fatalf("err = %v", err)
	}
	in = input()
	in.Health[1] = mh("db2", votes("up", "primary", 9_500, 0, 3)) // up in the wrong role
	in.SyncStandbys = []string{"db2"}
	if _, err := Best(in); err == nil || !strings.Contains(err.Error(), "db3: not a synchronous standby") || !strings.Contains(err.Error(), "db2: seen as standby by 0") {
		t.Fatalf("err = %v", err)
	}
	in = input()
	in.Health[2].Votes[0].LagBytes = 5000 // an observer saw a big replay backlog
	if best, _ := Best(in); best.Name != "db2" {
		t.Fatalf("best = %s; want db2 (db3's replay backlog exceeds max_lag)", best.Name)
	}
}

func TestRankStableTieBreak(t *testing.T) {
	in := input()
	in.Health[1] = mh("db2", votes("up", "standby", 9_900, 0, 3))
	for i := 0; i < 10; i++ {
		if best, _ := Best(in); best.Name != "db2" {
			t.Fatalf("tie broken to %s, want db2 (by name)", best.Name)
		}
	}
}
