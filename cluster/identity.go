package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/vigilha/vigil/cluster/config"
	"github.com/vigilha/vigil/cluster/tlsconf"
)

// Who may talk to this observer, and as whom: on Raft, only the other
// configured observers, each by its certificate's name and from its own
// configured address; on the admin API, callers by certificate and role,
// and the actor of a forwarded write only as a configured observer vouches
// for it.

// actorKey carries, on a forwarded write, the identity the forwarding
// observer authenticated (who the write is recorded as).
const actorKey = "vigil-actor"

// Reasons a Raft connection is refused: the label of
// vigil_raft_connections_refused_total.
const (
	refusedLimit          = "limit"           // the connection cap is reached
	refusedUnknownAddress = "unknown_address" // not from any other observer's Raft IP
	refusedTimeout        = "timeout"         // no TLS handshake (no first byte, without TLS) in time
	refusedHandshake      = "handshake"       // TLS handshake failed: no, foreign, expired or wrong-kind certificate
	refusedUnknownPeer    = "unknown_peer"    // observer certificate of a name not configured (or our own)
	refusedWrongAddress   = "wrong_address"   // configured observer, connecting from another IP than its Raft address
	refusedProtocol       = "protocol"        // without TLS: the first byte is not a Raft RPC
	refusedDialIdentity   = "dial_identity"   // we dialled an observer and another one (or none) answered
)

// raftRefusal is why one Raft connection was refused.
type raftRefusal struct{ reason, msg string }

func (r *raftRefusal) Error() string { return r.msg }

func refuse(reason, format string, args ...any) *raftRefusal {
	return &raftRefusal{reason: reason, msg: fmt.Sprintf(format, args...)}
}

// raftPeers is the configured observer set as one observer's Raft port
// sees it: who may connect, from where, and who answers at an address.
// Addresses are resolved once, at start.
type raftPeers struct {
	self string
	// ips maps every other observer's id to the IPs of its configured Raft
	// address; an empty list (the name could not be resolved) checks the
	// certificate name only.
	ips map[string][]netip.Addr
	// known holds all those IPs; open is set when some address could not be
	// resolved, which turns the check before the handshake off.
	known map[netip.Addr]bool
	open  bool
	// byAddr maps every other observer's Raft address (as configured and
	// normalized) to its id.
	byAddr map[string]string
}

// resolveFunc resolves a host name (net.DefaultResolver.LookupNetIP).
type resolveFunc func(ctx context.Context, host string) ([]netip.Addr, error)

func lookupIPs(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

func newRaftPeers(cfg *config.Config, resolve resolveFunc, log *slog.Logger) *raftPeers {
	p := &raftPeers{self: cfg.NodeID, ips: map[string][]netip.Addr{}, known: map[netip.Addr]bool{}, byAddr: map[string]string{}}
	for _, ob := range cfg.Observers {
		if ob.ID == cfg.NodeID {
			continue
		}
		p.byAddr[ob.Raft] = ob.ID
		p.byAddr[normAddr(ob.Raft)] = ob.ID
		host, _, err := net.SplitHostPort(ob.Raft)
		if err != nil {
			host = ob.Raft
		}
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{ip.Unmap()}
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			found, err := resolve(ctx, host)
			cancel()
			if err != nil || len(found) == 0 {
				log.Warn("cannot resolve an observer's raft address: its connections are checked by certificate name only",
					"observer", ob.ID, "address", ob.Raft, "err", err)
				p.open = true
			}
			for _, ip := range found {
				ips = append(ips, ip.Unmap())
			}
		}
		p.ips[ob.ID] = ips
		for _, ip := range ips {
			p.known[ip] = true
		}
	}
	return p
}

// normAddr normalizes host:port ("[::ffff:10.0.0.1]:80" is "10.0.0.1:80").
func normAddr(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return s
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return net.JoinHostPort(ip.Unmap().String(), port)
	}
	return net.JoinHostPort(strings.ToLower(strings.TrimSuffix(host, ".")), port)
}

// addrIP returns the IP of a network address.
func addrIP(a net.Addr) (netip.Addr, bool) {
	if a == nil {
		return netip.Addr{}, false
	}
	if t, ok := a.(*net.TCPAddr); ok {
		ip, ok := netip.AddrFromSlice(t.IP)
		return ip.Unmap(), ok
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

// idFor returns the id of the observer configured at a Raft address.
func (p *raftPeers) idFor(addr raft.ServerAddress) (string, bool) {
	if id, ok := p.byAddr[string(addr)]; ok {
		return id, true
	}
	id, ok := p.byAddr[normAddr(string(addr))]
	return id, ok
}

// mayConnect is the check before any handshake: the connection comes from
// the IP of some other observer's Raft address.
func (p *raftPeers) mayConnect(remote net.Addr) error {
	if p.open {
		return nil
	}
	ip, ok := addrIP(remote)
	if !ok || !p.known[ip] {
		return refuse(refusedUnknownAddress, "%v is not the address of any other configured observer", remote)
	}
	return nil
}

// check is the check of a peer whose certificate is verified: a configured
// observer other than ourselves, connecting from its own Raft IP.
func (p *raftPeers) check(_, name string, remote net.Addr) error {
	if name == p.self {
		return refuse(refusedUnknownPeer, "observer/%s is this observer's own name", name)
	}
	ips, ok := p.ips[name]
	if !ok {
		return refuse(refusedUnknownPeer, "observer/%s is not a configured observer", name)
	}
	if len(ips) == 0 {
		return nil
	}
	ip, ok := addrIP(remote)
	if !ok || !slices.Contains(ips, ip) {
		return refuse(refusedWrongAddress, "observer/%s connects from %v, not from its configured raft address", name, remote)
	}
	return nil
}

// callerIdentity is the caller of one admin call, as authenticated.
type callerIdentity struct {
	kind, name string // the client certificate's identity; empty without TLS
	addr       string // the connection's remote address
	actor      string // who the call is recorded as (Raft history, rate limit)
	via        string // for a forwarded write: the observer that forwarded it
	claimed    string // a vigil-actor that was not honoured
}

func (c callerIdentity) String() string {
	if c.kind == "" {
		return "admin-api"
	}
	return c.kind + "/" + c.name
}

type identityKey struct{}

// actorFrom names who asked, for the Raft history and the rate limit: the
// authenticated caller or, for a write a configured observer forwarded,
// the identity that observer authenticated.
func actorFrom(ctx context.Context) string {
	id, ok := ctx.Value(identityKey{}).(callerIdentity)
	if !ok || id.actor == "" {
		return "admin-api"
	}
	return id.actor
}

// identify reads the caller's identity: its client certificate with TLS,
// only its address without.
func (o *Observer) identify(ctx context.Context) (callerIdentity, error) {
	var id callerIdentity
	p, ok := peer.FromContext(ctx)
	if !ok {
		return id, status.Error(codes.Unauthenticated, "no peer information")
	}
	if p.Addr != nil {
		id.addr = p.Addr.String()
	}
	if o.tls == nil {
		return id, nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return id, status.Error(codes.Unauthenticated, "not a TLS connection")
	}
	kind, name, err := tlsconf.IdentityOfConn(info.State)
	if err != nil {
		return id, status.Errorf(codes.Unauthenticated, "client certificate: %v", err)
	}
	id.kind, id.name = kind, name
	return id, nil
}

// roleOf is the role of an operator or viewer certificate: with
// admin.roles the configured one (others are refused), else its kind.
func (o *Observer) roleOf(kind, name string) (string, error) {
	roles := o.cfg.Admin.Roles
	if len(roles) == 0 {
		return kind, nil
	}
	role, ok := roles[name]
	if !ok {
		return "", fmt.Errorf("%s/%s is not in admin.roles", kind, name)
	}
	return role, nil
}

func (o *Observer) isObserver(name string) bool {
	_, ok := o.cfg.ObserverByID(name)
	return ok
}

// fromObserverHost reports whether a plaintext caller connects from the
// IP of a configured observer (its Raft, gossip or gRPC address).
func (o *Observer) fromObserverHost(addr string) bool {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, ob := range o.cfg.Observers {
		for _, a := range []string{ob.Raft, ob.Gossip, ob.GRPC} {
			host, _, err := net.SplitHostPort(a)
			if err != nil {
				continue
			}
			if h, err := netip.ParseAddr(host); err == nil && h.Unmap() == ip {
				return true
			}
		}
	}
	return false
}

// vouched checks the actor a forwarding observer names: an identity that
// has the operator role here (the write's own check, done again by the
// observer that commits it).
func (o *Observer) vouched(actor string) error {
	kind, name, ok := strings.Cut(actor, "/")
	if !ok || (kind != kindOperator && kind != kindViewer) || tlsconf.ValidateName(name) != nil {
		return fmt.Errorf("forwarded actor %q is not an operator or viewer identity", actor)
	}
	role, err := o.roleOf(kind, name)
	if err != nil {
		return fmt.Errorf("forwarded actor: %w", err)
	}
	if role != kindOperator {
		return fmt.Errorf("forwarded actor %s does not have the operator role", actor)
	}
	return nil
}

func shortMethod(method string) string { return method[strings.LastIndex(method, "/")+1:] }

// authorize identifies the caller and checks the role the method needs.
// The identity comes back even when the call is refused, for the audit.
//
// With TLS: operators may change state, viewers only read; an observer
// certificate must be a configured observer, and may read, call the
// observer-only methods, and change state only by forwarding (with the
// forwarding header and the actor it authenticated, which must have the
// operator role here). Anyone else's forwarding headers are ignored: the
// call is the caller's own. Agent certificates have no access.
//
// Without TLS nothing is authenticated: every caller may do everything
// and is recorded as "admin-api"; a forwarded actor is honoured only from
// the IP of a configured observer, and recorded only as a hint.
func (o *Observer) authorize(ctx context.Context, method string) (callerIdentity, error) {
	id, err := o.identify(ctx)
	id.actor = id.String()
	if err != nil {
		return id, err
	}
	var forwardedBy, claim string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(forwardedKey); len(v) > 0 {
			forwardedBy = v[0]
		}
		if v := md.Get(actorKey); len(v) > 0 {
			claim = v[0]
		}
	}
	if o.tls == nil {
		if forwardedBy != "" && claim != "" && len(claim) <= maxActorLen && o.fromObserverHost(id.addr) {
			id.actor, id.via = claim, forwardedBy
		} else if claim != "" {
			id.claimed = claim
		}
		return id, nil
	}
	deny := func(format string, args ...any) (callerIdentity, error) {
		return id, status.Errorf(codes.PermissionDenied, format, args...)
	}
	switch id.kind {
	case kindObserver:
		if !o.isObserver(id.name) {
			return deny("%s is not a configured observer", id)
		}
		if observerOnly[method] || !mutating[method] {
			return id, nil
		}
		if forwardedBy == "" {
			return deny("%s may not call %s: an observer certificate only forwards other callers' writes", id, shortMethod(method))
		}
		if forwardedBy != id.name {
			return deny("%s forwards in the name of %q", id, forwardedBy)
		}
		if err := o.vouched(claim); err != nil {
			id.claimed = claim
			return deny("%s may not call %s: %v", id, shortMethod(method), err)
		}
		id.actor, id.via = claim, id.String()
		return id, nil
	case kindOperator, kindViewer:
		if claim != "" || forwardedBy != "" {
			// Only observers forward: the call is this caller's own.
			id.claimed = claim
		}
		role, err := o.roleOf(id.kind, id.name)
		if err != nil {
			return deny("%v", err)
		}
		if observerOnly[method] {
			return deny("%s may not call %s: observers only", id, shortMethod(method))
		}
		if mutating[method] && role != kindOperator {
			return deny("%s may not call %s: the operator role is required", id, shortMethod(method))
		}
		return id, nil
	default:
		return deny("%s: node agent certificates have no access to the admin API", id)
	}
}

// maxActorLen bounds a plaintext forwarded actor ("kind/name").
const maxActorLen = 160

// unaryAuth authorizes every unary call, rate-limits the state-changing
// ones per actor, and audits every state-changing or refused call.
func (o *Observer) unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	id, err := o.authorize(ctx, info.FullMethod)
	denied := err != nil
	ctx = context.WithValue(ctx, identityKey{}, id)
	if err == nil && mutating[info.FullMethod] && !o.limiter.allow(id.actor) {
		denied = true
		err = status.Errorf(codes.ResourceExhausted, "%s: too many state-changing requests; at most %.0f per second (burst %.0f)",
			id.actor, o.limiter.rate, o.limiter.burst)
	}
	var resp any
	if err == nil {
		resp, err = handler(ctx, req)
	}
	o.audit(id, info.FullMethod, req, err, denied)
	return resp, err
}

func (o *Observer) streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	id, err := o.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		o.audit(id, info.FullMethod, nil, err, true)
		return err
	}
	return handler(srv, ss)
}

// audit logs one admin call: who (the identity it is recorded as, the
// observer that forwarded it, a claimed actor that was ignored, the
// connection's address), what, and the outcome. State-changing calls and
// refused calls are logged at info, allowed reads at debug. The change
// itself carries the same identity into the Raft history (actor).
func (o *Observer) audit(id callerIdentity, method string, req any, err error, denied bool) {
	level := slog.LevelInfo
	if !mutating[method] && !denied {
		level = slog.LevelDebug
	}
	if !o.log.Enabled(context.Background(), level) {
		return
	}
	body := ""
	if m, ok := req.(proto.Message); ok {
		if b, merr := protojson.Marshal(m); merr == nil {
			body = string(b)
		}
	}
	args := []any{"identity", id.actor, "method", method, "request", body, "outcome", status.Code(err).String(), "err", err, "peer", id.addr}
	if id.via != "" {
		args = append(args, "via", id.via)
	}
	if id.claimed != "" {
		args = append(args, "claimed_actor", id.claimed, "caller", id.String())
	}
	o.log.Log(context.Background(), level, "audit", args...)
}
