package health

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// waitFor polls cond every 10ms until it holds; it fails the test after
// timeout. Tests wait on conditions, never on fixed sleeps.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// closedAddr returns an address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestTCPProbe(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	r := NewTCPProbe(l.Addr().String(), time.Second).Probe(context.Background())
	if r.Verdict != VerdictUp || r.Err != "" || r.ErrKind != KindNone || r.At.IsZero() || r.Role != RoleUnknown {
		t.Fatalf("listening port: %+v", r)
	}

	r = NewTCPProbe(closedAddr(t), time.Second).Probe(context.Background())
	if r.Verdict != VerdictDown || r.ErrKind != KindRefused || r.Err == "" {
		t.Fatalf("closed port: %+v", r)
	}

	r = NewTCPProbe("no-such-host.invalid:5432", time.Second).Probe(context.Background())
	if r.Verdict != VerdictDown || r.ErrKind != KindDNS {
		t.Fatalf("bad host: %+v", r)
	}
}

// httpTarget splits a test server URL into the probe's host and port.
func httpTarget(t *testing.T, raw string) (string, int) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return u.Hostname(), port
}

func TestHTTPProbe(t *testing.T) {
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/primary", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("/replica", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/primary", http.StatusFound) })
	mux.HandleFunc("/created", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) })
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs before srv.Close
	host, port := httpTarget(t, srv.URL)

	probe := func(path string, expect int, timeout time.Duration) Result {
		return NewHTTPProbe(HTTPProbeConfig{Host: host, Port: port, Path: path, ExpectStatus: expect, Timeout: timeout, UpRole: RolePrimary}).
			Probe(context.Background())
	}

	if r := probe("/primary", 0, time.Second); r.Verdict != VerdictUp || r.Role != RolePrimary || r.Err != "" {
		t.Fatalf("expected status: %+v", r)
	}
	if r := probe("created", http.StatusCreated, time.Second); r.Verdict != VerdictUp {
		t.Fatalf("custom expected status (path without slash): %+v", r)
	}
	if r := probe("/replica", 0, time.Second); r.Verdict != VerdictDown || r.ErrKind != KindStatus || r.Role != RoleUnknown {
		t.Fatalf("other status: %+v", r)
	}
	if r := probe("/moved", 0, time.Second); r.Verdict != VerdictDown || r.ErrKind != KindStatus {
		t.Fatalf("redirect must not be followed: %+v", r)
	}

	const timeout = 300 * time.Millisecond
	start := time.Now()
	r := probe("/hang", 0, timeout)
	elapsed := time.Since(start)
	if r.Verdict != VerdictDown || r.ErrKind != KindTimeout {
		t.Fatalf("hung handler: %+v", r)
	}
	if elapsed < timeout || elapsed > timeout+3*time.Second {
		t.Fatalf("hung handler probe took %v with timeout %v", elapsed, timeout)
	}

	// The caller's context bounds the probe too.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	r = NewHTTPProbe(HTTPProbeConfig{Host: host, Port: port, Path: "/hang", Timeout: time.Minute}).Probe(ctx)
	if r.Verdict != VerdictDown || r.ErrKind != KindTimeout || r.Latency > 2*time.Second {
		t.Fatalf("caller deadline: %+v", r)
	}

	for _, bad := range []HTTPProbeConfig{
		{Port: port},
		{Host: host},
		{Host: host, Port: 70000},
		{Scheme: "gopher", Host: host, Port: port},
		{Host: host, Port: port, ExpectStatus: 42},
		{Host: host, Port: port, Path: "/%zz"},
	} {
		if r := NewHTTPProbe(bad).Probe(context.Background()); r.Verdict != VerdictDown || r.ErrKind != KindOther || r.Err == "" {
			t.Errorf("bad config %+v: %+v", bad, r)
		}
	}

	closedHost, closedPort := httpTarget(t, "http://"+closedAddr(t))
	r = NewHTTPProbe(HTTPProbeConfig{Host: closedHost, Port: closedPort, Timeout: time.Second}).Probe(context.Background())
	if r.Verdict != VerdictDown || r.ErrKind != KindRefused {
		t.Fatalf("closed port: %+v", r)
	}
}

func TestHTTPProbeTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // rejected handshakes are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	host, port := httpTarget(t, srv.URL)

	// Unknown CA: certificates are verified, so this is down.
	r := NewHTTPProbe(HTTPProbeConfig{Scheme: "https", Host: host, Port: port, Timeout: time.Second}).Probe(context.Background())
	if r.Verdict != VerdictDown || r.ErrKind != KindTLS {
		t.Fatalf("unverified certificate: %+v", r)
	}
	// Even when the caller asks to skip verification.
	r = NewHTTPProbe(HTTPProbeConfig{Scheme: "https", Host: host, Port: port, Timeout: time.Second,
		TLS: &tls.Config{InsecureSkipVerify: true}}).Probe(context.Background())
	if r.Verdict != VerdictDown || r.ErrKind != KindTLS {
		t.Fatalf("InsecureSkipVerify must be ignored: %+v", r)
	}
	// Trusting the test CA makes it up.
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	r = NewHTTPProbe(HTTPProbeConfig{Scheme: "https", Host: host, Port: port, Timeout: time.Second,
		TLS: &tls.Config{RootCAs: pool}}).Probe(context.Background())
	if r.Verdict != VerdictUp {
		t.Fatalf("trusted certificate: %+v", r)
	}
}

func TestClassifyError(t *testing.T) {
	tests := []struct {
		err  error
		want ErrorKind
	}{
		{nil, KindNone},
		{context.DeadlineExceeded, KindTimeout},
		{fmt.Errorf("dial: %w", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}), KindRefused},
		{&net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}, KindDNS},
		{&net.DNSError{Err: "timeout", Name: "x", IsTimeout: true}, KindDNS},
		{x509.UnknownAuthorityError{}, KindTLS},
		{&pgconn.PgError{Code: "28P01", Severity: "FATAL"}, KindAuth},
		{&pgconn.PgError{Code: "28000", Severity: "FATAL"}, KindAuth},
		{&pgconn.PgError{Code: "57P03", Severity: "FATAL"}, KindStatus},
		{&pgconn.PgError{Code: "53300", Severity: "FATAL"}, KindStatus},
		{&pgconn.PgError{Code: "3D000", Severity: "FATAL"}, KindOther},
		{io.EOF, KindProtocol},
		{fmt.Errorf("read: %w", syscall.ECONNRESET), KindProtocol},
		{errors.New("boom"), KindOther},
	}
	for _, tc := range tests {
		if got := ClassifyError(tc.err); got != tc.want {
			t.Errorf("ClassifyError(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestStrings(t *testing.T) {
	for v, want := range map[Verdict]string{VerdictUnknown: "unknown", VerdictUp: "up", VerdictDown: "down", 9: "Verdict(9)"} {
		if v.String() != want {
			t.Errorf("%d: %q", int(v), v.String())
		}
	}
	for r, want := range map[Role]string{RoleUnknown: "unknown", RolePrimary: "primary", RoleStandby: "standby", 9: "Role(9)"} {
		if r.String() != want {
			t.Errorf("%d: %q", int(r), r.String())
		}
	}
}

func TestPostgresProbeBadInput(t *testing.T) {
	// No server needed: config errors and refused connections.
	for _, cfg := range []PostgresProbeConfig{
		{Address: "no-port", Timeout: time.Second},
		{Address: "127.0.0.1:5432", SSLMode: "bogus", Password: "s3cret", Timeout: time.Second},
	} {
		r := NewPostgresProbe(cfg).Probe(context.Background())
		if r.Verdict != VerdictDown || r.ErrKind != KindOther || r.Err == "" {
			t.Errorf("%+v: %+v", cfg, r)
		}
		if cfg.Password != "" && strings.Contains(r.Err, cfg.Password) {
			t.Errorf("error leaks the password: %s", r.Err)
		}
	}
	r := NewPostgresProbe(PostgresProbeConfig{Address: closedAddr(t), User: "postgres", SSLMode: "disable", Timeout: time.Second}).
		Probe(context.Background())
	if r.Verdict != VerdictDown || r.ErrKind != KindRefused {
		t.Fatalf("closed port: %+v", r)
	}
}

func TestQuoteConnValue(t *testing.T) {
	for in, want := range map[string]string{``: `''`, `a b`: `'a b'`, `it's`: `'it\'s'`, `back\slash`: `'back\\slash'`} {
		if got := quoteConnValue(in); got != want {
			t.Errorf("quoteConnValue(%q) = %s, want %s", in, got, want)
		}
	}
	// A password with quotes and spaces survives parsing intact.
	c, err := pgConnConfig(PostgresProbeConfig{Address: "[::1]:5433", User: "u", Database: "d b", Password: `p' w\d`})
	if err != nil {
		t.Fatal(err)
	}
	if c.Host != "::1" || c.Port != 5433 || c.Database != "d b" || c.Password != `p' w\d` {
		t.Fatalf("parsed config: host=%q port=%d db=%q", c.Host, c.Port, c.Database)
	}
}

// JSON logs name verdicts and roles instead of printing their numbers.
func TestVerdictAndRoleLogByName(t *testing.T) {
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("probe verdict changed", "verdict", VerdictDown, "role", RolePrimary)
	if s := buf.String(); !strings.Contains(s, `"verdict":"down"`) || !strings.Contains(s, `"role":"primary"`) {
		t.Fatalf("JSON log line %s: want verdict and role by name", s)
	}
}
