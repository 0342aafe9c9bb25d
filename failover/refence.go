package failover

import (
	"context"
	"fmt"
	"time"

	"github.com/vigilha/vigil/fsm"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// refenceEvery bounds how often one rogue member is fenced again.
const refenceEvery = 500 * time.Millisecond

// refenceRogues fences, again, every member that a fresh vote saw taking
// writes as a primary while the state names another member primary: an
// old primary restarted on its old data, or one that was unreachable
// during the failover. It runs on every tick (within one probe interval
// of the vote), with the group's current epoch, through the same fence
// methods as a failover (node agent and SQL; never lease expiry, and
// never the exec hooks, which may power a host off). The role endpoint
// and the VIP never follow such a member (RoutablePrimary).
func (c *Controller) refenceRogues(ctx context.Context, g *vigilv1.Group) {
	name := g.GetSpec().GetName()
	rogues := c.opt.Health.RoguePrimaries(name)
	c.mu.Lock()
	if len(rogues) == 0 {
		delete(c.rogueNote, name)
	} else {
		c.rogueNote[name] = fmt.Sprintf("rogue primary %v: writable while %s is primary; fencing it again", rogues, g.GetPrimary())
	}
	c.mu.Unlock()
	if len(rogues) == 0 || unsafeNoFence {
		// The vigil_unsafe_nofence build leaves rogues writable (the
		// note above still names them) so the checker sees split-brain.
		return
	}
	acts, ok := c.opt.Actuators(name)
	if !ok || len(acts.Fencers) == 0 {
		return
	}
	primary := g.GetPrimary()
	if a := g.GetActiveFailover(); a != nil && !fsm.HasStep(a, fsm.StepPromoted) {
		// Mid-failover before promotion the fence step owns the old
		// primary; a rogue is anyone else.
		primary = a.GetOldPrimary()
	}
	for _, m := range rogues {
		if m == primary || m == g.GetActiveFailover().GetNewPrimary() {
			continue
		}
		key := name + "/" + m
		c.mu.Lock()
		busy := c.refencing[key]
		c.mu.Unlock()
		if busy || !c.due(c.refence, key, refenceEvery) {
			continue
		}
		act := Action{Group: name, Epoch: g.GetEpoch(), Kind: "refence", Old: member(g, m), New: member(g, g.GetPrimary())}
		c.log.Error("a member that is not the primary takes writes: fencing it again", "group", name, "member", m, "primary", g.GetPrimary(), "epoch", g.GetEpoch())
		c.mu.Lock()
		wg := c.wg
		if wg == nil {
			c.mu.Unlock()
			return
		}
		c.refencing[key] = true
		wg.Add(1)
		c.mu.Unlock()
		go func() {
			defer wg.Done()
			defer func() {
				c.mu.Lock()
				delete(c.refencing, key)
				c.mu.Unlock()
			}()
			var out fenceOutcome
			timeout := func(ctx context.Context) (context.Context, context.CancelFunc) {
				return context.WithTimeout(ctx, min(acts.StepTimeout, 5*time.Second))
			}
			c.runFencers(ctx, acts.Fencers, act, timeout, acts.NeedTrafficFence, false, &out)
			result := "confirmed"
			if !out.complete(acts.NeedTrafficFence) {
				result = "unconfirmed"
			}
			c.opt.Metrics.refences.WithLabelValues(name, m, result).Inc()
			c.log.Warn("rogue primary fenced", "group", name, "member", m, "result", result, "detail", out.notes)
		}()
	}
}
