package cluster

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/vigilha/vigil/cluster/tlsconf"
	"github.com/vigilha/vigil/health"
)

// lineBuffer is a concurrency-safe log sink.
type lineBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lineBuffer) lines(substr string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, l := range strings.Split(b.buf.String(), "\n") {
		if l != "" && strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

func TestGossipLogRateLimitPerKind(t *testing.T) {
	var sink lineBuffer
	now := time.Unix(1000, 0)
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "errs"}, []string{"kind"})
	w := newMemberlistLog(slog.New(slog.NewTextHandler(&sink, &slog.HandlerOptions{Level: slog.LevelInfo})), errs, func() time.Time { return now })
	ml := w.logger()
	flood := func(n int) {
		for i := 0; i < n; i++ {
			// What a flood of garbage produces: one line per packet, the
			// sender's port and the "label" differing.
			ml.Printf("[ERR] memberlist: discarding packet with unacceptable label %q: from=127.0.0.1:%d", fmt.Sprint("x", i), 1024+i%5000)
		}
	}
	flood(10000)
	if got := len(sink.lines("unacceptable label")); got != memberlistLogBurst {
		t.Fatalf("%d lines of one kind in a burst, want %d", got, memberlistLogBurst)
	}
	// Another kind has its own budget.
	ml.Printf("[WARN] memberlist: Got invalid checksum for UDP packet: %x, %x", 1, 2)
	if got := len(sink.lines("invalid checksum")); got != 1 {
		t.Fatalf("another kind's line: %d", got)
	}
	now = now.Add(3 * time.Second)
	flood(10000)
	if got := len(sink.lines("unacceptable label")); got != memberlistLogBurst+3 {
		t.Fatalf("%d lines after 3 s more, want %d", got, memberlistLogBurst+3)
	}
	if got := len(sink.lines("suppressed")); got != 0 {
		t.Fatalf("summary before it was due: %v", sink.lines("suppressed"))
	}
	now = now.Add(memberlistLogSummaryEvery)
	w.flush()
	sums := sink.lines("suppressed similar log lines")
	if len(sums) != 1 || !strings.Contains(sums[0], "suppressed="+fmt.Sprint(20000-memberlistLogBurst-3)) ||
		!strings.Contains(sums[0], `kind="discarding packet with unacceptable label"`) || !strings.Contains(sums[0], "level=ERROR") {
		t.Fatalf("summary lines: %v", sums)
	}
	w.flush()
	if got := len(sink.lines("suppressed")); got != 1 {
		t.Fatalf("summary repeated without anything suppressed since: %d", got)
	}
	if got := counterOf(t, errs.WithLabelValues("label")); got != 20000 {
		t.Fatalf("label errors counted %v, want 20000 (suppressed lines included)", got)
	}
	if got := counterOf(t, errs.WithLabelValues("malformed")); got != 1 {
		t.Fatalf("checksum errors counted %v", got)
	}

	// Messages that would each be their own kind share a bounded set.
	for i := 0; i < 10*memberlistLogKinds; i++ {
		ml.Printf("[ERR] memberlist: kind%s bad", strings.Repeat("x", i))
	}
	if n := len(w.kinds); n > memberlistLogKinds {
		t.Fatalf("%d kinds tracked, bound %d", n, memberlistLogKinds)
	}
}

func TestGossipLogKinds(t *testing.T) {
	for msg, want := range map[string]string{
		`memberlist: discarding packet with unacceptable label "evil": from=1.2.3.4:5`:                  "discarding packet with unacceptable label",
		`memberlist: Decrypt packet failed: No installed keys could decrypt the message from=1.2.3.4:5`: "Decrypt packet failed",
		`memberlist: Received invalid msgType (77) from=1.2.3.4:5`:                                      "Received invalid msgType",
		`memberlist: Push/Pull with obs2 failed: dial tcp`:                                              "Push/Pull with obs",
		`12345`: "other",
	} {
		if got := memberlistLogKind(msg); got != want {
			t.Errorf("kind of %q = %q, want %q", msg, got, want)
		}
	}
}

// votePKI is a CA and observer certificates in a directory.
type votePKI struct {
	t      *testing.T
	dir    string
	ca, ck []byte
}

func newVotePKI(t *testing.T) *votePKI {
	t.Helper()
	ca, ck, err := tlsconf.NewCA("vote test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &votePKI{t: t, dir: t.TempDir(), ca: ca, ck: ck}
	if err := os.WriteFile(filepath.Join(p.dir, "ca.pem"), ca, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// issue writes file.pem/file-key.pem for kind/name (overwriting) and
// returns their Files.
func (p *votePKI) issue(file, kind, name string) tlsconf.Files {
	p.t.Helper()
	cert, key, err := tlsconf.Issue(p.ca, p.ck, tlsconf.Identity{Name: name, Kind: kind, IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	if err != nil {
		p.t.Fatal(err)
	}
	f := tlsconf.Files{CA: filepath.Join(p.dir, "ca.pem"), Cert: filepath.Join(p.dir, file+".pem"), Key: filepath.Join(p.dir, file+"-key.pem")}
	if err := os.WriteFile(f.Cert, cert, 0o600); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(f.Key, key, 0o600); err != nil {
		p.t.Fatal(err)
	}
	return f
}

func (p *votePKI) store(f tlsconf.Files) *tlsconf.Store {
	p.t.Helper()
	s, err := tlsconf.Load(f)
	if err != nil {
		p.t.Fatal(err)
	}
	return s
}

// serveTLS completes mutual-TLS handshakes with st's certificate at a
// loopback address until the test ends.
func serveTLS(t *testing.T, st *tlsconf.Store) string {
	t.Helper()
	cfg := st.ServerConfig()
	cfg.NextProtos = []string{"h2"}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_ = c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	return ln.Addr().String()
}

func signWith(t *testing.T, st *tlsconf.Store, batch []byte) []byte {
	t.Helper()
	sig, err := health.SignBatchWith(st.Certificate().PrivateKey.(crypto.Signer), batch)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func TestVoteKeysLearnVerifyAndRefetch(t *testing.T) {
	p := newVotePKI(t)
	self := p.store(p.issue("obs1", "observer", "obs1"))
	obs2Files := p.issue("obs2", "observer", "obs2")
	obs2 := p.store(obs2Files)
	impostor := p.store(p.issue("obs3", "observer", "obs3")) // serves at "obs4"'s address
	reg := prometheus.NewRegistry()
	k := newVoteKeys(self, map[string]string{"obs2": serveTLS(t, obs2), "obs4": serveTLS(t, impostor)}, slog.New(slog.DiscardHandler), reg)

	batch := []byte("a vote batch")
	if err := k.VerifyBatch("obs2", batch, signWith(t, obs2, batch)); !errors.Is(err, health.ErrSignerUnknown) {
		t.Fatalf("before any fetch: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { k.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	waitUntil(t, "obs2's certificate learned", func() bool { return k.VerifyBatch("obs2", batch, signWith(t, obs2, batch)) == nil })
	// The signature of another observer of the same CA, in obs2's name.
	if err := k.VerifyBatch("obs2", batch, signWith(t, impostor, batch)); err == nil || errors.Is(err, health.ErrSignerUnknown) {
		t.Fatalf("obs3's signature accepted as obs2's: %v", err)
	}
	// A certificate that names another observer is never learned.
	waitUntil(t, "fetches from the impostor fail", func() bool {
		return counterOf(t, k.fetches.WithLabelValues("error")) >= 2
	})
	if err := k.VerifyBatch("obs4", batch, signWith(t, impostor, batch)); !errors.Is(err, health.ErrSignerUnknown) {
		t.Fatalf("obs4 verified with the certificate of obs3: %v", err)
	}
	// Not a configured peer: never fetched, never verified.
	if err := k.VerifyBatch("obs9", batch, signWith(t, obs2, batch)); !errors.Is(err, health.ErrSignerUnknown) {
		t.Fatalf("obs9: %v", err)
	}

	// obs2 gets a new key (SIGHUP reload): its first batches fail, then its
	// new certificate is fetched and they verify.
	p.issue("obs2", "observer", "obs2")
	if err := obs2.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := k.VerifyBatch("obs2", batch, signWith(t, obs2, batch)); err == nil {
		t.Fatal("the new key verified with the old certificate")
	}
	waitUntil(t, "obs2's new certificate learned", func() bool { return k.VerifyBatch("obs2", batch, signWith(t, obs2, batch)) == nil })
	if got := counterOf(t, k.fetches.WithLabelValues("ok")); got < 2 {
		t.Fatalf("ok fetches: %v", got)
	}
	if mfs, err := reg.Gather(); err != nil || len(mfs) != 2 {
		t.Fatalf("metrics: %d families, %v", len(mfs), err)
	}
}

func TestVoteKeysSignWithTheCurrentKey(t *testing.T) {
	p := newVotePKI(t)
	files := p.issue("obs1", "observer", "obs1")
	st := p.store(files)
	k := newVoteKeys(st, nil, slog.New(slog.DiscardHandler), nil)
	batch := []byte("batch")
	for round := 0; round < 2; round++ {
		sig, err := k.SignBatch(batch)
		if err != nil {
			t.Fatal(err)
		}
		if len(sig) > k.MaxSignatureLen() {
			t.Fatalf("signature of %d bytes, max %d", len(sig), k.MaxSignatureLen())
		}
		if err := health.VerifyBatchWith(st.Leaf().PublicKey, batch, sig); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		p.issue("obs1", "observer", "obs1")
		if err := st.Reload(); err != nil {
			t.Fatal(err)
		}
	}
}

// waitUntil polls cond until it holds or 10 s pass.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// counterOf reads a counter.
func counterOf(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
