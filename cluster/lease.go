package cluster

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/vigilha/vigil/fsm"
)

// leaseRecord is what this observer learnt from leasing one member's
// agent: when the agent last answered (this observer's monotonic clock)
// and what it said it enforces.
type leaseRecord struct {
	lastOK       time.Time
	dbFence      bool
	leaseTimeout time.Duration
	lastErr      string
	lastErrAt    time.Time
	// refusedAfterOK: since its last answer, a lease to this agent was
	// refused at the TCP level — the host is up and the agent is not
	// running, so nothing enforces its lease.
	refusedAfterOK bool
}

// leases is the observer's lease bookkeeping: the per-group lock held
// for the duration of each lease call (so that leasesStopped can wait out
// a call in flight) and the records per group/member.
type leases struct {
	mu    sync.Mutex
	calls map[string]*sync.Mutex
	recs  map[string]leaseRecord
}

func newLeases() *leases {
	return &leases{calls: map[string]*sync.Mutex{}, recs: map[string]leaseRecord{}}
}

func (l *leases) call(group string) *sync.Mutex {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.calls[group]
	if m == nil {
		m = &sync.Mutex{}
		l.calls[group] = m
	}
	return m
}

func (l *leases) record(group, member string) (leaseRecord, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.recs[group+"/"+member]
	return r, ok
}

func (l *leases) update(group, member string, f func(*leaseRecord)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.recs[group+"/"+member]
	f(&r)
	l.recs[group+"/"+member] = r
}

// leaseLoop sends this observer's lease for every VIP group to the node
// agent of the primary its replicated state names, every lease_timeout/3.
// Every observer leases, not only the leader: an agent keeps the VIP only
// while a quorum of observers does. While a failover away from a primary
// is in progress (intent applied here, promotion not yet), nobody is
// leased, so the old primary's agent drops the VIP within lease_timeout
// even if it is still reachable. The state is read under the group's
// call lock, so once leasesStopped has returned no lease naming the old
// primary can start on this observer.
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
			if cg.Failover.VIP {
				o.leaseOne(ctx, cg.Name)
			}
		}
	}
}

func (o *Observer) leaseOne(ctx context.Context, group string) {
	mu := o.leases.call(group)
	mu.Lock()
	defer mu.Unlock()
	g, ok := o.fsm.Group(group)
	if !ok {
		return
	}
	if a := g.GetActiveFailover(); a != nil && !fsm.HasStep(a, fsm.StepPromoted) {
		return
	}
	primary := g.GetPrimary()
	resp, err := o.agents.Lease(ctx, group, g.GetEpoch(), primary)
	now := time.Now()
	if err != nil {
		refused := strings.Contains(err.Error(), "connection refused")
		o.leases.update(group, primary, func(r *leaseRecord) {
			r.lastErr, r.lastErrAt = err.Error(), now
			r.refusedAfterOK = r.refusedAfterOK || refused
		})
		o.log.Debug("lease not delivered", "group", group, "primary", primary, "err", err)
		return
	}
	o.leases.update(group, primary, func(r *leaseRecord) {
		r.lastOK = now
		r.refusedAfterOK = false
		r.dbFence = resp.GetDatabaseFence()
		r.leaseTimeout = time.Duration(resp.GetLeaseTimeoutMs()) * time.Millisecond
	})
}

// leasesStopped returns once this observer has applied the failover of
// epoch (or a later state) for group, so that its lease loop no longer
// leases the old primary, and no lease call of its own for the group is
// in flight. The time it returns is when that became true, on this
// observer's monotonic clock.
func (o *Observer) leasesStopped(ctx context.Context, group string, epoch uint64) (time.Time, error) {
	for {
		o.raftFSM.mu.Lock()
		ch := o.raftFSM.applied
		o.raftFSM.mu.Unlock()
		g, ok := o.fsm.Group(group)
		if !ok {
			return time.Time{}, fmt.Errorf("leases stopped: %w: %q", fsm.ErrGroupNotFound, group)
		}
		if g.GetEpoch() >= epoch {
			break
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("leases stopped: wait for epoch %d of %s to be applied: %w", epoch, group, ctx.Err())
		}
	}
	mu := o.leases.call(group)
	mu.Lock()
	mu.Unlock() // taking the lock was only to wait out a call in flight
	return time.Now(), nil
}
