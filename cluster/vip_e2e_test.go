package cluster_test

import (
	"context"
	"fmt"
	"github.com/vigilha/vigil/deploy/lab/spawn"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilha/vigil/cluster"
	"github.com/vigilha/vigil/cluster/clustertest"
	"github.com/vigilha/vigil/deploy/lab/netlab"
	"github.com/vigilha/vigil/deploy/lab/pglab"
	"github.com/vigilha/vigil/fsm"
)

// vipLab is a network-namespace lab: three database hosts (each with
// PostgreSQL and a real `vigil node` agent), a client host, and three
// in-process observers on the lab's gateway (the root namespace).
type vipLab struct {
	lab  *netlab.Lab
	pg   *pglab.Cluster
	c    *clustertest.Cluster
	vip  string
	dbs  []string // host names, db0 runs pg0 …
	host map[string]string
	// agents are the `vigil node` processes, by host.
	agents map[string]*osexec.Cmd

	mu      sync.Mutex
	samples []vipSample
}

type vipSample struct {
	at      time.Time
	holders []string
}

var (
	vigilBinOnce sync.Once
	vigilBinPath string
)

func startVIPLab(t testing.TB, syncRep bool, customize ...func(i int, o *cluster.Options)) *vipLab {
	t.Helper()
	netlab.Require(t)
	pglab.SkipUnlessAvailable(t)
	vigilBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vigil-vip-bin-")
		if err != nil {
			t.Fatal(err)
		}
		vigilBinPath, _ = clustertest.BuildBinaries(t, dir)
	})
	v := &vipLab{dbs: []string{"db0", "db1", "db2"}, host: map[string]string{}, agents: map[string]*osexec.Cmd{}}
	v.lab = netlab.New(t, "vv", append(slices.Clone(v.dbs), "client"))
	v.vip = strings.TrimSuffix(v.lab.Gateway, ".1") + ".200"
	var hosts []pglab.Host
	for i, h := range v.dbs {
		hosts = append(hosts, pglab.Host{NetNS: v.lab.Hosts[h].NS, IP: v.lab.IP(h)})
		v.host[fmt.Sprintf("pg%d", i)] = h
	}
	v.pg = pglab.StartForTest(t, pglab.Options{Standbys: 2, Hosts: hosts, Sync: syncRep})

	// One node agent per database host, as a real process in its namespace.
	dir := t.TempDir()
	for i, h := range v.dbs {
		// The observers (on the gateway) and the other database hosts,
		// not the host itself: a client on the host connecting to its own
		// address is a stranded client the fence must cut.
		allow := []string{v.lab.Gateway}
		for _, o := range v.dbs {
			if o != h {
				allow = append(allow, v.lab.IP(o))
			}
		}
		cfg := fmt.Sprintf(`node: %s
listen: %s:7501
data_dir: %s
observers: [obs1, obs2, obs3]
lease_timeout: 1s
garp: {count: 2, interval: 50ms}
groups:
  - name: pg-main
    member: pg%d
    vip: %s/32
    interface: %s
    # The observers (on the gateway) and the other database hosts keep
    # reaching the port while it is fenced: probes, SQL fence, replication.
    database_fence: {kind: postgres, port: %d, host: 127.0.0.1, allow_from: [%s]}
`, h, v.lab.IP(h), filepath.Join(dir, h), i, v.vip, v.lab.Hosts[h].Iface, v.pg.Nodes[i].Port, strings.Join(allow, ", "))
		path := filepath.Join(dir, h+".yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(filepath.Join(dir, h+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := v.lab.Exec(context.Background(), h, vigilBinPath, "node", "--config", path, "--log-level", "debug")
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := spawn.Start(cmd); err != nil {
			t.Fatal(err)
		}
		v.agents[h] = cmd
		t.Cleanup(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
			if t.Failed() {
				b, _ := os.ReadFile(logf.Name())
				t.Logf("--- agent %s ---\n%s", h, tail(string(b), 30))
			}
			logf.Close()
		})
	}

	var g strings.Builder
	g.WriteString(`
  - name: pg-main
    kind: postgres
    primary: pg0
    down_after: 2s
    cooldown: 10m
    probe: {type: postgres, interval: 300ms, timeout: 250ms}
    failover: {vip: true, lease_timeout: 1s, step_timeout: 5s}
    members:`)
	for _, n := range v.pg.Nodes {
		fmt.Fprintf(&g, "\n      - {name: %s, address: %q, agent: \"%s:7501\"}", n.Name, n.Addr(), n.IP)
	}
	g.WriteString("\n")
	opts := clustertest.Options{ConfigOptions: clustertest.ConfigOptions{Groups: g.String()}}
	if len(customize) > 0 {
		opts.Customize = customize[0]
	}
	v.c = clustertest.Start(t, opts)
	v.c.WaitForLeader(waitLong)

	// Sample, all along, which hosts hold the VIP.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			s := vipSample{at: time.Now()}
			for _, h := range v.dbs {
				if addrs, err := v.lab.Addrs(h); err == nil && slices.Contains(addrs, v.vip) {
					s.holders = append(s.holders, h)
				}
			}
			v.mu.Lock()
			v.samples = append(v.samples, s)
			v.mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })

	clustertest.WaitFor(t, waitLong, "the VIP on db0", func() (bool, string) { h := v.holders(); return slices.Equal(h, []string{"db0"}), fmt.Sprint(h) })
	return v
}

// killAgent SIGKILLs host's node agent (its process group) and reaps it;
// what it set up (a VIP, an nftables fence) stays, as after a crash.
func (v *vipLab) killAgent(t testing.TB, host string) {
	t.Helper()
	cmd := v.agents[host]
	if cmd == nil || cmd.Process == nil {
		t.Fatalf("no agent on %s", host)
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the agent on %s: %v", host, err)
	}
	_ = cmd.Wait() // the cleanup's Wait then returns at once
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (v *vipLab) holders() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.samples) == 0 {
		return nil
	}
	return v.samples[len(v.samples)-1].holders
}

// assertNeverTwo fails if any sample saw the VIP on two hosts, and returns
// the last instant old held it and the first instant new did.
func (v *vipLab) assertNeverTwo(t testing.TB, old, new string) (lastOld, firstNew time.Time) {
	t.Helper()
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, s := range v.samples {
		if len(s.holders) > 1 {
			t.Fatalf("at %s the VIP was on %v at once", s.at.Format("15:04:05.000"), s.holders)
		}
		if slices.Contains(s.holders, old) {
			lastOld = s.at
		}
		if slices.Contains(s.holders, new) && firstNew.IsZero() {
			firstNew = s.at
		}
	}
	t.Logf("%d samples of VIP holders; %s last held it at %s, %s first at %s", len(v.samples), old,
		lastOld.Format("15:04:05.000"), new, firstNew.Format("15:04:05.000"))
	return lastOld, firstNew
}

// clientWrite connects from the client host to the VIP and writes once.
func (v *vipLab) clientWrite(t testing.TB) error {
	t.Helper()
	var conn *pgx.Conn
	err := v.lab.InNS("client", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		conn, err = pgx.Connect(ctx, fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable connect_timeout=2", v.vip))
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS through_vip (at timestamptz DEFAULT now()); INSERT INTO through_vip DEFAULT VALUES")
	return err
}

func TestVIPMovesOnKillPrimary(t *testing.T) {
	t.Parallel()
	v := startVIPLab(t, false)
	if err := v.clientWrite(t); err != nil {
		t.Fatalf("client cannot write through the VIP before the failover: %v", err)
	}
	if err := v.pg.Primary().Kill(); err != nil {
		t.Fatal(err)
	}
	f := waitFailovers(t, v.c, 1, fsm.OutcomeCompleted)
	newHost := v.host[f.GetNewPrimary()]
	clustertest.WaitFor(t, waitLong, "the VIP on "+newHost, func() (bool, string) {
		h := v.holders()
		return slices.Equal(h, []string{newHost}), fmt.Sprint(h)
	})
	clustertest.WaitFor(t, waitLong, "a client write through the VIP on the new primary", func() (bool, string) {
		err := v.clientWrite(t)
		return err == nil, fmt.Sprint(err)
	})
	if n := query(t, node(v.pg, f.GetNewPrimary()), "SELECT count(*) FROM through_vip"); n == "0" {
		t.Fatal("the write through the VIP did not land on the new primary")
	}
	v.assertNeverTwo(t, "db0", newHost)
	if addrs, _ := v.lab.Addrs("db0"); slices.Contains(addrs, v.vip) {
		t.Fatal("the old primary's host still holds the VIP")
	}
}

func TestVIPIsolatedPrimarySelfFencesBeforePromotion(t *testing.T) {
	t.Parallel()
	v := startVIPLab(t, false)
	// db0 is cut off from everyone; its postgres keeps running.
	cut := time.Now()
	v.lab.CutAll("db0")
	t.Cleanup(func() { v.lab.HealAll("db0") })
	clustertest.WaitFor(t, waitLong, "db0's agent to drop the VIP on its own", func() (bool, string) {
		h := v.holders()
		return !slices.Contains(h, "db0"), fmt.Sprint(h)
	})
	dropped := time.Since(cut)
	f := waitFailovers(t, v.c, 1, fsm.OutcomeCompleted)
	newHost := v.host[f.GetNewPrimary()]
	clustertest.WaitFor(t, waitLong, "the VIP on "+newHost, func() (bool, string) {
		h := v.holders()
		return slices.Equal(h, []string{newHost}), fmt.Sprint(h)
	})
	lastOld, firstNew := v.assertNeverTwo(t, "db0", newHost)
	if !lastOld.Before(firstNew) {
		t.Fatalf("db0 last held the VIP at %s, after %s got it at %s", lastOld, newHost, firstNew)
	}
	var promoted time.Time
	for _, s := range f.GetSteps() {
		if s.GetName() == fsm.StepPromoted {
			promoted = s.GetAt().AsTime()
		}
	}
	if !lastOld.Before(promoted) {
		t.Fatalf("db0 still held the VIP at %s, after the promotion at %s", lastOld, promoted)
	}
	t.Logf("db0 dropped the VIP %s after the cut (lease_timeout 1s); fence: %s", dropped.Round(10*time.Millisecond), f.GetSteps()[0].GetDetail())
	clustertest.WaitFor(t, waitLong, "a client write through the VIP on the new primary", func() (bool, string) {
		err := v.clientWrite(t)
		return err == nil, fmt.Sprint(err)
	})
}

// TestHAProxyFollowsPrimary routes clients through a real HAProxy whose
// health checks ask an observer's /primary role endpoint and which vigil
// re-points through the Runtime API: after a failover, only the new
// primary receives connections.
func TestHAProxyFollowsPrimary(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "admin.sock")
	pg, c := failoverLab(t, labOptions{failover: fmt.Sprintf("      haproxy: {socket: %q, backend: pg-main}", sock)})
	front := startTestHAProxy(t, sock, pg, c)
	served := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=2", front))
		if err != nil {
			return "", err
		}
		defer conn.Close(context.Background())
		var port int
		if err := conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
			return "", err
		}
		for _, n := range pg.Nodes {
			if n.Port == port {
				return n.Name, nil
			}
		}
		return "", fmt.Errorf("served by unknown port %d", port)
	}
	// all waits until n connections in a row reach want.
	all := func(want string) {
		t.Helper()
		clustertest.WaitFor(t, waitLong, "every connection through HAProxy reaching "+want, func() (bool, string) {
			for i := 0; i < 10; i++ {
				got, err := served()
				if err != nil || got != want {
					return false, fmt.Sprintf("connection %d: %s %v", i, got, err)
				}
			}
			return true, ""
		})
	}
	all("pg0")
	if err := pg.Primary().Kill(); err != nil {
		t.Fatal(err)
	}
	f := waitFailovers(t, c, 1, fsm.OutcomeCompleted)
	all(f.GetNewPrimary())
	if !strings.Contains(f.GetSteps()[2].GetDetail(), "traffic routed") {
		t.Fatalf("rerouted step: %q", f.GetSteps()[2].GetDetail())
	}
}

// startTestHAProxy runs a real HAProxy in front of the lab's servers: its
// health checks ask observer 1's /primary role endpoint, and vigil
// re-points it through the Runtime API socket sock. It returns the port
// clients connect to.
func startTestHAProxy(t testing.TB, sock string, pg *pglab.Cluster, c *clustertest.Cluster) int {
	t.Helper()
	hp, err := osexec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("VIGIL_REQUIRE_TOOLS") != "" {
			t.Fatal("haproxy not installed")
		}
		t.Skip("haproxy not installed; set VIGIL_REQUIRE_TOOLS=1 to fail instead")
	}
	dir := t.TempDir()
	front := clustertest.FreePorts(t, 1)[0]
	var servers strings.Builder
	for _, n := range pg.Nodes {
		// Health checks ask observer 1's role endpoint about this member.
		fmt.Fprintf(&servers, "    server %s %s check addr 127.0.0.1 port %s\n", n.Name, n.Addr(), strings.Split(c.Nodes[0].Obs.HTTPAddr(), ":")[1])
	}
	cfg := fmt.Sprintf(`global
    stats socket %s mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend pg
    bind 127.0.0.1:%d
    default_backend pg-main
backend pg-main
    option httpchk
    http-check send meth GET uri-lf /primary/pg-main/%%[srv_name]
    http-check expect status 200
    default-server inter 200ms fall 1 rise 1 on-marked-down shutdown-sessions
%s`, sock, front, servers.String())
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := osexec.Command(hp, "-db", "-f", cfgPath)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("haproxy output:\n%s", tail(out.String(), 20))
		}
	})
	return front
}

// TestVIPOneBlindObserverMovesNothing: one observer loses its path to the
// primary (it is given a dead address for it); the other two still see it.
// Nothing moves: no ODOWN, no failover, the VIP stays where it is.
func TestVIPOneBlindObserverMovesNothing(t *testing.T) {
	t.Parallel()
	dead := clustertest.FreePorts(t, 1)[0]
	v := startVIPLab(t, false, func(i int, o *cluster.Options) {
		if i == 2 {
			o.Config.Groups[0].Members[0].Address = fmt.Sprintf("127.0.0.1:%d", dead)
		}
	})
	clustertest.WaitFor(t, waitLong, "obs3 alone sees pg0 down", func() (bool, string) {
		h := memberHealth(v.c, 2, "pg0")
		return h.GetSdown() && h.GetDownVotes() == 1, h.GetSummary()
	})
	// Several down_after periods (2s) with the broken path: nothing moves.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if g := group(v.c); g.GetEpoch() != 0 || g.GetActiveFailover() != nil {
			t.Fatalf("a failover started with one blind observer: %v", g)
		}
		if h := v.holders(); !slices.Equal(h, []string{"db0"}) {
			t.Fatalf("the VIP moved with one blind observer: %v", h)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := v.clientWrite(t); err != nil {
		t.Fatalf("client cannot write through the VIP: %v", err)
	}
}
