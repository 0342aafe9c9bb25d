package cluster

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/vigilha/vigil/cluster/config"
	"github.com/vigilha/vigil/failover/viprouter"
	"github.com/vigilha/vigil/fsm"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// leaseRecord is what this observer learnt from leasing one member's
// agent: when the agent last answered a lease (this observer's monotonic
// clock; whatever member the lease named — an answer means the agent is
// running and enforcing its leases) and what it said it enforces. The
// lease-expiry fence reads the old primary's record (leasefence.go).
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
	// refused: the last failed lease was answered with an error (the
	// agent refused it), not lost.
	refused bool
	// fencedAsPrimary: the last answered lease named this member the
	// primary and the agent answered that it does not hold the VIP — it
	// has fenced itself (it lost its lease quorum).
	fencedAsPrimary bool
}

// agentViews is what this observer's leases learnt about the agents of
// group's members, for `vigilctl group`.
func (o *Observer) agentViews(group string) []*vigilv1.AgentView {
	cg, ok := o.cfg.Group(group)
	if !ok || !cg.Failover.VIP {
		return nil
	}
	age := func(t time.Time) int64 {
		if t.IsZero() {
			return -1
		}
		return time.Since(t).Milliseconds()
	}
	var out []*vigilv1.AgentView
	for _, m := range cg.Members {
		addr, ok := o.agents.AgentAddr(group, m.Name)
		if !ok {
			continue
		}
		r, _ := o.leases.record(group, m.Name)
		v := &vigilv1.AgentView{Member: m.Name, Address: addr, LastAnswerAgeMs: age(r.lastOK), LastErrorAgeMs: -1,
			SelfFenced: r.fencedAsPrimary, DatabaseFence: r.dbFence}
		if r.lastErrAt.After(r.lastOK) {
			v.LastError, v.LastErrorAgeMs, v.Refused = r.lastErr, age(r.lastErrAt), r.refused
		}
		out = append(out, v)
	}
	return out
}

// agentSelfFenced reports whether member's agent told this observer, in
// an answer of the last two seconds to a lease naming it the primary,
// that it does not hold the VIP: it fenced its host itself. The failover
// controller then need not wait for its own probe to see the primary down
// (the primary is already out of service, and the fence step will confirm).
func (o *Observer) agentSelfFenced(group, member string) bool {
	r, ok := o.leases.record(group, member)
	return ok && r.fencedAsPrimary && time.Since(r.lastOK) < 2*time.Second
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
// agent of every member of the group, every lease_timeout/3: "member P
// is the primary of epoch E", P and E from its replicated state. Every
// observer leases, not only the leader: an agent keeps the VIP only while
// a quorum of observers names its member, and an agent confirms (and
// persists) a newer epoch only once a quorum of observers' leases carry
// it — so every agent, not only the primary's, must hear from every
// observer. To a standby's agent, a lease naming another member means
// "do not hold the VIP".
//
// While a failover is in progress (intent applied here, promotion not
// yet), no agent is told that its member is the primary: the old
// primary's agent and the other standbys' agents are leased the new
// epoch naming the candidate (so the old primary drops the VIP at once
// and its agent confirms the new epoch from a quorum during the failover,
// refusing the old epoch's requests for good), and the candidate's agent
// gets no lease until the promotion is committed (a lease naming it would
// count as support before it is a primary, and an aborted failover would
// then make it fence itself). The state is read under the group's call
// lock, so once leasesStopped has returned no lease naming the old
// primary can start on this observer.
//
// Each group's round runs on its own goroutine, its members' calls at
// once, under the group's call lock; a group whose previous round is
// still in flight (an agent that does not answer holds it for one lease
// call timeout) skips this tick, so one unreachable agent delays no other
// group's leases.
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
	var rounds sync.WaitGroup
	defer rounds.Wait()
	t := time.NewTicker(period)
	defer t.Stop()
	// leaderGrace: two election timeouts, the time a new leader takes.
	leaderGrace := 2 * o.cfg.Raft.ElectionTimeout.D()
	lastLeader := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if leader, _ := o.Leader(); leader != "" {
			lastLeader = time.Now()
		} else if time.Since(lastLeader) > leaderGrace {
			// Without a leader for longer than an election takes, this
			// observer is on a minority side (its state may be stale):
			// lease nothing. Within the grace it goes on: an election
			// (a crashed leader, a blip) must not make every observer
			// stop at once, or a healthy primary fences itself. That is
			// safe: no failover can commit without a leader, one
			// observer is never a lease quorum, and the lease-expiry
			// fence counts only observers that applied the intent.
			continue
		}
		for _, cg := range o.cfg.Groups {
			if !cg.Failover.VIP {
				continue
			}
			mu := o.leases.call(cg.Name)
			if !mu.TryLock() {
				continue // this group's previous round is still in flight
			}
			rounds.Add(1)
			go func() {
				defer rounds.Done()
				defer mu.Unlock()
				o.leaseGroupLocked(ctx, cg)
			}()
		}
	}
}

// leaseGroupLocked leases every member's agent of the group (see
// leaseLoop). The group's call lock is held.
func (o *Observer) leaseGroupLocked(ctx context.Context, cg config.Group) {
	g, ok := o.fsm.Group(cg.Name)
	if !ok {
		return
	}
	epoch, primary, candidate := g.GetEpoch(), g.GetPrimary(), ""
	if a := g.GetActiveFailover(); a != nil && !fsm.HasStep(a, fsm.StepPromoted) {
		candidate = a.GetNewPrimary()
		primary = candidate // never the old primary, and nobody is told it is the primary
	}
	if primary == "" {
		return
	}
	var wg sync.WaitGroup
	for _, m := range cg.Members {
		if m.Name == candidate {
			continue
		}
		if _, ok := o.agents.AgentAddr(cg.Name, m.Name); !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			o.leaseMember(ctx, cg.Name, m.Name, epoch, primary)
		}()
	}
	wg.Wait()
}

// leaseMember sends one lease to member's agent and records what it
// learnt (leaseRecord).
func (o *Observer) leaseMember(ctx context.Context, group, member string, epoch uint64, primary string) {
	resp, err := o.agents.LeaseTo(ctx, group, member, epoch, primary)
	now := time.Now()
	if err != nil {
		refused := strings.Contains(err.Error(), "connection refused")
		answered := viprouter.Answered(err)
		o.leases.update(group, member, func(r *leaseRecord) {
			r.lastErr, r.lastErrAt = err.Error(), now
			r.refusedAfterOK = r.refusedAfterOK || refused
			r.refused = answered
		})
		o.log.Debug("lease not delivered", "group", group, "member", member, "primary", primary, "epoch", epoch, "err", err)
		return
	}
	o.leases.update(group, member, func(r *leaseRecord) {
		r.lastOK = now
		r.refusedAfterOK = false
		r.fencedAsPrimary = primary == member && !resp.GetHolding()
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
