package viprouter

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc/stats"
)

// What this file keeps is what the lease-expiry fence needs to know
// without waiting (cluster/leasefence.go, failover/DESIGN.md "Clocks"):
//
//   - when the last call that could have given a member's agent support
//     (a lease naming it the primary, an AddVIP) ended, counting only
//     calls whose request reached a connection: a request never handed
//     to a transport cannot be applied, and one that was is applied, if
//     at all, before its call ends (answered, or aborted with the
//     connection: abort). The agent's support then ends at most its
//     lease_timeout after that moment.
//   - how this observer's TCP connection attempts to each agent address
//     went since a given moment: all of them timing out (none refused,
//     none connected) means the host is unreachable — not up with a
//     hung agent, whose kernel would still complete the handshake.

// DialRecord is when this observer's connection attempts to one agent
// address last connected, were last refused (the host is up, nothing
// listens) and last failed otherwise (timed out, cancelled, no route), on
// this observer's monotonic clock. Zero: never.
type DialRecord struct {
	Connected, Refused, Failed time.Time
}

// UnreachableSince reports whether every connection attempt after since
// failed without an answer from the host (none connected, none refused)
// and at least one did, the last of them no longer than fresh ago.
func (d DialRecord) UnreachableSince(since time.Time, fresh time.Duration, now time.Time) bool {
	return d.Failed.After(since) && !d.Connected.After(since) && !d.Refused.After(since) &&
		now.Sub(d.Failed) <= fresh
}

// Dials returns the connection record of an agent address.
func (a *Agents) Dials(addr string) DialRecord {
	a.bookMu.Lock()
	defer a.bookMu.Unlock()
	return a.dials[addr]
}

// dialRecorded dials addr (abortively, dialAbortive) and records the
// outcome in the address's DialRecord.
func (a *Agents) dialRecorded(ctx context.Context, addr string) (net.Conn, error) {
	c, err := a.dial(ctx, addr)
	now := time.Now()
	a.bookMu.Lock()
	defer a.bookMu.Unlock()
	r := a.dials[addr]
	switch {
	case err == nil:
		r.Connected = now
	case errors.Is(err, syscall.ECONNREFUSED):
		r.Refused = now
	default:
		r.Failed = now
	}
	a.dials[addr] = r
	return c, err
}

// supportCalls is the bookkeeping of one member's support calls.
type supportCalls struct {
	lastEnd  time.Time // end of the last call whose request was sent
	inFlight int
}

// beginSupport marks a call that may give member's agent support as
// started. It returns the call's context, which records whether its
// request reached a transport, and the function to call once the call has
// ended (after abort).
func (a *Agents) beginSupport(ctx context.Context, group, member string) (context.Context, func()) {
	key := group + "/" + member
	sent := new(atomic.Bool)
	a.bookMu.Lock()
	s := a.support[key]
	if s == nil {
		s = &supportCalls{}
		a.support[key] = s
	}
	s.inFlight++
	a.bookMu.Unlock()
	return context.WithValue(ctx, sentKey{}, sent), func() {
		now := time.Now()
		a.bookMu.Lock()
		defer a.bookMu.Unlock()
		s.inFlight--
		if sent.Load() && now.After(s.lastEnd) {
			s.lastEnd = now
		}
	}
}

// SupportEnd returns the moment after which no call of this observer can
// still give member's agent support, on this observer's monotonic clock:
// when the last lease naming member the primary, or AddVIP for it, whose
// request reached a connection ended (zero if there was none); while such
// a call is still in flight, the latest moment it can end.
func (a *Agents) SupportEnd(group, member string) time.Time {
	a.bookMu.Lock()
	defer a.bookMu.Unlock()
	s := a.support[group+"/"+member]
	if s == nil {
		return time.Time{}
	}
	if s.inFlight > 0 {
		return time.Now().Add(max(a.callTimeout, a.leaseTimeout))
	}
	return s.lastEnd
}

type sentKey struct{}

// sentHandler marks a call's request as sent once gRPC has queued its
// headers on a connection (stats.OutHeader comes after that; the message
// follows them). A call that never got that far never left this process.
type sentHandler struct{}

func (sentHandler) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (sentHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (sentHandler) HandleConn(context.Context, stats.ConnStats) {}
func (sentHandler) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.OutHeader); !ok {
		return
	}
	if f, ok := ctx.Value(sentKey{}).(*atomic.Bool); ok {
		f.Store(true)
	}
}

var _ stats.Handler = sentHandler{}

// bookkeeping is the part of Agents this file uses.
type bookkeeping struct {
	bookMu  sync.Mutex
	dials   map[string]DialRecord
	support map[string]*supportCalls
	dial    func(ctx context.Context, addr string) (net.Conn, error)
}
