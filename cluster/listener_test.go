package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/vigilha/vigil/cluster/config"
	"github.com/vigilha/vigil/cluster/tlsconf"
)

// Unit tests of the Raft port's bounds and peer checks. The cluster-level
// tests (a rogue observer certificate, 500 idle connections) are in
// identity_test.go, which can use clustertest.

// value reads a counter or gauge.
func lnValue(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var pb dto.Metric
	if err := (<-ch).Write(&pb); err != nil {
		panic(err)
	}
	return pb.GetCounter().GetValue() + pb.GetGauge().GetValue()
}

// lnWaitUntil polls cond until it holds or the deadline passes.
func lnWaitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lnSyncBuf is a log sink safe for concurrent writers.
type lnSyncBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lnSyncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lnSyncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func lnLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// lnClosedByPeer reports whether the other end closed c (end of stream or
// reset) within timeout; a deadline expiry means it is still open.
func lnClosedByPeer(c net.Conn, timeout time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func lnStartBounded(t *testing.T, limits listenerLimits, precheck func(net.Addr) error, vet vetFunc) (*boundedListener, *listenerMetrics, *lnSyncBuf) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs lnSyncBuf
	m := newListenerMetrics(prometheus.NewRegistry())
	b := newBoundedListener(ln, limits, precheck, vet, m, lnLogger(&logs))
	t.Cleanup(func() { _ = b.Close() })
	return b, m, &logs
}

func lnOnlyLoopback1(a net.Addr) error {
	if ip, _ := addrIP(a); ip != netip.MustParseAddr("127.0.0.1") {
		return refuse(refusedUnknownAddress, "%v is not an observer", a)
	}
	return nil
}

// TestListenerPlaintextBounds: the cap, the first-byte deadline, the
// protocol check, the address check and the idle timeout, each counted
// and logged with the remote address.
func TestListenerPlaintextBounds(t *testing.T) {
	limits := listenerLimits{maxConns: 4, handshake: 300 * time.Millisecond, idle: 300 * time.Millisecond}
	b, m, logs := lnStartBounded(t, limits, lnOnlyLoopback1, vetPlaintext)
	addr := b.Addr().String()
	refused := func(reason string) float64 { return lnValue(m.refused.WithLabelValues(reason)) }

	// A talking peer: its first byte is an RPC type, and it arrives intact.
	good, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	if _, err := good.Write([]byte{0, 'h', 'i'}); err != nil {
		t.Fatal(err)
	}
	srv, err := b.Accept()
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 3)
	if _, err := io.ReadFull(srv, got); err != nil || string(got) != "\x00hi" {
		t.Fatalf("server read %q, %v", got, err)
	}

	// Four silent connections: three take the remaining slots, the rest
	// are refused at once.
	var silent []net.Conn
	for i := 0; i < 4; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	lnWaitUntil(t, 5*time.Second, "one connection over the cap refused", func() bool { return refused(refusedLimit) == 1 })
	for i, c := range silent {
		if !lnClosedByPeer(c, 5*time.Second) {
			t.Fatalf("silent connection %d still open", i)
		}
	}
	lnWaitUntil(t, 5*time.Second, "three first-byte timeouts", func() bool { return refused(refusedTimeout) == 3 })

	// Not a Raft RPC (a TLS ClientHello, say).
	bad, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	_, _ = bad.Write([]byte{0x16, 3, 1})
	if !lnClosedByPeer(bad, 5*time.Second) {
		t.Fatal("non-raft connection still open")
	}
	lnWaitUntil(t, 5*time.Second, "a protocol refusal", func() bool { return refused(refusedProtocol) == 1 })

	// From an address that is no observer's: refused before a slot.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	stranger, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	if !lnClosedByPeer(stranger, 5*time.Second) {
		t.Fatal("stranger's connection still open")
	}
	lnWaitUntil(t, 5*time.Second, "an unknown_address refusal", func() bool { return refused(refusedUnknownAddress) == 1 })

	// The talking peer falls silent: closed after the idle timeout, read
	// as a clean end of stream on our side.
	if _, err := srv.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle server read: %v, want io.EOF", err)
	}
	if lnValue(m.idleClosed) != 1 {
		t.Fatalf("idle closes = %v", lnValue(m.idleClosed))
	}
	_ = srv.Close()
	lnWaitUntil(t, 5*time.Second, "no connection open", func() bool { return lnValue(m.open) == 0 })

	out := logs.String()
	for _, want := range []string{"reason=limit", "reason=timeout", "reason=protocol", "reason=unknown_address", "remote=127.0.0.2:", "remote=127.0.0.1:"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

// TestListenerCloseClosesEverything: closing the listener closes the
// handshaking and handed-out connections too, and Accept returns
// net.ErrClosed.
func TestListenerCloseClosesEverything(t *testing.T) {
	limits := listenerLimits{maxConns: 8, handshake: time.Minute, idle: time.Minute}
	b, m, _ := lnStartBounded(t, limits, nil, vetPlaintext)
	live, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	_, _ = live.Write([]byte{1})
	if _, err := b.Accept(); err != nil {
		t.Fatal(err)
	}
	waiting, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()
	lnWaitUntil(t, 5*time.Second, "two connections open", func() bool { return lnValue(m.open) == 2 })
	_ = b.Close()
	for _, c := range []net.Conn{live, waiting} {
		if !lnClosedByPeer(c, 5*time.Second) {
			t.Fatal("connection survived Close")
		}
	}
	if _, err := b.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	if lnValue(m.open) != 0 {
		t.Fatalf("open = %v after Close", lnValue(m.open))
	}
}

// TestListenerRedialAfterIdle: an outbound connection that sat idle is
// replaced before the next request goes out (the old one is closed), the
// request and its answer go over the new one, and a closed connection is
// never revived.
func TestListenerRedialAfterIdle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
			go func() { _, _ = io.Copy(c, c) }() // echo
		}
	}()
	dial := func() (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) }
	first, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	rc := newRedialConn(first, time.Hour, dial)
	defer rc.Close()
	echo := func(msg string) {
		t.Helper()
		_ = rc.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := rc.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(rc, got); err != nil || string(got) != msg {
			t.Fatalf("echo %q: got %q, %v", msg, got, err)
		}
	}
	echo("one")
	srv1 := <-accepted
	// Not idle long enough: same connection.
	echo("two")
	select {
	case <-accepted:
		t.Fatal("redialled a connection that was not idle")
	default:
	}
	// Idle for maxIdle: the next request goes over a new connection and
	// the old one is closed.
	rc.mu.Lock()
	rc.last = time.Now().Add(-2 * time.Hour)
	rc.mu.Unlock()
	echo("three")
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("idle connection not replaced")
	}
	if !lnClosedByPeer(srv1, 5*time.Second) {
		t.Fatal("replaced connection not closed")
	}
	_ = rc.Close()
	rc.mu.Lock()
	rc.last = time.Now().Add(-2 * time.Hour)
	rc.mu.Unlock()
	if _, err := rc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
}

func lnConfig(self string, obs ...config.Observer) *config.Config {
	return &config.Config{NodeID: self, Observers: obs}
}

// TestListenerRaftPeers: who may connect to the Raft port, from where,
// and who should answer at an address.
func TestListenerRaftPeers(t *testing.T) {
	cfg := lnConfig("obs1",
		config.Observer{ID: "obs1", Raft: "10.0.0.1:7101"},
		config.Observer{ID: "obs2", Raft: "10.0.0.2:7101"},
		config.Observer{ID: "obs3", Raft: "obs3.test:7101"},
	)
	resolve := func(_ context.Context, host string) ([]netip.Addr, error) {
		if host == "obs3.test" {
			return []netip.Addr{netip.MustParseAddr("::ffff:10.0.0.3")}, nil
		}
		return nil, fmt.Errorf("no such host %s", host)
	}
	p := newRaftPeers(cfg, resolve, lnLogger(io.Discard))
	from := func(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000} }
	reason := func(err error) string {
		var r *raftRefusal
		if errors.As(err, &r) {
			return r.reason
		}
		if err != nil {
			return "other: " + err.Error()
		}
		return ""
	}
	cases := []struct {
		name, ip, want string
	}{
		{"obs2", "10.0.0.2", ""},
		{"obs3", "10.0.0.3", ""},
		{"obs3", "::ffff:10.0.0.3", ""},
		{"obs2", "10.0.0.3", refusedWrongAddress},
		{"obs9", "10.0.0.2", refusedUnknownPeer},
		{"obs1", "10.0.0.1", refusedUnknownPeer},
	}
	for _, c := range cases {
		if got := reason(p.check(kindObserver, c.name, from(c.ip))); got != c.want {
			t.Errorf("observer/%s from %s: %q, want %q", c.name, c.ip, got, c.want)
		}
	}
	if got := reason(p.check(kindObserver, "obs2", nil)); got != refusedWrongAddress {
		t.Errorf("unknown remote address: %q", got)
	}
	for ip, want := range map[string]string{"10.0.0.2": "", "10.0.0.3": "", "10.0.0.1": refusedUnknownAddress, "192.0.2.1": refusedUnknownAddress} {
		if got := reason(p.mayConnect(from(ip))); got != want {
			t.Errorf("mayConnect(%s) = %q, want %q", ip, got, want)
		}
	}
	for addr, want := range map[raft.ServerAddress]string{"10.0.0.2:7101": "obs2", "[::ffff:10.0.0.2]:7101": "obs2", "obs3.test:7101": "obs3", "10.0.0.1:7101": "", "10.0.0.2:7102": ""} {
		if got, _ := p.idFor(addr); got != want {
			t.Errorf("idFor(%s) = %q, want %q", addr, got, want)
		}
	}

	// A name that does not resolve: that observer is checked by name only,
	// and the address check before the handshake is off.
	cfg.Observers = append(cfg.Observers, config.Observer{ID: "obs4", Raft: "gone.test:7101"})
	var logs lnSyncBuf
	p = newRaftPeers(cfg, resolve, lnLogger(&logs))
	if err := p.mayConnect(from("192.0.2.1")); err != nil {
		t.Errorf("mayConnect with an unresolved observer: %v", err)
	}
	if err := p.check(kindObserver, "obs4", from("192.0.2.1")); err != nil {
		t.Errorf("unresolved observer refused: %v", err)
	}
	if got := reason(p.check(kindObserver, "obs2", from("192.0.2.1"))); got != refusedWrongAddress {
		t.Errorf("obs2 from elsewhere: %q", got)
	}
	if !strings.Contains(logs.String(), "gone.test") {
		t.Errorf("unresolved address not logged: %s", logs.String())
	}
}

// lnPKI writes a CA and certificates; store(name) loads one.
type lnPKI struct {
	t   *testing.T
	dir string
}

func newLnPKI(t *testing.T, ids ...tlsconf.Identity) *lnPKI {
	t.Helper()
	caCert, caKey, err := tlsconf.NewCA("listener test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"ca.pem": caCert}
	for _, id := range ids {
		c, k, err := tlsconf.Issue(caCert, caKey, id)
		if err != nil {
			t.Fatal(err)
		}
		files[id.Name+".pem"], files[id.Name+"-key.pem"] = c, k
	}
	dir := t.TempDir()
	if err := tlsconf.WriteFiles(dir, files); err != nil {
		t.Fatal(err)
	}
	return &lnPKI{t: t, dir: dir}
}

func (p *lnPKI) store(name string) *tlsconf.Store {
	p.t.Helper()
	s, err := tlsconf.Load(tlsconf.Files{CA: filepath.Join(p.dir, "ca.pem"), Cert: filepath.Join(p.dir, name+".pem"), Key: filepath.Join(p.dir, name+"-key.pem")})
	if err != nil {
		p.t.Fatal(err)
	}
	return s
}

func lnObserverCert(name string) tlsconf.Identity {
	return tlsconf.Identity{Name: name, Kind: kindObserver, IPs: []net.IP{net.ParseIP("127.0.0.1")}}
}

// TestListenerTLSPeers: over TLS the Raft port takes only the other
// configured observers (not an unconfigured observer name, not our own,
// not an operator), and a dial checks that the observer that answers is
// the one configured at that address.
func TestListenerTLSPeers(t *testing.T) {
	pki := newLnPKI(t, lnObserverCert("obs1"), lnObserverCert("obs2"), lnObserverCert("obs9"),
		tlsconf.Identity{Name: "alice", Kind: kindOperator})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	cfg := lnConfig("obs1",
		config.Observer{ID: "obs1", Raft: addr},
		config.Observer{ID: "obs2", Raft: "127.0.0.1:1"},
	)
	peers := newRaftPeers(cfg, lookupIPs, lnLogger(io.Discard))
	obs1 := pki.store("obs1")
	tl := &tlsStreamLayer{store: obs1, peers: peers, server: obs1.ServerConfigWithCheck(peers.check, kindObserver)}
	m := newListenerMetrics(prometheus.NewRegistry())
	b := newBoundedListener(ln, listenerLimits{maxConns: 8, handshake: 5 * time.Second, idle: time.Minute}, peers.mayConnect, tl.handshake, m, lnLogger(io.Discard))
	defer b.Close()
	tl.StreamLayer, tl.refused = &tcpStreamLayer{ln: b, advertise: ln.Addr()}, b.refused

	// A client's view: the handshake completes (TLS 1.3), the verdict on
	// its certificate comes with the first read.
	try := func(name string) error {
		c, err := tls.Dial("tcp", addr, pki.store(name).ClientConfig("", kindObserver))
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte{0}); err != nil {
			return err
		}
		_, err = c.Read(make([]byte, 1))
		return err
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := b.Accept(); err == nil {
			accepted <- c
		}
	}()
	go func() { _ = try("obs2") }()
	select {
	case c := <-accepted:
		kind, name, err := tlsconf.IdentityOfConn(c.(*idleConn).Conn.(*tls.Conn).ConnectionState())
		if err != nil || kind != kindObserver || name != "obs2" {
			t.Fatalf("accepted %s/%s, %v", kind, name, err)
		}
		_ = c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("obs2 not accepted")
	}
	for name, reason := range map[string]string{"obs9": refusedUnknownPeer, "obs1": refusedUnknownPeer, "alice": refusedHandshake} {
		before := lnValue(m.refused.WithLabelValues(reason))
		if err := try(name); err == nil {
			t.Fatalf("%s accepted", name)
		}
		lnWaitUntil(t, 5*time.Second, name+" counted as "+reason, func() bool {
			return lnValue(m.refused.WithLabelValues(reason)) == before+1
		})
	}

	// Dialling: obs2 expects obs1 at addr. Configured so, it connects;
	// configured as obs9's address, it refuses the answer.
	obs2 := pki.store("obs2")
	dialer := func(who string) *tlsStreamLayer {
		p := newRaftPeers(lnConfig("obs2", config.Observer{ID: "obs2", Raft: "127.0.0.1:1"}, config.Observer{ID: who, Raft: addr}), lookupIPs, lnLogger(io.Discard))
		return &tlsStreamLayer{StreamLayer: &tcpStreamLayer{}, store: obs2, peers: p, refused: b.refused}
	}
	go func() {
		for {
			c, err := b.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	c, err := dialer("obs1").Dial(raft.ServerAddress(addr), 5*time.Second)
	if err != nil {
		t.Fatalf("dial obs1: %v", err)
	}
	_ = c.Close()
	if _, err := dialer("obs9").Dial(raft.ServerAddress(addr), 5*time.Second); err == nil || !strings.Contains(err.Error(), "observer/obs1 answered") {
		t.Fatalf("dial expecting obs9, obs1 answers: %v", err)
	}
	if got := lnValue(m.refused.WithLabelValues(refusedDialIdentity)); got != 1 {
		t.Fatalf("dial_identity refusals = %v", got)
	}
	if _, err := dialer("obs1").Dial("127.0.0.1:9", time.Second); err == nil || !strings.Contains(err.Error(), "not the raft address") {
		t.Fatalf("dial to an unconfigured address: %v", err)
	}
}

// TestListenerLogLimit: at most rate lines a second, then one line
// saying how many were suppressed.
func TestListenerLogLimit(t *testing.T) {
	var logs lnSyncBuf
	l := newLimitedLog(lnLogger(&logs), 5, 5)
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	var summaries []func()
	l.after = func(_ time.Duration, f func()) { summaries = append(summaries, f) }
	for i := 0; i < 100; i++ {
		l.Log(slog.LevelWarn, "refused", "i", i)
	}
	if n := strings.Count(logs.String(), "msg=refused"); n != 5 {
		t.Fatalf("%d lines logged, want 5", n)
	}
	if len(summaries) != 1 {
		t.Fatalf("%d summaries scheduled, want 1", len(summaries))
	}
	summaries[0]()
	if !strings.Contains(logs.String(), "suppressed=95") {
		t.Fatalf("no summary of 95 suppressed lines:\n%s", logs.String())
	}
	now = now.Add(time.Second)
	for i := 0; i < 10; i++ {
		l.Log(slog.LevelWarn, "refused", "i", i)
	}
	if n := strings.Count(logs.String(), "msg=refused"); n != 10 {
		t.Fatalf("%d lines after a second, want 10", n)
	}
}
