package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// explanation is what `vigilctl explain` says about a group, computed
// from the leader's GetGroup answer (or any observer's, when the leader
// cannot be asked) and the cluster status. Its JSON is the -o json shape.
type explanation struct {
	Group      string `json:"group"`
	Primary    string `json:"primary"`
	Epoch      uint64 `json:"epoch"`
	Leader     string `json:"leader"`
	AnsweredBy string `json:"answered_by"`
	// LeaderView: the answer is the leader's, with its reason for not
	// failing over (controller_status).
	LeaderView bool `json:"leader_view"`
	// The primary as the answering observer aggregates the votes.
	PrimaryState string        `json:"primary_state"`
	PrimaryVotes []explainVote `json:"primary_votes"`
	DownVotes    int32         `json:"down_votes"`
	Quorum       int32         `json:"quorum"`
	ODown        bool          `json:"odown"`
	// ODownInMs is how long the current down streak must still hold to be
	// ODOWN; -1 without a streak.
	ODownInMs  int64          `json:"odown_in_ms"`
	Candidates []explainCand  `json:"candidates"`
	Blockers   []string       `json:"blockers"`
	FencePaths []string       `json:"fence_paths"`
	Verdict    string         `json:"verdict"`
	Active     *explainActive `json:"active_failover"`
}

type explainVote struct {
	Observer string `json:"observer"`
	Verdict  string `json:"verdict"`
	Role     string `json:"role"`
	AgeMs    int64  `json:"age_ms"`
	Fresh    bool   `json:"fresh"`
}

type explainCand struct {
	Rank     int    `json:"rank"`
	Member   string `json:"member"`
	Eligible bool   `json:"eligible"`
	Reason   string `json:"reason"`
	Priority int32  `json:"priority"`
	WalLSN   uint64 `json:"wal_lsn"`
	LagBytes int64  `json:"lag_bytes"`
}

type explainActive struct {
	Epoch      uint64 `json:"epoch"`
	Kind       string `json:"kind"`
	OldPrimary string `json:"old_primary"`
	NewPrimary string `json:"new_primary"`
	LastStep   string `json:"last_step"`
}

func (a *app) newExplainCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "explain NAME",
		Short: "Say in plain words what vigil would do about a group now, and why",
		Long: `Explain a group: the primary's verdict on each observer with the age of
each vote, how far it is from ODOWN (quorum, time left of down_after),
each standby with its rank for promotion or the reason it is refused, and
every blocker: no leader, paused, cooldown or back-off left, a failover in
progress, no eligible candidate, what the leader itself says (controller),
and the fence paths to the primary (its node agent, SQL). It ends with one
sentence: what vigil would do right now.

It asks the leader (found with status) for the group, so that the
leader's own reason is included; when the leader cannot be asked, any
observer answers and the explanation says so. -o json prints the same as
one object.`,
		Example: `  vigilctl explain pg-main
  vigilctl explain pg-main -o json | jq -r .verdict`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			c, err := a.newClient()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			st, err := invoke(ctx, c, func(ctx context.Context, ac vigilv1.AdminClient) (*vigilv1.StatusResponse, error) {
				return ac.Status(ctx, &vigilv1.StatusRequest{})
			})
			if err != nil {
				return &opError{what: "get status", err: err}
			}
			get := func(ctx context.Context, ac vigilv1.AdminClient) (*vigilv1.GetGroupResponse, error) {
				return ac.GetGroup(ctx, &vigilv1.GetGroupRequest{Name: name})
			}
			var resp *vigilv1.GetGroupResponse
			if addr := leaderAddr(st); addr != "" {
				resp, _ = try(ctx, addr, c.timeout, c.creds, get)
			}
			if resp == nil {
				if resp, err = invoke(ctx, c, get); err != nil {
					return &opError{what: "get group " + name, err: err}
				}
			}
			e := explain(resp, st, a.now())
			if a.output == outputJSON {
				b, err := json.MarshalIndent(e, "", "  ")
				if err != nil {
					return &opError{what: "write output", err: err}
				}
				_, err = fmt.Fprintf(a.stdout, "%s\n", b)
				return err
			}
			printExplanation(a.stdout, e)
			return nil
		},
	}
}

// leaderAddr is the leader's gRPC address from a status answer ("" when
// there is no leader or its address is unknown).
func leaderAddr(st *vigilv1.StatusResponse) string {
	for _, o := range st.GetObservers() {
		if o.GetId() == st.GetLeaderId() && st.GetLeaderId() != "" {
			return o.GetGrpcAddress()
		}
	}
	return ""
}

// explain works out the explanation; pure, for the tests.
func explain(resp *vigilv1.GetGroupResponse, st *vigilv1.StatusResponse, now time.Time) explanation {
	g := resp.GetGroup()
	spec := g.GetSpec()
	e := explanation{
		Group: spec.GetName(), Primary: g.GetPrimary(), Epoch: g.GetEpoch(), Leader: st.GetLeaderId(),
		AnsweredBy: resp.GetAnsweredBy(), ODownInMs: -1,
		PrimaryVotes: []explainVote{}, Candidates: []explainCand{}, Blockers: []string{}, FencePaths: []string{},
	}
	e.LeaderView = e.Leader != "" && e.AnsweredBy == e.Leader
	var prim *vigilv1.MemberHealth
	for _, h := range resp.GetHealth() {
		if h.GetMember() == g.GetPrimary() {
			prim = h
		}
	}
	downAfter := time.Duration(spec.GetDownAfterMs()) * time.Millisecond
	if prim != nil {
		e.PrimaryState, e.DownVotes, e.Quorum, e.ODown = prim.GetState(), prim.GetDownVotes(), prim.GetQuorum(), prim.GetOdown()
		for _, v := range prim.GetVotes() {
			e.PrimaryVotes = append(e.PrimaryVotes, explainVote{Observer: v.GetObserver(), Verdict: v.GetVerdict(), Role: v.GetRole(), AgeMs: v.GetAgeMs(), Fresh: v.GetFresh()})
		}
		if ds := prim.GetDownSince(); ds != nil && !e.ODown {
			e.ODownInMs = max(downAfter-now.Sub(ds.AsTime()), 0).Milliseconds()
		}
	}
	eligible := []string{}
	for i, c := range resp.GetCandidates() {
		e.Candidates = append(e.Candidates, explainCand{Rank: i + 1, Member: c.GetMember(), Eligible: c.GetEligible(), Reason: c.GetReason(),
			Priority: c.GetPriority(), WalLSN: c.GetWalLsn(), LagBytes: c.GetLagBytes()})
		if c.GetEligible() {
			eligible = append(eligible, c.GetMember())
		}
	}

	// Blockers, the hard ones first.
	if e.Leader == "" {
		e.Blockers = append(e.Blockers, "no leader: the observers do not form a quorum, and no failover can start without one")
	}
	if af := g.GetActiveFailover(); af != nil {
		e.Active = &explainActive{Epoch: af.GetEpoch(), Kind: af.GetKind(), OldPrimary: af.GetOldPrimary(), NewPrimary: af.GetNewPrimary(), LastStep: "intent"}
		if n := len(af.GetSteps()); n > 0 {
			e.Active.LastStep = af.GetSteps()[n-1].GetName()
		}
		e.Blockers = append(e.Blockers, fmt.Sprintf("a %s of epoch %d is in progress (%s -> %s, last step: %s)",
			af.GetKind(), af.GetEpoch(), af.GetOldPrimary(), af.GetNewPrimary(), e.Active.LastStep))
	}
	if g.GetPaused() {
		e.Blockers = append(e.Blockers, fmt.Sprintf("paused %s: %q (vigilctl resume %s)", age(now, g.GetPausedAt()), g.GetPausedReason(), e.Group))
	}
	if last, cd := g.GetLastFailoverAt(), time.Duration(spec.GetCooldownMs())*time.Millisecond; last != nil && cd > 0 {
		if left := last.AsTime().Add(cd).Sub(now); left > 0 {
			e.Blockers = append(e.Blockers, fmt.Sprintf("cooldown: the last failover was %s and cooldown is %s: %s left", age(now, last), cd, left.Round(time.Second)))
		}
	}
	if bu := g.GetBackoffUntil(); bu != nil {
		if left := bu.AsTime().Sub(now); left > 0 {
			e.Blockers = append(e.Blockers, fmt.Sprintf("back-off: %s left (%s)", left.Round(time.Second), g.GetBackoffReason()))
		}
	}
	if len(eligible) == 0 && len(e.Candidates) > 0 {
		var why []string
		for _, c := range e.Candidates {
			why = append(why, c.Member+": "+c.Reason)
		}
		e.Blockers = append(e.Blockers, "no eligible candidate ("+strings.Join(why, "; ")+")")
	}
	if s := resp.GetControllerStatus(); s != "" {
		e.Blockers = append(e.Blockers, "the leader says: "+s)
	}

	// Fence paths to the primary.
	for _, av := range resp.GetAgents() {
		if av.GetMember() != g.GetPrimary() {
			continue
		}
		switch {
		case av.GetLastAnswerAgeMs() < 0:
			e.FencePaths = append(e.FencePaths, fmt.Sprintf("node agent %s: never answered this observer's leases: no agent fence, no lease-expiry fence", av.GetAddress()))
		default:
			p := fmt.Sprintf("node agent %s: answered a lease %s ago", av.GetAddress(), millis(av.GetLastAnswerAgeMs()))
			if av.GetDatabaseFence() {
				p += ", has a database fence (cuts the port off on lease loss)"
			}
			if av.GetSelfFenced() {
				p += "; SELF-FENCED (it lost its lease quorum)"
			}
			if av.GetLastErrorAgeMs() >= 0 {
				p += fmt.Sprintf("; last lease failed %s ago: %s", millis(av.GetLastErrorAgeMs()), av.GetLastError())
			}
			e.FencePaths = append(e.FencePaths, p)
		}
	}
	if spec.GetKind() == "postgres" {
		e.FencePaths = append(e.FencePaths, "SQL fence: read-only and sessions ended, when the primary still answers")
	}

	e.Verdict = verdict(e, downAfter, eligible)
	return e
}

// verdict is the one sentence: what vigil would do now.
func verdict(e explanation, downAfter time.Duration, eligible []string) string {
	best := "the best eligible standby"
	if len(eligible) > 0 {
		best = eligible[0]
	}
	switch {
	case e.Active != nil:
		return fmt.Sprintf("A failover is in progress: %s -> %s (epoch %d); the leader carries it through.", e.Active.OldPrimary, e.Active.NewPrimary, e.Active.Epoch)
	case e.Primary == "":
		return "The group has no primary yet: nothing to fail over."
	}
	// A hard blocker stops any automatic failover; the blockers list them
	// first, so the first blocker is the one to name.
	hard := e.Leader == "" || len(eligible) == 0 ||
		hasPrefix(e.Blockers, "paused") || hasPrefix(e.Blockers, "cooldown") || hasPrefix(e.Blockers, "back-off")
	hard = hard && len(e.Blockers) > 0
	switch {
	case e.ODown && hard:
		return fmt.Sprintf("%s is ODOWN, but vigil will not fail it over now: %s.", e.Primary, e.Blockers[0])
	case e.ODown && !e.LeaderView:
		return fmt.Sprintf("%s is ODOWN: the leader should be failing it over to %s (this answer is not the leader's).", e.Primary, best)
	case e.ODown && len(e.Blockers) > 0:
		return fmt.Sprintf("%s is ODOWN and the leader is not failing it over: %s.", e.Primary, e.Blockers[0])
	case e.ODown:
		return fmt.Sprintf("%s is ODOWN: the leader fails it over to %s now.", e.Primary, best)
	case e.ODownInMs >= 0:
		s := fmt.Sprintf("%s is down on %d observers (quorum %d): ODOWN in %s if that holds", e.Primary, e.DownVotes, e.Quorum, millis(e.ODownInMs))
		if hard {
			return s + ", but then vigil would not fail it over: " + e.Blockers[0] + "."
		}
		return s + ", then a failover to " + best + "."
	case e.DownVotes > 0:
		return fmt.Sprintf("%s is down on %d of %d observers; quorum is %d: no failover until %d more see it down for %s.",
			e.Primary, e.DownVotes, len(e.PrimaryVotes), e.Quorum, e.Quorum-e.DownVotes, downAfter)
	case hard:
		return fmt.Sprintf("%s is %s: nothing to do. Were it to go down, vigil would not fail it over: %s.", e.Primary, orDash(e.PrimaryState), e.Blockers[0])
	default:
		return fmt.Sprintf("%s is %s: nothing to do. Were a quorum to see it down for %s, vigil would promote %s.", e.Primary, orDash(e.PrimaryState), downAfter, best)
	}
}

func hasPrefix(list []string, p string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func orDash(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func printExplanation(w io.Writer, e explanation) {
	view := "the leader's view"
	if !e.LeaderView {
		view = "not the leader's view: the leader's own reasons are missing"
	}
	fmt.Fprintf(w, "%s: primary %s, epoch %d, leader %s (answered by %s: %s)\n\n", cell(e.Group), cell(orDash(e.Primary)), e.Epoch,
		cell(orDash(e.Leader)), cell(e.AnsweredBy), view)
	fmt.Fprintf(w, "Primary %s: %s, down on %d (quorum %d)\n", cell(orDash(e.Primary)), cell(orDash(e.PrimaryState)), e.DownVotes, e.Quorum)
	t := newTable(w, "  OBSERVER", "VERDICT", "ROLE", "AGE")
	for _, v := range e.PrimaryVotes {
		a := millis(v.AgeMs)
		if !v.Fresh {
			a += " (stale: not counted)"
		}
		if v.AgeMs < 0 {
			a = none
		}
		t.row("  "+v.Observer, v.Verdict, v.Role, a)
	}
	t.flush()
	fmt.Fprintln(w, "\nCandidates, best first:")
	for _, c := range e.Candidates {
		why := "eligible"
		if !c.Eligible {
			why = "not eligible: " + c.Reason
		}
		fmt.Fprintf(w, "  %d. %s  priority %d, WAL %s, lag %d bytes: %s\n", c.Rank, cell(c.Member), c.Priority, lsnText(c.WalLSN), c.LagBytes, cell(why))
	}
	if len(e.Blockers) > 0 {
		fmt.Fprintln(w, "\nBlockers:")
		for _, b := range e.Blockers {
			fmt.Fprintf(w, "  - %s\n", cell(b))
		}
	}
	if len(e.FencePaths) > 0 {
		fmt.Fprintln(w, "\nFence paths to the primary:")
		for _, p := range e.FencePaths {
			fmt.Fprintf(w, "  - %s\n", cell(p))
		}
	}
	fmt.Fprintf(w, "\n%s\n", cell(e.Verdict))
}

// lsnText formats a WAL position as PostgreSQL does (X/Y in hex).
func lsnText(lsn uint64) string { return fmt.Sprintf("%X/%X", lsn>>32, uint32(lsn)) }
