package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// HTTPProbeConfig configures an HTTP(S) health check such as a
// "GET /primary answers 200" endpoint.
type HTTPProbeConfig struct {
	// Scheme is "http" (default) or "https".
	Scheme string
	Host   string
	Port   int
	// Path defaults to "/".
	Path string
	// ExpectStatus is the status meaning up; default 200.
	ExpectStatus int
	// Timeout bounds the whole request, including connect and TLS.
	Timeout time.Duration
	// TLS optionally sets roots, client certificates or ServerName for
	// https. Certificates are always verified: InsecureSkipVerify is
	// forced off, since a check that accepts any certificate would
	// accept an impostor.
	TLS *tls.Config
	// UpRole is the Role reported when the check is up (e.g. RolePrimary
	// for a "/primary" endpoint); RoleUnknown by default.
	UpRole Role
}

// HTTPProbe is up when a GET answers the expected status.
type HTTPProbe struct {
	cfgErr  error
	url     string
	expect  int
	timeout time.Duration
	role    Role
	client  *http.Client
}

var _ Prober = (*HTTPProbe)(nil)

// NewHTTPProbe returns an HTTP probe for cfg.
func NewHTTPProbe(cfg HTTPProbeConfig) Prober {
	scheme := cfg.Scheme
	if scheme == "" {
		scheme = "http"
	}
	path := cfg.Path
	if path == "" || path[0] != '/' {
		path = "/" + path
	}
	expect := cfg.ExpectStatus
	if expect == 0 {
		expect = http.StatusOK
	}
	var tlsConf *tls.Config
	if cfg.TLS != nil {
		tlsConf = cfg.TLS.Clone()
	} else {
		tlsConf = &tls.Config{}
	}
	tlsConf.InsecureSkipVerify = false
	transport := &http.Transport{
		Proxy:           nil, // health checks go straight to the member
		TLSClientConfig: tlsConf,
		// A fresh connection per probe: a reused one would hide a server
		// that no longer accepts new connections.
		DisableKeepAlives:  true,
		DisableCompression: true,
		ForceAttemptHTTP2:  false,
	}
	var cfgErr error
	switch {
	case scheme != "http" && scheme != "https":
		cfgErr = fmt.Errorf("health: http probe scheme %q is neither http nor https", scheme)
	case cfg.Host == "":
		cfgErr = errors.New("health: http probe without host")
	case cfg.Port <= 0 || cfg.Port > 65535:
		cfgErr = fmt.Errorf("health: http probe port %d out of range", cfg.Port)
	case expect < 100 || expect > 599:
		cfgErr = fmt.Errorf("health: http probe expects impossible status %d", expect)
	}
	return &HTTPProbe{
		cfgErr:  cfgErr,
		url:     scheme + "://" + net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)) + path,
		expect:  expect,
		timeout: cfg.Timeout,
		role:    cfg.UpRole,
		client: &http.Client{
			Transport: transport,
			// A redirect is an answer: compare its status, do not follow.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// Probe performs one GET.
func (p *HTTPProbe) Probe(ctx context.Context) Result {
	start := time.Now()
	ctx, cancel := withTimeout(ctx, p.timeout)
	defer cancel()
	if p.cfgErr != nil {
		r := downResult(ctx, start, p.cfgErr)
		r.ErrKind = KindOther
		return r
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		r := downResult(ctx, start, err)
		r.ErrKind = KindOther
		return r
	}
	req.Header.Set("User-Agent", "vigil-health")
	resp, err := p.client.Do(req)
	if err != nil {
		return downResult(ctx, start, err)
	}
	// Drain a little so the server sees a complete exchange, not a reset.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != p.expect {
		return Result{
			Verdict: VerdictDown,
			Err:     fmt.Sprintf("unexpected HTTP status %d, want %d", resp.StatusCode, p.expect),
			ErrKind: KindStatus,
			Latency: time.Since(start),
			At:      start,
		}
	}
	return Result{Verdict: VerdictUp, Role: p.role, Latency: time.Since(start), At: start}
}
