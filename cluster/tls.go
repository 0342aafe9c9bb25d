package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
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

	"github.com/vigilha/vigil/cluster/tlsconf"
)

// Certificate kinds (the vigil:// URI SAN of every certificate the CA
// issues) and what they may do on the admin API.
const (
	kindObserver = "observer"
	kindOperator = "operator"
	kindViewer   = "viewer"
	kindAgent    = "agent"
)

// mutating lists the admin methods that change state: they need the
// operator role (observers have it, to forward writes to the leader).
var mutating = map[string]bool{
	"/vigil.v1.Admin/PauseGroup":  true,
	"/vigil.v1.Admin/ResumeGroup": true,
	"/vigil.v1.Admin/Switchover":  true,
	"/vigil.v1.Admin/Failover":    true,
}

// observerOnly lists the admin methods only observers may call.
var observerOnly = map[string]bool{
	"/vigil.v1.Admin/LeasesStopped": true,
}

// tlsStreamLayer runs Raft over mutual TLS: both ends must present an
// observer certificate signed by the cluster's CA.
type tlsStreamLayer struct {
	raft.StreamLayer
	server, client *tls.Config
}

func (t *tlsStreamLayer) Accept() (net.Conn, error) {
	c, err := t.StreamLayer.Accept()
	if err != nil {
		return nil, err
	}
	// The handshake runs on the connection's first read, in raft's
	// per-connection goroutine: a slow or hostile peer stalls only itself.
	return tls.Server(c, t.server), nil
}

func (t *tlsStreamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := t.StreamLayer.Dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, t.client)
	_ = tc.SetDeadline(time.Now().Add(timeout))
	if err := tc.Handshake(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("raft TLS handshake with %s: %w", addr, err)
	}
	_ = tc.SetDeadline(time.Time{})
	return tc, nil
}

type identityKey struct{}

// callerIdentity is the authenticated caller of an admin call.
type callerIdentity struct{ kind, name string }

func (c callerIdentity) String() string {
	if c.kind == "" {
		return "admin-api"
	}
	return c.kind + "/" + c.name
}

// authorize identifies the caller by its client certificate and checks
// the role the method needs. Without TLS every caller is "admin-api".
func (o *Observer) authorize(ctx context.Context, method string) (context.Context, error) {
	if o.tls == nil {
		return ctx, nil
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ctx, status.Error(codes.Unauthenticated, "no peer information")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return ctx, status.Error(codes.Unauthenticated, "not a TLS connection")
	}
	kind, name, err := tlsconf.IdentityOfConn(info.State)
	if err != nil {
		return ctx, status.Errorf(codes.Unauthenticated, "client certificate: %v", err)
	}
	id := callerIdentity{kind: kind, name: name}
	if roles := o.cfg.Admin.Roles; len(roles) > 0 && (kind == kindOperator || kind == kindViewer) {
		role, ok := roles[name]
		if !ok {
			return ctx, status.Errorf(codes.PermissionDenied, "%s is not in admin.roles", id)
		}
		// The configured role wins over the certificate's kind, so a
		// certificate can be demoted without re-issuing it.
		kind = role
	}
	if mutating[method] && kind != kindOperator && kind != kindObserver {
		return ctx, status.Errorf(codes.PermissionDenied, "%s may not call %s: the operator role is required", id, method[strings.LastIndex(method, "/")+1:])
	}
	if observerOnly[method] && kind != kindObserver {
		return ctx, status.Errorf(codes.PermissionDenied, "%s may not call %s: observers only", id, method[strings.LastIndex(method, "/")+1:])
	}
	if kind == kindAgent {
		return ctx, status.Errorf(codes.PermissionDenied, "%s: node agent certificates have no access to the admin API", id)
	}
	return context.WithValue(ctx, identityKey{}, id), nil
}

// unaryAuth authorizes every unary call and writes an audit record for
// every state-changing one.
func (o *Observer) unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := o.authorize(ctx, info.FullMethod)
	if err == nil && mutating[info.FullMethod] && !o.limiter.allow(actorFrom(ctx)) {
		err = status.Errorf(codes.ResourceExhausted, "%s: too many state-changing requests; at most %.0f per second (burst %.0f)",
			actorFrom(ctx), o.limiter.rate, o.limiter.burst)
	}
	var resp any
	if err == nil {
		resp, err = handler(ctx, req)
	}
	if mutating[info.FullMethod] {
		o.audit(ctx, info.FullMethod, req, err)
	}
	return resp, err
}

func (o *Observer) streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if _, err := o.authorize(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// audit logs one state-changing admin call: who, what, outcome. The
// change itself carries the same identity into the Raft history (actor).
func (o *Observer) audit(ctx context.Context, method string, req any, err error) {
	who := actorFrom(ctx)
	body := ""
	if m, ok := req.(proto.Message); ok {
		if b, merr := protojson.Marshal(m); merr == nil {
			body = string(b)
		}
	}
	o.log.Info("audit", "identity", who, "method", method, "request", body, "outcome", status.Code(err).String(), "err", err)
}

// actorFrom names who asked: the client certificate's identity, or, for
// a write an observer forwarded, the identity that observer vouches for.
func actorFrom(ctx context.Context) string {
	id, _ := ctx.Value(identityKey{}).(callerIdentity)
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(forwardedKey)) > 0 {
		// Only observers may vouch for someone else.
		if a := md.Get("vigil-actor"); len(a) > 0 && (id.kind == kindObserver || id.kind == "") {
			return a[0]
		}
	}
	return id.String()
}
