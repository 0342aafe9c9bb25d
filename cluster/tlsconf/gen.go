package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Identity describes a certificate to issue.
type Identity struct {
	// Name is the CN and the name part of the URI SAN "vigil://<kind>/<name>".
	Name string
	// Kind is "observer" | "agent" (server+client auth) or "operator" |
	// "viewer" (client auth only).
	Kind string
	// DNS and IPs are the DNS / IP SANs (what clients dial).
	DNS []string
	IPs []net.IP
	// NotAfter is the expiry. Zero means one year from now, capped at the
	// CA's expiry. An explicit NotAfter after the CA's expiry is an error. A
	// NotAfter in the past is accepted (it yields an expired certificate, for
	// tests).
	NotAfter time.Time
	// NotBefore is optional; zero means 5 minutes ago (clock skew), or one
	// hour before NotAfter when NotAfter is earlier than that.
	NotBefore time.Time
}

// DefaultCertValidity is the validity of issued certificates when
// Identity.NotAfter is zero.
const DefaultCertValidity = 365 * 24 * time.Hour

// clockSkew is how far in the past NotBefore is set by default.
const clockSkew = 5 * time.Minute

// PEM block types written by this package. Keys are PKCS#8.
const (
	pemCert = "CERTIFICATE"
	pemKey  = "PRIVATE KEY"
)

// NewCA creates a self-signed ECDSA P-256 CA certificate valid for validity
// and returns it and its PKCS#8 key, PEM-encoded.
func NewCA(name string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if strings.TrimSpace(name) == "" {
		return nil, nil, errors.New("tlsconf: CA name is empty")
	}
	if validity <= 0 {
		return nil, nil, fmt.Errorf("tlsconf: CA validity %v must be positive", validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsconf: generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	ski, err := subjectKeyID(&key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"vigil"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true, // no intermediates: one private CA
		SubjectKeyId:          ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsconf: create CA certificate: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCert, Bytes: der}), keyPEM, nil
}

// Issue signs a certificate for id with the CA and returns it and its new
// PKCS#8 ECDSA P-256 key, PEM-encoded. The certificate carries the URI SAN
// vigil://<kind>/<name>, the DNS/IP SANs of id, a random 128-bit serial,
// and EKUs server+client auth (observer, agent) or client auth (operator,
// viewer).
func Issue(caCertPEM, caKeyPEM []byte, id Identity) (certPEM, keyPEM []byte, err error) {
	if !IsKnownKind(id.Kind) {
		return nil, nil, fmt.Errorf("tlsconf: unknown identity kind %q (want observer, agent, operator or viewer)", id.Kind)
	}
	if err := ValidateName(id.Name); err != nil {
		return nil, nil, fmt.Errorf("tlsconf: %w", err)
	}
	for _, d := range id.DNS {
		if err := validateDNSName(d); err != nil {
			return nil, nil, fmt.Errorf("tlsconf: DNS SAN %q: %w", d, err)
		}
	}
	for _, ip := range id.IPs {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, nil, fmt.Errorf("tlsconf: invalid IP SAN %v", ip)
		}
	}
	caCert, caKey, err := parseCA(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, nil, err
	}

	now := time.Now()
	notAfter := id.NotAfter
	if notAfter.IsZero() {
		notAfter = now.Add(DefaultCertValidity)
		if notAfter.After(caCert.NotAfter) {
			notAfter = caCert.NotAfter
		}
	} else if notAfter.After(caCert.NotAfter) {
		return nil, nil, fmt.Errorf("tlsconf: NotAfter %s is after the CA's expiry %s", notAfter.UTC().Format(time.RFC3339), caCert.NotAfter.UTC().Format(time.RFC3339))
	}
	notBefore := id.NotBefore
	if notBefore.IsZero() {
		notBefore = now.Add(-clockSkew)
		if !notBefore.Before(notAfter) {
			notBefore = notAfter.Add(-time.Hour)
		}
	}
	if !notBefore.Before(notAfter) {
		return nil, nil, fmt.Errorf("tlsconf: NotBefore %s is not before NotAfter %s", notBefore.UTC().Format(time.RFC3339), notAfter.UTC().Format(time.RFC3339))
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsconf: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	ski, err := subjectKeyID(&key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	eku := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if isServerKind(id.Kind) {
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	ips := make([]net.IP, len(id.IPs))
	for i, ip := range id.IPs {
		ips[i] = append(net.IP(nil), ip...)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:         id.Name,
			Organization:       []string{"vigil"},
			OrganizationalUnit: []string{id.Kind},
		},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           eku,
		BasicConstraintsValid: true,
		IsCA:                  false,
		SubjectKeyId:          ski,
		AuthorityKeyId:        caCert.SubjectKeyId,
		DNSNames:              append([]string(nil), id.DNS...),
		IPAddresses:           ips,
		URIs:                  []*url.URL{identityURI(id.Kind, id.Name)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsconf: sign certificate for %s %q: %w", id.Kind, id.Name, err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCert, Bytes: der}), keyPEM, nil
}

// parseCA decodes the CA certificate and key given to Issue.
func parseCA(caCertPEM, caKeyPEM []byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certs, err := parseCertsPEM(caCertPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsconf: CA certificate: %w", err)
	}
	caCert := certs[0]
	if !caCert.BasicConstraintsValid || !caCert.IsCA {
		return nil, nil, fmt.Errorf("tlsconf: CA certificate %s is not a CA", describeCert(caCert))
	}
	signer, err := parseKeyPEM(caKeyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsconf: CA key: %w", err)
	}
	caKey, ok := signer.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("tlsconf: CA key is %T, want an ECDSA key", signer)
	}
	if !caKey.PublicKey.Equal(caCert.PublicKey) {
		return nil, nil, errors.New("tlsconf: CA key does not match the CA certificate")
	}
	return caCert, caKey, nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemKey, Bytes: der}), nil
}

// randomSerial returns a random, positive, non-zero 128-bit serial number.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("tlsconf: generate serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// subjectKeyID is the SHA-1 of the public key (RFC 5280 method 1), like
// crypto/x509 computes for CAs; set for leaves too.
func subjectKeyID(pub *ecdsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: marshal public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("tlsconf: parse public key: %w", err)
	}
	sum := sha1.Sum(spki.PublicKey.Bytes)
	return sum[:], nil
}

// validateDNSName is a light sanity check on a DNS SAN (x509 rejects the
// worst itself); a leading "*." wildcard is accepted.
func validateDNSName(d string) error {
	if d == "" {
		return errors.New("empty name")
	}
	if len(d) > 253 {
		return errors.New("longer than 253 characters")
	}
	name := strings.TrimPrefix(d, "*.")
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		if label == "" || len(label) > 63 {
			return errors.New("empty or over-long label")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("invalid character %q", c)
			}
		}
	}
	return nil
}

// WriteFiles writes files (name → content) into dir, creating dir (0700)
// if needed. Names must be plain file names. Files whose content is only PEM
// certificates get mode 0644; everything else (keys in particular) 0600. It
// never overwrites: if any file already exists, nothing is written and the
// error names it. On a failure part-way, the files it created are removed.
func WriteFiles(dir string, files map[string][]byte) error {
	names := make([]string, 0, len(files))
	for name := range files {
		if name == "" || name == "." || name == ".." || filepath.Base(name) != name || strings.ContainsAny(name, `/\`) {
			return fmt.Errorf("tlsconf: invalid file name %q (want a plain file name)", name)
		}
		names = append(names, name)
	}
	sort.Strings(names)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tlsconf: create directory %s: %w", dir, err)
	}
	for _, name := range names {
		p := filepath.Join(dir, name)
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("tlsconf: %s already exists; refusing to overwrite it", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("tlsconf: check %s: %w", p, err)
		}
	}
	var created []string
	cleanup := func() {
		for _, p := range created {
			_ = os.Remove(p)
		}
	}
	for _, name := range names {
		p := filepath.Join(dir, name)
		content := files[name]
		perm := fs.FileMode(0o600)
		if isCertOnlyPEM(content) {
			perm = 0o644
		}
		// O_EXCL: a file created between the check above and now is not
		// overwritten either.
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm&0o600)
		if err != nil {
			cleanup()
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("tlsconf: %s already exists; refusing to overwrite it", p)
			}
			return fmt.Errorf("tlsconf: create %s: %w", p, err)
		}
		created = append(created, p)
		_, err = f.Write(content)
		if err == nil {
			err = f.Sync()
		}
		if err == nil {
			err = f.Chmod(perm) // exact mode, independent of the umask
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			cleanup()
			return fmt.Errorf("tlsconf: write %s: %w", p, err)
		}
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// isCertOnlyPEM reports whether b holds at least one PEM block and only
// CERTIFICATE blocks (so it is safe to make world-readable).
func isCertOnlyPEM(b []byte) bool {
	n := 0
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != pemCert {
			return false
		}
		n++
	}
	// Anything that is not PEM at all (or has a private key hidden in
	// non-PEM text) is treated as secret.
	return n > 0 && !strings.Contains(string(b), "PRIVATE KEY")
}
