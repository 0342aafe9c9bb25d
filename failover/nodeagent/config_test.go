package nodeagent

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const exampleYAML = `
node: db1host
listen: 10.0.0.11:7501
data_dir: /var/lib/vigil-node
observers: [obs1, obs2, obs3]
quorum: 0
lease_timeout: 1s
garp: {count: 3, interval: 100ms}
groups:
  - name: pg-main
    member: db1
    vip: 10.0.0.100/32
    interface: eth0
    fence_command: [/bin/true]
`

func TestParseExample(t *testing.T) {
	c, err := Parse([]byte(exampleYAML))
	if err != nil {
		t.Fatal(err)
	}
	if c.Node != "db1host" || c.Listen != "10.0.0.11:7501" || c.DataDir != "/var/lib/vigil-node" {
		t.Errorf("scalars: %+v", c)
	}
	if c.QuorumSize() != 2 {
		t.Errorf("quorum = %d, want majority 2", c.QuorumSize())
	}
	if c.LeaseTimeout.D() != time.Second || c.GARP.Count != 3 || c.GARP.Interval.D() != 100*time.Millisecond {
		t.Errorf("timings: %+v", c)
	}
	g := c.Groups[0]
	if g.Name != "pg-main" || g.Member != "db1" || g.VIP != "10.0.0.100/32" || g.Interface != "eth0" || g.FenceCommand[0] != "/bin/true" {
		t.Errorf("group: %+v", g)
	}
	if g.FenceTimeout.D() != DefaultFenceTimeout {
		t.Errorf("fence_timeout = %s, want default %s", g.FenceTimeout, DefaultFenceTimeout)
	}
}

func TestParseDefaults(t *testing.T) {
	c, err := Parse([]byte(`
node: h
listen: ":7501"
data_dir: /d
observers: [a, b, c, d, e]
fence_timeout: 3s
groups: [{name: g, member: m, vip: 192.0.2.1/24, interface: veth0, fence_timeout: 1s}, {name: g2, member: m, vip: 192.0.2.2/32, interface: veth0}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.QuorumSize() != 3 || c.LeaseTimeout.D() != DefaultLeaseTimeout || c.GARP.Count != DefaultGARPCount || c.GARP.Interval.D() != DefaultGARPInterval {
		t.Errorf("defaults not applied: %+v", c)
	}
	if c.Groups[0].FenceTimeout.D() != time.Second || c.Groups[1].FenceTimeout.D() != 3*time.Second {
		t.Errorf("fence timeouts: %s %s", c.Groups[0].FenceTimeout, c.Groups[1].FenceTimeout)
	}
}

func TestParseErrorsNameFieldAndValue(t *testing.T) {
	base := func(repl ...string) string {
		s := exampleYAML
		for i := 0; i < len(repl); i += 2 {
			if !strings.Contains(s, repl[i]) {
				t.Fatalf("test bug: %q not in example", repl[i])
			}
			s = strings.Replace(s, repl[i], repl[i+1], 1)
		}
		return s
	}
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown key", base("quorum: 0", "quorum: 0\nquorom: 2"), []string{`quorom: unknown field (did you mean "quorum"?)`}},
		{"unknown group key", base("interface: eth0", "interface: eth0\n    iface: eth1"), []string{"groups[0].iface: unknown field (known: database_fence, fence_command, fence_timeout, interface, member, name, vip)"}},
		{"bad vip", base("10.0.0.100/32", "10.0.0.300/32"), []string{`groups[0].vip: "10.0.0.300/32"`, "CIDR"}},
		{"vip without prefix", base("10.0.0.100/32", "10.0.0.100"), []string{`groups[0].vip: "10.0.0.100"`}},
		{"ipv6 vip", base("10.0.0.100/32", "2001:db8::1/128"), []string{`groups[0].vip: "2001:db8::1/128"`, "IPv4"}},
		{"quorum below majority", base("quorum: 0", "quorum: 1"), []string{"quorum: 1: must be at least a majority of the 3 observers (2)"}},
		{"quorum above n", base("quorum: 0", "quorum: 4"), []string{"quorum: 4: cannot exceed"}},
		{"duplicate observer", base("[obs1, obs2, obs3]", "[obs1, obs2, obs1]"), []string{`observers[2]: "obs1": duplicate`}},
		{"bad observer", base("[obs1, obs2, obs3]", "[obs1, Obs2, obs3]"), []string{`observers[1]: "Obs2"`}},
		{"lease too short", base("lease_timeout: 1s", "lease_timeout: 1ms"), []string{"lease_timeout: 1ms: must be between"}},
		{"duration without unit", base("lease_timeout: 1s", "lease_timeout: 5"), []string{`lease_timeout: "5": a duration needs a unit`}},
		{"bad flow duration", base("interval: 100ms", "interval: 1x"), []string{`garp.interval: "1x": not a duration`}},
		{"wrong type", base("quorum: 0", "quorum: abc"), []string{`quorum: "abc": expected an integer`}},
		{"garp count", base("count: 3", "count: 1000"), []string{"garp.count: 1000"}},
		{"listen", base("10.0.0.11:7501", "10.0.0.11"), []string{`listen: "10.0.0.11"`}},
		{"interface", base("interface: eth0", "interface: a/b"), []string{`groups[0].interface: "a/b"`}},
		{"fence command missing", base("/bin/true", "/nonexistent/pg-readonly"), []string{`groups[0].fence_command: "/nonexistent/pg-readonly"`}},
		{"fence command relative", base("/bin/true", "bin/true"), []string{`groups[0].fence_command: "bin/true": a relative path`}},
		{"group name", base("name: pg-main", "name: PG"), []string{`groups[0].name: "PG"`}},
		{"missing node and data_dir", base("node: db1host", "", "data_dir: /var/lib/vigil-node", ""), []string{"node: required", "data_dir: required"}},
		{"second document", exampleYAML + "---\nnode: x\n", []string{"second YAML document"}},
		{"empty", "", []string{"empty configuration"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseReportsAllProblems(t *testing.T) {
	_, err := Parse([]byte(`
node: h
listen: h:1
data_dir: /d
observers: [a, b, c]
groups:
  - {name: g, member: m, vip: 10.0.0.1/32, interface: e0}
  - {name: g, member: "", vip: 10.0.0.1/32, interface: e0}
`))
	var fes []*FieldError
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var fe *FieldError
		if errors.As(e, &fe) {
			fes = append(fes, fe)
		}
	}
	fields := map[string]bool{}
	for _, fe := range fes {
		fields[fe.Field] = true
	}
	for _, f := range []string{"groups[1].name", "groups[1].member", "groups[1].vip"} {
		if !fields[f] {
			t.Errorf("no error for %s in %v", f, err)
		}
	}
}

func TestLoadResolvesDataDir(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "node.yaml")
	y := strings.Replace(exampleYAML, "/var/lib/vigil-node", "state", 1)
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != filepath.Join(dir, "state") {
		t.Errorf("data_dir = %q", c.DataDir)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("missing file: no error")
	}
}

func TestParseTLS(t *testing.T) {
	c, err := Parse([]byte(exampleYAML + "tls: {ca: /etc/vigil/ca.crt, cert: /etc/vigil/db1.crt, key: /etc/vigil/db1.key}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (TLS{CA: "/etc/vigil/ca.crt", Cert: "/etc/vigil/db1.crt", Key: "/etc/vigil/db1.key"}); c.TLS != want || !c.TLS.Enabled() {
		t.Errorf("tls = %+v", c.TLS)
	}
	if c, err := Parse([]byte(exampleYAML)); err != nil || c.TLS.Enabled() {
		t.Errorf("no tls section: %+v %v", c.TLS, err)
	}

	for _, tc := range []struct {
		tls     string
		missing []string
	}{
		{"{ca: ca.crt, cert: db1.crt}", []string{"tls.key"}},
		{"{key: db1.key}", []string{"tls.ca", "tls.cert"}},
		{"{ca: ca.crt, cert: '', key: db1.key}", []string{"tls.cert"}},
	} {
		_, err := Parse([]byte(exampleYAML + "tls: " + tc.tls + "\n"))
		if err == nil {
			t.Errorf("tls %s: no error", tc.tls)
			continue
		}
		for _, f := range []string{"tls.ca", "tls.cert", "tls.key"} {
			want := slices.Contains(tc.missing, f)
			if got := strings.Contains(err.Error(), f+": required"); got != want {
				t.Errorf("tls %s: error %q: names %s = %v, want %v", tc.tls, err, f, got, want)
			}
		}
	}
	_, err = Parse([]byte(exampleYAML + "tls: {ca: a, cert: b, key: c, kye: d}\n"))
	if err == nil || !strings.Contains(err.Error(), `tls.kye: unknown field (did you mean "key"?)`) {
		t.Errorf("unknown tls key: err = %v", err)
	}
}

func TestLoadResolvesTLSPaths(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "node.yaml")
	y := exampleYAML + "tls: {ca: certs/ca.crt, cert: /abs/db1.crt, key: ../db1.key}\n"
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want := TLS{CA: filepath.Join(dir, "certs", "ca.crt"), Cert: "/abs/db1.crt", Key: filepath.Join(filepath.Dir(dir), "db1.key")}
	if c.TLS != want {
		t.Errorf("tls = %+v, want %+v", c.TLS, want)
	}
}

// Every problem at once: a misspelt key, a bad value elsewhere and a
// missing required field are all reported by one Parse, not the first
// alone (the observer's config does the same).
func TestParseReportsEveryProblemAtOnce(t *testing.T) {
	bad := strings.Replace(exampleYAML, "lease_timeout:", "lease_timout:", 1)
	bad = strings.Replace(bad, "node: ", "nodee: ", 1)
	bad += "max_connections: many\n"
	_, err := Parse([]byte(bad))
	if err == nil {
		t.Fatal("a config with three problems parsed")
	}
	for _, want := range []string{`lease_timout: unknown field (did you mean "lease_timeout"?)`,
		`nodee: unknown field (did you mean "node"?)`, `max_connections: "many": expected an integer`, "node: required"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}
