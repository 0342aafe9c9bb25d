package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/hashicorp/raft"

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
// operator role, or an observer forwarding an operator's write.
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

// tlsStreamLayer runs Raft over mutual TLS: both ends present an
// observer certificate of the cluster's CA, the accepting end takes only
// the other configured observers, each from its own Raft address, and the
// dialling end makes sure the observer it meant to reach is the one that
// answers.
type tlsStreamLayer struct {
	raft.StreamLayer // TCP: Dial gives plain connections
	store            *tlsconf.Store
	peers            *raftPeers
	server           *tls.Config
	refused          func(reason string, remote net.Addr, err error)
}

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

// handshake is the accepting side's vetting of one connection (run by the
// bounded listener, under its handshake deadline): the TLS handshake, in
// which the client's certificate is checked by name and address.
func (t *tlsStreamLayer) handshake(ctx context.Context, c net.Conn) (net.Conn, error) {
	tc := tls.Server(c, t.server)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, classifyHandshake(err)
	}
	return tc, nil
}

// classifyHandshake turns a failed server handshake into a refusal.
func classifyHandshake(err error) *raftRefusal {
	var r *raftRefusal
	switch {
	case errors.As(err, &r):
		return r
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return refuse(refusedTimeout, "no TLS handshake within the deadline")
	default:
		return refuse(refusedHandshake, "TLS handshake: %v", err)
	}
}

func (t *tlsStreamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	want, ok := t.peers.idFor(addr)
	if !ok {
		return nil, fmt.Errorf("raft: %s is not the raft address of a configured observer", addr)
	}
	c, err := t.StreamLayer.Dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	cfg := t.store.ClientConfigWithCheck("", func(_, name string, _ net.Addr) error {
		if name != want {
			return refuse(refusedDialIdentity, "observer/%s answered at %s, the raft address of %s", name, addr, want)
		}
		return nil
	}, kindObserver)
	tc := tls.Client(c, cfg)
	_ = tc.SetDeadline(time.Now().Add(timeout))
	if err := tc.Handshake(); err != nil {
		_ = c.Close()
		var r *raftRefusal
		if errors.As(err, &r) {
			t.refused(r.reason, c.RemoteAddr(), r)
		}
		return nil, fmt.Errorf("raft TLS handshake with %s (%s): %w", want, addr, err)
	}
	_ = tc.SetDeadline(time.Time{})
	return tc, nil
}
