// Package clustertest starts real vigil observers (real Raft over TCP, real
// memberlist gossip, real gRPC) on loopback for tests, and gives tests
// condition-waiting helpers instead of sleeps.
package clustertest

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"text/template"
	"time"

	"github.com/vigilha/vigil/cluster/config"
	"github.com/vigilha/vigil/cluster/tlsconf"
)

// DefaultGroups is a small group section for tests: one PostgreSQL group
// whose members need not exist (nothing probes them in the core tests).
const DefaultGroups = `
  - name: pg-main
    kind: postgres
    primary: db1
    down_after: 2s
    probe: {type: tcp, interval: 500ms, timeout: 400ms}
    members:
      - {name: db1, address: "127.0.0.1:1", priority: 100}
      - {name: db2, address: "127.0.0.1:2", priority: 50}
`

// ConfigSet is the configuration of one test cluster: one YAML document
// per observer, identical but for the node's own part.
type ConfigSet struct {
	IDs   []string
	YAML  [][]byte
	Key   string
	Label string
	// PKIDir holds ca.pem/ca-key.pem and <name>.pem/<name>-key.pem for the
	// observers, operator "alice" and viewer "bob" when TLS is on.
	PKIDir string
}

// ConfigOptions shape a generated ConfigSet.
type ConfigOptions struct {
	// N is the number of observers (default 3).
	N int
	// DataRoot holds one data directory per observer.
	DataRoot string
	// Groups is the YAML list under "groups:" (default DefaultGroups).
	Groups string
	// Label is the gossip cluster label (default "vigil-test").
	Label string
	// LogLevel defaults to "warn" to keep test output readable.
	LogLevel string
	// TLS turns on mutual TLS with a fresh CA (see ConfigSet.PKIDir).
	TLS bool
}

var configTmpl = template.Must(template.New("cfg").Parse(`node_id: {{.Self}}
data_dir: {{.DataDir}}
log: {level: {{.LogLevel}}, format: text}
raft:
  bind: 127.0.0.1:{{.Raft}}
  snapshot_interval: 5s
gossip:
  bind: 127.0.0.1:{{.Gossip}}
  key: {{.Key}}
  label: {{.Label}}
grpc: {listen: "127.0.0.1:{{.GRPC}}"}
http: {listen: "127.0.0.1:{{.HTTP}}"}
{{- if .PKI}}
tls: {ca: "{{.PKI}}/ca.pem", cert: "{{.PKI}}/{{.Self}}.pem", key: "{{.PKI}}/{{.Self}}-key.pem"}
{{- end}}
observers:
{{- range .Observers}}
  - {id: {{.ID}}, raft: "127.0.0.1:{{.Raft}}", gossip: "127.0.0.1:{{.Gossip}}", grpc: "127.0.0.1:{{.GRPC}}"}
{{- end}}
groups:{{.Groups}}
`))

type obs struct {
	ID                       string
	Raft, Gossip, GRPC, HTTP int
}

// writePKI issues a CA, one certificate per observer (127.0.0.1), an
// operator "alice" and a viewer "bob".
func writePKI(t testing.TB, dir string, all []obs) {
	t.Helper()
	caCert, caKey, err := tlsconf.NewCA("vigil test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"ca.pem": caCert, "ca-key.pem": caKey}
	ids := []tlsconf.Identity{{Name: "alice", Kind: "operator"}, {Name: "bob", Kind: "viewer"}}
	for _, o := range all {
		ids = append(ids, tlsconf.Identity{Name: o.ID, Kind: "observer", IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	}
	for _, id := range ids {
		c, k, err := tlsconf.Issue(caCert, caKey, id)
		if err != nil {
			t.Fatal(err)
		}
		files[id.Name+".pem"], files[id.Name+"-key.pem"] = c, k
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := tlsconf.WriteFiles(dir, files); err != nil {
		t.Fatal(err)
	}
}

// GenerateConfigs returns valid configs for n observers
// on fresh loopback ports, checked by the real config loader.
func GenerateConfigs(t testing.TB, opts ConfigOptions) *ConfigSet {
	t.Helper()
	if opts.N == 0 {
		opts.N = 3
	}
	if opts.Groups == "" {
		opts.Groups = DefaultGroups
	}
	if opts.Label == "" {
		opts.Label = "vigil-test"
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "warn"
	}
	if opts.DataRoot == "" {
		opts.DataRoot = t.TempDir()
	}
	keyBytes := make([]byte, 32)
	if _, err := rand.Read(keyBytes); err != nil {
		t.Fatal(err)
	}
	key := base64.StdEncoding.EncodeToString(keyBytes)
	ports := FreePorts(t, opts.N*4)
	var all []obs
	for i := 0; i < opts.N; i++ {
		all = append(all, obs{ID: fmt.Sprintf("obs%d", i+1), Raft: ports[4*i], Gossip: ports[4*i+1], GRPC: ports[4*i+2], HTTP: ports[4*i+3]})
	}
	set := &ConfigSet{Key: key, Label: opts.Label}
	if opts.TLS {
		set.PKIDir = filepath.Join(opts.DataRoot, "pki")
		writePKI(t, set.PKIDir, all)
	}
	for _, self := range all {
		var buf bytes.Buffer
		err := configTmpl.Execute(&buf, map[string]any{
			"Self": self.ID, "DataDir": filepath.Join(opts.DataRoot, self.ID), "LogLevel": opts.LogLevel,
			"Raft": self.Raft, "Gossip": self.Gossip, "GRPC": self.GRPC, "HTTP": self.HTTP,
			"Key": key, "Label": opts.Label, "Observers": all, "Groups": opts.Groups, "PKI": set.PKIDir,
		})
		if err != nil {
			t.Fatalf("render config: %v", err)
		}
		if _, err := config.Parse(buf.Bytes()); err != nil {
			t.Fatalf("generated config for %s is invalid: %v\n%s", self.ID, err, buf.String())
		}
		set.IDs = append(set.IDs, self.ID)
		set.YAML = append(set.YAML, buf.Bytes())
	}
	return set
}
