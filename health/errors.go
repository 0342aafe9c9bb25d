package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrorKind classifies why a probe failed, for metrics and operators.
type ErrorKind string

// Error kinds. KindNone is the kind of a successful probe.
const (
	KindNone ErrorKind = ""
	// KindTimeout: no answer within the probe's timeout (a hung server).
	KindTimeout ErrorKind = "timeout"
	// KindRefused: nothing accepts connections at the address.
	KindRefused ErrorKind = "refused"
	// KindDNS: the host name did not resolve.
	KindDNS ErrorKind = "dns"
	// KindTLS: handshake or certificate failure.
	KindTLS ErrorKind = "tls"
	// KindAuth: the server rejected our credentials or access.
	KindAuth ErrorKind = "auth"
	// KindStatus: the server answered that it is not serving: an
	// unexpected HTTP status, or PostgreSQL starting up / shutting down /
	// out of connections.
	KindStatus ErrorKind = "status"
	// KindProtocol: something answered, but hung up mid-conversation or
	// not in the expected protocol.
	KindProtocol ErrorKind = "protocol"
	// KindOther: anything else.
	KindOther ErrorKind = "other"
	// KindWriteStalled: a PostgreSQL primary still answers reads but its
	// heartbeat writes have not completed for write_stall_after (e.g. a
	// frozen or hung disk).
	KindWriteStalled ErrorKind = "write_stalled"
	// KindReplayStalled: a standby still answers, but its replay position
	// has not moved for the group's write_stall_after while the primary,
	// seen up, was ahead of it (a hung disk, paused replay, a long replay
	// conflict): it would not be a safe failover target.
	KindReplayStalled ErrorKind = "replay_stalled"
)

// ClassifyError maps an error from dialing, TLS, HTTP or pgx to a kind.
func ClassifyError(err error) ErrorKind {
	if err == nil {
		return KindNone
	}
	// DNS first: a resolver timeout is still a DNS problem.
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return KindDNS
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return classifySQLState(pgErr.Code)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || pgconn.Timeout(err) {
		return KindTimeout
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return KindTimeout
	}
	if isTLSError(err) {
		return KindTLS
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return KindRefused
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return KindProtocol
	}
	// net/http reports garbage answers only as text.
	if msg := err.Error(); strings.Contains(msg, "malformed HTTP") || strings.Contains(msg, "unexpected message") {
		return KindProtocol
	}
	return KindOther
}

// classifySQLState maps a PostgreSQL error code to a kind.
func classifySQLState(code string) ErrorKind {
	switch {
	case strings.HasPrefix(code, "28"): // invalid_authorization_specification, invalid_password
		return KindAuth
	case code == "42501": // insufficient_privilege
		return KindAuth
	case code == "57P03", // cannot_connect_now: starting up, shutting down, not yet consistent
		code == "57P01", code == "57P02", // admin_shutdown, crash_shutdown
		code == "53300": // too_many_connections
		return KindStatus
	case strings.HasPrefix(code, "08"): // connection_exception
		return KindProtocol
	}
	return KindOther
}

func isTLSError(err error) bool {
	var (
		recordErr  tls.RecordHeaderError
		alertErr   tls.AlertError
		verifyErr  *tls.CertificateVerificationError
		unknownCA  x509.UnknownAuthorityError
		hostErr    x509.HostnameError
		invalidErr x509.CertificateInvalidError
	)
	switch {
	case errors.As(err, &recordErr), errors.As(err, &alertErr), errors.As(err, &verifyErr),
		errors.As(err, &unknownCA), errors.As(err, &hostErr), errors.As(err, &invalidErr):
		return true
	}
	// pgconn reports a server without TLS (sslmode=require) as text.
	return strings.Contains(err.Error(), "server refused TLS connection") ||
		strings.Contains(err.Error(), "tls: ")
}
