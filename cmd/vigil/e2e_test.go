package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/vigilha/vigil/cluster/clustertest"
	"github.com/vigilha/vigil/cluster/tlsconf"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

var (
	buildOnce           sync.Once
	vigilBin, vigilctlB string
)

// binaries builds vigil and vigilctl once per test binary run.
func binaries(t *testing.T) (string, string) {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vigil-bin-")
		if err != nil {
			t.Fatal(err)
		}
		vigilBin, vigilctlB = clustertest.BuildBinaries(t, dir)
	})
	if vigilBin == "" {
		t.Fatal("building binaries failed earlier")
	}
	return vigilBin, vigilctlB
}

// mustRun runs a real binary (vigilctl, grpcurl) and returns its stdout;
// it fails the test when the command fails.
func mustRun(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	out, err := runCmd(bin, args...)
	if err != nil {
		t.Fatalf("vigilctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func runCmd(bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return append(stdout.Bytes(), stderr.Bytes()...), err
	}
	return stdout.Bytes(), nil
}

func grpcurlPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("grpcurl"); err == nil {
		return p
	}
	if gopath, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "grpcurl")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("VIGIL_REQUIRE_TOOLS") != "" {
		t.Fatal("grpcurl not found (install: go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3)")
	}
	t.Skip("grpcurl not found; set VIGIL_REQUIRE_TOOLS=1 to make this a failure")
	return ""
}

func TestThreeObserverProcesses(t *testing.T) {
	t.Parallel()
	vigil, ctl := binaries(t)
	grpcurl := grpcurlPath(t)
	dir := t.TempDir()
	pc := clustertest.StartProcs(t, vigil, dir, clustertest.ConfigOptions{})
	all := []int{0, 1, 2}
	defer func() {
		if t.Failed() {
			for i := range all {
				t.Logf("--- log of %s ---\n%s", pc.Set.IDs[i], pc.Log(i))
			}
		}
	}()
	addrs := strings.Join([]string{pc.GRPCAddr(0), pc.GRPCAddr(1), pc.GRPCAddr(2)}, ",")

	var leaderID string
	clustertest.WaitFor(t, 30*time.Second, "three processes agreeing on a leader", func() (bool, string) {
		id, err := pc.AgreedLeader(context.Background(), all)
		if err != nil {
			return false, err.Error()
		}
		leaderID = id
		return true, ""
	})
	leader := pc.Index(leaderID)
	follower := (leader + 1) % 3

	// vigilctl status against a follower shows all three, one leader.
	var st vigilv1.StatusResponse
	clustertest.WaitFor(t, 20*time.Second, "vigilctl status to show every observer reachable", func() (bool, string) {
		out, err := runCmd(ctl, "--addr", pc.GRPCAddr(follower), "status", "-o", "json")
		if err != nil {
			return false, string(out)
		}
		if err := protojson.Unmarshal(out, &st); err != nil {
			return false, err.Error()
		}
		leaders := 0
		for _, o := range st.GetObservers() {
			if !o.GetReachable() {
				return false, o.GetId() + " unreachable: " + o.GetError()
			}
			if o.GetRaftRole() == "leader" {
				leaders++
			}
		}
		return len(st.GetObservers()) == 3 && leaders == 1 && st.GetLeaderId() == leaderID, string(out)
	})
	if table := string(mustRun(t, ctl, "--addr", addrs, "status")); !strings.Contains(table, leaderID) || !strings.Contains(table, "leader") {
		t.Fatalf("status table does not show the leader %s:\n%s", leaderID, table)
	}

	// Groups synced from config are served by every observer.
	clustertest.WaitFor(t, 20*time.Second, "pg-main served by every observer", func() (bool, string) {
		for _, i := range all {
			out, err := runCmd(ctl, "--addr", pc.GRPCAddr(i), "groups", "-o", "json")
			if err != nil || !strings.Contains(string(out), "pg-main") {
				return false, pc.Set.IDs[i] + ": " + string(out)
			}
		}
		return true, ""
	})

	// A write sent to a follower is forwarded to the leader and committed.
	mustRun(t, ctl, "--addr", pc.GRPCAddr(follower), "pause", "pg-main", "--reason", "e2e maintenance")
	// Read-your-writes: the follower answered only once it applied the write.
	var mine vigilv1.GetGroupResponse
	if err := protojson.Unmarshal(mustRun(t, ctl, "--addr", pc.GRPCAddr(follower), "group", "pg-main", "-o", "json"), &mine); err != nil {
		t.Fatal(err)
	}
	if !mine.GetGroup().GetPaused() {
		t.Fatalf("follower that forwarded the pause does not show it yet: %v", mine.GetGroup())
	}
	other := (leader + 2) % 3
	var g vigilv1.GetGroupResponse
	clustertest.WaitFor(t, 10*time.Second, "pause visible on a third observer", func() (bool, string) {
		out, err := runCmd(ctl, "--addr", pc.GRPCAddr(other), "group", "pg-main", "-o", "json")
		if err != nil {
			return false, string(out)
		}
		if err := protojson.Unmarshal(out, &g); err != nil {
			return false, err.Error()
		}
		return g.GetGroup().GetPaused() && g.GetGroup().GetPausedReason() == "e2e maintenance", string(out)
	})
	if out, err := runCmd(ctl, "--addr", pc.GRPCAddr(other), "group", "no-such-group"); err == nil || !strings.Contains(string(out), "no-such-group") {
		t.Fatalf("unknown group: err=%v, output %q should name the group", err, out)
	}

	// An independent client, by reflection.
	ga := pc.GRPCAddr(other)
	if out := string(mustRun(t, grpcurl, "-plaintext", ga, "list")); !strings.Contains(out, "vigil.v1.Admin") || !strings.Contains(out, "grpc.health.v1.Health") {
		t.Fatalf("grpcurl list:\n%s", out)
	}
	if out := string(mustRun(t, grpcurl, "-plaintext", "-d", `{"name":"pg-main"}`, ga, "vigil.v1.Admin/GetGroup")); !strings.Contains(out, `"paused": true`) {
		t.Fatalf("grpcurl GetGroup:\n%s", out)
	}
	if out := string(mustRun(t, grpcurl, "-plaintext", ga, "grpc.health.v1.Health/Check")); !strings.Contains(out, "SERVING") {
		t.Fatalf("grpcurl health:\n%s", out)
	}

	// /metrics carries the Raft and gossip figures.
	metrics := httpGet(t, "http://"+pc.HTTPAddr(leader)+"/metrics")
	for _, want := range []string{`vigil_raft_state{state="leader"} 1`, "vigil_raft_term", "vigil_raft_last_log_index",
		"vigil_raft_commit_duration_seconds_bucket", "vigil_gossip_members_alive 3", `vigil_fsm_applies_total{command="set_paused",result="ok"}`,
		"go_goroutines"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// Kill -9 the leader: the other two elect a new one and keep serving.
	pc.Kill(leader)
	rest := []int{follower, other}
	var newLeader string
	clustertest.WaitFor(t, 20*time.Second, "a new leader after the leader was killed", func() (bool, string) {
		id, err := pc.AgreedLeader(context.Background(), rest)
		if err != nil {
			return false, err.Error()
		}
		newLeader = id
		return id != leaderID, "still " + id
	})
	mustRun(t, ctl, "--addr", addrs, "resume", "pg-main")

	// The killed observer restarts from its data directory and catches up.
	pc.Start(leader)
	clustertest.WaitFor(t, 30*time.Second, "restarted observer to catch up", func() (bool, string) {
		out, err := runCmd(ctl, "--addr", pc.GRPCAddr(leader), "group", "pg-main", "-o", "json")
		if err != nil {
			return false, string(out)
		}
		var r vigilv1.GetGroupResponse
		if err := protojson.Unmarshal(out, &r); err != nil {
			return false, err.Error()
		}
		return !r.GetGroup().GetPaused() && len(r.GetGroup().GetHistory()) == 3, string(out)
	})
	if !strings.Contains(pc.Log(leader), "restarting from raft state on disk") {
		t.Errorf("restarted observer did not reuse its raft state")
	}
	t.Logf("leader %s killed, %s took over", leaderID, newLeader)

	// SIGTERM: every observer shuts down gracefully with exit status 0.
	for _, i := range all {
		if err := pc.Terminate(i, 20*time.Second); err != nil {
			t.Errorf("observer %s exited with %v after SIGTERM", pc.Set.IDs[i], err)
		}
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestConfigCheckAndBadConfigs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	set := clustertest.GenerateConfigs(t, clustertest.ConfigOptions{DataRoot: dir})
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, set.YAML[0], 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"config", "check", "--config", good}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "valid") {
		t.Fatalf("config check of a good config: code %d, %s%s", code, out.String(), errOut.String())
	}
	bad := filepath.Join(dir, "bad.yaml")
	broken := strings.Replace(string(set.YAML[0]), "node_id: obs1", "node_id: obs9", 1)
	if err := os.WriteFile(bad, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errOut.Reset()
	// An invalid config starts nothing: the observer command returns at once.
	if code := run([]string{"observer", "--config", bad}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "node_id") || !strings.Contains(errOut.String(), "obs9") {
		t.Fatalf("observer with bad config: code %d, stderr %q should name node_id and obs9", code, errOut.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "obs9")); !os.IsNotExist(err) {
		t.Fatalf("a data directory was created for an invalid config: %v", err)
	}
	errOut.Reset()
	if code := run([]string{"observer", "--nope"}, &out, &errOut); code != 2 {
		t.Fatalf("bad flag: code %d, want 2", code)
	}

	// A node agent config is told apart by its keys and checked as one,
	// every problem at once.
	nodeYAML := "node: db1host\nlisten: 10.0.0.11:7501\ndata_dir: " + filepath.Join(dir, "node") +
		"\nobservers: [obs1, obs2, obs3]\nlease_timeout: 1s\ngroups:\n  - {name: pg-main, member: db1, vip: 10.0.0.100/32, interface: eth0}\n"
	node := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(node, []byte(nodeYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errOut.Reset()
	if code := run([]string{"config", "check", "--config", node}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "valid node agent config (node db1host") {
		t.Fatalf("config check of a good node config: code %d, %s%s", code, out.String(), errOut.String())
	}
	badNode := filepath.Join(dir, "bad-node.yaml")
	broken = strings.Replace(strings.Replace(nodeYAML, "lease_timeout", "lease_timout", 1), "10.0.0.11:7501", "10.0.0.11:99999", 1)
	if err := os.WriteFile(badNode, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errOut.Reset()
	code := run([]string{"config", "check", "--config", badNode}, &out, &errOut)
	for _, want := range []string{`lease_timout: unknown field (did you mean "lease_timeout"?)`, `listen: "10.0.0.11:99999"`} {
		if code != 1 || !strings.Contains(errOut.String(), want) {
			t.Errorf("config check of a bad node config: code %d, stderr %q should contain %q", code, errOut.String(), want)
		}
	}
}

func TestCertsAndVigilctlOverTLS(t *testing.T) {
	t.Parallel()
	vigil, ctl := binaries(t)

	// vigil certs writes a complete PKI and refuses to overwrite it.
	pki := filepath.Join(t.TempDir(), "pki")
	args := []string{"certs", "--dir", pki, "--observer", "obs1=10.0.0.1", "--agent", "db1=10.0.0.11", "--operator", "alice", "--viewer", "bob"}
	if out, err := runCmd(vigil, args...); err != nil {
		t.Fatalf("vigil certs: %v\n%s", err, out)
	}
	for _, f := range []string{"ca.pem", "ca-key.pem", "obs1.pem", "obs1-key.pem", "db1.pem", "alice.pem", "bob-key.pem"} {
		if _, err := os.Stat(filepath.Join(pki, f)); err != nil {
			t.Fatalf("vigil certs did not write %s: %v", f, err)
		}
	}
	if out, err := runCmd(vigil, args...); err == nil || !strings.Contains(string(out), "exist") {
		t.Fatalf("second vigil certs into the same directory: err %v, %s", err, out)
	}

	// Three observers over mutual TLS, driven by the real vigilctl.
	dir := t.TempDir()
	pc := clustertest.StartProcs(t, vigil, dir, clustertest.ConfigOptions{TLS: true})
	defer func() {
		if t.Failed() {
			for i := range pc.Set.IDs {
				t.Logf("--- log of %s ---\n%s", pc.Set.IDs[i], pc.Log(i))
			}
		}
	}()
	tlsArgs := func(name string) []string {
		d := pc.Set.PKIDir
		return []string{"--addr", pc.GRPCAddr(1), "--ca", filepath.Join(d, "ca.pem"), "--cert", filepath.Join(d, name+".pem"), "--key", filepath.Join(d, name+"-key.pem")}
	}
	clustertest.WaitFor(t, 30*time.Second, "pg-main served over TLS", func() (bool, string) {
		out, err := runCmd(ctl, append(tlsArgs("bob"), "groups")...)
		return err == nil && strings.Contains(string(out), "pg-main"), string(out)
	})
	if out, err := runCmd(ctl, append(tlsArgs("bob"), "pause", "pg-main")...); err == nil || !strings.Contains(string(out), "operator role") {
		t.Fatalf("viewer pause: err %v, %s", err, out)
	}
	if out, err := runCmd(ctl, "--addr", pc.GRPCAddr(1), "--timeout", "2s", "groups"); err == nil {
		t.Fatalf("plaintext vigilctl was served by a TLS observer: %s", out)
	}
	mustRun(t, ctl, append(tlsArgs("alice"), "pause", "pg-main", "--reason", "over tls")...)
	out := string(mustRun(t, ctl, append(tlsArgs("alice"), "group", "pg-main")...))
	if !strings.Contains(out, "operator/alice") || !strings.Contains(out, "over tls") {
		t.Fatalf("group view does not show alice's pause:\n%s", out)
	}
}

// vigil certs adds to an existing PKI with its CA, and --renew replaces
// one certificate (new key, same CA) keeping the old pair as *.old.
func TestCertsAddAndRenew(t *testing.T) {
	t.Parallel()
	pki := filepath.Join(t.TempDir(), "pki")
	var out, errOut bytes.Buffer
	if code := run([]string{"certs", "--dir", pki, "--observer", "obs1=10.0.0.1"}, &out, &errOut); code != 0 {
		t.Fatalf("new PKI: code %d: %s", code, errOut.String())
	}
	ca, err := os.ReadFile(filepath.Join(pki, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	load := func(name string) *tlsconf.Store {
		t.Helper()
		s, err := tlsconf.Load(tlsconf.Files{CA: filepath.Join(pki, "ca.pem"), Cert: filepath.Join(pki, name+".pem"), Key: filepath.Join(pki, name+"-key.pem")})
		if err != nil {
			t.Fatalf("load %s: %v", name, err)
		}
		return s
	}
	// Add an agent: signed by the same CA, the CA untouched.
	out.Reset()
	errOut.Reset()
	if code := run([]string{"certs", "--dir", pki, "--agent", "db4=10.0.0.14"}, &out, &errOut); code != 0 {
		t.Fatalf("add an agent: code %d: %s", code, errOut.String())
	}
	if kind, name := load("db4").Identity(); kind != "agent" || name != "db4" {
		t.Fatalf("added certificate is %s/%s, want agent/db4", kind, name)
	}
	if now, _ := os.ReadFile(filepath.Join(pki, "ca.pem")); !bytes.Equal(now, ca) {
		t.Fatal("adding a certificate replaced the CA")
	}
	// Issuing it again without --renew is refused and says how.
	errOut.Reset()
	if code := run([]string{"certs", "--dir", pki, "--agent", "db4=10.0.0.14"}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "--renew") {
		t.Fatalf("re-issuing without --renew: code %d, stderr %q should point at --renew", code, errOut.String())
	}
	// Renew obs1: a new key, the old pair kept.
	before := load("obs1").Leaf().SerialNumber
	errOut.Reset()
	if code := run([]string{"certs", "--dir", pki, "--observer", "obs1=10.0.0.1", "--renew"}, &out, &errOut); code != 0 {
		t.Fatalf("renew: code %d: %s", code, errOut.String())
	}
	if after := load("obs1").Leaf().SerialNumber; after.Cmp(before) == 0 {
		t.Fatal("renewed certificate has the old serial")
	}
	for _, f := range []string{"obs1.pem.old", "obs1-key.pem.old"} {
		if _, err := os.Stat(filepath.Join(pki, f)); err != nil {
			t.Errorf("old file %s not kept: %v", f, err)
		}
	}
	// --renew without a CA is refused.
	errOut.Reset()
	if code := run([]string{"certs", "--dir", filepath.Join(t.TempDir(), "none"), "--observer", "obs1=10.0.0.1", "--renew"}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "holds no CA") {
		t.Fatalf("renew without a CA: code %d, stderr %q", code, errOut.String())
	}
}
