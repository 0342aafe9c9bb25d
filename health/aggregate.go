package health

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Params are the aggregation settings, the same on every observer.
type Params struct {
	// Observers are the configured observer ids. Only their votes count,
	// and the majority is taken of them, not of the live ones.
	Observers []string
	// Quorum is the number of down votes required; values below a
	// majority of Observers are raised to the majority.
	Quorum int
	// StaleAfter is how old (or, for a skewed clock, how far in the
	// future) a vote may be and still count.
	StaleAfter time.Duration
	// DownAfter is how long quorum down must hold before ODOWN.
	DownAfter time.Duration
}

// EffectiveQuorum returns max(Quorum, len(Observers)/2+1).
func (p Params) EffectiveQuorum() int {
	return max(p.Quorum, len(p.Observers)/2+1)
}

// Validate reports parameters with which no member could ever be judged
// correctly.
func (p Params) Validate() error {
	var errs []error
	seen := map[string]bool{}
	for _, o := range p.Observers {
		if o == "" {
			errs = append(errs, errors.New("health: empty observer id"))
		} else if seen[o] {
			errs = append(errs, fmt.Errorf("health: observer %q listed twice", o))
		}
		seen[o] = true
	}
	if len(p.Observers) == 0 {
		errs = append(errs, errors.New("health: no observers configured"))
	}
	if q := p.EffectiveQuorum(); q > len(p.Observers) {
		errs = append(errs, fmt.Errorf("health: quorum %d exceeds the %d configured observers", q, len(p.Observers)))
	}
	if p.StaleAfter <= 0 {
		errs = append(errs, errors.New("health: stale_after must be positive"))
	}
	if p.DownAfter < 0 {
		errs = append(errs, errors.New("health: down_after must not be negative"))
	}
	return errors.Join(errs...)
}

// MemberState is the aggregated view of one member at one instant.
type MemberState struct {
	// DownVotes, UpVotes and FreshVotes count the counted votes (fresh,
	// from configured observers, one per observer); FreshVotes includes
	// unknown verdicts.
	DownVotes, UpVotes, FreshVotes int
	// PrimaryVotes counts the counted votes that saw the member up as a
	// writable primary (PostgreSQL: not in recovery, and new sessions not
	// read-only, so not fenced by vigil).
	PrimaryVotes int
	// Quorum is the effective quorum used.
	Quorum int
	// SDown is true when this observer's own counted vote says down.
	SDown bool
	// DownSince is when quorum down began holding; zero if it does not
	// hold now.
	DownSince time.Time
	// ODown is true once quorum down has held for DownAfter.
	ODown bool
	// ODownSince is the instant the member became ODOWN
	// (DownSince+DownAfter), stable while it stays ODOWN.
	ODownSince time.Time
}

// Aggregate computes a member's state from the votes about it (all for
// the same member) as seen by observer self. It is pure: the same inputs
// give the same output, and it reads no clock.
//
// A vote counts only if its observer is configured and |now-ObservedAt|
// <= StaleAfter; a stale or foreign vote is no vote, never a down vote.
// Several votes from one observer count once (the highest Sequence).
// Every evaluation without quorum down resets the streak, so a member
// flapping faster than DownAfter never becomes ODOWN. A new streak starts
// when the quorum's evidence began (downEvidenceStart), not when the
// votes happened to be counted.
func Aggregate(self string, votes []Vote, p Params, prev MemberState, now time.Time) MemberState {
	configured := make(map[string]bool, len(p.Observers))
	for _, o := range p.Observers {
		configured[o] = true
	}
	counted := make(map[string]Vote, len(p.Observers))
	for _, v := range votes {
		if !configured[v.Observer] || !fresh(v.ObservedAt, now, p.StaleAfter) {
			continue
		}
		if old, ok := counted[v.Observer]; ok && old.Sequence >= v.Sequence {
			continue
		}
		counted[v.Observer] = v
	}

	s := MemberState{Quorum: p.EffectiveQuorum(), FreshVotes: len(counted)}
	for obs, v := range counted {
		switch v.Verdict {
		case VerdictDown:
			s.DownVotes++
			if obs == self {
				s.SDown = true
			}
		case VerdictUp:
			s.UpVotes++
			if v.Role == RolePrimary && !v.ReadOnly {
				s.PrimaryVotes++
			}
		}
	}

	if s.DownVotes < s.Quorum {
		return s // streak broken: DownSince, ODown and ODownSince stay zero
	}
	s.DownSince = downEvidenceStart(counted, s.Quorum, now)
	if !prev.DownSince.IsZero() && prev.DownSince.Before(s.DownSince) {
		s.DownSince = prev.DownSince
	}
	if now.Sub(s.DownSince) >= p.DownAfter {
		s.ODown = true
		s.ODownSince = s.DownSince.Add(p.DownAfter)
		if prev.ODown && !prev.ODownSince.IsZero() {
			s.ODownSince = prev.ODownSince
		}
	}
	return s
}

// PrimaryQuorum reports whether at least Quorum counted votes saw the
// member up as a writable primary: what routing clients to it requires.
func (s MemberState) PrimaryQuorum() bool { return s.Quorum > 0 && s.PrimaryVotes >= s.Quorum }

// fresh reports whether a vote observed at t still counts at now. A vote
// from further in the future than maxAge comes from a broken clock and
// does not count either.
func fresh(t, now time.Time, maxAge time.Duration) bool {
	if t.IsZero() {
		return false
	}
	age := now.Sub(t)
	return age <= maxAge && age >= -maxAge
}

// downEvidenceStart is since when at least quorum of the counted down
// votes have said down. A vote's evidence starts when its probe began
// (ObservedAt: a probe that timed out saw no answer from then on; Redis
// Sentinel counts from the last valid reply, earlier still), or earlier
// by DownFor when its observer had already seen the member down that long
// (a write stall), so that a stall already as long as down_after becomes
// ODOWN as soon as a quorum reports it, not down_after later. Never
// after now.
func downEvidenceStart(counted map[string]Vote, quorum int, now time.Time) time.Time {
	var starts []time.Time
	for _, v := range counted {
		if v.Verdict != VerdictDown {
			continue
		}
		t := now
		if e := v.ObservedAt.Add(-max(v.DownFor, 0)); e.Before(t) {
			t = e
		}
		starts = append(starts, t)
	}
	if quorum < 1 || len(starts) < quorum {
		return now
	}
	// The quorum-th earliest start: from then on quorum of them held.
	slices.SortFunc(starts, func(x, y time.Time) int { return x.Compare(y) })
	return starts[quorum-1]
}
