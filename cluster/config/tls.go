package config

import (
	"os"
)

// TLS is the observer's mutual-TLS material: one private CA signs every
// observer, node agent and operator certificate (`vigil certs`). When set,
// the admin gRPC API, Raft traffic between observers, and observer → agent
// calls require certificates signed by the CA; without it they are
// plaintext (for a trusted lab network only).
type TLS struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Enabled reports whether TLS is configured.
func (t TLS) Enabled() bool { return t.CA != "" || t.Cert != "" || t.Key != "" }

func (t *TLS) resolvePaths(abs func(string) string) {
	t.CA, t.Cert, t.Key = abs(t.CA), abs(t.Cert), abs(t.Key)
}

func (t TLS) validate(v *validator) {
	if !t.Enabled() {
		return
	}
	for field, path := range map[string]string{"tls.ca": t.CA, "tls.cert": t.Cert, "tls.key": t.Key} {
		if path == "" {
			v.add(field, nil, "required when any of tls.ca, tls.cert, tls.key is set")
			continue
		}
		if _, err := os.Stat(path); err != nil {
			v.add(field, path, "cannot be read: %v", err)
		}
	}
}

// Admin configures who may do what on the admin API (with TLS).
type Admin struct {
	// Roles, when set, maps client certificate names to "operator" or
	// "viewer"; other operator and viewer certificates are refused. When
	// empty, the certificate's kind is its role.
	Roles map[string]string `yaml:"roles,omitempty"`
}

func (a Admin) validate(v *validator, tlsOn bool) {
	for name, role := range a.Roles {
		f := "admin.roles." + name
		if role != "operator" && role != "viewer" {
			v.add(f, role, "must be operator or viewer")
		}
		if name == "" {
			v.add("admin.roles", name, "empty identity name")
		}
	}
	if len(a.Roles) > 0 && !tlsOn {
		v.add("admin.roles", nil, "needs tls: roles come from client certificates")
	}
}
