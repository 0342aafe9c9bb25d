// Package tlsconf is vigil's mutual-TLS building block: it generates the
// private CA and the certificates of a deployment (for `vigil certs`), loads
// CA + certificate + key from files with reload (SIGHUP), builds the server
// and client tls.Configs used by Raft, the admin gRPC API, observer → agent
// calls and the HTTP endpoints, and extracts the vigil identity of a peer.
//
// Identity: every vigil certificate carries exactly one URI SAN
// "vigil://<kind>/<name>" (kind: observer, agent, operator, viewer). The URI
// is authoritative; the CN repeats the name for humans. Authorization layers
// (admin roles, Raft peer checks) use PeerIdentity / IdentityOfConn.
//
// Everything is TLS 1.3 only, ECDSA P-256, standard library only.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Identity kinds.
const (
	KindObserver = "observer"
	KindAgent    = "agent"
	KindOperator = "operator"
	KindViewer   = "viewer"
)

// URIScheme is the scheme of the identity URI SAN.
const URIScheme = "vigil"

// maxNameLen bounds identity names (they end up in logs, audit events and
// metric labels).
const maxNameLen = 128

// IsKnownKind reports whether kind is one of the four identity kinds.
func IsKnownKind(kind string) bool {
	switch kind {
	case KindObserver, KindAgent, KindOperator, KindViewer:
		return true
	}
	return false
}

// isServerKind reports whether certificates of this kind are also server
// certificates (server+client auth EKUs); the others are client-only.
func isServerKind(kind string) bool {
	return kind == KindObserver || kind == KindAgent
}

// ValidateName checks an identity name: 1..128 characters from
// [A-Za-z0-9._@-], starting with a letter or digit. The set is deliberately
// small: names appear in URIs, logs, audit records and metric labels.
func ValidateName(name string) error {
	if name == "" {
		return errors.New("identity name is empty")
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("identity name is %d characters long (max %d)", len(name), maxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return fmt.Errorf("identity name %q must start with a letter or digit", name)
		}
		if !alnum && c != '.' && c != '_' && c != '-' && c != '@' {
			return fmt.Errorf("identity name %q contains %q (allowed: letters, digits, '.', '_', '-', '@')", name, c)
		}
	}
	return nil
}

// identityURI returns the URI SAN of an identity.
func identityURI(kind, name string) *url.URL {
	return &url.URL{Scheme: URIScheme, Host: kind, Path: "/" + name}
}

// PeerIdentity returns the vigil identity of a certificate, taken from its
// single "vigil://<kind>/<name>" URI SAN. It fails if there is no such SAN,
// more than one, or it is malformed (unknown kind, invalid name, extra URI
// parts). It does NOT verify the certificate: use it on verified peers only.
func PeerIdentity(cert *x509.Certificate) (kind, name string, err error) {
	kind, name, err = peerIdentity(cert)
	if err != nil {
		return "", "", fmt.Errorf("tlsconf: %w", err)
	}
	return kind, name, nil
}

// peerIdentity is PeerIdentity with errors not prefixed by the package name.
func peerIdentity(cert *x509.Certificate) (kind, name string, err error) {
	if cert == nil {
		return "", "", errors.New("no certificate")
	}
	var found *url.URL
	for _, u := range cert.URIs {
		if u == nil || !strings.EqualFold(u.Scheme, URIScheme) {
			continue
		}
		if found != nil {
			return "", "", fmt.Errorf("certificate %s has more than one %s:// URI SAN", describeCert(cert), URIScheme)
		}
		found = u
	}
	if found == nil {
		return "", "", fmt.Errorf("certificate %s has no %s://<kind>/<name> URI SAN (not a vigil certificate?)", describeCert(cert), URIScheme)
	}
	u := found
	bad := func(why string) (string, string, error) {
		return "", "", fmt.Errorf("certificate %s: malformed identity URI %q: %s", describeCert(cert), u.String(), why)
	}
	if u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Port() != "" {
		return bad("want exactly " + URIScheme + "://<kind>/<name>")
	}
	kind = u.Host
	if !IsKnownKind(kind) {
		return bad(fmt.Sprintf("unknown kind %q (want observer, agent, operator or viewer)", kind))
	}
	if !strings.HasPrefix(u.Path, "/") {
		return bad("no name")
	}
	name = u.Path[1:]
	if err := ValidateName(name); err != nil {
		return bad(err.Error())
	}
	return kind, name, nil
}

// IdentityOfConn returns the vigil identity of the peer of a completed TLS
// connection (cs from tls.Conn.ConnectionState, or from gRPC's
// credentials.TLSInfo.State). The connection must have been established with
// a Store's ServerConfig/ClientConfig, which verify the peer's chain; this
// function only reads the identity of the leaf.
func IdentityOfConn(cs tls.ConnectionState) (kind, name string, err error) {
	if !cs.HandshakeComplete {
		return "", "", errors.New("tlsconf: TLS handshake not complete")
	}
	if len(cs.PeerCertificates) == 0 {
		return "", "", errors.New("tlsconf: peer presented no certificate")
	}
	return PeerIdentity(cs.PeerCertificates[0])
}

// describeCert names a certificate in error messages.
func describeCert(c *x509.Certificate) string {
	if c == nil {
		return "<nil>"
	}
	return fmt.Sprintf("(CN=%q, serial %s)", c.Subject.CommonName, c.SerialNumber.Text(16))
}
