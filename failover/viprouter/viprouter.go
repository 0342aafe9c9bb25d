// Package viprouter is the observer side of the node agents: the
// failover.Router that moves a group's VIP (RemoveVIP on the old primary's
// agent, AddVIP on the new one's), the failover.Fencer that fences the old
// primary through its agent, and the periodic leases that let the
// primary's agent keep the VIP and every agent learn the group's epoch
// from a quorum of observers.
//
// Every call carries the failover's epoch (the agents' fencing token) and
// is bounded by a timeout. An agent that has seen a newer epoch refuses
// AddVIP and Lease; that refusal is reported as ErrStaleEpoch and is never
// treated as "unreachable, carry on" (RemoveVIP and Fence act at any
// epoch). Every call an agent answers with an error — a refusal, not an
// unreachable agent — is counted in vigil_node_agent_refusals_total
// {group, member, rpc, code} (WithRegisterer) and logged at Warn, at most
// once per agent, rpc and code every 10s.
//
// The lease rule callers must follow (see package nodeagent): each
// observer calls LeaseTo every lease_timeout/3 for every member's agent
// of the group with the epoch and primary of its replicated state, and
// stops naming a member as the primary as soon as a failover away from it
// is committed, so that the old primary's agent drops the VIP within
// lease_timeout even if some observers can still reach it.
package viprouter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/vigilha/vigil/failover"
	"github.com/vigilha/vigil/failover/ratelog"
	"github.com/vigilha/vigil/fsm"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

var (
	// ErrStaleEpoch is wrapped by errors of calls an agent refused
	// because it has seen a newer epoch of the group.
	ErrStaleEpoch = errors.New("viprouter: stale epoch")
	// ErrNoAgent is wrapped when no agent address is known for a member.
	ErrNoAgent = errors.New("viprouter: no node agent for member")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("viprouter: closed")
)

// removeOldTimeout bounds Route's RemoveVIP on the old primary's agent.
const removeOldTimeout = 300 * time.Millisecond

// Defaults.
const (
	// DefaultLeaseCallTimeout caps one Lease call: leases are sent every
	// lease_timeout/3, and a late one is worthless.
	DefaultLeaseCallTimeout = 300 * time.Millisecond
	// DefaultFenceExtra is added to the call timeout for Fence, which runs
	// the host's fence command (up to the agent's fence_timeout, 10s by
	// default) before answering.
	DefaultFenceExtra = 10 * time.Second
)

// Option configures NewAgents.
type Option func(*Agents)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(a *Agents) { a.log = l } }

// WithLeaseCallTimeout sets the timeout of one Lease call (default
// min(callTimeout, DefaultLeaseCallTimeout)).
func WithLeaseCallTimeout(d time.Duration) Option { return func(a *Agents) { a.leaseTimeout = d } }

// WithFenceCallTimeout sets the timeout of one Fence call (default
// callTimeout + DefaultFenceExtra).
func WithFenceCallTimeout(d time.Duration) Option { return func(a *Agents) { a.fenceTimeout = d } }

// WithRegisterer registers the refusal counter,
// vigil_node_agent_refusals_total{group, member, rpc, code}: every call an
// agent answered with an error (stale epoch, permission denied, invalid
// argument, ...), as opposed to an agent that could not be reached. Without
// it the counter is kept but not exported.
func WithRegisterer(reg prometheus.Registerer) Option { return func(a *Agents) { a.reg = reg } }

// WithDialOptions adds gRPC dial options. They are applied after the
// defaults, so transport credentials given here — with the agents' mutual
// TLS, grpc.WithTransportCredentials(credentials.NewTLS(
// store.ClientConfig("", "agent"))) — replace the default insecure ones.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(a *Agents) { a.dialOpts = append(a.dialOpts, opts...) }
}

// Agents is a set of node agent clients, one lazily-connecting gRPC
// client per agent address, shared by all groups. Safe for concurrent use.
type Agents struct {
	self         string
	addrOf       func(group, member string) (string, bool)
	callTimeout  time.Duration
	leaseTimeout time.Duration
	fenceTimeout time.Duration
	dialOpts     []grpc.DialOption
	log          *slog.Logger
	reg          prometheus.Registerer
	refusals     *prometheus.CounterVec
	logLimit     *ratelog.Limiter

	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool

	bookkeeping // delivery.go
}

// NewAgents returns clients acting as observer self. addrOf maps a group's
// member to its agent's host:port (false: the member has no agent).
// callTimeout bounds AddVIP and RemoveVIP calls (and, plus
// DefaultFenceExtra, Fence calls).
func NewAgents(self string, addrOf func(group, member string) (string, bool), callTimeout time.Duration, opts ...Option) *Agents {
	if callTimeout <= 0 {
		callTimeout = 2 * time.Second
	}
	a := &Agents{
		self:        self,
		addrOf:      addrOf,
		callTimeout: callTimeout,
		conns:       map[string]*grpc.ClientConn{},
		log:         slog.New(slog.DiscardHandler),
		bookkeeping: bookkeeping{dials: map[string]DialRecord{}, support: map[string]*supportCalls{}, dial: dialAbortive},
	}
	for _, o := range opts {
		o(a)
	}
	a.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vigil_node_agent_refusals_total",
		Help: "Calls to a node agent that the agent answered with an error (it refused them: stale epoch, denied, invalid, ...), by group, member, rpc and gRPC code.",
	}, []string{"group", "member", "rpc", "code"})
	if a.reg != nil {
		a.reg.MustRegister(a.refusals)
	}
	a.logLimit = ratelog.New(refusalLogEvery, 4096)
	if a.leaseTimeout <= 0 {
		a.leaseTimeout = min(callTimeout, DefaultLeaseCallTimeout)
	}
	if a.fenceTimeout <= 0 {
		a.fenceTimeout = callTimeout + DefaultFenceExtra
	}
	return a
}

// Close closes every connection; later calls fail with ErrClosed.
func (a *Agents) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	for addr, cc := range a.conns {
		cc.Close()
		delete(a.conns, addr)
	}
}

func (a *Agents) client(addr string) (vigilv1.NodeAgentClient, *grpc.ClientConn, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, nil, ErrClosed
	}
	if cc := a.conns[addr]; cc != nil {
		return vigilv1.NewNodeAgentClient(cc), cc, nil
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Abortive close (SO_LINGER 0): closing the connection sends RST
		// and drops what is still queued in it. See abort.
		grpc.WithContextDialer(a.dialRecorded),
		// Which calls' requests reached a connection (delivery.go).
		grpc.WithStatsHandler(sentHandler{}),
		// Reconnect quickly after an agent restart or a healed
		// partition: gRPC's default back-off grows to 2 minutes, during
		// which calls fail at once and the agent gets no leases.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: a.callTimeout,
		}),
	}
	// The caller's options last: grpc-go applies dial options in order,
	// so its transport credentials (TLS) override the insecure default.
	opts = append(opts, a.dialOpts...)
	cc, err := grpc.NewClient(addr, opts...) // connects on first use
	if err != nil {
		return nil, nil, fmt.Errorf("viprouter: agent %s: %w", addr, err)
	}
	a.conns[addr] = cc
	return vigilv1.NewNodeAgentClient(cc), cc, nil
}

// dialAbortive dials TCP with SO_LINGER 0, so that closing the connection
// resets it instead of flushing what it still holds.
func dialAbortive(ctx context.Context, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	return c, nil
}

// abort drops the connection a call to addr went out on when that call
// ended without an answer (timed out or cancelled): the request may still
// sit in the connection's send queue, and TCP would deliver it when a cut
// heals — an AddVIP, or a lease, applied seconds late, after a failover
// moved the primary elsewhere (the nemesis suite saw exactly that: a
// fenced old primary given its VIP back for 56 ms). Closing the
// connection (abortive: RST) discards it; the next call dials anew.
// Calls in flight on it end too; they were going to the same unreachable
// agent.
func (a *Agents) abort(addr string, cc *grpc.ClientConn, err error) {
	if cc == nil || err == nil || !unreachable(err) {
		return // answered (perhaps with a refusal): nothing is left queued
	}
	a.mu.Lock()
	if a.conns[addr] == cc {
		delete(a.conns, addr)
	} else {
		cc = nil // already replaced (and closed) by another call
	}
	a.mu.Unlock()
	if cc != nil {
		a.log.Debug("dropped the connection to an agent after a call without an answer", "agent", addr, "err", err)
		_ = cc.Close()
	}
}

// agentFor returns the client for member's agent in group, and the
// connection it uses (for abort).
func (a *Agents) agentFor(group, member string) (vigilv1.NodeAgentClient, string, *grpc.ClientConn, error) {
	addr, ok := a.addrOf(group, member)
	if !ok || addr == "" {
		return nil, "", nil, fmt.Errorf("%w %q of group %q", ErrNoAgent, member, group)
	}
	c, cc, err := a.client(addr)
	return c, addr, cc, err
}

// refusalLogEvery is the rate limit of refusal warnings: at most one line
// per agent, rpc and code in that time.
const refusalLogEvery = 10 * time.Second

// refused counts and logs (rate-limited) a call the agent answered with an
// error; a call that did not reach the agent (unreachable, timed out,
// cancelled) is not a refusal and is left to the caller.
func (a *Agents) refused(rpc, group, member, addr string, epoch uint64, err error) {
	if err == nil || unreachable(err) {
		return
	}
	if _, ok := status.FromError(err); !ok {
		return // not an answer of the agent's
	}
	code := status.Code(err)
	a.refusals.WithLabelValues(group, member, rpc, code.String()).Inc()
	ok, suppressed := a.logLimit.Allow(addr+"/"+rpc+"/"+code.String(), time.Now())
	if !ok {
		return
	}
	args := []any{"group", group, "member", member, "agent", addr, "rpc", rpc, "epoch", epoch, "code", code.String(), "err", status.Convert(err).Message()}
	if suppressed > 0 {
		args = append(args, "suppressed", fmt.Sprintf("%d similar refusals in the last %s", suppressed, refusalLogEvery))
	}
	a.log.Warn("node agent refused a call", args...)
}

// callError wraps a gRPC error, marking epoch refusals with ErrStaleEpoch.
func callError(rpc, group, member, addr string, epoch uint64, err error) error {
	if status.Code(err) == codes.FailedPrecondition {
		return fmt.Errorf("%w: %s for group %q epoch %d refused by %s's agent (%s): %s", ErrStaleEpoch, rpc, group, epoch, member, addr, status.Convert(err).Message())
	}
	return fmt.Errorf("viprouter: %s for group %q epoch %d on %s's agent (%s): %w", rpc, group, epoch, member, addr, err)
}

// Answered reports whether err is an agent's answer (a refusal: stale
// epoch, denied, invalid, …) rather than a call that did not get through
// (unreachable, timed out, cancelled).
func Answered(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrStaleEpoch) {
		return true
	}
	st, ok := status.FromError(err) // unwraps
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.OK, codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Unknown:
		return false
	}
	return true
}

// unreachable reports whether err means the agent did not answer (as
// opposed to answering with a refusal).
func unreachable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return true
	}
	return errors.Is(err, context.DeadlineExceeded)
}

func validAction(a failover.Action) error {
	switch {
	case a.Group == "":
		return errors.New("viprouter: action without a group")
	}
	return nil
}

// Router returns the failover.Router moving the VIP through the agents.
func (a *Agents) Router() failover.Router { return router{a} }

// Fencer returns the failover.Fencer fencing the old primary through its
// agent.
func (a *Agents) Fencer() failover.Fencer { return fencer{a} }

type router struct{ a *Agents }

// Route removes the VIP from the old primary's agent (best effort: an
// unreachable agent stops holding it on its own within lease_timeout once
// the observers stop leasing it) and adds it on the new primary's agent,
// which must succeed. The new primary's refusal for a stale epoch fails
// the route: a newer failover has superseded this one (agents remove a
// VIP at any epoch, so the old primary's side does not refuse). Route is
// idempotent: replaying it re-sends the same requests, which change
// nothing the second time.
func (r router) Route(ctx context.Context, act failover.Action) error {
	a := r.a
	if err := validAction(act); err != nil {
		return err
	}
	if act.New.Name == "" {
		return fmt.Errorf("viprouter: group %q epoch %d: no new primary to route to", act.Group, act.Epoch)
	}
	req := &vigilv1.VIPRequest{Group: act.Group, Epoch: act.Epoch, Observer: a.self}
	log := a.log.With("group", act.Group, "epoch", act.Epoch, "old", act.Old.Name, "new", act.New.Name)

	if act.Old.Name != "" && act.Old.Name != act.New.Name {
		c, addr, cc, err := a.agentFor(act.Group, act.Old.Name)
		switch {
		case errors.Is(err, ErrNoAgent):
			log.Debug("old primary has no node agent; not removing its VIP")
		case err != nil:
			return err
		case a.Dials(addr).UnreachableSince(time.Now().Add(-time.Second), time.Second, time.Now()):
			// Every connection attempt to it in the last second timed
			// out: a RemoveVIP would only wait out its timeout. The fence
			// step, committed before this one, verified the VIP off it.
			log.Warn("old primary's agent unreachable; not waiting to remove its VIP: the fence step verified it gone", "agent", addr)
		default:
			// Short: a reachable agent answers in milliseconds, and the
			// fence step has already verified the VIP off the old host; an
			// unreachable one must not hold up the new primary's VIP.
			cctx, cancel := context.WithTimeout(ctx, min(a.callTimeout, removeOldTimeout))
			resp, err := c.RemoveVIP(cctx, req)
			cancel()
			a.abort(addr, cc, err)
			a.refused("RemoveVIP", act.Group, act.Old.Name, addr, act.Epoch, err)
			switch {
			case err == nil:
				log.Info("VIP removed from the old primary", "agent", addr, "changed", resp.GetChanged())
			case status.Code(err) == codes.FailedPrecondition:
				return callError("RemoveVIP", act.Group, act.Old.Name, addr, act.Epoch, err)
			case ctx.Err() != nil:
				return fmt.Errorf("viprouter: group %q epoch %d: %w", act.Group, act.Epoch, ctx.Err())
			default:
				// Unreachable or failing. The fence step, committed before
				// this one, verified the VIP off the old host (its agent's
				// Fence, or lease expiry only where the agent was seen
				// enforcing leases up to the cut); under fence: strict no
				// failover gets here otherwise.
				log.Warn("could not remove the VIP from the old primary; the fence step verified it gone", "agent", addr,
					"unreachable", unreachable(err), "err", err)
			}
		}
	}

	c, addr, cc, err := a.agentFor(act.Group, act.New.Name)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, a.callTimeout)
	defer cancel()
	cctx, ended := a.beginSupport(cctx, act.Group, act.New.Name)
	defer ended()
	resp, err := c.AddVIP(cctx, req)
	a.abort(addr, cc, err)
	if err != nil {
		a.refused("AddVIP", act.Group, act.New.Name, addr, act.Epoch, err)
		return callError("AddVIP", act.Group, act.New.Name, addr, act.Epoch, err)
	}
	log.Info("VIP added on the new primary", "agent", addr, "changed", resp.GetChanged())
	return nil
}

type fencer struct{ a *Agents }

// Fence asks the old primary's agent to remove the VIP, fence the
// database and run its fence command. The result covers the traffic when
// the agent verified the VIP is off its host, and the database when its
// database fence is in force; an agent that cannot be reached (or
// refuses) covers nothing and returns an error.
func (f fencer) Fence(ctx context.Context, act failover.Action) (failover.FenceResult, error) {
	a := f.a
	if err := validAction(act); err != nil {
		return failover.FenceResult{Detail: err.Error()}, err
	}
	c, addr, cc, err := a.agentFor(act.Group, act.Old.Name)
	if err != nil {
		return failover.FenceResult{Detail: err.Error()}, err
	}
	// Is the agent there at all? An isolated host's packets are dropped,
	// and a Fence call would wait out its long deadline (the fence command
	// may take seconds) before the next fence method is tried.
	pctx, pcancel := context.WithTimeout(ctx, min(a.callTimeout, time.Second))
	_, err = c.Status(pctx, &vigilv1.AgentStatusRequest{})
	pcancel()
	a.abort(addr, cc, err)
	if err != nil {
		a.refused("Status", act.Group, act.Old.Name, addr, act.Epoch, err)
		err = callError("Fence (reachability check)", act.Group, act.Old.Name, addr, act.Epoch, err)
		return failover.FenceResult{Detail: err.Error()}, err
	}
	cctx, cancel := context.WithTimeout(ctx, a.fenceTimeout)
	defer cancel()
	// A switchover reads the old primary's final WAL position right after
	// the fence: the agent's SQL steps (sessions, read-only) must be done
	// by then. A failover does not wait for them: they go on in the
	// background, and on a hung database they would only time out.
	resp, err := c.Fence(cctx, &vigilv1.AgentFenceRequest{Group: act.Group, Epoch: act.Epoch, Observer: a.self,
		WaitSql: act.Kind == fsm.KindSwitchover})
	a.abort(addr, cc, err)
	if err != nil {
		a.refused("Fence", act.Group, act.Old.Name, addr, act.Epoch, err)
		err = callError("Fence", act.Group, act.Old.Name, addr, act.Epoch, err)
		return failover.FenceResult{Detail: err.Error()}, err
	}
	detail := fmt.Sprintf("node agent %s (%s): %s", act.Old.Name, addr, resp.GetDetail())
	a.log.Info("node agent fence", "group", act.Group, "epoch", act.Epoch, "member", act.Old.Name, "confirmed", resp.GetConfirmed(),
		"traffic_fenced", resp.GetTrafficFenced(), "database_fenced", resp.GetDatabaseFenced(), "detail", resp.GetDetail())
	// What the agent verified: the VIP off its host (traffic) and, with
	// its database fence, the database cut off from every client.
	return failover.FenceResult{Confirmed: resp.GetDatabaseFenced(), Traffic: resp.GetTrafficFenced(), Detail: detail}, nil
}

// SendLeases sends this observer's lease — "primary is the primary of
// group at epoch" — to the primary's agent, best effort with a short
// timeout. It returns whether the agent holds the VIP, and the error if
// the lease was not delivered or was refused (wrapping ErrStaleEpoch when
// the agent has seen a newer epoch: this observer is behind). Callers call
// it every lease_timeout/3 and may ignore the result.
func (a *Agents) SendLeases(ctx context.Context, group string, epoch uint64, primary string) (holding bool, err error) {
	resp, err := a.Lease(ctx, group, epoch, primary)
	return resp.GetHolding(), err
}

// Lease is SendLeases returning the agent's whole answer: whether it
// holds the VIP, whether it fences the database itself on lease loss,
// and the lease_timeout it enforces.
func (a *Agents) Lease(ctx context.Context, group string, epoch uint64, primary string) (*vigilv1.LeaseResponse, error) {
	return a.LeaseTo(ctx, group, primary, epoch, primary)
}

// LeaseTo sends this observer's lease "primary is the primary of group at
// epoch" to member's agent (for a member other than primary it means "do
// not hold the VIP", and it tells that agent the epoch: agents confirm an
// epoch only from a quorum of observers' leases). It returns the agent's
// answer, or the error if the lease was not delivered or was refused
// (wrapping ErrStaleEpoch when the agent has seen a newer epoch).
func (a *Agents) LeaseTo(ctx context.Context, group, member string, epoch uint64, primary string) (*vigilv1.LeaseResponse, error) {
	if group == "" || primary == "" || member == "" {
		return nil, fmt.Errorf("viprouter: lease needs a group, a member and a primary (got %q, %q, %q)", group, member, primary)
	}
	c, addr, cc, err := a.agentFor(group, member)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, a.leaseTimeout)
	defer cancel()
	if primary == member {
		var ended func()
		cctx, ended = a.beginSupport(cctx, group, member)
		defer ended() // at return, after abort
	}
	resp, err := c.Lease(cctx, &vigilv1.LeaseRequest{Group: group, Epoch: epoch, Observer: a.self, Primary: primary})
	a.abort(addr, cc, err)
	if err != nil {
		a.refused("Lease", group, member, addr, epoch, err)
		return nil, callError("Lease", group, member, addr, epoch, err)
	}
	return resp, nil
}

// CallTimeout is the timeout of one AddVIP or RemoveVIP call.
func (a *Agents) CallTimeout() time.Duration { return a.callTimeout }

// LeaseCallTimeout is the timeout of one Lease call.
func (a *Agents) LeaseCallTimeout() time.Duration { return a.leaseTimeout }

// AgentAddr returns the agent address of a group's member.
func (a *Agents) AgentAddr(group, member string) (string, bool) {
	addr, ok := a.addrOf(group, member)
	return addr, ok && addr != ""
}
