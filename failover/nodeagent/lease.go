package nodeagent

import (
	"slices"
	"time"
)

// maxFenceRetry caps the back-off between runs of a failing self-fence
// command.
const maxFenceRetry = 30 * time.Second

// supportLocked evaluates the holding rule at now: the host may hold the
// VIP iff at least quorum distinct configured observers sent, less than
// lease_timeout ago, a lease for the enforced epoch (effectiveLocked)
// naming this host's member as primary, or an AddVIP grant for that
// epoch is still valid. It returns the verdict, the supporting observers
// (sorted) and when the support ends (zero if it does not hold): at the
// latest when a tentative epoch it rests on lapses. g.mu is held.
func (a *Agent) supportLocked(g *group, now time.Time) (ok bool, supporters []string, until time.Time) {
	eff := a.effectiveLocked(g, now)
	var times []time.Time
	for obs, l := range g.leases {
		if l.epoch == eff && l.primary == g.member && now.Sub(l.at) < a.leaseTimeout {
			supporters = append(supporters, obs)
			times = append(times, l.at)
		}
	}
	slices.Sort(supporters)
	if len(times) >= a.quorum {
		ok = true
		// Support lasts until the quorum-th most recent lease expires.
		slices.SortFunc(times, func(x, y time.Time) int { return y.Compare(x) })
		until = times[a.quorum-1].Add(a.leaseTimeout)
	}
	if g.grantEpoch == eff && now.Before(g.grantUntil) {
		ok = true
		if g.grantUntil.After(until) {
			until = g.grantUntil
		}
	}
	if ok && eff > g.highest && g.tentativeUntil.Before(until) {
		until = g.tentativeUntil
	}
	return ok, supporters, until
}

// reconcileLocked applies the holding rule to the interface and the
// database. The caller holds g.act.
//
// It only ever fences: when the host holds the VIP, or was supported as
// the primary since its last fence, and has lost that support, a
// self-fence episode starts: the VIP is removed, the database fence (if
// configured) is put in force — both within moments of the support's end —
// then the client sessions are terminated, read-only is attempted in the
// background and the fence command is run (a primary cut off from the
// observers stops taking writes on its own within lease_timeout). A host
// never supported as the primary (a standby) never fences. It never adds
// the VIP, nor lifts the database fence, because leases say so. Leases say
// who the replicated state names as primary; adding the VIP is the
// leader's AddVIP, which comes only after the failover's promotion step is
// committed and the old primary fenced. A host that re-added its VIP on
// leases alone could take the address back in the middle of a failover
// (e.g. from lagging observers, or between the intent and the route step),
// or after it fenced itself while its database was made read-only.
func (a *Agent) reconcileLocked(g *group, why string) {
	g.mu.Lock()
	now := a.now()
	a.expireTentativeLocked(g, now)
	ok, supporters, _ := a.supportLocked(g, now)
	a.m.leaseObservers.WithLabelValues(g.name).Set(float64(len(supporters)))
	if ok {
		g.leasedPrimary = true
		if g.pendingFence {
			g.pendingFence = false
			a.log.Info("lease quorum back; pending self-fence cancelled", "group", g.name, "epoch", a.effectiveLocked(g, now), "observers", supporters)
		}
		g.mu.Unlock()
		return
	}
	if unsafeNoFence {
		// The vigil_unsafe_nofence build for checker tests: keep the VIP
		// and the database open without leases, so split-brain can happen.
		if g.leasedPrimary {
			a.log.Error("UNSAFE BUILD: lease quorum lost but not self-fencing (vigil_unsafe_nofence)",
				"group", g.name, "member", g.member, "observers", supporters, "holding_vip", g.holding, "trigger", why)
		}
		g.leasedPrimary = false
		g.mu.Unlock()
		return
	}
	if (g.holding || g.leasedPrimary) && !g.pendingFence {
		g.pendingFence = true
		g.leasedPrimary = false
		g.fenceCmdDone = false
		g.fenceRetryAt = time.Time{}
		g.fenceBackoff = 0
		g.epDBTried, g.epDBDone = false, false
		a.m.selfFences.WithLabelValues(g.name).Inc()
		a.log.Warn("self-fencing: no quorum of current leases naming this host the primary of the enforced epoch",
			"group", g.name, "member", g.member, "epoch", a.effectiveLocked(g, now), "observers", supporters, "quorum", a.quorum,
			"lease_timeout", a.leaseTimeout, "holding_vip", g.holding, "database_fence", g.dbDesc, "trigger", why)
	}
	if !g.pendingFence {
		g.mu.Unlock()
		return
	}
	holding := g.holding
	installDB := g.dbf != nil && !g.epDBDone
	firstDB := g.dbf != nil && !g.epDBTried
	g.epDBTried = true
	runCmd := g.fence != nil && !g.fenceCmdDone && !now.Before(g.fenceRetryAt)
	epoch := a.effectiveLocked(g, now)
	g.mu.Unlock()

	if holding {
		if _, err := a.addrs.Del(g.iface, g.cidr); err != nil {
			a.log.Error("self-fence: removing the VIP failed; retrying", "group", g.name, "vip", g.cidr, "interface", g.iface, "err", err)
		} else {
			g.mu.Lock()
			g.setHoldingLocked(a, false)
			g.garpGen++
			g.mu.Unlock()
			a.log.Warn("self-fence: VIP removed", "group", g.name, "vip", g.cidr, "interface", g.iface, "epoch", epoch)
		}
	}
	if installDB {
		// First, before anything slow: from here on no client outside the
		// host gets an answer from the database.
		if err := a.installDatabaseFence(g, triggerSelfFence); err == nil {
			g.mu.Lock()
			g.epDBDone = true
			g.mu.Unlock()
		}
	}
	if firstDB {
		// Outcomes logged and counted; never waited for (a hung database
		// must not hold g.act, and with it the observers' Fence).
		a.terminateSessionsAsync(g, triggerSelfFence)
		a.switchReadOnly(g, true)
	}
	if runCmd {
		err := a.runFence(g, "self_fence", epoch, "")
		g.mu.Lock()
		if err != nil {
			g.fenceBackoff = min(max(2*g.fenceBackoff, a.leaseTimeout), maxFenceRetry)
			g.fenceRetryAt = a.now().Add(g.fenceBackoff)
			a.log.Error("self-fence: fence command failed; will retry", "group", g.name, "epoch", epoch, "retry_in", g.fenceBackoff, "err", err)
		} else {
			g.fenceCmdDone = true
		}
		g.mu.Unlock()
	}
	g.mu.Lock()
	if g.pendingFence && !g.holding && (g.dbf == nil || g.epDBDone) && (g.fence == nil || g.fenceCmdDone) {
		g.pendingFence = false
		g.fenced = true
		a.log.Warn("self-fenced", "group", g.name, "member", g.member, "epoch", epoch, "database_fenced", g.dbFenced)
	}
	g.mu.Unlock()
}

// loop enforces the rule for g until Close: every lease_timeout/4, and
// right when the current support expires (while the host holds the VIP or
// is supported as the primary), so a host cut off from the observers
// drops the VIP and fences its database within lease_timeout of the last
// lease that kept it (plus a netlink transaction or two). While the
// database fence is in force and the host does not hold the VIP, it also
// starts the recovery check every lease_timeout.
func (a *Agent) loop(g *group) {
	tick := a.leaseTimeout / 4
	t := time.NewTimer(tick)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		}
		g.act.Lock()
		a.reconcileLocked(g, "timer")
		g.act.Unlock()
		a.maybeCheckRecovery(g)

		next := tick
		g.mu.Lock()
		if g.holding || g.leasedPrimary {
			now := a.now()
			if _, _, until := a.supportLocked(g, now); !until.IsZero() {
				if d := until.Sub(now) + time.Millisecond; d < next {
					next = max(d, time.Millisecond)
				}
			}
		}
		g.mu.Unlock()
		t.Reset(next)
	}
}
