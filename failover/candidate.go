package failover

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// CandidateInput is what the choice of a new primary is made from.
type CandidateInput struct {
	Spec    *vigilv1.GroupSpec
	Primary string
	// Health of every member, as the deciding observer aggregates it.
	Health []*vigilv1.MemberHealth
	// PrimaryLSN is the highest WAL position the primary was seen at
	// while up; standbys are measured against it.
	PrimaryLSN uint64
	// SyncStandbys, when not empty, are the only members that may be
	// promoted (the primary used synchronous replication with them).
	SyncStandbys []string
	// AllowedDatacenters, when not empty, limits the choice.
	AllowedDatacenters []string
	// Manual is set for operator requests: priority 0 is then allowed.
	Manual bool
}

// Candidate is one member judged for promotion.
type Candidate struct {
	Name     string
	Priority int32
	LSN      uint64
	LagBytes int64
	Eligible bool
	// Why it is not eligible.
	Reason string
}

// Rank judges every member other than the primary and returns them best
// first: eligible before ineligible, then highest priority, then most
// advanced WAL, then name (a stable tie-break every observer agrees on).
func Rank(in CandidateInput) []Candidate {
	byName := map[string]*vigilv1.MemberHealth{}
	for _, h := range in.Health {
		byName[h.GetMember()] = h
	}
	var out []Candidate
	for _, m := range in.Spec.GetMembers() {
		if m.GetName() == in.Primary {
			continue
		}
		c := Candidate{Name: m.GetName(), Priority: m.GetPriority()}
		c.Reason = judge(in, m, byName[m.GetName()], &c)
		c.Eligible = c.Reason == ""
		out = append(out, c)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Eligible != b.Eligible {
			return a.Eligible
		}
		if a.Priority != b.Priority {
			return a.Priority > b.Priority
		}
		if a.LSN != b.LSN {
			return a.LSN > b.LSN
		}
		return a.Name < b.Name
	})
	return out
}

// judge fills c's WAL figures and returns why the member may not be
// promoted ("" when it may).
func judge(in CandidateInput, m *vigilv1.MemberSpec, h *vigilv1.MemberHealth, c *Candidate) string {
	if m.GetPriority() == 0 && !in.Manual {
		return "priority 0 (never promoted automatically)"
	}
	if len(in.AllowedDatacenters) > 0 && !slices.Contains(in.AllowedDatacenters, m.GetDatacenter()) {
		return fmt.Sprintf("datacenter %q not in allowed_datacenters", m.GetDatacenter())
	}
	if len(in.SyncStandbys) > 0 && !slices.Contains(in.SyncStandbys, m.GetName()) {
		return "not a synchronous standby of the primary (" + strings.Join(in.SyncStandbys, ", ") + ")"
	}
	if h == nil {
		return "no health information"
	}
	up, standby := 0, 0
	var lag int64
	for _, v := range h.GetVotes() {
		if !v.GetFresh() || v.GetVerdict() != "up" {
			continue
		}
		up++
		if v.GetRole() == "standby" {
			standby++
			// The most advanced WAL any observer saw; lag as the worst seen.
			c.LSN = max(c.LSN, v.GetWalLsn())
			lag = max(lag, v.GetLagBytes())
		}
	}
	quorum := int(h.GetQuorum())
	if up < quorum {
		return fmt.Sprintf("seen up by %d observers, quorum is %d", up, quorum)
	}
	if standby < quorum {
		return fmt.Sprintf("seen as standby by %d observers, quorum is %d", standby, quorum)
	}
	if in.PrimaryLSN > c.LSN {
		lag = max(lag, int64(in.PrimaryLSN-c.LSN))
	}
	c.LagBytes = lag
	if maxLag := in.Spec.GetMaxLagBytes(); lag > maxLag {
		return fmt.Sprintf("lag %d bytes exceeds max_lag %d", lag, maxLag)
	}
	return ""
}

// Best returns the best eligible candidate, or an error listing why each
// member was refused.
func Best(in CandidateInput) (Candidate, error) {
	ranked := Rank(in)
	if len(ranked) > 0 && ranked[0].Eligible {
		return ranked[0], nil
	}
	var why []string
	for _, c := range ranked {
		why = append(why, c.Name+": "+c.Reason)
	}
	return Candidate{}, fmt.Errorf("no eligible candidate (%s)", strings.Join(why, "; "))
}
