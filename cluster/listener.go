package cluster

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The Raft port is open to the network, so it is bounded: a connection
// cap, a deadline for the handshake (TLS) or the first byte (plaintext), an
// idle timeout, and refusals logged a few times a second at most. None of
// it costs a legitimate observer anything: its heartbeats arrive every
// HeartbeatTimeout/10, its pipelines every CommitTimeout, and its pooled
// connections that went idle are replaced before they time out here (see
// redialConn).
const (
	// raftMaxConns bounds the inbound Raft connections (handshaking or
	// open). A peer uses a handful: heartbeats, a pipeline, pooled RPCs, a
	// snapshot.
	raftMaxConns = 64
	// raftHandshakeTimeout bounds the TLS handshake of an inbound
	// connection.
	raftHandshakeTimeout = 5 * time.Second
	// raftFirstByteTimeout bounds, without TLS, the wait for an inbound
	// connection's first byte.
	raftFirstByteTimeout = 10 * time.Second
	// raftIdleTimeout closes an inbound connection that has not delivered
	// a byte for that long.
	raftIdleTimeout = 2 * time.Minute
	// raftRedialAfterIdle: an outbound connection idle for that long is
	// replaced by a fresh one before its next request, well before the
	// other side's raftIdleTimeout closes it.
	raftRedialAfterIdle = raftIdleTimeout / 2
	// refusalLogRate bounds the lines logged about refused connections,
	// per second in total.
	refusalLogRate = 5
)

// maxRaftRPCType is the highest RPC type byte hashicorp/raft's network
// transport sends (AppendEntries 0, RequestVote 1, InstallSnapshot 2,
// TimeoutNow 3, RequestPreVote 4).
const maxRaftRPCType = 4

// listenerMetrics count what the Raft port refused and closed.
type listenerMetrics struct {
	refused    *prometheus.CounterVec
	idleClosed prometheus.Counter
	open       prometheus.Gauge
}

func newListenerMetrics(reg prometheus.Registerer) *listenerMetrics {
	m := &listenerMetrics{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_raft_connections_refused_total",
			Help: "Raft connections refused, by reason: limit (connection cap reached), unknown_address (not from another observer's raft IP), timeout (no handshake or first byte in time), handshake (TLS handshake failed), unknown_peer (certificate of an observer not configured, or our own), wrong_address (configured observer from another IP), protocol (plaintext: not a raft RPC), dial_identity (another observer answered at a configured address).",
		}, []string{"reason"}),
		idleClosed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_raft_connections_idle_closed_total",
			Help: "Inbound Raft connections closed because nothing arrived on them for the idle timeout.",
		}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_raft_connections_inbound",
			Help: "Inbound Raft connections open now, handshaking ones included.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.refused, m.idleClosed, m.open)
	}
	return m
}

// listenerLimits are the bounds of a boundedListener.
type listenerLimits struct {
	maxConns  int
	handshake time.Duration // the vetting deadline
	idle      time.Duration
}

// vetFunc vets one inbound connection under the handshake deadline and
// returns the connection to hand out; an error is a *raftRefusal.
type vetFunc func(ctx context.Context, c net.Conn) (net.Conn, error)

// boundedListener accepts connections on its own goroutine and hands out
// only those that passed the address check and the vetting (handshake),
// each within the limits. Accept never returns a per-connection error, so
// raft's accept loop never backs off because of a bad client.
type boundedListener struct {
	ln       net.Listener
	limits   listenerLimits
	precheck func(net.Addr) error // before taking a slot; nil: none
	vet      vetFunc
	metrics  *listenerMetrics
	log      *limitedLog
	debug    *slog.Logger

	slots chan struct{}
	ready chan net.Conn
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup

	mu    sync.Mutex
	conns map[*slotConn]struct{}
}

func newBoundedListener(ln net.Listener, limits listenerLimits, precheck func(net.Addr) error, vet vetFunc, m *listenerMetrics, log *slog.Logger) *boundedListener {
	b := &boundedListener{
		ln: ln, limits: limits, precheck: precheck, vet: vet, metrics: m,
		log: newLimitedLog(log, refusalLogRate, refusalLogRate), debug: log,
		slots: make(chan struct{}, limits.maxConns), ready: make(chan net.Conn),
		done: make(chan struct{}), conns: map[*slotConn]struct{}{},
	}
	b.wg.Add(1)
	go b.acceptLoop()
	return b
}

func (b *boundedListener) Accept() (net.Conn, error) {
	select {
	case c := <-b.ready:
		return c, nil
	case <-b.done:
		return nil, net.ErrClosed
	}
}

func (b *boundedListener) Addr() net.Addr { return b.ln.Addr() }

// Close stops accepting and closes every connection it accepted,
// handshaking or handed out.
func (b *boundedListener) Close() error {
	var err error
	b.once.Do(func() {
		close(b.done)
		err = b.ln.Close()
		b.mu.Lock()
		open := make([]*slotConn, 0, len(b.conns))
		for c := range b.conns {
			open = append(open, c)
		}
		b.mu.Unlock()
		for _, c := range open {
			_ = c.Close()
		}
		b.wg.Wait()
	})
	return err
}

func (b *boundedListener) closed() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

func (b *boundedListener) acceptLoop() {
	defer b.wg.Done()
	var delay time.Duration
	for {
		c, err := b.ln.Accept()
		if err != nil {
			if b.closed() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, for instance: back off, do not spin.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			b.log.Log(slog.LevelWarn, "raft listener: accept failed", "err", err, "retry_in", delay)
			select {
			case <-b.done:
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		if b.precheck != nil {
			if err := b.precheck(c.RemoteAddr()); err != nil {
				b.refuse(c, err)
				continue
			}
		}
		select {
		case b.slots <- struct{}{}:
		default:
			b.refuse(c, refuse(refusedLimit, "%d raft connections open already", b.limits.maxConns))
			continue
		}
		sc := &slotConn{Conn: c, b: b}
		b.mu.Lock()
		b.conns[sc] = struct{}{}
		b.mu.Unlock()
		b.metrics.open.Inc()
		b.wg.Add(1)
		go b.admit(sc)
	}
}

// admit vets one connection under the handshake deadline and hands it out.
func (b *boundedListener) admit(c *slotConn) {
	defer b.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), b.limits.handshake)
	defer cancel()
	_ = c.SetDeadline(time.Now().Add(b.limits.handshake))
	vc, err := b.vet(ctx, c)
	if err != nil {
		b.refuse(c, err)
		return
	}
	_ = c.SetDeadline(time.Time{})
	ic := &idleConn{Conn: vc, idle: b.limits.idle, closed: b.closed, onIdle: func() {
		b.metrics.idleClosed.Inc()
		b.debug.Debug("closed an idle raft connection", "remote", c.RemoteAddr().String(), "idle", b.limits.idle)
	}}
	select {
	case b.ready <- ic:
	case <-b.done:
		_ = ic.Close()
	}
}

// refuse closes a connection, counts it and logs it (rate-limited).
func (b *boundedListener) refuse(c net.Conn, err error) {
	_ = c.Close()
	reason := refusedHandshake
	var r *raftRefusal
	if errors.As(err, &r) {
		reason = r.reason
	}
	b.refused(reason, c.RemoteAddr(), err)
}

func (b *boundedListener) refused(reason string, remote net.Addr, err error) {
	b.metrics.refused.WithLabelValues(reason).Inc()
	addr := ""
	if remote != nil {
		addr = remote.String()
	}
	b.log.Log(slog.LevelWarn, "raft connection refused", "remote", addr, "reason", reason, "err", err)
}

// slotConn holds one of the listener's slots until it is closed.
type slotConn struct {
	net.Conn
	b    *boundedListener
	once sync.Once
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.b.mu.Lock()
		delete(c.b.conns, c)
		c.b.mu.Unlock()
		c.b.metrics.open.Dec()
		<-c.b.slots
	})
	return err
}

// idleConn closes an inbound connection on which nothing arrived for idle.
// The timeout, like the listener's own Close, reads as a clean end of
// stream, so raft does not log it as an error.
type idleConn struct {
	net.Conn
	idle   time.Duration
	closed func() bool // the listener is closed
	onIdle func()
}

func (c *idleConn) Read(p []byte) (int, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	n, err := c.Conn.Read(p)
	if err == nil || n > 0 {
		return n, err
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.onIdle()
		_ = c.Conn.Close()
		return 0, io.EOF
	}
	if c.closed() {
		return 0, io.EOF
	}
	return n, err
}

// vetPlaintext is the vetting without TLS: the first byte must arrive in
// time and be a Raft RPC type.
func vetPlaintext(_ context.Context, c net.Conn) (net.Conn, error) {
	var first [1]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, refuse(refusedTimeout, "nothing received within the deadline")
		}
		return nil, refuse(refusedProtocol, "closed before sending anything: %v", err)
	}
	if first[0] > maxRaftRPCType {
		return nil, refuse(refusedProtocol, "first byte 0x%02x is not a raft RPC type", first[0])
	}
	return &prefixConn{Conn: c, prefix: first[:]}, nil
}

// prefixConn gives back bytes already read before the connection's own.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// redialConn is an outbound Raft connection that replaces itself with a
// fresh one when a request is about to go out on it after it sat idle for
// maxIdle (raft keeps pooled connections for votes and such that may not
// be used for hours; the other side closes them after raftIdleTimeout, and
// the first vote of the next election would fail on a dead one). Raft's
// requests on a pooled connection are one request, one response, so
// between them the stream is at a message boundary and a new connection
// can take over. It never replaces a connection while a read is in
// progress (a pipeline's reader), nor after Close.
type redialConn struct {
	dial    func() (net.Conn, error)
	maxIdle time.Duration

	mu      sync.Mutex
	cur     net.Conn
	last    time.Time // last byte read or written
	reading int
	rd, wd  time.Time // deadlines as set by raft, for a replacement
	closed  bool
}

func newRedialConn(c net.Conn, maxIdle time.Duration, dial func() (net.Conn, error)) *redialConn {
	return &redialConn{cur: c, maxIdle: maxIdle, dial: dial, last: time.Now()}
}

func (c *redialConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	cur := c.cur
	c.reading++
	c.mu.Unlock()
	n, err := cur.Read(p)
	c.mu.Lock()
	c.reading--
	if n > 0 {
		c.last = time.Now()
	}
	c.mu.Unlock()
	return n, err
}

func (c *redialConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if c.reading == 0 && time.Since(c.last) >= c.maxIdle {
		fresh, err := c.dial()
		if err != nil {
			c.mu.Unlock()
			return 0, err
		}
		_ = c.cur.Close()
		c.cur = fresh
		if !c.rd.IsZero() {
			_ = fresh.SetReadDeadline(c.rd)
		}
		if !c.wd.IsZero() {
			_ = fresh.SetWriteDeadline(c.wd)
		}
		c.last = time.Now()
	}
	cur := c.cur
	c.mu.Unlock()
	n, err := cur.Write(p)
	if n > 0 {
		c.mu.Lock()
		c.last = time.Now()
		c.mu.Unlock()
	}
	return n, err
}

func (c *redialConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return c.cur.Close()
}

func (c *redialConn) current() net.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

func (c *redialConn) LocalAddr() net.Addr  { return c.current().LocalAddr() }
func (c *redialConn) RemoteAddr() net.Addr { return c.current().RemoteAddr() }

func (c *redialConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rd, c.wd = t, t
	return c.cur.SetDeadline(t)
}

func (c *redialConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rd = t
	return c.cur.SetReadDeadline(t)
}

func (c *redialConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wd = t
	return c.cur.SetWriteDeadline(t)
}
