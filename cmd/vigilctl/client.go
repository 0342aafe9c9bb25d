package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/vigilha/vigil/cluster/tlsconf"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// client calls the admin API of the first observer that answers.
type client struct {
	addrs   []string
	timeout time.Duration
	// creds is mutual TLS (--ca, --cert, --key) or plaintext.
	creds credentials.TransportCredentials
}

// newClient parses the global --addr, --timeout and TLS flags.
func (a *app) newClient() (*client, error) {
	addrs, err := parseAddrs(a.addrs)
	if err != nil {
		return nil, err
	}
	creds, err := a.transportCreds()
	if err != nil {
		return nil, err
	}
	return &client{addrs: addrs, timeout: a.timeout, creds: creds}, nil
}

// transportCreds builds mutual TLS from --ca/--cert/--key (or VIGIL_CA,
// VIGIL_CERT, VIGIL_KEY): the observer must present an observer
// certificate of the same CA; without them the connection is plaintext.
func (a *app) transportCreds() (credentials.TransportCredentials, error) {
	get := func(flag, env string) string {
		if flag != "" {
			return flag
		}
		return a.getenv(env)
	}
	ca, cert, key := get(a.ca, "VIGIL_CA"), get(a.cert, "VIGIL_CERT"), get(a.key, "VIGIL_KEY")
	if ca == "" && cert == "" && key == "" {
		return insecure.NewCredentials(), nil
	}
	if ca == "" || cert == "" || key == "" {
		return nil, usageErrorf("--ca, --cert and --key go together (got ca %q, cert %q, key %q)", ca, cert, key)
	}
	store, err := tlsconf.Load(tlsconf.Files{CA: ca, Cert: cert, Key: key})
	if err != nil {
		return nil, fmt.Errorf("load TLS material: %w", err)
	}
	return credentials.NewTLS(store.ClientConfig("", "observer")), nil
}

// parseAddrs splits a comma-separated list of host:port addresses.
func parseAddrs(s string) ([]string, error) {
	var addrs []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		host, port, err := net.SplitHostPort(f)
		if err != nil || host == "" || port == "" {
			return nil, usageErrorf("invalid --addr %q: want host:port", f)
		}
		addrs = append(addrs, f)
	}
	if len(addrs) == 0 {
		return nil, usageErrorf("--addr: no observer address given")
	}
	return addrs, nil
}

// dialOptions are the options of every connection to an observer.
func dialOptions(creds credentials.TransportCredentials) []grpc.DialOption {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	return []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithUserAgent("vigilctl/" + version),
	}
}

// attempt is one failed try against one address.
type attempt struct {
	addr string
	err  error
}

// allFailedError reports that no address gave a final answer.
type allFailedError struct {
	attempts []attempt
}

func (e *allFailedError) Error() string {
	if len(e.attempts) == 1 {
		return e.attempts[0].addr + ": " + errMessage(e.attempts[0].err)
	}
	var b strings.Builder
	b.WriteString("every address failed:")
	for _, at := range e.attempts {
		fmt.Fprintf(&b, "\n  %s: %s", at.addr, errMessage(at.err))
	}
	return b.String()
}

// invoke calls fn against each address in turn, each attempt with its own
// deadline, and returns the first final answer. An address that cannot be
// reached, does not answer in time, reports Unavailable (no leader) or does
// not implement the call is skipped; any other error is the observer's
// answer and is returned as is. Only calls that are safe to repeat may be
// made this way: reads trivially, and pausing a paused group (or resuming
// a running one) changes nothing. Switchover and Failover are not (a
// second attempt could start a second failover) and use invokeOnce.
func invoke[T any](ctx context.Context, c *client, fn func(context.Context, vigilv1.AdminClient) (T, error)) (T, error) {
	var zero T
	var failed []attempt
	for _, addr := range c.addrs {
		resp, err := try(ctx, addr, c.timeout, c.creds, fn)
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil {
			return zero, fmt.Errorf("interrupted: %w", ctx.Err())
		}
		if !retryable(err) {
			return zero, err
		}
		failed = append(failed, attempt{addr: addr, err: err})
	}
	return zero, &allFailedError{attempts: failed}
}

// try makes one call against addr with its own connection and deadline.
func try[T any](ctx context.Context, addr string, timeout time.Duration, creds credentials.TransportCredentials, fn func(context.Context, vigilv1.AdminClient) (T, error)) (T, error) {
	var zero T
	conn, err := grpc.NewClient(addr, dialOptions(creds)...)
	if err != nil {
		return zero, err
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := fn(cctx, vigilv1.NewAdminClient(conn))
	if err != nil && status.Code(err) == codes.DeadlineExceeded && errors.Is(cctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		return zero, status.Errorf(codes.DeadlineExceeded, "no answer within %s: %s", timeout, status.Convert(err).Message())
	}
	return resp, err
}

// retryable reports whether err means "try the next observer".
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Unimplemented:
		return true
	}
	return false
}

// errMessage is the message of a gRPC status error (without the code, which
// the message already makes clear), or err's text. The boilerplate gRPC
// wraps around dial errors is removed.
func errMessage(err error) string {
	if err == nil {
		return ""
	}
	var ae *allFailedError
	if errors.As(err, &ae) {
		return ae.Error()
	}
	var se *sentError
	if errors.As(err, &se) {
		return se.Error()
	}
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	msg := st.Message()
	if inner, ok := strings.CutPrefix(msg, `connection error: desc = "`); ok {
		inner = strings.TrimSuffix(inner, `"`)
		inner = strings.TrimPrefix(inner, "transport: ")
		inner = strings.TrimPrefix(inner, "Error while dialing: ")
		inner = strings.TrimPrefix(inner, "error while dialing: ")
		msg = inner
	}
	if msg == "" {
		msg = st.Code().String()
	}
	return msg + tlsHint(msg)
}

// tlsHint explains the transport errors of a client and an observer that
// disagree about TLS, which gRPC reports only in its own terms.
func tlsHint(msg string) string {
	switch {
	case strings.Contains(msg, "error reading server preface") || strings.Contains(msg, "broken pipe") ||
		strings.Contains(msg, "connection reset by peer"):
		return " (the observer closed the connection before speaking gRPC: if it serves TLS, pass --ca, --cert and --key, or set VIGIL_CA, VIGIL_CERT and VIGIL_KEY)"
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return " (the observer does not serve TLS: drop --ca, --cert and --key)"
	case strings.Contains(msg, "expired certificate") || strings.Contains(msg, "certificate has expired"):
		return " (a certificate has expired: renew it with vigil certs)"
	case strings.Contains(msg, "tls: bad certificate") || strings.Contains(msg, "unknown certificate authority"):
		return " (the observer refused this client's certificate: is it signed by the cluster's CA, of kind operator or viewer?)"
	}
	return ""
}

// invokeOnce makes a call that must reach at most one observer, because
// repeating it could do its work twice (Switchover and Failover: a second
// attempt could start a second failover). Unlike invoke it retries only
// what certainly never reached an observer: each address is connected to
// in turn, each within --timeout, and one that cannot be connected to is
// skipped. The request is sent on the first connection that is ready,
// with the deadline wait, and whatever comes back, an answer or any error
// (even Unavailable or no answer within wait), is final: the error is a
// *sentError that names the address.
func invokeOnce[T any](ctx context.Context, c *client, wait time.Duration, fn func(context.Context, vigilv1.AdminClient) (T, error)) (T, error) {
	var zero T
	var failed []attempt
	for _, addr := range c.addrs {
		conn, err := connectReady(ctx, addr, c.timeout, c.creds)
		if err != nil {
			if ctx.Err() != nil {
				return zero, fmt.Errorf("interrupted: %w", ctx.Err())
			}
			failed = append(failed, attempt{addr: addr, err: err})
			continue
		}
		resp, err := callOnce(ctx, conn, wait, fn)
		conn.Close()
		if err != nil {
			return zero, &sentError{addr: addr, err: err}
		}
		return resp, nil
	}
	return zero, &allFailedError{attempts: failed}
}

// callOnce makes one call on conn with the deadline wait.
func callOnce[T any](ctx context.Context, conn *grpc.ClientConn, wait time.Duration, fn func(context.Context, vigilv1.AdminClient) (T, error)) (T, error) {
	var zero T
	cctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	resp, err := fn(cctx, vigilv1.NewAdminClient(conn))
	if err == nil {
		return resp, nil
	}
	if ctx.Err() != nil {
		return zero, fmt.Errorf("interrupted: %w", ctx.Err())
	}
	if status.Code(err) == codes.DeadlineExceeded && deadlinePassed(cctx) {
		// The observer's copy of the deadline may expire just before ours.
		return zero, status.Errorf(codes.DeadlineExceeded, "no answer within %s", wait)
	}
	return zero, err
}

// deadlinePassed reports whether ctx's deadline has passed, even if its
// timer has yet to fire.
func deadlinePassed(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ctx.Err() != nil || (ok && !time.Now().Before(dl))
}

// sentError is the failure of a call that reached an observer (or may
// have: the connection was ready when it was made) and is therefore not
// repeated elsewhere.
type sentError struct {
	addr string
	err  error
}

func (e *sentError) Error() string { return e.addr + ": " + errMessage(e.err) }

func (e *sentError) Unwrap() error { return e.err }

// refused reports whether the observer turned the request down before
// acting on it: invalid, unknown group or member, refused by policy. Any
// other failure (no leader, lost leadership, no answer in time,
// interrupted) leaves open whether something was done.
func (e *sentError) refused() bool {
	switch status.Code(e.err) {
	case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition, codes.AlreadyExists,
		codes.PermissionDenied, codes.Unauthenticated, codes.Unimplemented, codes.OutOfRange:
		return true
	}
	return false
}

// connectReady connects to addr and waits at most timeout until the
// connection is ready. It fails when the connection cannot be made (with
// the dial error, e.g. connection refused) or is not ready in time; the
// returned connection is ready, so a call made on it is sent.
func connectReady(ctx context.Context, addr string, timeout time.Duration, creds credentials.TransportCredentials) (*grpc.ClientConn, error) {
	d := &dialRecorder{}
	conn, err := grpc.NewClient(addr, append(dialOptions(creds), grpc.WithContextDialer(d.dial))...)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn.Connect()
	for {
		s := conn.GetState()
		switch s {
		case connectivity.Ready:
			return conn, nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			msg := "cannot connect"
			if err := d.lastErr(); err != nil {
				msg = err.Error()
			} else if s == connectivity.TransientFailure {
				// The TCP connection was made and then failed (TLS, the
				// HTTP/2 preface): a fail-fast call says how, unsent.
				pctx, pcancel := context.WithTimeout(ctx, time.Second)
				_, perr := vigilv1.NewAdminClient(conn).Status(pctx, &vigilv1.StatusRequest{})
				pcancel()
				if perr != nil {
					msg = errMessage(perr)
				}
			}
			conn.Close()
			return nil, status.Error(codes.Unavailable, msg)
		}
		if !conn.WaitForStateChange(cctx, s) {
			conn.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			msg := "no answer within " + timeout.String()
			if err := d.lastErr(); err != nil {
				msg += ": " + err.Error()
			}
			return nil, status.Error(codes.DeadlineExceeded, msg)
		}
	}
}

// dialRecorder dials TCP connections as gRPC would and remembers the last
// error, to say why a connection could not be made.
type dialRecorder struct {
	mu  sync.Mutex
	err error
}

func (d *dialRecorder) dial(ctx context.Context, addr string) (net.Conn, error) {
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		d.mu.Lock()
		d.err = err
		d.mu.Unlock()
	}
	return conn, err
}

func (d *dialRecorder) lastErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}
