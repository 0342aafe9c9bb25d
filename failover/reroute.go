package failover

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// stepFailedPrefix starts the detail of a step that ran out of its retry
// budget; run records such a step as failed and goes on.
const stepFailedPrefix = "FAILED: "

// reroute runs every router until each has succeeded once, retrying the
// failing ones every RerouteRetry for at most the group's StepTimeout.
// Past that budget the step is recorded as failed (not as "routed"):
// the promotion cannot be undone, so the failover goes on, and the
// leader's periodic VIP check keeps trying afterwards.
func (c *Controller) reroute(ctx context.Context, acts GroupActuators, a Action) (detail, abort string, err error) {
	if len(acts.Routers) == 0 {
		return "no router configured", "", nil
	}
	budget := acts.StepTimeout
	if budget <= 0 {
		budget = 30 * time.Second
	}
	deadline := time.Now().Add(budget)
	pending := make([]int, len(acts.Routers))
	for i := range pending {
		pending[i] = i
	}
	lastErr := make([]string, len(acts.Routers))
	attempts := 0
	for {
		attempts++
		var still []int
		for _, i := range pending {
			rctx, cancel := context.WithTimeout(ctx, min(acts.StepTimeout, time.Until(deadline)+time.Millisecond))
			rerr := acts.Routers[i].Route(rctx, a)
			cancel()
			if rerr != nil {
				lastErr[i] = rerr.Error()
				still = append(still, i)
			}
		}
		pending = still
		if len(pending) == 0 {
			d := "traffic routed to " + a.New.Name
			if attempts > 1 {
				d += fmt.Sprintf(" (after %d attempts)", attempts)
			}
			return d, "", nil
		}
		if ctx.Err() != nil {
			return "", "", ctx.Err()
		}
		if !time.Now().Add(c.opt.RerouteRetry).Before(deadline) {
			var notes []string
			for _, i := range pending {
				notes = append(notes, lastErr[i])
			}
			return fmt.Sprintf("%s%d of %d routers could not route traffic to %s within %s (%d attempts): %s",
				stepFailedPrefix, len(pending), len(acts.Routers), a.New.Name, budget, attempts, strings.Join(notes, "; ")), "", nil
		}
		c.log.Warn("reroute failed; retrying", "group", a.Group, "epoch", a.Epoch, "pending", len(pending), "err", lastErr[pending[0]])
		select {
		case <-ctx.Done():
			return "", "", ctx.Err()
		case <-time.After(c.opt.RerouteRetry):
		}
	}
}
