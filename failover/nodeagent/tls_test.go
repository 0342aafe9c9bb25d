package nodeagent_test

import (
	"context"
	"crypto/tls"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/vigilha/vigil/cluster/tlsconf"
	"github.com/vigilha/vigil/failover"
	"github.com/vigilha/vigil/failover/nodeagent"
	"github.com/vigilha/vigil/failover/nodeagent/nodeagenttest"
	"github.com/vigilha/vigil/failover/viprouter"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

const (
	xGroup = "pg-main"
	xVIP   = "10.0.0.100/32"
	xIface = "eth0"
)

// tlsAgent is a node agent with the tls section, on the fake Addrs,
// served on a loopback port.
type tlsAgent struct {
	addr  string
	fake  *nodeagenttest.Addrs
	files tlsconf.Files // the agent's own certificate files
	stop  func()
}

func tlsAgentConfig(t *testing.T, files tlsconf.Files) *nodeagent.Config {
	return &nodeagent.Config{
		Node:         "db1host",
		Listen:       "127.0.0.1:7501", // unused: served on a listener of the test's
		DataDir:      t.TempDir(),
		Observers:    []string{"obs1", "obs2", "obs3"},
		LeaseTimeout: nodeagent.Duration(5 * time.Second), // no self-fencing during the test
		GARP:         nodeagent.GARP{Count: 1, Interval: nodeagent.Duration(time.Millisecond)},
		Groups:       []nodeagent.Group{{Name: xGroup, Member: "db1", VIP: xVIP, Interface: xIface}},
		TLS:          nodeagent.TLS{CA: files.CA, Cert: files.Cert, Key: files.Key},
	}
}

func startTLSAgent(t *testing.T, pki *nodeagenttest.PKI) *tlsAgent {
	t.Helper()
	files := pki.Issue(t, tlsconf.KindAgent, "db1host")
	fake := nodeagenttest.New()
	a, err := nodeagent.New(tlsAgentConfig(t, files), nil, nil, nodeagent.WithAddrs(fake))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.ServeListener(ctx, lis) }()
	var once sync.Once
	ta := &tlsAgent{addr: lis.Addr().String(), fake: fake, files: files}
	ta.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent: %v", err)
			}
		})
	}
	t.Cleanup(ta.stop)
	return ta
}

// rawClient is a gRPC client to addr with creds.
func rawClient(t *testing.T, addr string, creds credentials.TransportCredentials) vigilv1.NodeAgentClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return vigilv1.NewNodeAgentClient(cc)
}

func callCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func agentStatus(t *testing.T, c vigilv1.NodeAgentClient) *vigilv1.AgentStatusResponse {
	t.Helper()
	st, err := c.Status(callCtx(t), &vigilv1.AgentStatusRequest{})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	return st
}

func wantStatusCode(t *testing.T, what string, err error, code codes.Code, contains ...string) {
	t.Helper()
	if got := status.Code(err); got != code {
		t.Errorf("%s: code %v (%v), want %v", what, got, err, code)
		return
	}
	for _, c := range contains {
		if !strings.Contains(err.Error(), c) {
			t.Errorf("%s: error %q does not contain %q", what, err, c)
		}
	}
}

// TestTLSAgent: an agent with the tls section serves obs1's viprouter
// (TLS client credentials) and refuses a plaintext client, non-observer
// certificates, a certificate of another CA, and an observer sending
// requests in another observer's name; refused calls change nothing.
func TestTLSAgent(t *testing.T) {
	pki := nodeagenttest.NewPKI(t)
	ag := startTLSAgent(t, pki)
	addrOf := func(g, member string) (string, bool) { return ag.addr, g == xGroup && member == "db1" }

	// obs1, through the viprouter with TLS credentials: Route and Lease.
	obs1 := viprouter.NewAgents("obs1", addrOf, 5*time.Second,
		viprouter.WithDialOptions(grpc.WithTransportCredentials(pki.ClientCreds(t, tlsconf.KindObserver, "obs1"))))
	t.Cleanup(obs1.Close)
	if err := obs1.Router().Route(callCtx(t), failover.Action{Group: xGroup, Epoch: 5, Kind: "failover", New: failover.Member{Name: "db1"}}); err != nil {
		t.Fatalf("Route over TLS: %v", err)
	}
	if !ag.fake.Holds(xIface, xVIP) {
		t.Fatal("Route over TLS did not add the VIP")
	}
	if holding, err := obs1.SendLeases(callCtx(t), xGroup, 5, "db1"); err != nil || !holding {
		t.Fatalf("SendLeases over TLS: holding=%v err=%v", holding, err)
	}
	obs1Raw := rawClient(t, ag.addr, pki.ClientCreds(t, tlsconf.KindObserver, "obs1"))
	before := agentStatus(t, obs1Raw)
	if g := before.Groups[0]; g.HighestEpoch != 5 || !g.Holding || !slices.Equal(g.LeaseObservers, []string{"obs1"}) {
		t.Fatalf("status after Route + Lease: %+v", g)
	}

	// Every refused caller tries everything, with a higher epoch that
	// would move the VIP away if it got through.
	tryAll := func(t *testing.T, c vigilv1.NodeAgentClient, observer string) map[string]error {
		t.Helper()
		errs := map[string]error{}
		_, errs["Lease"] = c.Lease(callCtx(t), &vigilv1.LeaseRequest{Group: xGroup, Epoch: 9, Observer: observer, Primary: "db2"})
		_, errs["RemoveVIP"] = c.RemoveVIP(callCtx(t), &vigilv1.VIPRequest{Group: xGroup, Epoch: 9, Observer: observer})
		_, errs["AddVIP"] = c.AddVIP(callCtx(t), &vigilv1.VIPRequest{Group: xGroup, Epoch: 9, Observer: observer})
		_, errs["Fence"] = c.Fence(callCtx(t), &vigilv1.AgentFenceRequest{Group: xGroup, Epoch: 9, Observer: observer})
		_, errs["Status"] = c.Status(callCtx(t), &vigilv1.AgentStatusRequest{})
		return errs
	}

	t.Run("plaintext client refused", func(t *testing.T) {
		for rpc, err := range tryAll(t, rawClient(t, ag.addr, insecure.NewCredentials()), "obs1") {
			wantStatusCode(t, rpc, err, codes.Unavailable)
		}
		// The viprouter's default (insecure) credentials, too.
		plain := viprouter.NewAgents("obs1", addrOf, 2*time.Second)
		defer plain.Close()
		_, err := plain.SendLeases(callCtx(t), xGroup, 9, "db1")
		wantStatusCode(t, "plaintext viprouter lease", err, codes.Unavailable)
	})

	for _, tc := range []struct{ kind, name string }{
		{tlsconf.KindOperator, "alice"},
		{tlsconf.KindViewer, "bob"},
		{tlsconf.KindAgent, "db2host"}, // another host's agent
	} {
		t.Run(tc.kind+" certificate refused", func(t *testing.T) {
			// The same CA and the same client configuration as obs1's,
			// so the kind is what is refused (at the handshake).
			c := rawClient(t, ag.addr, pki.ClientCreds(t, tc.kind, tc.name))
			for rpc, err := range tryAll(t, c, "obs1") {
				wantStatusCode(t, rpc, err, codes.Unavailable)
			}
			// At the TLS level: the agent's handshake refuses the
			// certificate (not an observer) with a bad_certificate
			// alert, read by the client after its side completed.
			conn, err := tls.Dial("tcp", ag.addr, withH2(pki.ClientConfig(t, tc.kind, tc.name)))
			if err != nil {
				t.Fatalf("TLS dial: %v", err)
			}
			defer conn.Close()
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "bad certificate") {
				t.Errorf("read after the handshake: err = %v, want a bad certificate alert", err)
			}
		})
	}

	t.Run("observer certificate of another CA refused", func(t *testing.T) {
		other := nodeagenttest.NewPKI(t)
		cfg := other.ClientConfig(t, tlsconf.KindObserver, "obs1")
		// Accept the agent's certificate (InsecureSkipVerify is set and
		// the check is dropped) so the client side does not give up
		// first: only the agent's verification of obs1 can fail.
		cfg.VerifyConnection = nil
		for rpc, err := range tryAll(t, rawClient(t, ag.addr, credentials.NewTLS(cfg)), "obs1") {
			wantStatusCode(t, rpc, err, codes.Unavailable)
		}
	})

	t.Run("observer in another observer's name", func(t *testing.T) {
		obs2 := rawClient(t, ag.addr, pki.ClientCreds(t, tlsconf.KindObserver, "obs2"))
		errs := tryAll(t, obs2, "obs1")
		for _, rpc := range []string{"Lease", "AddVIP", "RemoveVIP", "Fence"} {
			wantStatusCode(t, rpc, errs[rpc], codes.PermissionDenied, "observer/obs2", `"obs1"`)
		}
		if errs["Status"] != nil {
			t.Errorf("Status with obs2's certificate: %v", errs["Status"])
		}
		// An empty observer field is not obs2's name either.
		_, err := obs2.Lease(callCtx(t), &vigilv1.LeaseRequest{Group: xGroup, Epoch: 9, Primary: "db2"})
		wantStatusCode(t, "Lease without observer", err, codes.PermissionDenied)
		// Through the viprouter: obs2's certificate, acting as "obs1".
		spoof := viprouter.NewAgents("obs1", addrOf, 2*time.Second,
			viprouter.WithDialOptions(grpc.WithTransportCredentials(pki.ClientCreds(t, tlsconf.KindObserver, "obs2"))))
		defer spoof.Close()
		_, err = spoof.SendLeases(callCtx(t), xGroup, 9, "db1")
		wantStatusCode(t, "viprouter lease as obs1 with obs2's certificate", err, codes.PermissionDenied)
		err = spoof.Router().Route(callCtx(t), failover.Action{Group: xGroup, Epoch: 9, Kind: "failover", Old: failover.Member{Name: "db1"}, New: failover.Member{Name: "db1"}})
		wantStatusCode(t, "viprouter Route as obs1 with obs2's certificate", err, codes.PermissionDenied)
	})

	t.Run("observer certificate not configured on the agent", func(t *testing.T) {
		// A valid observer certificate of the same CA, in its own name,
		// but obs9 is not in the agent's observers: every RPC is
		// refused, Status included.
		stranger := rawClient(t, ag.addr, pki.ClientCreds(t, tlsconf.KindObserver, "obs9"))
		for rpc, err := range tryAll(t, stranger, "obs9") {
			wantStatusCode(t, rpc, err, codes.PermissionDenied, "observer/obs9", "not one of this agent's configured observers")
		}
		// With the rogue epoch too.
		_, err := stranger.Lease(callCtx(t), &vigilv1.LeaseRequest{Group: xGroup, Epoch: 1<<64 - 1, Observer: "obs9", Primary: "db1"})
		wantStatusCode(t, "Lease of epoch 2^64-1", err, codes.PermissionDenied)
		// Through the viprouter, in its own name.
		rogue := viprouter.NewAgents("obs9", addrOf, 2*time.Second,
			viprouter.WithDialOptions(grpc.WithTransportCredentials(pki.ClientCreds(t, tlsconf.KindObserver, "obs9"))))
		defer rogue.Close()
		_, err = rogue.SendLeases(callCtx(t), xGroup, 9, "db1")
		wantStatusCode(t, "viprouter lease from obs9", err, codes.PermissionDenied)
		err = rogue.Router().Route(callCtx(t), failover.Action{Group: xGroup, Epoch: 9, Kind: "failover", Old: failover.Member{Name: "db1"}, New: failover.Member{Name: "db1"}})
		wantStatusCode(t, "viprouter Route from obs9", err, codes.PermissionDenied)
		res, err := rogue.Fencer().Fence(callCtx(t), failover.Action{Group: xGroup, Epoch: 9, Kind: "failover", Old: failover.Member{Name: "db1"}, New: failover.Member{Name: "db2"}})
		if err == nil || res.Confirmed || res.Traffic {
			t.Errorf("viprouter Fence from obs9: %+v %v", res, err)
		}
	})

	// Nothing changed: same epoch, VIP held, only obs1's lease.
	after := agentStatus(t, obs1Raw)
	if !proto.Equal(before, after) {
		t.Fatalf("refused calls changed the agent's state:\nbefore %v\nafter  %v", before, after)
	}
	if !ag.fake.Holds(xIface, xVIP) {
		t.Fatal("refused calls removed the VIP")
	}

	// obs2 in its own name is accepted (the name check is not a
	// blanket refusal).
	obs2 := rawClient(t, ag.addr, pki.ClientCreds(t, tlsconf.KindObserver, "obs2"))
	if r, err := obs2.Lease(callCtx(t), &vigilv1.LeaseRequest{Group: xGroup, Epoch: 5, Observer: "obs2", Primary: "db1"}); err != nil || !r.Holding {
		t.Fatalf("obs2's own lease: %+v %v", r, err)
	}
	if g := agentStatus(t, obs1Raw).Groups[0]; !slices.Equal(g.LeaseObservers, []string{"obs1", "obs2"}) || g.HighestEpoch != 5 {
		t.Fatalf("after obs2's lease: %+v", g)
	}
}

// withH2 is cfg with the ALPN protocol gRPC servers require.
func withH2(cfg *tls.Config) *tls.Config {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	return cfg
}

// serialOf handshakes with the agent as obs1 and returns the serial of
// the certificate it presents.
func serialOf(t *testing.T, addr string, cfg *tls.Config) *big.Int {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, withH2(cfg))
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

// TestTLSReloadOnSIGHUP: the agent reloads its certificate on SIGHUP.
func TestTLSReloadOnSIGHUP(t *testing.T) {
	// Catch SIGHUP here too, so that a signal sent before the agent's
	// watcher is registered does not kill the test binary.
	guard := make(chan os.Signal, 16)
	signal.Notify(guard, syscall.SIGHUP)
	defer signal.Stop(guard)

	pki := nodeagenttest.NewPKI(t)
	ag := startTLSAgent(t, pki)
	cfg := pki.ClientConfig(t, tlsconf.KindObserver, "obs1")
	old := serialOf(t, ag.addr, cfg)

	cert, key := pki.Reissue(t, tlsconf.KindAgent, "db1host")
	if err := os.WriteFile(ag.files.Key, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ag.files.Cert, cert, 0o644); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		s := serialOf(t, ag.addr, cfg)
		if s.Cmp(old) != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent still presents its old certificate after SIGHUP")
		}
	}
	// Still serving observers with the new certificate.
	if _, err := rawClient(t, ag.addr, credentials.NewTLS(cfg)).Status(callCtx(t), &vigilv1.AgentStatusRequest{}); err != nil {
		t.Fatalf("Status after reload: %v", err)
	}
	// Close (via ServeListener's return) waits for the watcher: if it
	// did not stop on Close, stop would hang here.
	ag.stop()
}

func TestNewTLSErrors(t *testing.T) {
	pki := nodeagenttest.NewPKI(t)
	obs := pki.Issue(t, tlsconf.KindObserver, "obs1")
	_, err := nodeagent.New(tlsAgentConfig(t, obs), nil, nil, nodeagent.WithAddrs(nodeagenttest.New()))
	if err == nil || !strings.Contains(err.Error(), `needs an "agent" certificate`) || !strings.Contains(err.Error(), "observer/obs1") {
		t.Errorf("observer certificate for the agent: err = %v", err)
	}
	files := pki.Issue(t, tlsconf.KindAgent, "db1host")
	files.Key = files.Key + ".missing"
	_, err = nodeagent.New(tlsAgentConfig(t, files), nil, nil, nodeagent.WithAddrs(nodeagenttest.New()))
	if err == nil || !strings.Contains(err.Error(), files.Key) {
		t.Errorf("missing key file: err = %v", err)
	}
	files.Key = ""
	_, err = nodeagent.New(tlsAgentConfig(t, files), nil, nil, nodeagent.WithAddrs(nodeagenttest.New()))
	if err == nil || !strings.Contains(err.Error(), "tls.key") {
		t.Errorf("no key file: err = %v", err)
	}
}

// TestTLSRegisterWithoutCredentials: a caller-owned server without TLS
// credentials (Register) gets every call refused when TLS is configured:
// the handlers do not trust a connection they cannot identify.
func TestTLSRegisterWithoutCredentials(t *testing.T) {
	pki := nodeagenttest.NewPKI(t)
	fake := nodeagenttest.New()
	a, err := nodeagent.New(tlsAgentConfig(t, pki.Issue(t, tlsconf.KindAgent, "db1host")), nil, nil, nodeagent.WithAddrs(fake))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	ctx := context.Background()
	_, err = a.AddVIP(ctx, &vigilv1.VIPRequest{Group: xGroup, Epoch: 1, Observer: "obs1"})
	wantStatusCode(t, "AddVIP", err, codes.Unauthenticated)
	_, err = a.Status(ctx, &vigilv1.AgentStatusRequest{})
	wantStatusCode(t, "Status", err, codes.Unauthenticated)
	if fake.Holds(xIface, xVIP) {
		t.Fatal("VIP added by an unidentified caller")
	}
}

// TestTLSMetricsEndpoint: with the tls section, metrics_listen serves
// GET /metrics over mutual TLS to any certificate of the CA (a viewer's,
// for Prometheus), and to nothing else.
func TestTLSMetricsEndpoint(t *testing.T) {
	pki := nodeagenttest.NewPKI(t)
	reg := prometheus.NewRegistry()
	a, err := nodeagent.New(tlsAgentConfig(t, pki.Issue(t, tlsconf.KindAgent, "db1host")), nil, reg, nodeagent.WithAddrs(nodeagenttest.New()))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mlis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
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
	url := "https://" + mlis.Addr().String() + "/metrics"
	get := func(cfg *tls.Config) (*http.Response, error) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		defer c.CloseIdleConnections()
		return c.Get(url)
	}
	resp, err := get(pki.ClientConfig(t, tlsconf.KindViewer, "prometheus"))
	if err != nil {
		t.Fatalf("GET /metrics with a viewer certificate: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "vigil_agent_highest_epoch") {
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, body)
	}
	other := nodeagenttest.NewPKI(t).ClientConfig(t, tlsconf.KindViewer, "prometheus")
	other.VerifyConnection = nil // only the agent's check of the client can fail
	noCert := pki.ClientConfig(t, tlsconf.KindViewer, "prometheus")
	noCert.GetClientCertificate = nil
	for name, cfg := range map[string]*tls.Config{"another CA's certificate": other, "no certificate": noCert} {
		if resp, err := get(cfg); err == nil {
			resp.Body.Close()
			t.Errorf("GET /metrics with %s: %s, want a failed handshake", name, resp.Status)
		}
	}
	if resp, err := http.Get("http://" + mlis.Addr().String() + "/metrics"); err == nil {
		if resp.StatusCode == http.StatusOK {
			t.Error("plaintext GET /metrics answered 200 on a TLS agent")
		}
		resp.Body.Close()
	}

	// A failed handshake on the gRPC port is counted.
	conn, err := tls.Dial("tcp", lis.Addr().String(), withH2(pki.ClientConfig(t, tlsconf.KindOperator, "alice")))
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = conn.Read(make([]byte, 1))
	conn.Close()
	viewer := pki.ClientConfig(t, tlsconf.KindViewer, "prometheus")
	const want = `vigil_agent_connections_refused_total{reason="handshake"} 1`
	for deadline := time.Now().Add(5 * time.Second); ; {
		resp, err := get(viewer)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks %q", want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
