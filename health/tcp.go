package health

import (
	"context"
	"net"
	"time"
)

// TCPProbe is up when a TCP connection to its address can be opened.
type TCPProbe struct {
	addr    string
	timeout time.Duration
}

var _ Prober = (*TCPProbe)(nil)

// NewTCPProbe returns a probe that connects to addr ("host:port") and
// closes the connection at once. timeout <= 0 leaves the bound to ctx.
func NewTCPProbe(addr string, timeout time.Duration) Prober {
	return &TCPProbe{addr: addr, timeout: timeout}
}

// Probe dials the address.
func (p *TCPProbe) Probe(ctx context.Context) Result {
	start := time.Now()
	ctx, cancel := withTimeout(ctx, p.timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return downResult(ctx, start, err)
	}
	conn.Close()
	return Result{Verdict: VerdictUp, Latency: time.Since(start), At: start}
}
