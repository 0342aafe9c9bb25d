package cluster

import (
	"context"
	"time"

	"github.com/vigilha/vigil/fsm"
)

// leaseLoop sends this observer's lease for every VIP group to the node
// agent of the primary its replicated state names, every lease_timeout/3.
// Every observer leases, not only the leader: an agent keeps the VIP only
// while a quorum of observers does. While a failover away from a primary
// is in progress (intent committed, promotion not yet), nobody is leased,
// so the old primary's agent drops the VIP within lease_timeout even if
// it is still reachable.
func (o *Observer) leaseLoop(ctx context.Context) {
	period := time.Duration(0)
	for _, g := range o.cfg.Groups {
		if g.Failover.VIP {
			p := g.Failover.LeaseTimeout.D() / 3
			if period == 0 || p < period {
				period = p
			}
		}
	}
	if period == 0 {
		return // no VIP groups
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if leader, _ := o.Leader(); leader == "" {
			// Without a leader this observer's state may be stale (it may
			// be on the minority side): lease nothing.
			continue
		}
		for _, cg := range o.cfg.Groups {
			if !cg.Failover.VIP {
				continue
			}
			g, ok := o.fsm.Group(cg.Name)
			if !ok {
				continue
			}
			if a := g.GetActiveFailover(); a != nil && !fsm.HasStep(a, fsm.StepPromoted) {
				continue
			}
			if _, err := o.agents.SendLeases(ctx, cg.Name, g.GetEpoch(), g.GetPrimary()); err != nil {
				o.log.Debug("lease not delivered", "group", cg.Name, "primary", g.GetPrimary(), "err", err)
			}
		}
	}
}
