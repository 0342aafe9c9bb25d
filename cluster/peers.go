package cluster

import (
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// peerClients keeps one lazily-connecting gRPC client per other observer,
// for forwarding writes to the leader and asking peers for their status.
type peerClients struct {
	creds  credentials.TransportCredentials
	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool
}

// newPeerClients uses creds (mutual TLS as an observer) or, when nil,
// plaintext.
func newPeerClients(creds credentials.TransportCredentials) *peerClients {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	return &peerClients{creds: creds, conns: map[string]*grpc.ClientConn{}}
}

func (p *peerClients) client(addr string) (vigilv1.AdminClient, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("observer is shutting down")
	}
	cc, ok := p.conns[addr]
	if !ok {
		var err error
		// grpc.NewClient does not dial yet; calls carry their own deadlines.
		cc, err = grpc.NewClient(addr, grpc.WithTransportCredentials(p.creds))
		if err != nil {
			return nil, fmt.Errorf("client for observer at %s: %w", addr, err)
		}
		p.conns[addr] = cc
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
