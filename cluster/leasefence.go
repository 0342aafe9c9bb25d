package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilha/vigil/failover"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// leaseExpiry is the fence method for an old primary's host that no
// observer can reach: its node agent, cut off from the observers' leases,
// drops the VIP (and fences the database, with its database fence) on its
// own within lease_timeout. That counts as a fence only when it is really
// enforced there, so Fence confirms only if all of these hold:
//
//   - the host is unreachable from this observer (every connection attempt
//     to the agent since its last answer timed out, or else a TCP connect
//     now times out; a refused or accepted connection means the host is
//     up and its agent dead or hung, and nothing enforces the lease), and
//     the old primary is ODOWN (a quorum of observers sees it down);
//   - the agent was seen alive and enforcing leases up to the cut: it
//     answered this observer's lease no longer than the detection window
//     (down_after + 2 probe intervals + lease_timeout + 3s, slack for a loaded machine) before this
//     observer applied the failover's intent;
//   - enough observers have stopped leasing it that fewer than a quorum
//     can still be: this observer, and N−quorum others that answered
//     LeasesStopped (each answers only once it applied the intent and has
//     no lease call in flight).
//
// It then waits, on this observer's monotonic clock, until the latest
// moment one of those observers' calls may still have given the old
// primary support (the end of its last lease naming it the primary, or
// AddVIP, whose request reached a connection) + the agent's
// lease_timeout + 10% + 100ms — normally over by ODOWN, since calls to an
// unreachable host never reach a connection — and at least until this
// observer's leadership began + an AddVIP call timeout + lease_timeout +
// 10% + 100ms (a previous leader's grant) — and reports the traffic
// fenced and, if the agent said it has a database fence, the database
// too. Reasoning: failover/DESIGN.md ("Clocks").
type leaseExpiry struct {
	o            *Observer
	group        string
	leaseTimeout time.Duration
	window       time.Duration
}

var _ failover.Fencer = leaseExpiry{}

func (l leaseExpiry) Fence(ctx context.Context, a failover.Action) (failover.FenceResult, error) {
	o := l.o
	no := func(format string, args ...any) (failover.FenceResult, error) {
		msg := "lease expiry not counted: " + fmt.Sprintf(format, args...)
		return failover.FenceResult{Detail: msg}, errors.New(msg)
	}
	addr, ok := o.agents.AgentAddr(a.Group, a.Old.Name)
	if !ok {
		return no("%s has no node agent", a.Old.Name)
	}
	rec, ok := o.leases.record(a.Group, a.Old.Name)
	if !ok || rec.lastOK.IsZero() {
		return no("this observer never saw %s's agent answer a lease", a.Old.Name)
	}
	if rec.refusedAfterOK {
		return no("%s's agent refused a lease connection after its last answer (%s): its host is up and the agent is not running", a.Old.Name, rec.lastErr)
	}
	anchor := time.Now()
	if t, ok := o.seen.intent(a.Group, a.Epoch); ok {
		anchor = t
	}
	if gap := anchor.Sub(rec.lastOK); gap > l.window {
		return no("%s's agent last answered a lease %s before the failover (more than %s): it may have been dead before the cut", a.Old.Name, gap.Round(time.Millisecond), l.window)
	}
	lt := max(l.leaseTimeout, rec.leaseTimeout)
	// Unreachable, not up with a hung agent (whose kernel would still
	// complete a handshake): every connection attempt of this observer's
	// since the agent's last answer timed out. Without that evidence
	// (recent, none connected or refused), one dial decides.
	if !o.agents.Dials(addr).UnreachableSince(rec.lastOK, lt+o.agents.LeaseCallTimeout()+time.Second, time.Now()) {
		switch dialClass(ctx, addr, 500*time.Millisecond) {
		case "connected":
			// The agent's own Fence (run alongside) decides; if it fails, the
			// agent is hung and enforces nothing either.
			return no("%s's agent answers at %s: its own fence decides", a.Old.Name, addr)
		case "refused":
			return no("nothing listens on %s's agent port %s: the host is up and its agent is not running, so nothing enforces its lease", a.Old.Name, addr)
		}
	}
	if odown, _ := o.monitor.ODown(a.Group, a.Old.Name); !odown {
		return no("%s is not ODOWN: a quorum of observers does not see it down", a.Old.Name)
	}
	supportEnd, err := o.quorumStoppedLeasing(ctx, a.Group, a.Epoch, a.Old.Name)
	if err != nil {
		return no("%v", err)
	}
	until := supportEnd.Add(lt + lt/10 + 100*time.Millisecond)
	// A previous leader's AddVIP grant (one grant is support on its own)
	// was sent before it stepped down, so before this observer became
	// leader; it may arrive up to a call timeout later. Those previous
	// leaders need not be among the observers that answered above.
	since := time.Now() // not known to be leader: count as if it became one now
	if p := o.leaderSince.Load(); p != nil {
		since = *p
	}
	if floor := since.Add(o.agents.CallTimeout() + lt + lt/10 + 100*time.Millisecond); floor.After(until) {
		until = floor
	}
	if d := time.Until(until); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return failover.FenceResult{}, fmt.Errorf("wait for %s's lease to expire: %w", a.Old.Name, ctx.Err())
		case <-t.C:
		}
	}
	what := "the VIP"
	if rec.dbFence {
		what = "the VIP and fenced the database"
	}
	return failover.FenceResult{Confirmed: rec.dbFence, Traffic: true, Detail: fmt.Sprintf(
		"lease expired: %s's node agent, last seen enforcing leases %s before the failover and now unreachable, dropped %s on its own (lease_timeout %s)",
		a.Old.Name, anchor.Sub(rec.lastOK).Round(time.Millisecond), what, lt)}, nil
}

// dialClass connects to addr and says how it went: "connected",
// "refused" (the host is up, nothing listens), or "timeout" (no answer:
// unreachable, or the host is down).
func dialClass(ctx context.Context, addr string, timeout time.Duration) string {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(dctx, "tcp", addr)
	if err == nil {
		_ = c.Close()
		return "connected"
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return "refused"
	}
	return "timeout"
}

// quorumStoppedLeasing waits until this observer and N−quorum others
// have stopped leasing member (for the failover of epoch), and returns
// the latest moment a call of one of them may still have given member
// support, on this observer's clock: its own SupportEnd, and for each
// other observer the moment its answer arrived less how long before
// answering its last such call ended (that call ended before the answer
// left, so no later than this bound).
func (o *Observer) quorumStoppedLeasing(ctx context.Context, group string, epoch uint64, member string) (time.Time, error) {
	if _, err := o.leasesStopped(ctx, group, epoch); err != nil {
		return time.Time{}, err
	}
	self := o.agents.SupportEnd(group, member)
	need := len(o.cfg.Observers) - o.cfg.QuorumSize()
	if need <= 0 {
		return self, nil
	}
	cctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	acks := make(chan time.Time, len(o.cfg.Observers))
	var wg sync.WaitGroup
	errs := make([]string, 0, len(o.cfg.Observers))
	var mu sync.Mutex
	for _, ob := range o.cfg.Observers {
		if ob.ID == o.cfg.NodeID {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// clientFor checks the answering certificate names ob: an
			// answer from anyone else must not count towards the quorum.
			c, err := o.peers.clientFor(ob.ID, ob.GRPC)
			var resp *vigilv1.LeasesStoppedResponse
			if err == nil {
				resp, err = c.LeasesStopped(cctx, &vigilv1.LeasesStoppedRequest{Group: group, Epoch: epoch, Member: member})
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Sprintf("%s: %v", ob.ID, err))
				mu.Unlock()
				return
			}
			acks <- time.Now().Add(-time.Duration(resp.GetSupportEndedMsAgo()) * time.Millisecond)
		}()
	}
	go func() { wg.Wait(); close(acks) }()
	last := self
	got := 0
	for t := range acks {
		got++
		if t.After(last) {
			last = t
		}
		if got == need {
			return last, nil
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return time.Time{}, fmt.Errorf("only %d of the %d other observers needed confirmed they stopped leasing %s: %v", got, need, member, errs)
}

// LeasesStopped answers once this observer stopped leasing the old
// primary of the group's failover of epoch (see leasesStopped).
func (s *adminServer) LeasesStopped(ctx context.Context, req *vigilv1.LeasesStoppedRequest) (*vigilv1.LeasesStoppedResponse, error) {
	if err := checkGroupName("group", req.GetGroup()); err != nil {
		return nil, err
	}
	if req.GetEpoch() == 0 {
		return nil, status.Error(codes.InvalidArgument, "epoch: 0 is not the epoch of a failover")
	}
	if _, err := s.o.leasesStopped(ctx, req.GetGroup(), req.GetEpoch()); err != nil {
		return nil, toStatus(err)
	}
	// Never more than a day ago: an observer that never supported the
	// member says so plainly, and the number stays far from overflow.
	ago := int64(24 * time.Hour / time.Millisecond)
	if end := s.o.agents.SupportEnd(req.GetGroup(), req.GetMember()); !end.IsZero() {
		ago = min(ago, msAgo(time.Since(end)))
	}
	return &vigilv1.LeasesStoppedResponse{Observer: s.o.cfg.NodeID, AppliedIndex: s.o.fsm.AppliedIndex(), SupportEndedMsAgo: ago}, nil
}

// msAgo is d in whole milliseconds, rounded down (towards "later" for the
// moment it dates: the bound must never move earlier).
func msAgo(d time.Duration) int64 {
	if d >= 0 {
		return d.Milliseconds()
	}
	return -int64((-d + time.Millisecond - 1) / time.Millisecond)
}
