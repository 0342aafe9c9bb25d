package nodeagent

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigilha/vigil/failover/nodeagent/nodeagenttest"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// served is an agent served on loopback listeners by ServeListeners.
type served struct {
	a     *Agent
	reg   *prometheus.Registry
	addr  string
	maddr string // metrics, "" if none
}

func serveAgent(t *testing.T, mutate func(*Config), metrics bool, opts ...Option) *served {
	t.Helper()
	cfg := testConfig(t.TempDir(), nil)
	cfg.LeaseTimeout = Duration(5 * time.Second)
	if mutate != nil {
		mutate(cfg)
	}
	reg := prometheus.NewRegistry()
	a, err := New(cfg, nil, reg, append([]Option{WithAddrs(nodeagenttest.New())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &served{a: a, reg: reg, addr: lis.Addr().String()}
	var mlis net.Listener
	if metrics {
		if mlis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		s.maddr = mlis.Addr().String()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.ServeListeners(ctx, lis, mlis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeListeners: %v", err)
		}
	})
	return s
}

func (s *served) metric(t *testing.T, name string, labels map[string]string) float64 {
	return (&harness{reg: s.reg}).metric(t, name, labels)
}

// TestMaxConnectionsClosesExcess: 100 idle TCP connections beyond
// max_connections are closed at once and counted; those within the cap
// are closed when the handshake deadline passes; afterwards the
// goroutine count is back near where it was.
func TestMaxConnectionsClosesExcess(t *testing.T) {
	const limit, extra = 4, 100
	s := serveAgent(t, func(c *Config) { c.MaxConnections = limit }, false, withConnTimeouts(6*time.Second, time.Minute))
	// The server works (and has started everything it starts).
	cc, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := vigilv1.NewNodeAgentClient(cc).Status(ctx, &vigilv1.AgentStatusRequest{}); err != nil {
		t.Fatal(err)
	}
	cc.Close()
	waitFor(t, 10*time.Second, "the test client's connection gone", func() bool {
		return s.metric(t, "vigil_agent_connections", nil) == 0
	})
	baseline := runtime.NumGoroutine()

	start := time.Now()
	var (
		mu       sync.Mutex
		closedAt []time.Duration
		readers  sync.WaitGroup
		conns    []net.Conn
	)
	for i := 0; i < limit+extra; i++ {
		c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
		readers.Add(1)
		go func() {
			defer readers.Done()
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err := io.Copy(io.Discard, c) // until the server closes it
			if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
				t.Errorf("read: %v", err)
			}
			mu.Lock()
			closedAt = append(closedAt, time.Since(start))
			mu.Unlock()
		}()
	}
	closed := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(closedAt)
	}
	waitFor(t, 5*time.Second, "the connections beyond max_connections closed", func() bool { return closed() >= extra })
	if v := s.metric(t, "vigil_agent_connections_refused_total", map[string]string{"reason": "limit"}); v != extra {
		t.Errorf("vigil_agent_connections_refused_total{reason=limit} = %v, want %d", v, extra)
	}
	if v := s.metric(t, "vigil_agent_connections", nil); v != limit {
		t.Errorf("vigil_agent_connections = %v with the limit reached, want %d", v, limit)
	}
	// The ones within the limit sent nothing: closed at the handshake
	// deadline.
	waitFor(t, 20*time.Second, "the idle connections within the limit closed", func() bool { return closed() == limit+extra })
	for _, c := range conns {
		c.Close()
	}
	readers.Wait()
	waitFor(t, 10*time.Second, "connections gauge back to 0", func() bool { return s.metric(t, "vigil_agent_connections", nil) == 0 })
	waitFor(t, 10*time.Second, "goroutines back near the baseline", func() bool { return runtime.NumGoroutine() <= baseline+3 })
	t.Logf("goroutines: baseline %d, now %d", baseline, runtime.NumGoroutine())

	// And the port still serves observers.
	cc, err = grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := vigilv1.NewNodeAgentClient(cc).Status(ctx, &vigilv1.AgentStatusRequest{}); err != nil {
		t.Fatalf("Status after the flood: %v", err)
	}
}

// TestIdleConnectionClosed: a gRPC connection without RPCs is closed by
// the agent after the idle timeout.
func TestIdleConnectionClosed(t *testing.T) {
	s := serveAgent(t, nil, false, withConnTimeouts(4*time.Second, 300*time.Millisecond))
	cc, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := vigilv1.NewNodeAgentClient(cc).Status(ctx, &vigilv1.AgentStatusRequest{}); err != nil {
		t.Fatal(err)
	}
	for st := cc.GetState(); st == connectivity.Ready; st = cc.GetState() {
		if !cc.WaitForStateChange(ctx, st) {
			t.Fatal("the idle connection was not closed by the agent")
		}
	}
	waitFor(t, 10*time.Second, "the server side closed", func() bool { return s.metric(t, "vigil_agent_connections", nil) == 0 })
}

// TestMetricsEndpoint: metrics_listen serves the agent's metrics (and
// whatever else is in its registry: `vigil node` adds the Go and process
// collectors) over plaintext without TLS.
func TestMetricsEndpoint(t *testing.T) {
	s := serveAgent(t, nil, true)
	s.reg.MustRegister(collectors.NewGoCollector())
	if _, err := s.a.Status(context.Background(), &vigilv1.AgentStatusRequest{}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.maddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	for _, want := range []string{"vigil_agent_holding{group=\"pg-main\"} 0", "vigil_agent_highest_epoch", "vigil_agent_requests_total{result=\"ok\",rpc=\"Status\"} 1",
		"vigil_agent_connections_refused_total", "go_goroutines"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if r, err := http.Post("http://"+s.maddr+"/metrics", "text/plain", nil); err == nil {
		r.Body.Close()
		if r.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST /metrics: %s", r.Status)
		}
	}
}

func TestConfigMetricsListenAndMaxConnections(t *testing.T) {
	base := func() *Config {
		c := testConfig(t.TempDir(), nil)
		c.ApplyDefaults()
		return c
	}
	c := base()
	if c.MaxConnections != DefaultMaxConnections {
		t.Errorf("default max_connections %d", c.MaxConnections)
	}
	for _, tc := range []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.MetricsListen = "nope" }, `metrics_listen: "nope": not host:port`},
		{func(c *Config) { c.MetricsListen = "127.0.0.1:0" }, `metrics_listen: "127.0.0.1:0": port must be`},
		{func(c *Config) { c.MetricsListen = c.Listen }, "must differ from listen"},
		{func(c *Config) { c.MaxConnections = -1 }, "max_connections: -1: must be between 1 and"},
		{func(c *Config) { c.MaxConnections = maxMaxConnections + 1 }, "max_connections"},
	} {
		c := base()
		tc.mutate(c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate: %v, want %q", err, tc.want)
		}
	}
	c = base()
	c.MetricsListen = "127.0.0.1:9464"
	if err := c.Validate(); err != nil {
		t.Errorf("valid metrics_listen: %v", err)
	}
	parsed, err := Parse([]byte(`node: h
listen: 127.0.0.1:7501
metrics_listen: "[::1]:9464"
max_connections: 8
data_dir: /tmp/x
observers: [obs1]
groups: [{name: g, member: m, vip: 10.0.0.1/32, interface: eth0}]
`))
	if err != nil || parsed.MetricsListen != "[::1]:9464" || parsed.MaxConnections != 8 {
		t.Fatalf("Parse: %+v %v", parsed, err)
	}
	// metrics_listen needs a registry to serve.
	c = testConfig(t.TempDir(), nil)
	c.MetricsListen = "127.0.0.1:9464"
	if _, err := New(c, nil, nil, WithAddrs(nodeagenttest.New())); err == nil || !strings.Contains(err.Error(), "metrics_listen") {
		t.Errorf("New with metrics_listen and no registry: %v", err)
	}
}
