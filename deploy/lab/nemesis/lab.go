package nemesis

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigilha/vigil/deploy/lab/netlab"
	"github.com/vigilha/vigil/deploy/lab/pglab"
	"github.com/vigilha/vigil/deploy/lab/spawn"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// Group is the name of the one group every lab runs.
const Group = "pg-main"

// Ports every host of the lab uses on its own address.
const (
	raftPort    = 7101
	gossipPort  = 7201
	grpcPort    = 7301
	httpPort    = 7401
	agentPort   = 7501
	pgPort      = 5432
	haproxyPort = 5000
)

// LabConfig says how to build a lab.
type LabConfig struct {
	// Vigil is the vigil binary the observers and node agents run.
	Vigil string
	// Dir holds configs, data directories, disks and logs.
	Dir string
	// Sync selects synchronous replication (ANY 1 of the other members).
	Sync bool
	// ProbeInterval, ProbeTimeout and DownAfter configure the group;
	// zero means 500ms, 400ms and 2s.
	ProbeInterval, ProbeTimeout, DownAfter time.Duration
	// LeaseTimeout is the node agents' lease; zero means 1s.
	LeaseTimeout time.Duration
	// WriteStallAfter is the group's write_stall_after (a primary whose
	// heartbeat writes fail that long is down); zero means DownAfter.
	WriteStallAfter time.Duration
	// ClockOffset shifts one observer's wall clock (by id), through the
	// observer's --clock-offset test hook.
	ClockOffset map[string]time.Duration
	// Disks puts every member's data directory on its own loop-mounted
	// ext4 file system, so that a fault can freeze it (fsfreeze).
	Disks bool
	// Log receives the lab's own progress lines; nil discards them.
	Log *slog.Logger
}

func (c *LabConfig) defaults() {
	if c.ProbeInterval == 0 {
		c.ProbeInterval = 500 * time.Millisecond
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = 400 * time.Millisecond
	}
	if c.DownAfter == 0 {
		c.DownAfter = 2 * time.Second
	}
	if c.LeaseTimeout == 0 {
		c.LeaseTimeout = time.Second
	}
	if c.WriteStallAfter == 0 {
		c.WriteStallAfter = c.DownAfter
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// Lab is a whole vigil installation where every process has a host (a
// network namespace) of its own: three observers, three database hosts
// (PostgreSQL and a node agent each), an HAProxy host and a client host,
// all on one bridge.
type Lab struct {
	Cfg       LabConfig
	Net       *netlab.Lab
	PG        *pglab.Cluster
	Observers []string // obs1, obs2, obs3
	Members   []string // pg0, pg1, pg2
	// VIP is the group's virtual IP; Frontend is HAProxy's "IP:port".
	VIP      string
	Frontend string
	HAPSock  string

	mu        sync.Mutex
	observers map[string]*proc
	agents    map[string]*proc // by member
	haproxy   *proc
	conns     map[string]*grpc.ClientConn // admin API by observer
	disks     map[string]string           // member -> mount point
}

// hostOf returns the host a member runs on (pg1 -> db1).
func hostOf(member string) string { return "db" + strings.TrimPrefix(member, "pg") }

// HostOf returns the lab host of a member.
func (l *Lab) HostOf(member string) string { return hostOf(member) }

// proc is one process of the lab.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	logf *os.File
}

// NewLab builds the hosts, starts PostgreSQL, the node agents, HAProxy
// and the observers, and waits until a leader sees every member up. On
// error everything started is torn down.
func NewLab(ctx context.Context, cfg LabConfig) (_ *Lab, err error) {
	cfg.defaults()
	l := &Lab{
		Cfg:       cfg,
		Observers: []string{"obs1", "obs2", "obs3"},
		Members:   []string{"pg0", "pg1", "pg2"},
		observers: map[string]*proc{},
		agents:    map[string]*proc{},
		conns:     map[string]*grpc.ClientConn{},
		disks:     map[string]string{},
	}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	hosts := append(append([]string{}, l.Observers...), "db0", "db1", "db2", "hap", "client")
	if l.Net, err = netlab.Create("nem", hosts); err != nil {
		return nil, err
	}
	l.Net.CutMethod = netlab.CutNFT
	l.VIP = strings.TrimSuffix(l.Net.Gateway, ".1") + ".200"
	l.Frontend = hostPort(l.Net.IP("hap"), haproxyPort)
	l.HAPSock = filepath.Join(cfg.Dir, "haproxy.sock")

	pgBase := filepath.Join(cfg.Dir, "pg")
	if err := os.MkdirAll(pgBase, 0o755); err != nil {
		return nil, err
	}
	if cfg.Disks {
		for _, m := range l.Members {
			if err := l.makeDisk(m, pgBase); err != nil {
				return nil, err
			}
		}
	}
	opts := pglab.Options{Standbys: 2, Sync: cfg.Sync, BaseDir: pgBase, ExtraConf: []string{
		// Clients are cut loose quickly when a fence drops their packets.
		"tcp_keepalives_idle = 2", "tcp_keepalives_interval = 1", "tcp_keepalives_count = 2",
		// A lab reused for hundreds of runs must not fill its disks
		// (a 1 GB disk did: "No space left on device" at a promotion).
		"max_wal_size = 512MB",
	}}
	if cfg.Sync {
		// Every member, not only the initial standbys: after a failover
		// the old primary, rejoined, is the new primary's standby too.
		// Naming only pg1 and pg2 left pg2-as-primary with no eligible
		// synchronous standby while pg1 was down: every write waited.
		// (A server ignores its own name in the list.)
		opts.ExtraConf = append(opts.ExtraConf, "synchronous_standby_names = 'ANY 1 (pg0, pg1, pg2)'")
	}
	for _, m := range l.Members {
		h := hostOf(m)
		opts.Hosts = append(opts.Hosts, pglab.Host{NetNS: l.Net.Hosts[h].NS, IP: l.Net.IP(h)})
	}
	cfg.Log.Info("starting PostgreSQL", "sync", cfg.Sync)
	if l.PG, err = pglab.Start(ctx, opts); err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	for _, m := range l.Members {
		if err := l.StartAgent(m); err != nil {
			return nil, err
		}
	}
	if err := l.startHAProxy(); err != nil {
		return nil, err
	}
	if err := l.writeObserverConfigs(); err != nil {
		return nil, err
	}
	for _, o := range l.Observers {
		if err := l.StartObserver(o); err != nil {
			return nil, err
		}
		cc, err := grpc.NewClient(hostPort(l.Net.IP(o), grpcPort), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("admin client for %s: %w", o, err)
		}
		l.conns[o] = cc
	}
	if err := l.WaitReady(ctx, 90*time.Second); err != nil {
		return nil, fmt.Errorf("lab never became ready: %w", err)
	}
	return l, nil
}

// makeDisk gives member m a loop-mounted ext4 of its own, reached as
// pgBase/<m> (a symlink) so pglab puts the node's directory on it.
func (l *Lab) makeDisk(m, pgBase string) error {
	img := filepath.Join(l.Cfg.Dir, "disk-"+m+".img")
	mnt := filepath.Join(l.Cfg.Dir, "disk-"+m)
	for _, c := range [][]string{
		// Sparse: room for wal_keep_size and max_wal_size with margin,
		// after hundreds of runs on one lab.
		{"truncate", "-s", "4G", img},
		{"mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", img},
		{"mkdir", "-p", mnt},
		{"mount", "-o", "loop", img, mnt},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("disk for %s: %s: %v: %s", m, strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
		if c[0] == "mount" {
			l.disks[m] = mnt
		}
	}
	return os.Symlink(mnt, filepath.Join(pgBase, m))
}

// Disk returns the mount point of a member's disk ("" without disks).
func (l *Lab) Disk(member string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.disks[member]
}

// start runs argv on host, logging to Dir/<name>.log.
func (l *Lab) start(host, name string, argv ...string) (*proc, error) {
	logf, err := os.OpenFile(filepath.Join(l.Cfg.Dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logf, "----- %s start %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "))
	cmd := l.Net.Exec(context.Background(), host, argv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := spawn.Start(cmd); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s on %s: %w", name, host, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), logf: logf}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

// alive reports whether p is running.
func (p *proc) alive() bool {
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// signal sends sig to p's process group.
func (p *proc) signal(sig syscall.Signal) error {
	if !p.alive() {
		return fmt.Errorf("%s is not running", p.name)
	}
	return syscall.Kill(-p.cmd.Process.Pid, sig)
}

// kill sends SIGKILL and waits until p is gone.
func (p *proc) kill() error {
	if !p.alive() {
		return nil
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s survived SIGKILL for 10s", p.name)
	}
}

// stop sends SIGTERM (after SIGCONT), then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	if !p.alive() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGCONT)
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.kill()
	}
}

// StartAgent (re)starts the node agent of a member's host.
func (l *Lab) StartAgent(m string) error {
	h := hostOf(m)
	// The database fence lets through the observers, the other database
	// hosts (replication, rewind) and the test process (gateway) — not the
	// client host, not HAProxy, not the host itself: a client there is
	// stranded on the old primary's side and must be cut.
	allow := []string{l.Net.Gateway}
	for _, o := range l.Observers {
		allow = append(allow, l.Net.IP(o))
	}
	for _, o := range l.Members {
		if o != m {
			allow = append(allow, l.Net.IP(hostOf(o)))
		}
	}
	cfg := fmt.Sprintf(`node: %s
listen: %s:%d
data_dir: %s
observers: [%s]
lease_timeout: %s
groups:
  - name: %s
    member: %s
    vip: %s/32
    interface: %s
    database_fence: {kind: postgres, port: %d, host: 127.0.0.1, allow_from: [%s]}
`, h, l.Net.IP(h), agentPort, filepath.Join(l.Cfg.Dir, "agent-"+h), strings.Join(l.Observers, ", "),
		l.Cfg.LeaseTimeout, Group, m, l.VIP, l.Net.Hosts[h].Iface, pgPort, strings.Join(allow, ", "))
	path := filepath.Join(l.Cfg.Dir, "agent-"+h+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return err
	}
	p, err := l.start(h, "agent-"+h, l.Cfg.Vigil, "node", "--config", path)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.agents[m] = p
	l.mu.Unlock()
	return nil
}

// KillAgent kills -9 a member's node agent.
func (l *Lab) KillAgent(m string) error {
	l.mu.Lock()
	p := l.agents[m]
	l.mu.Unlock()
	return p.kill()
}

// AgentAlive reports whether a member's node agent runs.
func (l *Lab) AgentAlive(m string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.agents[m].alive()
}

// isolate makes host silent to every other host and to the test process
// (on), or lets it talk again (off).
func (l *Lab) isolate(host string, on bool) error {
	var err error
	for _, o := range l.Net.Names() {
		if o == host {
			continue
		}
		if on {
			err = firstErr(err, l.Net.CutErr(host, o))
		} else {
			err = firstErr(err, l.Net.HealErr(host, o))
		}
	}
	if on {
		return firstErr(err, l.Net.Block(host, "gateway"))
	}
	return firstErr(err, l.Net.Unblock(host, "gateway"))
}

// reboot clears what a host's kernel would lose in a reboot: the VIP and
// the node agent's fence rules.
func (l *Lab) reboot(host string) error {
	h := l.Net.Hosts[host]
	_ = exec.Command("ip", "-n", h.NS, "addr", "del", l.VIP+"/32", "dev", h.Iface).Run()
	_ = exec.Command("ip", "netns", "exec", h.NS, "nft", "delete", "table", "inet", "vigil_fence_"+strings.ReplaceAll(Group, "-", "_")).Run()
	return nil
}

// waitAgent waits until a member's node agent accepts connections.
func (l *Lab) waitAgent(ctx context.Context, m string) error {
	addr := hostPort(l.Net.IP(hostOf(m)), agentPort)
	return poll(ctx, 15*time.Second, func() (bool, error) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return false, nil
		}
		c.Close()
		return true, nil
	})
}

// StopAgent freezes a member's node agent (SIGSTOP).
func (l *Lab) StopAgent(m string) error {
	l.mu.Lock()
	p := l.agents[m]
	l.mu.Unlock()
	return p.signal(syscall.SIGSTOP)
}

func (l *Lab) writeObserverConfigs() error {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	var members strings.Builder
	for _, m := range l.Members {
		ip := l.Net.IP(hostOf(m))
		fmt.Fprintf(&members, "\n      - {name: %s, address: \"%s:%d\", agent: \"%s:%d\"}", m, ip, pgPort, ip, agentPort)
	}
	var list strings.Builder
	for _, o := range l.Observers {
		ip := l.Net.IP(o)
		fmt.Fprintf(&list, "\n  - {id: %s, raft: \"%s:%d\", gossip: \"%s:%d\", grpc: \"%s:%d\"}", o, ip, raftPort, ip, gossipPort, ip, grpcPort)
	}
	for _, o := range l.Observers {
		ip := l.Net.IP(o)
		cfg := fmt.Sprintf(`node_id: %s
data_dir: %s
log: {level: info, format: text}
raft: {bind: "%s:%d"}
gossip: {bind: "%s:%d", key: %s, label: vigil-nemesis}
grpc: {listen: "%s:%d"}
http: {listen: "%s:%d"}
observers:%s
groups:
  - name: %s
    kind: postgres
    primary: pg0
    down_after: %s
    write_stall_after: %s
    max_lag: 256KiB
    cooldown: 1s
    probe: {type: postgres, interval: %s, timeout: %s}
    failover: {vip: true, lease_timeout: %s, haproxy: {socket: %q, backend: %s}}
    members:%s
`, o, filepath.Join(l.Cfg.Dir, o), ip, raftPort, ip, gossipPort, base64.StdEncoding.EncodeToString(key), ip, grpcPort, ip, httpPort,
			list.String(), Group, l.Cfg.DownAfter, l.Cfg.WriteStallAfter, l.Cfg.ProbeInterval, l.Cfg.ProbeTimeout, l.Cfg.LeaseTimeout, l.HAPSock, Group, members.String())
		if err := os.WriteFile(filepath.Join(l.Cfg.Dir, o+".yaml"), []byte(cfg), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// StartObserver (re)starts an observer on its own data directory.
func (l *Lab) StartObserver(o string) error {
	argv := []string{l.Cfg.Vigil, "observer", "--config", filepath.Join(l.Cfg.Dir, o+".yaml")}
	l.mu.Lock()
	off := l.Cfg.ClockOffset[o]
	l.mu.Unlock()
	if off != 0 {
		argv = append(argv, "--clock-offset", off.String())
	}
	p, err := l.start(o, o, argv...)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.observers[o] = p
	l.mu.Unlock()
	return nil
}

// RestartObserver stops an observer gracefully and starts it again with
// the given clock offset (0: none), then waits until the lab is ready.
func (l *Lab) RestartObserver(ctx context.Context, o string, offset time.Duration) error {
	l.mu.Lock()
	p := l.observers[o]
	if offset == 0 {
		delete(l.Cfg.ClockOffset, o)
	} else {
		if l.Cfg.ClockOffset == nil {
			l.Cfg.ClockOffset = map[string]time.Duration{}
		}
		l.Cfg.ClockOffset[o] = offset
	}
	l.mu.Unlock()
	p.stop(10 * time.Second)
	if err := l.StartObserver(o); err != nil {
		return err
	}
	return l.WaitReady(ctx, 60*time.Second)
}

// KillObserver kills -9 an observer.
func (l *Lab) KillObserver(o string) error {
	l.mu.Lock()
	p := l.observers[o]
	l.mu.Unlock()
	return p.kill()
}

// ObserverAlive reports whether an observer runs.
func (l *Lab) ObserverAlive(o string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.observers[o].alive()
}

// startHAProxy runs HAProxy on its own host: its checks ask obs1's role
// endpoint, and the leader re-points it through the Runtime API socket.
func (l *Lab) startHAProxy() error {
	if _, err := exec.LookPath("haproxy"); err != nil {
		return fmt.Errorf("haproxy not installed (apt-get install -y haproxy): %w", err)
	}
	var servers strings.Builder
	for _, m := range l.Members {
		fmt.Fprintf(&servers, "    server %s %s:%d check addr %s port %d\n", m, l.Net.IP(hostOf(m)), pgPort, l.Net.IP("obs1"), httpPort)
	}
	cfg := fmt.Sprintf(`global
    stats socket %s mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
frontend pg
    bind %s
    default_backend %s
backend %s
    option httpchk
    http-check send meth GET uri-lf /primary/%s/%%[srv_name]
    http-check expect status 200
    default-server inter 200ms fall 1 rise 1 on-marked-down shutdown-sessions
%s`, l.HAPSock, l.Frontend, Group, Group, Group, servers.String())
	path := filepath.Join(l.Cfg.Dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return err
	}
	p, err := l.start("hap", "haproxy", "haproxy", "-db", "-f", path)
	if err != nil {
		return err
	}
	l.haproxy = p
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(l.HAPSock); err == nil {
			return nil
		}
		if !p.alive() || time.Now().After(deadline) {
			return fmt.Errorf("haproxy did not open its Runtime API socket %s (log %s)", l.HAPSock, filepath.Join(l.Cfg.Dir, "haproxy.log"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Admin returns the admin API client of one observer.
func (l *Lab) Admin(o string) vigilv1.AdminClient {
	return vigilv1.NewAdminClient(l.conns[o])
}

// GetGroup asks each live observer in turn; the first answer wins.
func (l *Lab) GetGroup(ctx context.Context) (*vigilv1.GetGroupResponse, string, error) {
	var last error = errors.New("no observer answered")
	for _, o := range l.Observers {
		if !l.ObserverAlive(o) {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		r, err := l.Admin(o).GetGroup(cctx, &vigilv1.GetGroupRequest{Name: Group})
		cancel()
		if err == nil {
			return r, o, nil
		}
		last = fmt.Errorf("%s: %w", o, err)
	}
	return nil, "", last
}

// Leader returns the observer the live observers name as Raft leader.
func (l *Lab) Leader(ctx context.Context) (string, error) {
	var last error = errors.New("no observer answered")
	for _, o := range l.Observers {
		if !l.ObserverAlive(o) {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		r, err := l.Admin(o).Status(cctx, &vigilv1.StatusRequest{LocalOnly: true})
		cancel()
		if err != nil {
			last = err
			continue
		}
		if id := r.GetLeaderId(); id != "" && l.ObserverAlive(id) {
			return id, nil
		}
		last = fmt.Errorf("%s knows no leader", o)
	}
	return "", last
}

// WaitReady waits until a leader is elected and a quorum of observers
// sees every member up, with the primary reported by the state.
func (l *Lab) WaitReady(ctx context.Context, timeout time.Duration) error {
	return poll(ctx, timeout, func() (bool, error) {
		if _, err := l.Leader(ctx); err != nil {
			return false, nil
		}
		r, _, err := l.GetGroup(ctx)
		if err != nil {
			return false, nil
		}
		up := 0
		for _, h := range r.GetHealth() {
			if h.GetState() == "up" && h.GetUpVotes() >= 2 {
				up++
			}
		}
		return up == len(l.Members) && r.GetGroup().GetActiveFailover() == nil, nil
	})
}

// Node returns a member's PostgreSQL node.
func (l *Lab) Node(m string) *pglab.Node {
	for _, n := range l.PG.Nodes {
		if n.Name == m {
			return n
		}
	}
	return nil
}

// Close stops everything and removes the hosts and disks. Safe on a
// partly built lab.
func (l *Lab) Close() {
	for _, cc := range l.conns {
		cc.Close()
	}
	// Thaw first: a frozen disk would hang PostgreSQL's shutdown.
	for _, mnt := range l.disks {
		_ = exec.Command("fsfreeze", "-u", mnt).Run()
	}
	var wg sync.WaitGroup
	for _, p := range l.observers {
		wg.Go(func() { p.stop(5 * time.Second) })
	}
	wg.Wait()
	for _, p := range l.agents {
		wg.Go(func() { p.stop(5 * time.Second) })
	}
	if l.haproxy != nil {
		wg.Go(func() { l.haproxy.stop(2 * time.Second) })
	}
	wg.Wait()
	if l.PG != nil {
		// The logs live on the members' disks, which go away below:
		// keep a copy with the run's other logs.
		for _, n := range l.PG.Nodes {
			if b, err := os.ReadFile(n.LogPath); err == nil {
				_ = os.WriteFile(filepath.Join(l.Cfg.Dir, n.Name+"-postgres.log"), b, 0o644)
			}
		}
		_ = l.PG.Close()
	}
	if l.Net != nil {
		_ = l.Net.Close()
	}
	for m, mnt := range l.disks {
		if err := exec.Command("umount", mnt).Run(); err != nil {
			_ = exec.Command("umount", "-l", mnt).Run()
		}
		_ = os.Remove(mnt)
		_ = os.Remove(filepath.Join(l.Cfg.Dir, "disk-"+m+".img"))
	}
}

func hostPort(ip string, port int) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }

// poll calls cond every 50ms until it is true, it fails, ctx ends or
// timeout passes.
func poll(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("condition not met within %s: %w", timeout, ctx.Err())
		case <-t.C:
		}
	}
}
