package failover

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/vigilha/vigil/fsm"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// fenceOutcome is what the fence methods of one fence step made sure of.
type fenceOutcome struct {
	database, traffic bool
	notes             []string
}

// complete reports whether the outcome covers what the group needs: the
// database always, the traffic too in a group with a VIP.
func (f fenceOutcome) complete(needTraffic bool) bool {
	return f.database && (f.traffic || !needTraffic)
}

func (f fenceOutcome) missing(needTraffic bool) string {
	var m []string
	if !f.database {
		m = append(m, "database")
	}
	if needTraffic && !f.traffic {
		m = append(m, "traffic (VIP)")
	}
	return strings.Join(m, " and ")
}

// unsafeNoFenceDetail is the fence step's detail in the vigil_unsafe_nofence
// build, where nothing is fenced (unsafe_nofence.go).
const unsafeNoFenceDetail = "UNSAFE BUILD: fencing disabled (vigil_unsafe_nofence)"

// runFencers runs fencers concurrently against a.Old and merges what they
// covered. Once the outcome is complete the others are cancelled (a
// method still waiting on an unreachable host must not delay the
// failover), unless waitAll: a switchover waits for every method, so
// that the SQL fence (read-only, sessions terminated) has run before the
// catch-up point is read.
func (c *Controller) runFencers(ctx context.Context, fencers []Fencer, a Action, timeout timeoutFn, needTraffic, waitAll bool, out *fenceOutcome) {
	if unsafeNoFence {
		// The broken build for checker tests: claim a complete fence
		// without touching the old primary, so split-brain can happen.
		if !out.complete(true) {
			res := FenceResult{Confirmed: true, Traffic: true, Detail: unsafeNoFenceDetail}
			out.database, out.traffic = res.Confirmed, res.Traffic
			out.notes = append(out.notes, res.Detail)
		}
		return
	}
	if len(fencers) == 0 || out.complete(needTraffic) {
		return
	}
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	notes := make([]string, len(fencers))
	for i, f := range fencers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, scancel := timeout(fctx)
			res, err := f.Fence(sctx, a)
			scancel()
			note := res.Detail
			if err != nil && (note == "" || !strings.Contains(err.Error(), note)) {
				note = err.Error()
			}
			mu.Lock()
			defer mu.Unlock()
			notes[i] = note
			out.database = out.database || res.Confirmed
			out.traffic = out.traffic || res.Traffic
			if out.complete(needTraffic) && !waitAll {
				cancel()
			}
		}()
	}
	wg.Wait()
	for _, n := range notes {
		if n != "" {
			out.notes = append(out.notes, n)
		}
	}
}

type timeoutFn func(context.Context) (context.Context, context.CancelFunc)

// fence runs the fence step: the group's fence methods at once, then its
// last-resort methods (exec hooks) if they did not cover everything. The
// database must be fenced, and in a VIP group the traffic too; otherwise
// fence: strict aborts (and pages: vigil_fence_failures_total, history),
// best_effort goes on and says so. A switchover then waits until the new
// primary has replayed everything the fenced old primary wrote.
func (c *Controller) fence(ctx context.Context, g *vigilv1.Group, acts GroupActuators, a Action) (detail, abort string, err error) {
	timeout := func(ctx context.Context) (context.Context, context.CancelFunc) {
		return context.WithTimeout(ctx, acts.StepTimeout)
	}
	switchover := a.Kind == fsm.KindSwitchover
	var out fenceOutcome
	c.runFencers(ctx, acts.Fencers, a, timeout, acts.NeedTrafficFence, switchover, &out)
	c.runFencers(ctx, acts.LastResortFencers, a, timeout, acts.NeedTrafficFence, switchover, &out)
	if ctx.Err() != nil {
		return "", "", ctx.Err()
	}
	confirmed := out.complete(acts.NeedTrafficFence)
	result := "confirmed"
	if !confirmed {
		result = "unconfirmed"
	}
	c.opt.Metrics.fences.WithLabelValues(a.Group, result).Inc()
	detail = strings.Join(out.notes, "; ")
	if !confirmed {
		missing := out.missing(acts.NeedTrafficFence)
		switch {
		case switchover || (!acts.BestEffortFence && a.Kind != fsm.KindForced):
			c.opt.Metrics.fenceFailures.WithLabelValues(a.Group).Inc()
			return "", fmt.Sprintf("could not confirm that the %s of the old primary %s is fenced (fence: strict): %s", missing, a.Old.Name, detail), nil
		case a.Kind == fsm.KindForced:
			// The operator forced it after a failed fence, having
			// isolated the old primary by other means (docs/operations.md).
			detail = fmt.Sprintf("UNCONFIRMED %s (forced by an operator): %s", missing, detail)
		default:
			detail = fmt.Sprintf("UNCONFIRMED %s (fence: best_effort): %s", missing, detail)
		}
	}
	if switchover && acts.CatchUp != nil {
		if note := c.cascade(ctx, g, acts, a); note != "" {
			detail += "; " + note
		}
		cctx, cancel := context.WithTimeout(ctx, acts.StepTimeout)
		defer cancel()
		lsn, _, err := acts.CatchUp.CurrentLSN(cctx, a.Old)
		if err != nil {
			c.unfence(ctx, acts, a)
			return "", "switchover: cannot read the old primary's final WAL position: " + err.Error(), nil
		}
		if err := acts.CatchUp.WaitReplayed(cctx, a.New, lsn); err != nil {
			c.unfence(ctx, acts, a)
			return "", fmt.Sprintf("switchover: %s did not replay up to %X/%X: %v", a.New.Name, lsn>>32, uint32(lsn), err), nil
		}
		detail += fmt.Sprintf("; %s caught up to %X/%X", a.New.Name, lsn>>32, uint32(lsn))
	}
	return detail, "", nil
}

// cascade, in a switchover, makes the other standbys stream from the
// target before the catch-up point is read. A fenced old primary still
// writes a little WAL (aborts of the sessions it terminated, standby
// snapshots, autovacuum) after that point; a standby still streaming
// from it would replay past the target's fork point and could not follow
// the new timeline. Cascading from the target, a standby only ever gets
// WAL the target has, so it follows the promotion. Best effort: a
// standby that cannot be re-pointed now is tried again after promotion
// (standbys_repointed) and named in the detail.
func (c *Controller) cascade(ctx context.Context, g *vigilv1.Group, acts GroupActuators, a Action) string {
	if acts.Repointer == nil || g == nil {
		return ""
	}
	ok, failed := c.repointOthers(ctx, g, acts, a)
	if len(failed) > 0 {
		c.log.Warn("switchover: some standbys could not cascade from the target before the catch-up", "group", a.Group, "failed", failed)
	}
	if len(ok) == 0 && len(failed) == 0 {
		return ""
	}
	note := fmt.Sprintf("cascading from %s before the catch-up: [%s]", a.New.Name, strings.Join(ok, ", "))
	if len(failed) > 0 {
		note += "; not yet: " + strings.Join(failed, "; ")
	}
	return note
}

// unfence lets the old primary take writes again after an abort, when it
// was fenced by a reversible method. Callers have made sure no other
// member can take writes (see promotionFailed).
func (c *Controller) unfence(ctx context.Context, acts GroupActuators, a Action) {
	if acts.Unfencer == nil {
		return
	}
	uctx, cancel := context.WithTimeout(ctx, acts.StepTimeout)
	defer cancel()
	if err := acts.Unfencer.Unfence(uctx, a.Old); err != nil {
		c.log.Warn("could not unfence the old primary after abort", "group", a.Group, "member", a.Old.Name, "err", err)
	}
}

// promotionFailed decides what a failed promotion leaves behind. A slow
// pg_promote can finish after its timeout, so the candidate is asked
// first: writable → it was promoted after all, roll forward; still a
// standby → fence it (read-only, which outlives a late promotion), and
// only then unfence the old primary and abort; unknown → abort and leave
// the old primary fenced: two writable servers are worse than none.
func (c *Controller) promotionFailed(ctx context.Context, acts GroupActuators, a Action, cause error) (detail, abort string) {
	if acts.CatchUp == nil {
		c.unfence(ctx, acts, a)
		return "", fmt.Sprintf("promotion of %s failed: %v", a.New.Name, cause)
	}
	qctx, cancel := context.WithTimeout(ctx, acts.StepTimeout)
	defer cancel()
	_, rec, err := acts.CatchUp.CurrentLSN(qctx, a.New)
	switch {
	case err != nil:
		return "", fmt.Sprintf("promotion of %s failed (%v) and its state is unknown (%v): the old primary %s is left fenced", a.New.Name, cause, err, a.Old.Name)
	case !rec:
		c.log.Warn("promotion reported failure but the candidate is out of recovery: rolling forward", "group", a.Group, "member", a.New.Name, "err", cause)
		return fmt.Sprintf("%s promoted (late: %v)", a.New.Name, cause), ""
	}
	if acts.CandidateFencer != nil {
		if err := acts.CandidateFencer.FenceCandidate(qctx, a.New); err != nil {
			return "", fmt.Sprintf("promotion of %s failed (%v) and it could not be made read-only (%v): the old primary %s is left fenced", a.New.Name, cause, err, a.Old.Name)
		}
	}
	c.unfence(ctx, acts, a)
	return "", fmt.Sprintf("promotion of %s failed: %v", a.New.Name, cause)
}
