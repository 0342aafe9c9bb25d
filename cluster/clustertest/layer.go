package clustertest

import (
	"errors"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// cuttableLayer wraps a Raft stream layer so a test can cut the observer
// off the Raft network (both directions) and heal it again, with real TCP
// underneath.
type cuttableLayer struct {
	raft.StreamLayer
	mu    sync.Mutex
	cut   bool
	conns map[*trackedConn]struct{}
}

var errCut = errors.New("clustertest: observer cut off the raft network")

func newCuttableLayer(inner raft.StreamLayer) *cuttableLayer {
	return &cuttableLayer{StreamLayer: inner, conns: map[*trackedConn]struct{}{}}
}

func (l *cuttableLayer) Accept() (net.Conn, error) {
	for {
		c, err := l.StreamLayer.Accept()
		if err != nil {
			return nil, err
		}
		if tc := l.track(c); tc != nil {
			return tc, nil
		}
	}
}

func (l *cuttableLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	l.mu.Lock()
	cut := l.cut
	l.mu.Unlock()
	if cut {
		return nil, errCut
	}
	c, err := l.StreamLayer.Dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	if tc := l.track(c); tc != nil {
		return tc, nil
	}
	return nil, errCut
}

// track registers c, or closes it and returns nil while cut.
func (l *cuttableLayer) track(c net.Conn) *trackedConn {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut {
		_ = c.Close()
		return nil
	}
	tc := &trackedConn{Conn: c, l: l}
	l.conns[tc] = struct{}{}
	return tc
}

// setCut cuts (closing every open connection) or heals the observer.
func (l *cuttableLayer) setCut(cut bool) {
	l.mu.Lock()
	l.cut = cut
	var open []*trackedConn
	if cut {
		for c := range l.conns {
			open = append(open, c)
		}
	}
	l.mu.Unlock()
	for _, c := range open {
		_ = c.Close()
	}
}

type trackedConn struct {
	net.Conn
	l    *cuttableLayer
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
