package cluster

import (
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// tcpStreamLayer is raft's stream layer over TCP. We build it ourselves
// (rather than raft.NewTCPTransport) so that it can be bounded (its
// listener is a boundedListener), wrapped by TLS, and wrapped by tests
// that cut an observer off the network.
type tcpStreamLayer struct {
	ln        net.Listener
	advertise net.Addr
}

var _ raft.StreamLayer = (*tcpStreamLayer)(nil)

// listenRaft checks the advertise address and listens on bind.
func listenRaft(bind, advertise string) (net.Listener, net.Addr, error) {
	adv, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil {
		return nil, nil, fmt.Errorf("raft advertise address %q: %w", advertise, err)
	}
	if adv.IP == nil || adv.IP.IsUnspecified() {
		return nil, nil, fmt.Errorf("raft advertise address %q: not an address other observers can reach", advertise)
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, nil, fmt.Errorf("listen for raft on %s: %w", bind, err)
	}
	return ln, adv, nil
}

func (t *tcpStreamLayer) Accept() (net.Conn, error) { return t.ln.Accept() }
func (t *tcpStreamLayer) Close() error              { return t.ln.Close() }
func (t *tcpStreamLayer) Addr() net.Addr            { return t.advertise }

func (t *tcpStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	return d.Dial("tcp", string(address))
}

// redialLayer gives raft outbound connections that replace themselves
// after sitting idle (redialConn), so that the other side's idle timeout
// never fails a request on a pooled connection.
type redialLayer struct {
	raft.StreamLayer
	maxIdle time.Duration
}

func (l *redialLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := l.StreamLayer.Dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	return newRedialConn(c, l.maxIdle, func() (net.Conn, error) { return l.StreamLayer.Dial(addr, timeout) }), nil
}

// raftStreamLayer builds the Raft stream layer, outermost first: wrap
// (tests), redialLayer, with TLS the tlsStreamLayer (named peers), and the
// TCP layer on a boundedListener (address check, connection cap,
// handshake or first-byte deadline, idle timeout).
func (o *Observer) raftStreamLayer(wrap func(raft.StreamLayer) raft.StreamLayer) (raft.StreamLayer, error) {
	ln, adv, err := listenRaft(o.cfg.Raft.Bind, o.cfg.Raft.Advertise)
	if err != nil {
		return nil, err
	}
	log := o.log.With("component", "raft-listener")
	m := newListenerMetrics(o.reg)
	peers := newRaftPeers(o.cfg, lookupIPs, log)
	limits := listenerLimits{maxConns: raftMaxConns, handshake: raftFirstByteTimeout, idle: raftIdleTimeout}
	vet := vetPlaintext
	var tl *tlsStreamLayer
	if o.tls != nil {
		tl = &tlsStreamLayer{store: o.tls, peers: peers, server: o.tls.ServerConfigWithCheck(peers.check, kindObserver)}
		vet = tl.handshake
		limits.handshake = raftHandshakeTimeout
	}
	bl := newBoundedListener(ln, limits, peers.mayConnect, vet, m, log)
	var stream raft.StreamLayer = &tcpStreamLayer{ln: bl, advertise: adv}
	if tl != nil {
		tl.StreamLayer, tl.refused = stream, bl.refused
		stream = tl
	}
	stream = &redialLayer{StreamLayer: stream, maxIdle: raftRedialAfterIdle}
	if wrap != nil {
		stream = wrap(stream)
	}
	return stream, nil
}
