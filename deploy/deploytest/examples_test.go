package deploytest

import (
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/vigilha/vigil/cluster/config"
	"github.com/vigilha/vigil/cluster/tlsconf"
	"github.com/vigilha/vigil/failover/nodeagent"
)

// loadExampleSet loads every obsN.yaml of an example directory with the
// real loader (config.Load), from a copy in a temporary directory that
// holds a freshly generated gossip.key next to them, as an operator's
// /etc/vigil would. edit, if not nil, changes each file first.
func loadExampleSet(t *testing.T, dir string, edit func([]byte) []byte) map[string]*config.Config {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(kitPath(t, dir), "obs*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 {
		t.Fatalf("%s: %d observer configs, want 3", dir, len(files))
	}
	tmp := t.TempDir()
	key, err := config.GenerateGossipKey()
	if err != nil {
		t.Fatal(err)
	}
	// As written by "vigil keygen > gossip.key": with a newline.
	if err := os.WriteFile(filepath.Join(tmp, "gossip.key"), []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// As written by "vigil certs --dir pki --observer obs1=… …".
	writeExamplePKI(t, filepath.Join(tmp, "pki"))
	// The password files the example deployment's README has the operator
	// create next to the configs (Load requires them to be readable).
	for _, name := range []string{"monitor.pass", "pg.pass"} {
		if err := os.WriteFile(filepath.Join(tmp, name), []byte("example-password\n"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	out := map[string]*config.Config{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			data = edit(data)
		}
		dst := filepath.Join(tmp, filepath.Base(f))
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(dst)
		if err != nil {
			t.Errorf("%s/%s does not load:\n%v", dir, filepath.Base(f), err)
			continue
		}
		id := strings.TrimSuffix(filepath.Base(f), ".yaml")
		if cfg.NodeID != id {
			t.Errorf("%s/%s: node_id %q, want %q (the file name)", dir, filepath.Base(f), cfg.NodeID, id)
		}
		if cfg.Gossip.KeyFile != filepath.Join(tmp, "gossip.key") {
			t.Errorf("%s/%s: gossip.key_file resolves to %q, want the gossip.key next to the config", dir, filepath.Base(f), cfg.Gossip.KeyFile)
		}
		if _, err := cfg.GossipKey(); err != nil {
			t.Errorf("%s/%s: %v", dir, filepath.Base(f), err)
		}
		out[id] = cfg
	}
	if t.Failed() {
		t.FailNow()
	}
	return out
}

// checkConsistentSet checks what must be identical on all observers of a
// cluster: the observer list, the gossip label and key file, and the
// groups (the leader's groups win, so drift would undo changes).
func checkConsistentSet(t *testing.T, dir string, set map[string]*config.Config) {
	t.Helper()
	ref := set["obs1"]
	for id, c := range set {
		if !reflect.DeepEqual(c.Observers, ref.Observers) {
			t.Errorf("%s: observers of %s differ from obs1's", dir, id)
		}
		if !reflect.DeepEqual(c.Groups, ref.Groups) {
			t.Errorf("%s: groups of %s differ from obs1's", dir, id)
		}
		if c.Gossip.Label != ref.Gossip.Label || c.Gossip.KeyFile != ref.Gossip.KeyFile {
			t.Errorf("%s: gossip label/key_file of %s differ from obs1's", dir, id)
		}
		if c.Raft.HeartbeatTimeout != ref.Raft.HeartbeatTimeout || c.Raft.ElectionTimeout != ref.Raft.ElectionTimeout || c.Raft.LeaderLeaseTimeout != ref.Raft.LeaderLeaseTimeout {
			t.Errorf("%s: Raft timings of %s differ from obs1's", dir, id)
		}
		self := c.Self()
		if self.ID != id {
			t.Errorf("%s: %s is not in its own observers list", dir, id)
		}
	}
}

// commentedVIP matches the commented-out vip settings of the examples.
var commentedVIP = regexp.MustCompile(`(?m)^(\s*)# ((?:vip|lease_timeout):.*)$`)

// commentedHook matches the commented-out hooks block of the examples.
var commentedHook = regexp.MustCompile(`(?m)^(\s*)# ((?:hooks:|  (?:pre_failover|fence|notify|rejoin):).*)$`)

func TestLocalExampleConfigsLoad(t *testing.T) {
	// deploy/demo/demo.sh runs these on one machine.
	set := loadExampleSet(t, "deploy/examples/local", nil)
	checkConsistentSet(t, "deploy/examples/local", set)
}

func TestThreeObserverExampleConfigsLoad(t *testing.T) {
	const dir = "deploy/examples/three-observers"
	set := loadExampleSet(t, dir, nil)
	checkConsistentSet(t, dir, set)

	// The hooks shown commented out are valid once enabled.
	enabled := loadExampleSet(t, dir, func(b []byte) []byte {
		return commentedHook.ReplaceAll(b, []byte("$1$2"))
	})
	for id, c := range enabled {
		g, _ := c.Group("pg-main")
		h := g.Failover.Hooks
		if h.PreFailover == nil || h.Fence == nil || h.Notify == nil || h.Rejoin == nil {
			t.Errorf("%s/%s.yaml: uncommenting the hooks block does not give all four hooks: %+v", dir, id, h)
		}
	}
	// So is the virtual IP through the node agents.
	withVIP := loadExampleSet(t, dir, func(b []byte) []byte {
		return commentedVIP.ReplaceAll(b, []byte("$1$2"))
	})
	for id, c := range withVIP {
		g, _ := c.Group("pg-main")
		if !g.Failover.VIP || g.Failover.LeaseTimeout >= g.DownAfter {
			t.Errorf("%s/%s.yaml: with the vip lines enabled: vip %v, lease_timeout %s, down_after %s", dir, id, g.Failover.VIP, g.Failover.LeaseTimeout, g.DownAfter)
		}
	}
	checkNodeAgentConfigs(t, dir, withVIP["obs1"])

	hosts := map[string]bool{}
	httpPorts := map[string]bool{}
	for id, c := range set {
		// One machine per observer: each binds its own address.
		host, _, err := net.SplitHostPort(c.Raft.Bind)
		if err != nil {
			t.Fatal(err)
		}
		if hosts[host] {
			t.Errorf("%s: two observers on host %s", dir, host)
		}
		hosts[host] = true
		for _, addr := range []string{c.Gossip.Bind, c.GRPC.Listen, c.HTTP.Listen} {
			if h, _, _ := net.SplitHostPort(addr); h != host {
				t.Errorf("%s/%s.yaml: %s is not on the observer's host %s", dir, id, addr, host)
			}
		}
		_, port, _ := net.SplitHostPort(c.HTTP.Listen)
		httpPorts[port] = true
		// The systemd unit lets the observer write only to /var/lib/vigil.
		if c.DataDir != "/var/lib/vigil" {
			t.Errorf("%s/%s.yaml: data_dir %q, want /var/lib/vigil (StateDirectory of vigil-observer.service)", dir, id, c.DataDir)
		}
		// A complete example: a pg-main group of three with a failover section.
		g, ok := c.Group("pg-main")
		if !ok || len(g.Members) != 3 || g.Kind != config.KindPostgres || g.Failover.Postgres == nil || g.Failover.Fence != config.FenceStrict {
			t.Errorf("%s/%s.yaml: want a postgres group pg-main of three members with fence: strict, got %+v", dir, id, g)
		}
	}

	// The Prometheus scrape config targets the observers' HTTP port.
	data, err := os.ReadFile(kitPath(t, scrapeFile))
	if err != nil {
		t.Fatal(err)
	}
	var prom struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(data, &prom); err != nil {
		t.Fatal(err)
	}
	var targets []string
	for _, j := range prom.ScrapeConfigs {
		if j.JobName == "vigil-observer" {
			for _, sc := range j.StaticConfigs {
				targets = append(targets, sc.Targets...)
			}
		}
	}
	if len(targets) != len(set) {
		t.Errorf("%s: %d vigil-observer targets, want %d", scrapeFile, len(targets), len(set))
	}
	for _, tg := range targets {
		if _, port, err := net.SplitHostPort(tg); err != nil || !httpPorts[port] {
			t.Errorf("%s: target %s does not use the observers' http.listen port %v", scrapeFile, tg, sortedKeys(httpPorts))
		}
	}
}

// checkNodeAgentConfigs loads the node agent configs of an example with
// the agent's real loader and checks them against the observers' config:
// one agent per member, listening where members[].agent points, leasing
// from exactly the configured observers, with the same lease_timeout.
func checkNodeAgentConfigs(t *testing.T, dir string, obs *config.Config) {
	t.Helper()
	g, ok := obs.Group("pg-main")
	if !ok {
		t.Fatalf("%s: no group pg-main", dir)
	}
	var ids []string
	for _, o := range obs.Observers {
		ids = append(ids, o.ID)
	}
	tmp := t.TempDir()
	vips := map[string]bool{}
	for _, m := range g.Members {
		name := "node-" + m.Name + ".yaml"
		data, err := os.ReadFile(filepath.Join(kitPath(t, dir), name))
		if err != nil {
			t.Errorf("%s: no node agent config for member %s: %v", dir, m.Name, err)
			continue
		}
		path := filepath.Join(tmp, name)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := nodeagent.Load(path)
		if err != nil {
			t.Errorf("%s/%s does not load:\n%v", dir, name, err)
			continue
		}
		if c.Listen != m.Agent {
			t.Errorf("%s/%s: listen %s, but member %s has agent %q", dir, name, c.Listen, m.Name, m.Agent)
		}
		if !reflect.DeepEqual(c.Observers, ids) {
			t.Errorf("%s/%s: observers %v, want the observer ids %v", dir, name, c.Observers, ids)
		}
		if c.LeaseTimeout.D() != g.Failover.LeaseTimeout.D() {
			t.Errorf("%s/%s: lease_timeout %s, the observers use %s", dir, name, c.LeaseTimeout, g.Failover.LeaseTimeout)
		}
		if c.DataDir != "/var/lib/vigil-node" {
			t.Errorf("%s/%s: data_dir %q, want /var/lib/vigil-node (StateDirectory of vigil-node.service)", dir, name, c.DataDir)
		}
		if len(c.Groups) != 1 || c.Groups[0].Name != g.Name || c.Groups[0].Member != m.Name {
			t.Errorf("%s/%s: groups %+v, want pg-main with member %s", dir, name, c.Groups, m.Name)
			continue
		}
		vips[c.Groups[0].VIP] = true
	}
	if len(vips) != 1 {
		t.Errorf("%s: the agents disagree on the VIP: %v", dir, sortedKeys(vips))
	}
}

// writeExamplePKI issues a CA and the three observers' certificates, for
// example configs that enable TLS.
func writeExamplePKI(t *testing.T, dir string) {
	t.Helper()
	caCert, caKey, err := tlsconf.NewCA("example CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"ca.pem": caCert}
	for _, id := range []string{"obs1", "obs2", "obs3"} {
		c, k, err := tlsconf.Issue(caCert, caKey, tlsconf.Identity{Name: id, Kind: "observer"})
		if err != nil {
			t.Fatal(err)
		}
		files[id+".pem"], files[id+"-key.pem"] = c, k
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := tlsconf.WriteFiles(dir, files); err != nil {
		t.Fatal(err)
	}
}
