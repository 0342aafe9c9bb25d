package tlsconf

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMutualTLSHandshake(t *testing.T) {
	p := newPKI(t, "vigil test CA")
	srvFiles := p.node(t, "obs1", observerID("obs1"))
	opFiles := p.node(t, "alice", Identity{Name: "alice", Kind: KindOperator})
	viewFiles := p.node(t, "bob", Identity{Name: "bob", Kind: KindViewer})
	obs2Files := p.node(t, "obs2", observerID("obs2"))

	srvStore := mustLoad(t, srvFiles)
	if k, n := srvStore.Identity(); k != KindObserver || n != "obs1" {
		t.Fatalf("store identity = %s/%s", k, n)
	}
	srv := startServer(t, srvStore.ServerConfig(KindOperator, KindViewer, KindObserver))

	cases := []struct {
		files      Files
		serverName string
		kind, name string
	}{
		{opFiles, "127.0.0.1", KindOperator, "alice"},
		{viewFiles, "localhost", KindViewer, "bob"},
		{obs2Files, "obs1.vigil.test", KindObserver, "obs2"},
		{opFiles, "", KindOperator, "alice"}, // chain + kind only
	}
	for _, tc := range cases {
		cli := mustLoad(t, tc.files)
		conn, err := dial(srv.addr, cli.ClientConfig(tc.serverName, KindObserver))
		if err != nil {
			t.Fatalf("%s/%s via %q: %v", tc.kind, tc.name, tc.serverName, err)
		}
		r := srv.next(t)
		if r.err != nil || r.kind != tc.kind || r.name != tc.name {
			t.Fatalf("server saw %+v, want %s/%s", r, tc.kind, tc.name)
		}
		cs := conn.ConnectionState()
		if cs.Version != tls.VersionTLS13 {
			t.Errorf("version %x, want TLS 1.3", cs.Version)
		}
		if k, n, err := IdentityOfConn(cs); err != nil || k != KindObserver || n != "obs1" {
			t.Errorf("client saw server identity %s/%s, %v", k, n, err)
		}
		conn.Close()
	}

	// Client-side checks of the server: wrong host name, wrong kind.
	cli := mustLoad(t, opFiles)
	if _, err := dial(srv.addr, cli.ClientConfig("evil.example", KindObserver)); err == nil || !strings.Contains(err.Error(), "evil.example") {
		t.Errorf("wrong server name: err = %v, want a host name mismatch", err)
	}
	if _, err := dial(srv.addr, cli.ClientConfig("127.0.0.1", KindAgent)); err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Errorf("wrong server kind: err = %v, want 'not allowed'", err)
	}
	if _, err := dial(srv.addr, cli.ClientConfig("10.9.9.9")); err == nil {
		t.Error("wrong server IP accepted")
	}
	for i := 0; i < 3; i++ { // the server side of those aborted handshakes
		if r := srv.next(t); r.err == nil {
			t.Errorf("server completed a handshake the client rejected: %+v", r)
		}
	}
}

func TestRefused(t *testing.T) {
	p := newPKI(t, "vigil test CA")
	other := newPKI(t, "another CA")
	srvStore := mustLoad(t, p.node(t, "obs1", observerID("obs1")))
	agentFiles := p.node(t, "db1", Identity{Name: "db1", Kind: KindAgent, DNS: []string{"localhost"}})

	// A hand-made client that presents its certificate whatever CAs the
	// server asks for (Go's Certificates field would hold back a certificate
	// from another CA; a hostile client would not).
	manual := func(certs ...tls.Certificate) *tls.Config {
		return &tls.Config{
			MinVersion: tls.VersionTLS13, RootCAs: p.pool(), ServerName: "127.0.0.1",
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				if len(certs) == 0 {
					return &tls.Certificate{}, nil
				}
				return &certs[0], nil
			},
		}
	}
	cases := []struct {
		name      string
		require   []string
		client    func(t *testing.T) *tls.Config
		serverErr string // substring of the server's handshake error
	}{
		{"no client certificate", nil, func(t *testing.T) *tls.Config { return manual() }, "certificate"},
		{"certificate from another CA", nil, func(t *testing.T) *tls.Config {
			return manual(other.keyPair(t, Identity{Name: "mallory", Kind: KindOperator}))
		}, "unknown authority"},
		{"expired certificate", nil, func(t *testing.T) *tls.Config {
			return manual(p.keyPair(t, Identity{Name: "alice", Kind: KindOperator, NotAfter: time.Now().Add(-time.Hour)}))
		}, "expired"},
		{"certificate without vigil identity", nil, func(t *testing.T) *tls.Config {
			return manual(p.foreignKeyPair(t))
		}, "no vigil://"},
		{"agent where operator required", []string{KindOperator}, func(t *testing.T) *tls.Config {
			return mustLoad(t, agentFiles).ClientConfig("127.0.0.1", KindObserver)
		}, "agent/db1 is not allowed here (allowed kinds: operator)"},
		{"viewer where observer required", []string{KindObserver}, func(t *testing.T) *tls.Config {
			return mustLoad(t, p.node(t, "bob", Identity{Name: "bob", Kind: KindViewer})).ClientConfig("", KindObserver)
		}, "not allowed"},
		{"TLS 1.2 client", nil, func(t *testing.T) *tls.Config {
			c := manual(p.keyPair(t, Identity{Name: "carol", Kind: KindOperator}))
			c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			return c
		}, "version"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t, srvStore.ServerConfig(tc.require...))
			conn, err := dial(srv.addr, tc.client(t))
			if err == nil {
				conn.Close()
				t.Fatal("client got through")
			}
			r := srv.next(t)
			if r.err == nil {
				t.Fatalf("server completed the handshake: %+v", r)
			}
			if !strings.Contains(r.err.Error(), tc.serverErr) {
				t.Errorf("server error %q, want it to contain %q", r.err, tc.serverErr)
			}
			t.Logf("client: %v / server: %v", err, r.err)
			srv.noMore(t)
		})
	}
}

// foreignKeyPair is a certificate signed by the CA but without a vigil
// identity URI (e.g. issued by another tool with the same CA).
func (p *pki) foreignKeyPair(t *testing.T) tls.Certificate {
	t.Helper()
	c, k := p.issue(t, Identity{Name: "x", Kind: KindOperator})
	tmpl := mustParseCert(t, c)
	tmpl.URIs = nil
	caCert, caKey, err := parseCA(p.caCert, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := parseKeyPEM(k)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, signer.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: signer}
}

func TestReload(t *testing.T) {
	p := newPKI(t, "vigil test CA")
	srvFiles := p.node(t, "obs1", observerID("obs1"))
	srvStore := mustLoad(t, srvFiles)
	cliFiles := p.node(t, "alice", Identity{Name: "alice", Kind: KindOperator})
	cliStore := mustLoad(t, cliFiles)
	srv := startServer(t, srvStore.ServerConfig(KindOperator))
	ccfg := cliStore.ClientConfig("127.0.0.1", KindObserver)

	conn1, err := dial(srv.addr, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn1.Close()
	r1 := srv.next(t)
	serial1 := conn1.ConnectionState().PeerCertificates[0].SerialNumber

	// New certificates for both sides, written over the old files.
	newSrvCert, newSrvKey := p.issue(t, observerID("obs1"))
	overwrite(t, srvFiles.Cert, newSrvCert)
	overwrite(t, srvFiles.Key, newSrvKey)
	newCliCert, newCliKey := p.issue(t, Identity{Name: "alice", Kind: KindOperator})
	overwrite(t, cliFiles.Cert, newCliCert)
	overwrite(t, cliFiles.Key, newCliKey)
	if err := srvStore.Reload(); err != nil {
		t.Fatalf("server Reload: %v", err)
	}
	if err := cliStore.Reload(); err != nil {
		t.Fatalf("client Reload: %v", err)
	}
	serial2 := mustParseCert(t, newSrvCert).SerialNumber
	if serial2.Cmp(serial1) == 0 {
		t.Fatal("new certificate has the old serial")
	}
	if srvStore.Leaf().SerialNumber.Cmp(serial2) != 0 {
		t.Fatal("store does not hold the new certificate")
	}

	// The established connection keeps working.
	if err := ping(conn1); err != nil {
		t.Fatalf("established connection broken by reload: %v", err)
	}
	// A new handshake presents the new certificates, both ways, with the
	// same (unchanged) client config.
	conn2, err := dial(srv.addr, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	if got := conn2.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(serial2) != 0 {
		t.Fatalf("new connection: server serial %x, want the new %x", got, serial2)
	}
	r2 := srv.next(t)
	if r2.serial.Cmp(mustParseCert(t, newCliCert).SerialNumber) != 0 || r2.serial.Cmp(r1.serial) == 0 {
		t.Fatalf("new connection: client serial %x, want the new one", r2.serial)
	}

	// Broken key file: error, old material kept.
	overwrite(t, srvFiles.Key, []byte("garbage\n"))
	err = srvStore.Reload()
	if err == nil || !strings.Contains(err.Error(), srvFiles.Key) {
		t.Fatalf("Reload with a broken key: err = %v, want an error naming %s", err, srvFiles.Key)
	}
	// Key of another certificate: error, nothing half-applied.
	_, otherKey := p.issue(t, observerID("obs1"))
	overwrite(t, srvFiles.Key, otherKey)
	if err := srvStore.Reload(); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("Reload with a mismatched key: err = %v", err)
	}
	// New cert + old key (half-written rotation): refused too.
	newerCert, _ := p.issue(t, observerID("obs1"))
	overwrite(t, srvFiles.Cert, newerCert)
	if err := srvStore.Reload(); err == nil {
		t.Fatal("Reload with a cert and a key of different pairs succeeded")
	}
	if srvStore.Leaf().SerialNumber.Cmp(serial2) != 0 {
		t.Fatal("failed reload changed the certificate")
	}
	conn3, err := dial(srv.addr, ccfg)
	if err != nil {
		t.Fatalf("handshake after a failed reload: %v", err)
	}
	defer conn3.Close()
	if got := conn3.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(serial2) != 0 {
		t.Fatalf("after failed reload: serial %x, want %x", got, serial2)
	}
	srv.next(t)
	if err := ping(conn1); err != nil {
		t.Fatalf("first connection: %v", err)
	}
}

// TestReloadCA: the CA pool used for client verification is the one current
// at the handshake (GetConfigForClient), on both sides.
func TestReloadCA(t *testing.T) {
	p := newPKI(t, "old CA")
	next := newPKI(t, "new CA")
	srvFiles := p.node(t, "obs1", observerID("obs1"))
	srvStore := mustLoad(t, srvFiles)
	srv := startServer(t, srvStore.ServerConfig())

	// A client from the new CA, trusting both CAs.
	cliFiles := next.node(t, "alice", Identity{Name: "alice", Kind: KindOperator})
	bundle := filepath.Join(next.dir, "bundle.crt")
	overwrite(t, bundle, append(append([]byte{}, p.caCert...), next.caCert...))
	cliFiles.CA = bundle
	cli := mustLoad(t, cliFiles)

	if _, err := dial(srv.addr, cli.ClientConfig("127.0.0.1")); err == nil {
		t.Fatal("client from a CA the server does not trust yet got through")
	}
	if r := srv.next(t); r.err == nil {
		t.Fatal("server accepted an unknown CA")
	}
	overwrite(t, srvFiles.CA, append(append([]byte{}, p.caCert...), next.caCert...))
	if err := srvStore.Reload(); err != nil {
		t.Fatal(err)
	}
	c, err := dial(srv.addr, cli.ClientConfig("127.0.0.1"))
	if err != nil {
		t.Fatalf("after adding the CA: %v", err)
	}
	c.Close()
	if r := srv.next(t); r.err != nil || r.name != "alice" {
		t.Fatalf("server: %+v", r)
	}

	// Client side: drop the old CA from the client's pool: the server
	// (old CA) is no longer trusted by that client.
	overwrite(t, bundle, next.caCert)
	if err := cli.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(srv.addr, cli.ClientConfig("127.0.0.1")); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("client kept trusting a removed CA: %v", err)
	}
	srv.next(t)
}

// TestConcurrentReload runs handshakes while the certificates are reloaded
// (meaningful under -race).
func TestConcurrentReload(t *testing.T) {
	p := newPKI(t, "vigil test CA")
	srvFiles := p.node(t, "obs1", observerID("obs1"))
	srvStore := mustLoad(t, srvFiles)
	cli := mustLoad(t, p.node(t, "alice", Identity{Name: "alice", Kind: KindOperator}))
	srv := startServer(t, srvStore.ServerConfig(KindOperator))
	go func() { // drain; the server's results are not checked here
		for {
			select {
			case <-srv.results:
			case <-t.Context().Done():
				return
			}
		}
	}()
	pairs := make([][2][]byte, 4)
	for i := range pairs {
		c, k := p.issue(t, observerID("obs1"))
		pairs[i] = [2][]byte{c, k}
	}
	stop := make(chan struct{})
	reloaderDone := make(chan int)
	go func() {
		reloads := 0
		for i := 0; ; i++ {
			select {
			case <-stop:
				reloaderDone <- reloads
				return
			default:
			}
			// Cert and key written one after the other (and files read
			// while being rewritten): many reloads see a broken or
			// mismatched pair and must fail without effect.
			pr := pairs[i%len(pairs)]
			_ = os.WriteFile(srvFiles.Cert, pr[0], 0o644)
			if srvStore.Reload() == nil {
				reloads++
			}
			_ = os.WriteFile(srvFiles.Key, pr[1], 0o600)
			if srvStore.Reload() == nil {
				reloads++
			}
		}
	}()
	cfg := cli.ClientConfig("127.0.0.1", KindObserver)
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 15; j++ {
				c, err := dial(srv.addr, cfg)
				if err != nil {
					t.Errorf("handshake during reloads: %v", err)
					return
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	close(stop)
	t.Logf("%d successful reloads during 60 handshakes", <-reloaderDone)
}

func TestLoadErrors(t *testing.T) {
	p := newPKI(t, "vigil test CA")
	other := newPKI(t, "another CA")
	good := p.node(t, "obs1", observerID("obs1"))
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		path := filepath.Join(dir, name)
		overwrite(t, path, b)
		return path
	}
	goodCert, _ := os.ReadFile(good.Cert)
	goodKey, _ := os.ReadFile(good.Key)
	_, otherKey := p.issue(t, observerID("obs1"))
	expCert, expKey := p.issue(t, Identity{Name: "old", Kind: KindObserver, NotAfter: time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC), NotBefore: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)})
	foreignCert, foreignKey := other.issue(t, observerID("obs1"))
	fk := p.foreignKeyPair(t)
	noIDCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: fk.Certificate[0]})
	noIDKeyDER, _ := x509.MarshalPKCS8PrivateKey(fk.PrivateKey)
	noIDKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: noIDKeyDER})

	cases := []struct {
		name  string
		files Files
		want  []string
	}{
		{"missing CA", Files{CA: filepath.Join(dir, "nope.crt"), Cert: good.Cert, Key: good.Key}, []string{"CA file", "nope.crt", "does not exist"}},
		{"missing key", Files{CA: good.CA, Cert: good.Cert, Key: filepath.Join(dir, "nope.key")}, []string{"key file", "nope.key", "does not exist"}},
		{"empty path", Files{CA: good.CA, Cert: "", Key: good.Key}, []string{"no certificate file configured"}},
		{"cert not PEM", Files{CA: good.CA, Cert: write("notpem.crt", []byte("hello")), Key: good.Key}, []string{"notpem.crt", "not PEM"}},
		{"CA not PEM", Files{CA: write("ca-notpem.crt", []byte("hello")), Cert: good.Cert, Key: good.Key}, []string{"ca-notpem.crt", "not PEM"}},
		{"key not PEM", Files{CA: good.CA, Cert: good.Cert, Key: write("notpem.key", []byte("hello"))}, []string{"notpem.key", "not PEM"}},
		{"key given as cert", Files{CA: good.CA, Cert: write("swapped.crt", goodKey), Key: write("swapped.key", goodCert)}, []string{"swapped.crt", "PRIVATE KEY"}},
		{"key mismatch", Files{CA: good.CA, Cert: good.Cert, Key: write("other.key", otherKey)}, []string{"other.key", "does not match", good.Cert}},
		{"expired", Files{CA: good.CA, Cert: write("exp.crt", expCert), Key: write("exp.key", expKey)}, []string{"exp.crt", "expired", "NotAfter 2020-01-02T03:04:05Z"}},
		{"other CA", Files{CA: good.CA, Cert: write("foreign.crt", foreignCert), Key: write("foreign.key", foreignKey)}, []string{"foreign.crt", "does not verify against the CA", good.CA}},
		{"CA file holds a leaf", Files{CA: good.Cert, Cert: good.Cert, Key: good.Key}, []string{"is not a CA certificate"}},
		{"no identity", Files{CA: good.CA, Cert: write("noid.crt", noIDCert), Key: write("noid.key", noIDKey)}, []string{"noid.crt", "no vigil://"}},
		{"encrypted key", Files{CA: good.CA, Cert: good.Cert, Key: write("enc.key", []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"))}, []string{"enc.key", "encrypted"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.files)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	// The good files load, and so does the same key as "EC PRIVATE KEY"
	// (SEC 1, openssl's default) with an "EC PARAMETERS" block before it.
	mustLoad(t, good)
	signer, err := parseKeyPEM(goodKey)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalECPrivateKey(signer.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	sec1 := append([]byte("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})...)
	mustLoad(t, Files{CA: good.CA, Cert: good.Cert, Key: write("sec1.key", sec1)})
}
