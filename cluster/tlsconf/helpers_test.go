package tlsconf

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// pki is a test CA with a directory to write node files into.
type pki struct {
	dir           string
	caCert, caKey []byte
	caFile        string
	caCertificate *x509.Certificate
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	certPEM, keyPEM, err := NewCA(name, 24*time.Hour)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	dir := t.TempDir()
	if err := WriteFiles(dir, map[string][]byte{"ca.crt": certPEM, "ca.key": keyPEM}); err != nil {
		t.Fatalf("WriteFiles: %v", err)
	}
	return &pki{dir: dir, caCert: certPEM, caKey: keyPEM, caFile: filepath.Join(dir, "ca.crt"), caCertificate: mustParseCert(t, certPEM)}
}

func (p *pki) issue(t *testing.T, id Identity) (certPEM, keyPEM []byte) {
	t.Helper()
	c, k, err := Issue(p.caCert, p.caKey, id)
	if err != nil {
		t.Fatalf("Issue(%s/%s): %v", id.Kind, id.Name, err)
	}
	return c, k
}

// node issues a certificate for id and writes <file>.crt/.key; returns Files.
func (p *pki) node(t *testing.T, file string, id Identity) Files {
	t.Helper()
	c, k := p.issue(t, id)
	if err := WriteFiles(p.dir, map[string][]byte{file + ".crt": c, file + ".key": k}); err != nil {
		t.Fatalf("WriteFiles: %v", err)
	}
	return Files{CA: p.caFile, Cert: filepath.Join(p.dir, file+".crt"), Key: filepath.Join(p.dir, file+".key")}
}

// keyPair returns a tls.Certificate for id, without going through a Store
// (which refuses expired or foreign certificates).
func (p *pki) keyPair(t *testing.T, id Identity) tls.Certificate {
	t.Helper()
	c, k := p.issue(t, id)
	kp, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatalf("X509KeyPair: %v", err)
	}
	return kp
}

func (p *pki) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.caCertificate)
	return pool
}

func mustParseCert(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustLoad(t *testing.T, f Files) *Store {
	t.Helper()
	s, err := Load(f)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return s
}

func observerID(name string) Identity {
	return Identity{Name: name, Kind: KindObserver, DNS: []string{"localhost", name + ".vigil.test"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}}
}

// hsResult is what the test server saw of one connection's handshake.
type hsResult struct {
	kind, name string
	serial     *big.Int // client certificate serial
	err        error
}

// testServer is a TLS echo server recording every handshake outcome.
type testServer struct {
	addr    string
	results chan hsResult
	ln      net.Listener
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
}

func startServer(t *testing.T, cfg *tls.Config) *testServer {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s := &testServer{addr: ln.Addr().String(), results: make(chan hsResult, 100), ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				tc := c.(*tls.Conn)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := tc.HandshakeContext(ctx)
				cancel()
				if err != nil {
					s.results <- hsResult{err: err}
					return
				}
				cs := tc.ConnectionState()
				kind, name, err := IdentityOfConn(cs)
				s.results <- hsResult{kind: kind, name: name, serial: cs.PeerCertificates[0].SerialNumber, err: err}
				_, _ = io.Copy(tc, tc) // echo until the client closes
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// next returns the next handshake outcome seen by the server.
func (s *testServer) next(t *testing.T) hsResult {
	t.Helper()
	select {
	case r := <-s.results:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("server saw no handshake")
		return hsResult{}
	}
}

// noMore asserts the server saw no further handshake.
func (s *testServer) noMore(t *testing.T) {
	t.Helper()
	select {
	case r := <-s.results:
		t.Fatalf("unexpected extra handshake on the server: %+v", r)
	case <-time.After(50 * time.Millisecond):
	}
}

// dial connects and exchanges one message. With TLS 1.3 a client whose
// certificate is rejected completes its side of the handshake and learns
// of the rejection on the first read, hence the ping.
func dial(addr string, cfg *tls.Config) (*tls.Conn, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := c.(*tls.Conn)
	if err := ping(tc); err != nil {
		tc.Close()
		return nil, err
	}
	return tc, nil
}

func ping(c *tls.Conn) error {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	msg := []byte("ping")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if !bytes.Equal(buf, msg) {
		return errors.New("echo mismatch")
	}
	return nil
}

// overwrite replaces a file's content in place (WriteFiles refuses to).
func overwrite(t *testing.T, path string, content []byte) {
	t.Helper()
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
}

func tlsState(complete bool, peer *x509.Certificate) tls.ConnectionState {
	cs := tls.ConnectionState{HandshakeComplete: complete}
	if peer != nil {
		cs.PeerCertificates = []*x509.Certificate{peer}
	}
	return cs
}
