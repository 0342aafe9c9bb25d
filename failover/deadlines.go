package failover

import (
	"time"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// cooldownLeft is how long automatic failovers of g are still held off
// by its cooldown. Two views are combined and the longer wins: the
// wall-clock time written in the state (by whichever leader committed the
// failover, so it may be off by that leader's clock offset), and — when
// this observer applied the completion itself — the cooldown counted on
// its own monotonic clock from that moment. A clock offset can therefore
// only lengthen the cooldown, never shorten it below what this observer
// saw.
func (c *Controller) cooldownLeft(g *vigilv1.Group) time.Duration {
	cd := time.Duration(g.GetSpec().GetCooldownMs()) * time.Millisecond
	if g.GetLastFailoverAt() == nil || cd <= 0 {
		return 0
	}
	left := g.GetLastFailoverAt().AsTime().Add(cd).Sub(c.opt.Now())
	if c.opt.Seen != nil {
		if ago, ok := c.opt.Seen.Since(g.GetSpec().GetName(), "last_failover"); ok {
			left = max(left, cd-ago)
		}
	}
	return max(left, 0)
}

// backoffLeft is how long automatic failovers of g are still held off by
// a vetoed or aborted failover, combining the state's deadline and this
// observer's own monotonic view as cooldownLeft does. The back-off lives
// in the replicated state, so a new leader honours it too.
func (c *Controller) backoffLeft(g *vigilv1.Group) time.Duration {
	d := time.Duration(g.GetBackoffMs()) * time.Millisecond
	if g.GetBackoffUntil() == nil || d <= 0 {
		return 0
	}
	left := g.GetBackoffUntil().AsTime().Sub(c.opt.Now())
	if c.opt.Seen != nil {
		if ago, ok := c.opt.Seen.Since(g.GetSpec().GetName(), "backoff"); ok {
			left = max(left, d-ago)
		}
	}
	return max(left, 0)
}

// truncate bounds a detail written into the replicated state.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
