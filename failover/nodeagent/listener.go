package nodeagent

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
)

// Connection bounds of the agent's listeners (the gRPC port's cap is the
// max_connections setting).
const (
	// DefaultMaxConnections is max_connections' default: concurrent
	// connections on the gRPC port. The observers need one each.
	DefaultMaxConnections = 64
	maxMaxConnections     = 10000
	// handshakeTimeout bounds a new connection's TLS handshake and HTTP/2
	// preface (grpc.ConnectionTimeout); a connection that has not
	// completed them by then is closed.
	handshakeTimeout = 5 * time.Second
	// idleTimeout closes a gRPC connection without RPCs for that long
	// (keepalive MaxConnectionIdle); observers lease every
	// lease_timeout/3, so theirs are never idle.
	idleTimeout = 5 * time.Minute
	// maxMetricsConnections caps the /metrics listener.
	maxMetricsConnections = 16
	// logEvery is the rate limit of repetitive log lines (refused
	// connections, refused requests): at most one per kind per logEvery.
	logEvery = 10 * time.Second
)

// limitListener caps the number of connections open at once: a
// connection accepted beyond the cap is closed at once (and reported),
// so idle or slow connections cannot exhaust the process's descriptors
// and goroutines.
type limitListener struct {
	net.Listener
	max      int64
	active   atomic.Int64
	onRefuse func(remote net.Addr)
	onChange func(active int64)
}

func newLimitListener(l net.Listener, max int, onRefuse func(net.Addr), onChange func(int64)) *limitListener {
	return &limitListener{Listener: l, max: int64(max), onRefuse: onRefuse, onChange: onChange}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		n := l.active.Add(1)
		if n > l.max {
			l.active.Add(-1)
			_ = c.Close()
			if l.onRefuse != nil {
				l.onRefuse(c.RemoteAddr())
			}
			continue
		}
		if l.onChange != nil {
			l.onChange(n)
		}
		return &limitConn{Conn: c, l: l}, nil
	}
}

type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		n := c.l.active.Add(-1)
		if c.l.onChange != nil {
			c.l.onChange(n)
		}
	})
	return err
}

// handshakeReporter wraps the server's transport credentials to count
// and log (rate-limited, with the remote address) the connections whose
// TLS handshake fails: wrong CA, a certificate that is not an observer's,
// no certificate, or no handshake before handshakeTimeout.
type handshakeReporter struct {
	credentials.TransportCredentials
	onFail func(remote net.Addr, err error)
}

func (h handshakeReporter) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, info, err := h.TransportCredentials.ServerHandshake(raw)
	// io.EOF: closed before any handshake (a port probe); gRPC itself
	// treats it as no error worth reporting. Its identity must be kept.
	if err != nil && !errors.Is(err, io.EOF) {
		h.onFail(raw.RemoteAddr(), err)
	}
	return c, info, err
}

func (h handshakeReporter) Clone() credentials.TransportCredentials {
	return handshakeReporter{TransportCredentials: h.TransportCredentials.Clone(), onFail: h.onFail}
}
