package cluster

import (
	"context"
	"fmt"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigilha/vigil/cluster/tlsconf"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// peerClients keeps lazily-connecting gRPC clients to the other observers,
// for forwarding writes to the leader and asking peers for their status.
type peerClients struct {
	creds  credentials.TransportCredentials
	mu     sync.Mutex
	conns  map[peerKey]*grpc.ClientConn
	closed bool
}

// peerKey names one client: the address, and the observer that must
// answer there ("" when any observer certificate will do).
type peerKey struct{ id, addr string }

// newPeerClients uses creds (mutual TLS as an observer) or, when nil,
// plaintext.
func newPeerClients(creds credentials.TransportCredentials) *peerClients {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	return &peerClients{creds: creds, conns: map[peerKey]*grpc.ClientConn{}}
}

// client is a client of whichever observer answers at addr.
func (p *peerClients) client(addr string) (vigilv1.AdminClient, error) {
	return p.clientFor("", addr)
}

// clientFor is a client of observer id at addr: with TLS, a server whose
// certificate names another observer is refused at the handshake.
func (p *peerClients) clientFor(id, addr string) (vigilv1.AdminClient, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("observer is shutting down")
	}
	key := peerKey{id: id, addr: addr}
	cc, ok := p.conns[key]
	if !ok {
		creds := p.creds
		if id != "" {
			creds = &namedCreds{TransportCredentials: creds, want: id}
		}
		var err error
		// grpc.NewClient does not dial yet; calls carry their own deadlines.
		cc, err = grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return nil, fmt.Errorf("client for observer at %s: %w", addr, err)
		}
		p.conns[key] = cc
	}
	return vigilv1.NewAdminClient(cc), nil
}

func (p *peerClients) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	for _, cc := range p.conns {
		_ = cc.Close()
	}
}

// namedCreds checks, after the TLS handshake, that the server is the
// observer we meant to reach. Plaintext connections carry no identity and
// pass unchecked.
type namedCreds struct {
	credentials.TransportCredentials
	want string
}

func (c *namedCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		return nil, nil, err
	}
	ti, ok := info.(credentials.TLSInfo)
	if !ok {
		return conn, info, nil
	}
	kind, name, err := tlsconf.IdentityOfConn(ti.State)
	if err == nil && (kind != kindObserver || name != c.want) {
		err = fmt.Errorf("%s/%s answered at %s, the address of observer %s", kind, name, authority, c.want)
	}
	if err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	return conn, info, nil
}

func (c *namedCreds) Clone() credentials.TransportCredentials {
	return &namedCreds{TransportCredentials: c.TransportCredentials.Clone(), want: c.want}
}
