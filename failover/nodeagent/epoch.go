package nodeagent

import (
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MaxEpochJump is the largest step above the agent's confirmed epoch that
// a request may carry. A real failover raises a group's epoch by one, so
// an agent that was away for a while is a few epochs behind, never a
// million: a request further ahead than this is refused outright
// (InvalidArgument, vigil_agent_epoch_jumps_refused_total, a warning
// naming the observer), whoever sent it. It bounds what a stolen observer
// certificate can do with one request: nothing lasting (see the package
// comment, "Requests and the epoch").
const MaxEpochJump = 1_000_000

// claim is one observer's latest lease epoch, for the quorum rule: when
// it arrived (receive time, monotonic) and the epoch it carried, whether
// the lease was accepted or refused as stale.
type claim struct {
	epoch uint64
	at    time.Time
}

// effectiveLocked is the epoch the agent enforces at now: the confirmed
// (persisted) epoch, or a tentative one above it while it is valid.
// Requests below it are stale; leases count toward support only at it.
// g.mu is held.
func (a *Agent) effectiveLocked(g *group, now time.Time) uint64 {
	if g.tentative > g.highest && now.Before(g.tentativeUntil) {
		return g.tentative
	}
	return g.highest
}

// expireTentativeLocked forgets a tentative epoch that expired
// unconfirmed (logged once). g.mu is held.
func (a *Agent) expireTentativeLocked(g *group, now time.Time) {
	if g.tentative == 0 || (g.tentative > g.highest && now.Before(g.tentativeUntil)) {
		return
	}
	if g.tentative > g.highest {
		a.log.Warn("tentative epoch expired without a quorum of observers' leases confirming it; back to the confirmed epoch",
			"group", g.name, "tentative_epoch", g.tentative, "epoch", g.highest, "raised_by", g.tentativeBy)
	}
	g.tentative, g.tentativeUntil, g.tentativeBy = 0, time.Time{}, ""
	a.m.tentativeEpoch.WithLabelValues(g.name).Set(0)
}

// checkJumpLocked refuses an epoch more than MaxEpochJump above the
// confirmed one. g.mu is held.
func (a *Agent) checkJumpLocked(g *group, epoch uint64, rpc, observer string) error {
	if epoch <= g.highest || epoch-g.highest <= MaxEpochJump {
		return nil
	}
	a.m.epochJumps.WithLabelValues(g.name).Inc()
	a.warnLimited("epoch_jump/"+g.name+"/"+a.observerKey(observer), "refused a request with an absurd epoch jump",
		"rpc", rpc, "group", g.name, "epoch", epoch, "confirmed_epoch", g.highest, "max_jump", MaxEpochJump, "observer", observer)
	return status.Errorf(codes.InvalidArgument,
		"group %q: epoch %d is more than %d above this agent's epoch %d: refused (a failover raises the epoch by one)", g.name, epoch, MaxEpochJump, g.highest)
}

// staleLocked is the refusal of a request whose epoch is below the one
// the agent enforces. g.mu is held.
func (a *Agent) staleLocked(g *group, epoch, eff uint64, rpc, observer string) error {
	a.warnLimited("stale/"+rpc+"/"+g.name+"/"+a.observerKey(observer), "refused request of a stale epoch",
		"rpc", rpc, "group", g.name, "epoch", epoch, "highest_epoch", eff, "confirmed_epoch", g.highest, "observer", observer)
	return status.Errorf(codes.FailedPrecondition,
		"group %q: stale epoch %d: this agent has seen epoch %d (a newer failover superseded this request)", g.name, epoch, eff)
}

// tentativeLocked (re)starts the tentative epoch for a request of one
// observer whose epoch is above the confirmed one and not below a valid
// tentative one: it is enforced for lease_timeout from now, unless a
// quorum of observers' leases confirms it (confirmLocked) first. g.mu is
// held.
func (a *Agent) tentativeLocked(g *group, epoch uint64, now time.Time, rpc, observer string) {
	if epoch <= g.highest || epoch < a.effectiveLocked(g, now) {
		return
	}
	if epoch != a.effectiveLocked(g, now) {
		a.log.Info("tentative epoch: acting on one observer's request of a newer epoch; it lapses after lease_timeout unless a quorum of observers' leases confirms it",
			"rpc", rpc, "group", g.name, "tentative_epoch", epoch, "confirmed_epoch", g.highest, "observer", observer, "lease_timeout", a.leaseTimeout)
	}
	g.tentative, g.tentativeUntil, g.tentativeBy = epoch, now.Add(a.leaseTimeout), observer
	a.m.tentativeEpoch.WithLabelValues(g.name).Set(float64(epoch))
}

// quorumEpochLocked is the highest epoch E such that at least quorum
// distinct configured observers' latest leases, received less than
// lease_timeout ago, carry an epoch ≥ E: the quorum-th highest of those
// epochs (0 with fewer than quorum fresh leases). g.mu is held.
func (a *Agent) quorumEpochLocked(g *group, now time.Time) uint64 {
	es := make([]uint64, 0, len(g.claims))
	for _, c := range g.claims {
		if now.Sub(c.at) < a.leaseTimeout {
			es = append(es, c.epoch)
		}
	}
	if len(es) < a.quorum {
		return 0
	}
	slices.SortFunc(es, func(x, y uint64) int {
		switch {
		case x > y:
			return -1
		case x < y:
			return 1
		}
		return 0
	})
	return es[a.quorum-1]
}

// confirmLocked raises the confirmed epoch to what a quorum of observers
// vouches for (quorumEpochLocked), if that is higher, and drops a
// tentative epoch it reaches. It reports whether it raised: the caller
// then persists g.highest (not holding g.act) and re-evaluates the
// holding rule. g.mu is held.
func (a *Agent) confirmLocked(g *group, now time.Time) bool {
	q := a.quorumEpochLocked(g, now)
	if q <= g.highest {
		return false
	}
	var by []string
	for obs, c := range g.claims {
		if now.Sub(c.at) < a.leaseTimeout && c.epoch >= q {
			by = append(by, obs)
		}
	}
	slices.Sort(by)
	a.log.Info("epoch confirmed by a quorum of observers' leases", "group", g.name, "from", g.highest, "to", q, "observers", by, "quorum", a.quorum)
	g.highest = q
	a.m.highestEpoch.WithLabelValues(g.name).Set(float64(q))
	if g.tentative != 0 && g.tentative <= q {
		g.tentative, g.tentativeUntil, g.tentativeBy = 0, time.Time{}, ""
		a.m.tentativeEpoch.WithLabelValues(g.name).Set(0)
	}
	return true
}

// observerKey is observer for rate-limiting keys when it is a configured
// observer, "other" otherwise (without TLS the field is whatever the
// caller wrote: it must not grow the limiter without bound).
func (a *Agent) observerKey(observer string) string {
	if a.observers[observer] {
		return observer
	}
	return "other"
}

// warnLimited logs msg at Warn at most once per logEvery per key, saying
// how many lines were left out since the last one.
func (a *Agent) warnLimited(key, msg string, args ...any) {
	ok, suppressed := a.logLimit.Allow(key, time.Now())
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", fmt.Sprintf("%d similar lines in the last %s", suppressed, logEvery))
	}
	a.log.Warn(msg, args...)
}
