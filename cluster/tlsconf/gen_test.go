package tlsconf

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestIssue(t *testing.T) {
	caCert, caKey, err := NewCA("vigil CA", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca := mustParseCert(t, caCert)
	if !ca.IsCA || !ca.BasicConstraintsValid || !ca.MaxPathLenZero || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Fatalf("CA certificate not a proper CA: %+v", ca)
	}
	if blk, _ := pem.Decode(caKey); blk == nil || blk.Type != "PRIVATE KEY" {
		t.Fatal("CA key is not a PKCS#8 PEM block")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)

	serials := map[string]bool{}
	for _, tc := range []struct {
		kind string
		eku  []x509.ExtKeyUsage
	}{
		{KindObserver, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
		{KindAgent, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
		{KindOperator, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		{KindViewer, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
	} {
		id := Identity{Name: "n-" + tc.kind, Kind: tc.kind, DNS: []string{"a.example"}, IPs: []net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("fd00::1")}}
		certPEM, keyPEM, err := Issue(caCert, caKey, id)
		if err != nil {
			t.Fatalf("%s: %v", tc.kind, err)
		}
		if blk, _ := pem.Decode(keyPEM); blk == nil || blk.Type != "PRIVATE KEY" {
			t.Fatalf("%s: key is not a PKCS#8 PEM block", tc.kind)
		}
		c := mustParseCert(t, certPEM)
		if !slices.Equal(c.ExtKeyUsage, tc.eku) {
			t.Errorf("%s: EKU %v, want %v", tc.kind, c.ExtKeyUsage, tc.eku)
		}
		if c.IsCA || c.Subject.CommonName != id.Name {
			t.Errorf("%s: IsCA=%v CN=%q", tc.kind, c.IsCA, c.Subject.CommonName)
		}
		if len(c.URIs) != 1 || c.URIs[0].String() != "vigil://"+tc.kind+"/n-"+tc.kind {
			t.Errorf("%s: URIs %v", tc.kind, c.URIs)
		}
		if k, n, err := PeerIdentity(c); err != nil || k != tc.kind || n != id.Name {
			t.Errorf("%s: PeerIdentity = %s/%s, %v", tc.kind, k, n, err)
		}
		if !slices.Equal(c.DNSNames, id.DNS) || len(c.IPAddresses) != 2 || !c.IPAddresses[1].Equal(id.IPs[1]) {
			t.Errorf("%s: SANs %v %v", tc.kind, c.DNSNames, c.IPAddresses)
		}
		if c.SerialNumber.BitLen() > 128 || c.SerialNumber.Sign() <= 0 || serials[c.SerialNumber.String()] {
			t.Errorf("%s: bad or repeated serial %x", tc.kind, c.SerialNumber)
		}
		serials[c.SerialNumber.String()] = true
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: tc.eku[:1]}); err != nil {
			t.Errorf("%s: does not verify: %v", tc.kind, err)
		}
		// Default validity: one year, capped at the CA's expiry.
		if !c.NotAfter.Equal(ca.NotAfter) {
			t.Errorf("%s: NotAfter %v, want capped at the CA's %v", tc.kind, c.NotAfter, ca.NotAfter)
		}
	}

	// Random serials: 128 bits, so a run of them reaches beyond 64 bits.
	wide := false
	for i := 0; i < 8; i++ {
		c, _, err := Issue(caCert, caKey, Identity{Name: "x", Kind: KindViewer})
		if err != nil {
			t.Fatal(err)
		}
		if mustParseCert(t, c).SerialNumber.Cmp(new(big.Int).Lsh(big.NewInt(1), 64)) > 0 {
			wide = true
		}
	}
	if !wide {
		t.Error("serials never exceed 64 bits")
	}

	// An expired certificate can be issued (for tests).
	past := time.Now().Add(-time.Hour).Truncate(time.Second)
	c, _, err := Issue(caCert, caKey, Identity{Name: "old", Kind: KindOperator, NotAfter: past})
	if err != nil {
		t.Fatal(err)
	}
	if pc := mustParseCert(t, c); !pc.NotAfter.Equal(past) || !pc.NotBefore.Before(past) {
		t.Errorf("expired cert validity %v..%v", pc.NotBefore, pc.NotAfter)
	}

	bad := []struct {
		name string
		id   Identity
		ca   []byte
		want string
	}{
		{"unknown kind", Identity{Name: "a", Kind: "admin"}, caCert, "unknown identity kind"},
		{"empty name", Identity{Kind: KindAgent}, caCert, "empty"},
		{"slash in name", Identity{Name: "a/b", Kind: KindAgent}, caCert, "contains"},
		{"long name", Identity{Name: strings.Repeat("a", 129), Kind: KindAgent}, caCert, "max 128"},
		{"bad DNS", Identity{Name: "a", Kind: KindAgent, DNS: []string{"a b"}}, caCert, "DNS SAN"},
		{"beyond CA", Identity{Name: "a", Kind: KindAgent, NotAfter: time.Now().Add(72 * time.Hour)}, caCert, "after the CA's expiry"},
		{"leaf as CA", Identity{Name: "a", Kind: KindAgent}, c, "not a CA"},
		{"garbage CA", Identity{Name: "a", Kind: KindAgent}, []byte("x"), "not PEM"},
	}
	for _, tc := range bad {
		if _, _, err := Issue(tc.ca, caKey, tc.id); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
	_, otherKey, _ := NewCA("other", time.Hour)
	if _, _, err := Issue(caCert, otherKey, Identity{Name: "a", Kind: KindAgent}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched CA key: %v", err)
	}
	if _, _, err := NewCA("x", 0); err == nil {
		t.Error("NewCA with zero validity succeeded")
	}
}

func TestPeerIdentity(t *testing.T) {
	mk := func(uris ...string) *x509.Certificate {
		c := &x509.Certificate{SerialNumber: big.NewInt(1)}
		for _, s := range uris {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			c.URIs = append(c.URIs, u)
		}
		return c
	}
	good := []struct {
		uris       []string
		kind, name string
	}{
		{[]string{"vigil://observer/obs1"}, KindObserver, "obs1"},
		{[]string{"spiffe://x/y", "vigil://operator/alice@example.com"}, KindOperator, "alice@example.com"},
		{[]string{"vigil://agent/db-1.dc2"}, KindAgent, "db-1.dc2"},
	}
	for _, tc := range good {
		k, n, err := PeerIdentity(mk(tc.uris...))
		if err != nil || k != tc.kind || n != tc.name {
			t.Errorf("%v: %s/%s, %v", tc.uris, k, n, err)
		}
	}
	bad := [][]string{
		nil,
		{"https://observer/obs1"},
		{"vigil://observer/obs1", "vigil://operator/alice"},
		{"vigil://admin/root"},
		{"vigil://observer/"},
		{"vigil://observer"},
		{"vigil://observer/a/b"},
		{"vigil://observer/obs1?x=1"},
		{"vigil://observer/obs1#f"},
		{"vigil://u@observer/obs1"},
		{"vigil://observer:1/obs1"},
		{"vigil:observer/obs1"},
		{"vigil://observer/.hidden"},
		{"vigil://observer/a%20b"},
	}
	for _, uris := range bad {
		if k, n, err := PeerIdentity(mk(uris...)); err == nil {
			t.Errorf("%v accepted as %s/%s", uris, k, n)
		}
	}
	if _, _, err := PeerIdentity(nil); err == nil {
		t.Error("nil certificate accepted")
	}
	if _, _, err := IdentityOfConn(tlsState(false, nil)); err == nil {
		t.Error("incomplete handshake accepted")
	}
	if _, _, err := IdentityOfConn(tlsState(true, nil)); err == nil {
		t.Error("no peer certificate accepted")
	}
	if k, _, err := IdentityOfConn(tlsState(true, mk("vigil://viewer/v"))); err != nil || k != KindViewer {
		t.Errorf("IdentityOfConn: %s, %v", k, err)
	}
}

func TestWriteFiles(t *testing.T) {
	caCert, caKey, err := NewCA("vigil CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "certs")
	if err := WriteFiles(dir, map[string][]byte{"ca.crt": caCert, "ca.key": caKey, "notes.txt": []byte("hello")}); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]fs.FileMode{"ca.crt": 0o644, "ca.key": 0o600, "notes.txt": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("created directory mode %v, want 0700", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "ca.key")); !bytes.Equal(b, caKey) {
		t.Error("ca.key content differs")
	}

	// Refuses to overwrite; writes nothing at all when one file exists.
	err = WriteFiles(dir, map[string][]byte{"a-new.crt": caCert, "ca.key": []byte("new key"), "z-new.key": caKey})
	if err == nil || !strings.Contains(err.Error(), "ca.key") || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("overwrite: err = %v, want an error naming ca.key", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "ca.key")); !bytes.Equal(b, caKey) {
		t.Error("ca.key was overwritten")
	}
	for _, n := range []string{"a-new.crt", "z-new.key"} {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			t.Errorf("%s written although the batch was refused", n)
		}
	}
	for _, n := range []string{"../x.key", "sub/x.key", "", ".."} {
		if err := WriteFiles(dir, map[string][]byte{n: caKey}); err == nil {
			t.Errorf("name %q accepted", n)
		}
	}
}

// TestWatchSIGHUP sends a real SIGHUP to the test process.
func TestWatchSIGHUP(t *testing.T) {
	p := newPKI(t, "vigil test CA")
	files := p.node(t, "obs1", observerID("obs1"))
	s := mustLoad(t, files)
	old := s.Leaf().SerialNumber

	// Keep SIGHUP from killing the test binary before WatchSIGHUP has
	// registered its handler.
	guard := make(chan os.Signal, 16)
	signal.Notify(guard, syscall.SIGHUP)
	defer signal.Stop(guard)

	var logBuf syncBuffer
	logger := slog.New(slog.NewTextHandler(&logBuf, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.WatchSIGHUP(ctx, logger); close(done) }()

	c, k := p.issue(t, observerID("obs1"))
	overwrite(t, files.Cert, c)
	overwrite(t, files.Key, k)
	want := mustParseCert(t, c).SerialNumber
	deadline := time.Now().Add(10 * time.Second)
	for s.Leaf().SerialNumber.Cmp(want) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no reload after SIGHUP; log: %s", logBuf.String())
		}
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if want.Cmp(old) == 0 {
		t.Fatal("same serial")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("WatchSIGHUP did not return after cancel")
	}
	if !strings.Contains(logBuf.String(), "TLS certificates reloaded") {
		t.Errorf("log: %s", logBuf.String())
	}
}

// TestWatchFailure: a failed reload is logged and keeps the old material.
func TestWatchFailure(t *testing.T) {
	p := newPKI(t, "vigil test CA")
	files := p.node(t, "obs1", observerID("obs1"))
	s := mustLoad(t, files)
	old := s.Leaf().SerialNumber
	overwrite(t, files.Key, []byte("broken"))

	var logBuf syncBuffer
	ch := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.watch(ctx, slog.New(slog.NewTextHandler(&logBuf, nil)), ch); close(done) }()
	ch <- syscall.SIGHUP
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logBuf.String(), "TLS reload failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no failure logged: %s", logBuf.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if !strings.Contains(logBuf.String(), files.Key) {
		t.Errorf("log does not name the key file: %s", logBuf.String())
	}
	if s.Leaf().SerialNumber.Cmp(old) != 0 {
		t.Error("certificate changed after a failed reload")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestUnknownRequiredKindPanics(t *testing.T) {
	p := newPKI(t, "vigil test CA")
	s := mustLoad(t, p.node(t, "obs1", observerID("obs1")))
	for _, f := range []func(){
		func() { s.ServerConfig("operators") },
		func() { s.ClientConfig("x", "admin") },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("unknown kind in requireKinds did not panic")
				}
			}()
			f()
		}()
	}
}
