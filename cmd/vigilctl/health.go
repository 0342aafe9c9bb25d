package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// printHealth renders the health section of a group: one row per member
// with its aggregate state, the down votes against the quorum, the role
// seen and expected, how long it has been down, its WAL position and lag,
// and one column per observer with that observer's latest vote. by names
// the observer that computed the aggregate; empty when not known.
func printHealth(w io.Writer, hs []*vigilv1.MemberHealth, by string, now time.Time) error {
	if len(hs) == 0 {
		_, err := io.WriteString(w, "\nhealth: no votes yet\n")
		return err
	}
	title := "\nhealth\n"
	if strings.TrimSpace(by) != "" {
		title = "\nhealth (as seen by " + cell(by) + ")\n"
	}
	if _, err := io.WriteString(w, title); err != nil {
		return err
	}

	// One column per observer, in the order the server lists them.
	var observers []string
	seen := map[string]bool{}
	for _, h := range hs {
		for _, v := range h.GetVotes() {
			if o := v.GetObserver(); !seen[o] {
				seen[o] = true
				observers = append(observers, o)
			}
		}
	}

	header := []string{"MEMBER", "STATE", "DOWN VOTES", "ROLE SEEN", "EXPECTED ROLE", "SINCE", "WAL / LAG"}
	header = append(header, observers...)
	t := newTable(w, header...)
	for _, h := range hs {
		since := h.GetDownSince()
		if h.GetOdown() {
			since = h.GetOdownSince()
		}
		votes := map[string]*vigilv1.ObserverVote{}
		for _, v := range h.GetVotes() {
			votes[v.GetObserver()] = v
		}
		row := []string{
			h.GetMember(),
			stateLabel(h.GetState()),
			fmt.Sprintf("%d of %d (quorum %d)", h.GetDownVotes(), h.GetObservers(), h.GetQuorum()),
			h.GetRoleSeen(),
			h.GetExpectedRole(),
			age(now, since),
			walLag(h),
		}
		for _, o := range observers {
			row = append(row, voteCell(votes[o]))
		}
		t.row(row...)
	}
	return t.flush()
}

// stateLabel is a member state as shown to operators, sanitized: UP,
// SDOWN, ODOWN or UNKNOWN (also for an empty state).
func stateLabel(s string) string {
	s = strings.TrimSpace(cell(s))
	if s == none {
		return "UNKNOWN"
	}
	return strings.ToUpper(s)
}

// voteCell is one observer's vote about a member: its verdict and age,
// e.g. "up 0.3s"; "-" without a vote, "- (stale 12.0s)" when the vote is
// too old to count.
func voteCell(v *vigilv1.ObserverVote) string {
	if v == nil || v.GetAgeMs() < 0 {
		return none
	}
	if !v.GetFresh() {
		return none + " (stale " + voteAge(v.GetAgeMs()) + ")"
	}
	verdict := strings.TrimSpace(v.GetVerdict())
	if verdict == "" || verdict == "none" {
		return none
	}
	return verdict + " " + voteAge(v.GetAgeMs())
}

// voteAge formats the age of a vote: tenths of a second below a minute
// ("0.3s", "12.0s"), whole units above ("3m", "5h").
func voteAge(ms int64) string {
	if ms < 60_000 {
		tenths := (ms + 50) / 100
		return fmt.Sprintf("%d.%ds", tenths/10, tenths%10)
	}
	return shortDuration(time.Duration(ms) * time.Millisecond)
}

// walLag is the WAL position of a member in PostgreSQL notation, followed
// by its replication lag when it is a standby: "0/3000148 lag 0B". It is
// taken from the newest fresh vote that reports a position; "-" when none
// does (e.g. TCP probes).
func walLag(h *vigilv1.MemberHealth) string {
	var best *vigilv1.ObserverVote
	for _, v := range h.GetVotes() {
		if !v.GetFresh() || v.GetAgeMs() < 0 || v.GetWalLsn() == 0 {
			continue
		}
		if best == nil || v.GetAgeMs() < best.GetAgeMs() ||
			(v.GetAgeMs() == best.GetAgeMs() && v.GetWalLsn() > best.GetWalLsn()) {
			best = v
		}
	}
	if best == nil {
		return none
	}
	s := lsn(best.GetWalLsn())
	role := best.GetRole()
	if role != "primary" && role != "standby" {
		role = h.GetRoleSeen()
	}
	if role != "primary" && role != "standby" {
		role = h.GetExpectedRole()
	}
	if role == "standby" && best.GetLagBytes() >= 0 {
		s += " lag " + compactBytes(best.GetLagBytes())
	}
	return s
}

// lsn formats a WAL position as PostgreSQL does: high and low 32 bits in
// hex, "16/B374D848".
func lsn(n uint64) string {
	return fmt.Sprintf("%X/%X", n>>32, uint32(n))
}

// compactBytes formats n bytes briefly: "0B", "900B", "1.5KiB", "16MiB".
func compactBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + "B"
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v, i := float64(n)/unit, 0
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	return strings.TrimSuffix(strconv.FormatFloat(v, 'f', 1, 64), ".0") + units[i]
}
