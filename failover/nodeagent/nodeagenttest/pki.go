package nodeagenttest

import (
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/vigilha/vigil/cluster/tlsconf"
)

// PKI is a test CA in a temporary directory, issuing certificate and key
// files for the node agent's tls section and its clients.
type PKI struct {
	Dir           string
	CAFile        string
	caCert, caKey []byte

	mu     sync.Mutex
	issued map[string]tlsconf.Files
}

// NewPKI creates a CA (valid for a day) in tb.TempDir() and writes its
// certificate to ca.crt.
func NewPKI(tb testing.TB) *PKI {
	tb.Helper()
	caCert, caKey, err := tlsconf.NewCA("vigil test CA", 24*time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	if err := tlsconf.WriteFiles(dir, map[string][]byte{"ca.crt": caCert}); err != nil {
		tb.Fatal(err)
	}
	return &PKI{Dir: dir, CAFile: filepath.Join(dir, "ca.crt"), caCert: caCert, caKey: caKey, issued: map[string]tlsconf.Files{}}
}

// Issue issues a certificate of kind for name (with the SANs localhost and
// 127.0.0.1, so that it also serves on loopback), writes it and its key to
// <kind>-<name>.crt / .key and returns the files. Asked again for the same
// identity, it returns the same files.
func (p *PKI) Issue(tb testing.TB, kind, name string) tlsconf.Files {
	tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	base := fmt.Sprintf("%s-%s", kind, name)
	if f, ok := p.issued[base]; ok {
		return f
	}
	cert, key, err := tlsconf.Issue(p.caCert, p.caKey, tlsconf.Identity{
		Name: name, Kind: kind, DNS: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := tlsconf.WriteFiles(p.Dir, map[string][]byte{base + ".crt": cert, base + ".key": key}); err != nil {
		tb.Fatal(err)
	}
	f := tlsconf.Files{CA: p.CAFile, Cert: filepath.Join(p.Dir, base+".crt"), Key: filepath.Join(p.Dir, base+".key")}
	p.issued[base] = f
	return f
}

// Reissue issues a new certificate for the same identity and returns its
// PEM certificate and key, without writing them (for reload tests).
func (p *PKI) Reissue(tb testing.TB, kind, name string) (cert, key []byte) {
	tb.Helper()
	cert, key, err := tlsconf.Issue(p.caCert, p.caKey, tlsconf.Identity{
		Name: name, Kind: kind, DNS: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return cert, key
}

// ClientCreds issues a certificate of kind for name and returns gRPC
// transport credentials presenting it, which accept only a server with an
// agent certificate of this CA (no host name check), as an observer's
// client to a node agent does.
func (p *PKI) ClientCreds(tb testing.TB, kind, name string) credentials.TransportCredentials {
	tb.Helper()
	return credentials.NewTLS(p.ClientConfig(tb, kind, name))
}

// ClientConfig is ClientCreds' tls.Config.
func (p *PKI) ClientConfig(tb testing.TB, kind, name string) *tls.Config {
	tb.Helper()
	st, err := tlsconf.Load(p.Issue(tb, kind, name))
	if err != nil {
		tb.Fatal(err)
	}
	return st.ClientConfig("", tlsconf.KindAgent)
}
