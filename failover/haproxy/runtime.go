package haproxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Command sends one Runtime API command to the socket in cfg and returns
// HAProxy's answer. Each command uses its own connection (HAProxy's
// non-interactive mode: it answers, then closes). It is exported for
// tools and tests; Route and State use it.
func Command(ctx context.Context, cfg Config, cmd string) (string, error) {
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	network, addr := socketAddr(cfg.Socket)
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return "", fmt.Errorf("runtime API %s: %w", cfg.Socket, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	// Unblock the read if ctx is cancelled before the deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := io.WriteString(conn, strings.TrimRight(cmd, "\n")+"\n"); err != nil {
		return "", fmt.Errorf("runtime API %s: write: %w", cfg.Socket, err)
	}
	out, err := io.ReadAll(conn)
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return string(out), fmt.Errorf("runtime API %s: read: %w", cfg.Socket, err)
	}
	return string(out), nil
}

func (r *Router) command(ctx context.Context, cmd string) (string, error) {
	return Command(ctx, r.cfg, cmd)
}

// socketAddr tells a unix socket path from a TCP host:port.
func socketAddr(s string) (network, addr string) {
	switch {
	case strings.HasPrefix(s, "unix:"):
		return "unix", strings.TrimPrefix(s, "unix:")
	case strings.HasPrefix(s, "tcp:"):
		return "tcp", strings.TrimPrefix(s, "tcp:")
	case strings.HasPrefix(s, "ipv4@"):
		return "tcp4", strings.TrimPrefix(s, "ipv4@")
	case strings.Contains(s, "/"):
		return "unix", s
	}
	if _, _, err := net.SplitHostPort(s); err == nil {
		return "tcp", s
	}
	return "unix", s
}
