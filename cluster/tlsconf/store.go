package tlsconf

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Files names the PEM files of a node: the CA certificate(s) it trusts, its
// certificate (leaf first, optionally followed by intermediates) and its key.
type Files struct {
	CA, Cert, Key string
}

// Store holds the current certificate + key and CA pool, loaded from Files.
// It is safe for concurrent use; Reload swaps the whole material atomically,
// and the tls.Configs built by ServerConfig/ClientConfig read the current
// material at every handshake.
type Store struct {
	files    Files
	reloadMu sync.Mutex // serializes Reload
	cur      atomic.Pointer[material]
	now      func() time.Time
}

// material is one immutable, consistent set of CA pool + certificate.
type material struct {
	pool    *x509.CertPool
	caCerts []*x509.Certificate
	cert    *tls.Certificate
	leaf    *x509.Certificate
	kind    string
	name    string
}

// Load reads and checks f. Errors name the file and the problem: missing
// file, no PEM data, unparsable certificate or key, key not matching the
// certificate, certificate expired (naming its NotAfter) or not yet valid,
// certificate not signed by the CA, no vigil identity in the certificate.
func Load(f Files) (*Store, error) {
	s := &Store{files: f, now: time.Now}
	m, err := s.load()
	if err != nil {
		return nil, err
	}
	s.cur.Store(m)
	return s, nil
}

// Reload re-reads the files. On any error the previous material stays in
// use (nothing is half-applied) and the error is returned. Handshakes
// already in progress or completed are unaffected; new handshakes use the
// new material.
func (s *Store) Reload() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	m, err := s.load()
	if err != nil {
		return err
	}
	s.cur.Store(m)
	return nil
}

// Files returns the file names the store loads from.
func (s *Store) Files() Files { return s.files }

// Identity returns the vigil identity of the store's current certificate.
func (s *Store) Identity() (kind, name string) {
	m := s.cur.Load()
	return m.kind, m.name
}

// Leaf returns the current certificate (e.g. for its NotAfter or serial).
// The returned certificate must not be modified.
func (s *Store) Leaf() *x509.Certificate { return s.cur.Load().leaf }

// Certificate returns the current certificate chain and key.
// The returned value must not be modified.
func (s *Store) Certificate() *tls.Certificate { return s.cur.Load().cert }

// Pool returns the current CA pool. The returned pool must not be modified.
func (s *Store) Pool() *x509.CertPool { return s.cur.Load().pool }

// ServerConfig returns a TLS 1.3 server configuration for mutual TLS: the
// server certificate comes from the store at each handshake, client
// certificates are required and verified against the store's CA pool current
// at that handshake (via GetConfigForClient), and the client's vigil
// identity must be of one of requireKinds (any valid vigil identity when none
// are given); otherwise the handshake fails with an error naming the
// identity and the allowed kinds.
//
// Session tickets are disabled, so every connection is a full handshake
// verified against the current CA pool (no resumption across a CA change).
//
// Fields set on the returned config by the caller before use (NextProtos,
// for instance) are carried into the per-handshake config. requireKinds
// must be known kinds (panics otherwise: a programming error).
func (s *Store) ServerConfig(requireKinds ...string) *tls.Config {
	return s.serverConfig(nil, requireKinds)
}

// PeerCheck is a caller's own check of a peer whose chain and kind were
// verified: its vigil identity and, on the server side, the network
// address the client connects from (nil on the client side, or when the
// handshake runs without a known connection). A non-nil error fails the
// handshake: the peer gets a bad_certificate alert, and the error is
// returned unchanged by the local Handshake, so the caller can classify it
// with errors.As.
type PeerCheck func(kind, name string, remote net.Addr) error

// ServerConfigWithCheck is ServerConfig plus check, run on every client
// after its chain and kind are verified (Raft uses it to accept only the
// configured observers, each from its own address).
func (s *Store) ServerConfigWithCheck(check PeerCheck, requireKinds ...string) *tls.Config {
	if check == nil {
		panic("tlsconf: ServerConfigWithCheck without a check")
	}
	return s.serverConfig(check, requireKinds)
}

func (s *Store) serverConfig(check PeerCheck, requireKinds []string) *tls.Config {
	kinds := checkKinds(requireKinds)
	verifier := func(remote net.Addr) func(tls.ConnectionState) error {
		return func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tlsconf: client presented no certificate")
			}
			kind, name, err := checkPeerKind("client", cs.PeerCertificates[0], kinds)
			if err != nil || check == nil {
				return err
			}
			return check(kind, name, remote)
		}
	}
	base := &tls.Config{
		MinVersion:             tls.VersionTLS13,
		ClientAuth:             tls.RequireAndVerifyClientCert,
		SessionTicketsDisabled: true,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cur.Load().cert, nil
		},
		// Without GetConfigForClient (a wrapper dropped it) the client's
		// address is unknown: a check then sees remote == nil.
		VerifyConnection: verifier(nil),
	}
	base.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.GetConfigForClient = nil
		c.ClientCAs = s.cur.Load().pool
		// Enforce the security-relevant settings even if the caller
		// changed them on base.
		c.MinVersion = tls.VersionTLS13
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.SessionTicketsDisabled = true
		var remote net.Addr
		if hello != nil && hello.Conn != nil {
			remote = hello.Conn.RemoteAddr()
		}
		c.VerifyConnection = verifier(remote)
		return c, nil
	}
	// ClientCAs on the base config as well, so a wrapper that drops
	// GetConfigForClient still verifies clients (against the pool at the
	// time of this call).
	base.ClientCAs = s.cur.Load().pool
	return base
}

// ClientConfig returns a TLS 1.3 client configuration for mutual TLS: the
// client certificate comes from the store at each handshake; the server's
// chain is verified against the store's CA pool current at that handshake,
// for server authentication, and against serverName (a DNS name or an IP
// literal, matched against the DNS/IP SANs) unless serverName is "", in
// which case only the chain and the identity are checked (Raft peers dialled
// by address, for instance). The server's vigil identity must be of one of
// requireKinds (any valid vigil identity when none are given).
//
// InsecureSkipVerify is set only so that this verification (in
// VerifyConnection) replaces the built-in one, which would pin the CA pool at
// config creation; it is never skipped. The hostname check uses serverName,
// not a ServerName set later on the config.
func (s *Store) ClientConfig(serverName string, requireKinds ...string) *tls.Config {
	return s.clientConfig(serverName, nil, requireKinds)
}

// ClientConfigWithCheck is ClientConfig plus check, run on the server's
// identity after its chain, name and kind are verified (remote is nil):
// Raft uses it to make sure the observer that answers is the one it meant
// to reach.
func (s *Store) ClientConfigWithCheck(serverName string, check PeerCheck, requireKinds ...string) *tls.Config {
	if check == nil {
		panic("tlsconf: ClientConfigWithCheck without a check")
	}
	return s.clientConfig(serverName, check, requireKinds)
}

func (s *Store) clientConfig(serverName string, check PeerCheck, requireKinds []string) *tls.Config {
	kinds := checkKinds(requireKinds)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.cur.Load().cert, nil
		},
		InsecureSkipVerify: true, // verification done in VerifyConnection, below
		VerifyConnection: func(cs tls.ConnectionState) error {
			kind, name, err := s.verifyServer(cs, serverName, kinds)
			if err != nil || check == nil {
				return err
			}
			return check(kind, name, nil)
		},
	}
}

// verifyServer is the client side's verification of the server; it
// returns the server's identity.
func (s *Store) verifyServer(cs tls.ConnectionState, serverName string, kinds []string) (kind, name string, err error) {
	if len(cs.PeerCertificates) == 0 {
		return "", "", errors.New("tlsconf: server presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{
		Roots:         s.cur.Load().pool,
		Intermediates: inter,
		DNSName:       serverName, // "" skips the hostname check
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		CurrentTime:   s.now(),
	}
	if _, err := leaf.Verify(opts); err != nil {
		return "", "", fmt.Errorf("tlsconf: server certificate %s rejected: %w", describeCert(leaf), err)
	}
	return checkPeerKind("server", leaf, kinds)
}

// checkKinds validates requireKinds (panics on an unknown kind: a typo
// there would silently lock everybody out or, worse, be read as "any").
func checkKinds(kinds []string) []string {
	for _, k := range kinds {
		if !IsKnownKind(k) {
			panic(fmt.Sprintf("tlsconf: unknown identity kind %q in requireKinds", k))
		}
	}
	return slices.Clone(kinds)
}

// checkPeerKind extracts the identity of a (verified) peer certificate and
// checks its kind.
func checkPeerKind(role string, cert *x509.Certificate, kinds []string) (kind, name string, err error) {
	kind, name, err = peerIdentity(cert)
	if err != nil {
		return "", "", fmt.Errorf("tlsconf: %s rejected: %w", role, err)
	}
	if len(kinds) > 0 && !slices.Contains(kinds, kind) {
		return "", "", fmt.Errorf("tlsconf: %s identity %s/%s is not allowed here (allowed kinds: %s)", role, kind, name, strings.Join(kinds, ", "))
	}
	return kind, name, nil
}

// WatchSIGHUP reloads the store on every SIGHUP and logs the outcome, until
// ctx is done. A failed reload is logged as an error and the previous
// certificate stays in use. Run it in its own goroutine; note that while it
// runs, SIGHUP no longer terminates the process.
func (s *Store) WatchSIGHUP(ctx context.Context, logger *slog.Logger) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	defer signal.Stop(ch)
	s.watch(ctx, logger, ch)
}

// watch reloads on every value received from ch (testable core of
// WatchSIGHUP).
func (s *Store) watch(ctx context.Context, logger *slog.Logger, ch <-chan os.Signal) {
	if logger == nil {
		logger = slog.Default()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
		old := s.cur.Load()
		if err := s.Reload(); err != nil {
			logger.Error("TLS reload failed; keeping the current certificate",
				"err", err,
				"cert_file", s.files.Cert,
				"serial", old.leaf.SerialNumber.Text(16),
				"not_after", old.leaf.NotAfter)
			continue
		}
		m := s.cur.Load()
		logger.Info("TLS certificates reloaded",
			"cert_file", s.files.Cert,
			"identity", m.kind+"/"+m.name,
			"old_serial", old.leaf.SerialNumber.Text(16),
			"serial", m.leaf.SerialNumber.Text(16),
			"not_after", m.leaf.NotAfter,
			"ca_certs", len(m.caCerts))
		if m.kind != old.kind || m.name != old.name {
			logger.Warn("TLS identity changed on reload",
				"old_identity", old.kind+"/"+old.name,
				"identity", m.kind+"/"+m.name)
		}
	}
}

// load reads and checks the three files into a new material.
func (s *Store) load() (*material, error) {
	f := s.files
	caPEM, err := readFile("CA", f.CA)
	if err != nil {
		return nil, err
	}
	certPEM, err := readFile("certificate", f.Cert)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFile("key", f.Key)
	if err != nil {
		return nil, err
	}

	caCerts, err := parseCertsPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: CA file %s: %w", f.CA, err)
	}
	pool := x509.NewCertPool()
	for _, c := range caCerts {
		if !c.BasicConstraintsValid || !c.IsCA {
			return nil, fmt.Errorf("tlsconf: CA file %s: certificate %s is not a CA certificate", f.CA, describeCert(c))
		}
		pool.AddCert(c)
	}

	chain, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: certificate file %s: %w", f.Cert, err)
	}
	leaf := chain[0]
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: key file %s: %w", f.Key, err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("tlsconf: key file %s does not match the certificate in %s %s", f.Key, f.Cert, describeCert(leaf))
	}

	now := s.now()
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("tlsconf: certificate in %s %s expired: NotAfter %s (now %s)",
			f.Cert, describeCert(leaf), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("tlsconf: certificate in %s %s is not valid yet: NotBefore %s (now %s)",
			f.Cert, describeCert(leaf), leaf.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		CurrentTime:   now,
	}); err != nil {
		return nil, fmt.Errorf("tlsconf: certificate in %s %s does not verify against the CA in %s: %w", f.Cert, describeCert(leaf), f.CA, err)
	}
	kind, name, err := peerIdentity(leaf)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: certificate file %s: %w", f.Cert, err)
	}

	ders := make([][]byte, len(chain))
	for i, c := range chain {
		ders[i] = c.Raw
	}
	return &material{
		pool:    pool,
		caCerts: caCerts,
		cert:    &tls.Certificate{Certificate: ders, PrivateKey: key, Leaf: leaf},
		leaf:    leaf,
		kind:    kind,
		name:    name,
	}, nil
}

// maxPEMFile bounds the files read (a CA bundle or a chain is a few KiB).
const maxPEMFile = 1 << 20

func readFile(what, path string) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("tlsconf: no %s file configured", what)
	}
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("tlsconf: %s file %s does not exist: %w", what, path, err)
		}
		return nil, fmt.Errorf("tlsconf: %s file %s: %w", what, path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("tlsconf: %s file %s is not a regular file", what, path)
	}
	if fi.Size() > maxPEMFile {
		return nil, fmt.Errorf("tlsconf: %s file %s is %d bytes (max %d)", what, path, fi.Size(), maxPEMFile)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: %s file %s: %w", what, path, err)
	}
	return b, nil
}

// parseCertsPEM returns the CERTIFICATE blocks of b, in order. Other PEM
// blocks are an error; non-PEM text between blocks is ignored.
func parseCertsPEM(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != pemCert {
			return nil, fmt.Errorf("unexpected PEM block %q (want %s)", blk.Type, pemCert)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate #%d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("not PEM: no CERTIFICATE block found")
	}
	return certs, nil
}

// parseKeyPEM returns the private key in b: PKCS#8 "PRIVATE KEY", SEC 1
// "EC PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY". "EC PARAMETERS" blocks
// (written by openssl) are skipped; anything else is an error.
func parseKeyPEM(b []byte) (crypto.Signer, error) {
	rest := b
	sawPEM := false
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		sawPEM = true
		if blk.Type == "EC PARAMETERS" {
			continue
		}
		if _, encrypted := blk.Headers["Proc-Type"]; encrypted || blk.Type == "ENCRYPTED PRIVATE KEY" {
			return nil, errors.New("encrypted private keys are not supported")
		}
		var (
			k   any
			err error
		)
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		default:
			return nil, fmt.Errorf("unexpected PEM block %q (want a private key)", blk.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("cannot parse %s: %w", blk.Type, err)
		}
		signer, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported private key type %T", k)
		}
		return signer, nil
	}
	if sawPEM {
		return nil, errors.New("no private key PEM block found")
	}
	return nil, errors.New("not PEM: no private key block found")
}
