// Command vigil-demo runs vigil's main job on this one machine: three real
// observer processes watch a real PostgreSQL primary with two streaming
// standbys; a client keeps writing; the primary is killed with SIGKILL and
// the demo prints the failover as it happens, then how many acknowledged
// writes were lost. Everything it starts is stopped on exit.
//
// Where it can (root, network namespaces), every database server is a host
// of its own in a network-namespace lab with a real `vigil node` agent,
// and the client, on a host of its own, writes through the group's virtual
// IP. Elsewhere it says why and runs on loopback with the client going
// through a real HAProxy that follows vigil (or, without HAProxy, straight
// to the primary vigil names).
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigilha/vigil/deploy/lab/netlab"
	"github.com/vigilha/vigil/deploy/lab/pglab"
	"github.com/vigilha/vigil/deploy/lab/spawn"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding the vigil and vigilctl binaries")
	keep := flag.Bool("keep", false, "keep the run directory (logs, configs) after exit")
	mode := flag.String("mode", "auto", "lab (network namespaces + VIP, needs root), loopback (HAProxy), or auto")
	flag.Parse()
	if err := run(*bin, *keep, *mode); err != nil {
		fmt.Fprintln(os.Stderr, "vigil-demo:", err)
		os.Exit(1)
	}
}

var start = time.Now()

func say(format string, args ...any) {
	fmt.Printf("[%s +%7.3fs] %s\n", time.Now().UTC().Format("15:04:05.000"), time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

func run(bin string, keep bool, mode string) error {
	if err := pglab.Available(); err != nil {
		return fmt.Errorf("PostgreSQL cannot run here, so the demo cannot: %w (on Debian: apt-get install -y postgresql; run as root)", err)
	}
	vigil, ctl := filepath.Join(bin, "vigil"), filepath.Join(bin, "vigilctl")
	for _, b := range []string{vigil, ctl} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%s missing: run 'make build' first (or 'make demo')", b)
		}
	}
	dir, err := os.MkdirTemp("", "vigil-demo-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	} else {
		defer fmt.Println("run directory kept:", dir)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	switch mode {
	case "auto":
		mode = "lab"
		if err := netlab.Available(); err != nil {
			mode = "loopback"
			say("no network-namespace lab here (%v): running on loopback instead", err)
		}
	case "lab", "loopback":
	default:
		return fmt.Errorf("-mode %q: want lab, loopback or auto", mode)
	}

	pgOpts := pglab.Options{Standbys: 2, Sync: true, BaseDir: filepath.Join(dir, "pg")}
	var lab *netlab.Lab
	vip := ""
	if mode == "lab" {
		say("building the lab: hosts db0, db1, db2 and client as network namespaces on a bridge")
		lab, err = netlab.Create("demo", []string{"db0", "db1", "db2", "client"})
		if err != nil {
			return err
		}
		defer lab.Close()
		vip = strings.TrimSuffix(lab.Gateway, ".1") + ".200"
		for _, h := range []string{"db0", "db1", "db2"} {
			pgOpts.Hosts = append(pgOpts.Hosts, pglab.Host{NetNS: lab.Hosts[h].NS, IP: lab.IP(h)})
		}
	}
	say("starting PostgreSQL: a primary and two streaming standbys, synchronous_standby_names = ANY 1 (run as the postgres user)")
	pg, err := pglab.Start(ctx, pgOpts)
	if err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	defer pg.Close()
	for _, n := range pg.Nodes {
		say("  %s listening on %s", n.Name, n.Addr())
	}

	groupExtra := ""
	agentOf := map[string]string{}
	hapSock := filepath.Join(dir, "haproxy.sock")
	_, hapErr := exec.LookPath("haproxy")
	switch {
	case lab != nil:
		ports := make([]int, len(pg.Nodes))
		for i, n := range pg.Nodes {
			ports[i] = n.Port
		}
		stopAgents, err := startAgents(lab, vigil, dir, vip, ports)
		if err != nil {
			return err
		}
		defer stopAgents()
		for i, n := range pg.Nodes {
			agentOf[n.Name] = fmt.Sprintf("%s:7501", lab.IP(fmt.Sprintf("db%d", i)))
		}
		groupExtra = "    failover: {vip: true, lease_timeout: 1s}\n"
		say("node agents started on db0, db1, db2; the VIP %s will follow the primary", vip)
	case hapErr == nil:
		groupExtra = fmt.Sprintf("    failover: {haproxy: {socket: %q, backend: pg-main}}\n", hapSock)
	default:
		say("HAProxy is not installed (apt-get install -y haproxy): the client will follow the primary vigil names")
	}

	obs, err := startObservers(ctx, vigil, dir, pg, groupExtra, agentOf)
	if err != nil {
		return err
	}
	defer obs.stop()
	addrs := strings.Join(obs.grpc, ",")
	client, err := newAdmin(obs.grpc)
	if err != nil {
		return err
	}
	defer client.close()

	say("waiting for the observers to elect a leader and agree that every member is up")
	if err := waitFor(ctx, 60*time.Second, func() (bool, error) {
		r, err := client.group(ctx)
		if err != nil {
			return false, nil
		}
		up := 0
		for _, h := range r.GetHealth() {
			if h.GetState() == "up" && h.GetUpVotes() == 3 {
				up++
			}
		}
		return up == len(pg.Nodes), nil
	}); err != nil {
		return fmt.Errorf("cluster did not become ready (logs in %s): %w", dir, err)
	}
	show(ctl, addrs, "status")
	show(ctl, addrs, "group", "pg-main")

	w := newWriter(pg, client)
	switch {
	case lab != nil:
		w.via = "the VIP " + vip
		w.dial = func(ctx context.Context) (*pgx.Conn, error) {
			var conn *pgx.Conn
			err := lab.InNS("client", func() error {
				var err error
				conn, err = pgx.Connect(ctx, fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable connect_timeout=1", vip))
				return err
			})
			return conn, err
		}
	case hapErr == nil:
		front, stopHAProxy, err := startHAProxy(dir, hapSock, pg, obs.http[0])
		if err != nil {
			return err
		}
		defer stopHAProxy()
		w.via = "HAProxy on " + front
		w.dial = func(ctx context.Context) (*pgx.Conn, error) {
			return pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=postgres dbname=postgres sslmode=disable connect_timeout=1", strings.Split(front, ":")[1]))
		}
	}
	if err := w.prepare(ctx); err != nil {
		return err
	}
	wctx, wcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); w.run(wctx) }()
	if err := waitFor(ctx, 30*time.Second, func() (bool, error) { return w.count() >= 100, nil }); err != nil {
		wcancel()
		return fmt.Errorf("the writer could not write: %w", err)
	}
	say("a client is writing through %s (%d writes acknowledged so far)", w.via, w.count())

	watch, err := client.watch(ctx)
	if err != nil {
		wcancel()
		return err
	}
	say("kill -9 the primary's postmaster (%s)", pg.Primary().Name)
	killed := time.Now()
	if err := pg.Primary().Kill(); err != nil {
		wcancel()
		return err
	}
	var f *vigilv1.Failover
	seen := map[string]bool{}
	err = waitFor(ctx, 90*time.Second, func() (bool, error) {
		for {
			select {
			case ev := <-watch:
				h := ev.GetHealth()
				if ev.GetPreviousState() != "" && h.GetMember() == pg.Primary().Name && !seen["odown-"+h.GetState()] {
					seen["odown-"+h.GetState()] = true
					say("  observers: %s is %s (%s)", h.GetMember(), strings.ToUpper(h.GetState()), h.GetSummary())
				}
				continue
			default:
			}
			break
		}
		r, err := client.history(ctx)
		if err != nil {
			return false, nil
		}
		cur := r.GetActive()
		if cur == nil && len(r.GetFailovers()) > 0 {
			cur = r.GetFailovers()[len(r.GetFailovers())-1]
		}
		if cur == nil {
			return false, nil
		}
		if !seen["started"] {
			seen["started"] = true
			say("  failover started: epoch %d, %s -> %s (%s)", cur.GetEpoch(), cur.GetOldPrimary(), cur.GetNewPrimary(), cur.GetReason())
		}
		for _, s := range cur.GetSteps() {
			if !seen[s.GetName()] {
				seen[s.GetName()] = true
				say("  %-18s %4dms  %s  [%s]", s.GetName(), s.GetDurationMs(), s.GetDetail(), s.GetObserver())
			}
		}
		if cur.GetOutcome() != "" {
			f = cur
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		wcancel()
		return fmt.Errorf("no failover (logs in %s): %w", dir, err)
	}
	say("  failover %s: %s", f.GetOutcome(), f.GetOutcomeDetail())
	var vipMoved time.Time
	if lab != nil {
		newHost := fmt.Sprintf("db%s", strings.TrimPrefix(f.GetNewPrimary(), "pg"))
		if err := waitFor(ctx, 30*time.Second, func() (bool, error) {
			a, err := lab.Addrs(newHost)
			return err == nil && slices.Contains(a, vip), nil
		}); err != nil {
			wcancel()
			return fmt.Errorf("the VIP did not reach %s: %w", newHost, err)
		}
		vipMoved = time.Now()
		say("  VIP %s is on %s", vip, newHost)
	}
	if err := waitFor(ctx, 30*time.Second, func() (bool, error) { return w.firstOn(f.GetNewPrimary()) != time.Time{}, nil }); err != nil {
		wcancel()
		return fmt.Errorf("the client never wrote to the new primary: %w", err)
	}
	first := w.firstOn(f.GetNewPrimary())
	time.Sleep(500 * time.Millisecond) // let the client write a little more on the new primary
	wcancel()
	wg.Wait()

	lost, total, err := w.lost(ctx, f.GetNewPrimary())
	if err != nil {
		return err
	}
	fmt.Println()
	say("timeline (from the kill):")
	if f.GetOdownAt() != nil {
		fmt.Printf("    ODOWN at            +%6dms\n", f.GetOdownAt().AsTime().Sub(killed).Milliseconds())
	}
	fmt.Printf("    failover started    +%6dms  (epoch %d)\n", f.GetStartedAt().AsTime().Sub(killed).Milliseconds(), f.GetEpoch())
	for _, s := range f.GetSteps() {
		fmt.Printf("    %-19s +%6dms\n", s.GetName(), s.GetAt().AsTime().Sub(killed).Milliseconds())
	}
	fmt.Printf("    completed           +%6dms\n", f.GetFinishedAt().AsTime().Sub(killed).Milliseconds())
	if !vipMoved.IsZero() {
		fmt.Printf("    VIP seen on new     +%6dms  (or earlier: polled)\n", vipMoved.Sub(killed).Milliseconds())
	}
	fmt.Printf("    first write on new  +%6dms  (%s)\n", first.Sub(killed).Milliseconds(), f.GetNewPrimary())
	fmt.Printf("    writes acknowledged  %d, lost: %d\n\n", total, lost)
	show(ctl, addrs, "history", "pg-main")
	show(ctl, addrs, "group", "pg-main")
	say("stopping observers and PostgreSQL")
	if lost > 0 {
		return fmt.Errorf("%d acknowledged writes lost (asynchronous replication: writes not yet streamed when the primary died)", lost)
	}
	return nil
}

func show(ctl, addrs string, args ...string) {
	fmt.Printf("\n$ vigilctl %s\n", strings.Join(args, " "))
	cmd := exec.Command(ctl, append([]string{"--addr", addrs}, args...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	_ = cmd.Run()
	fmt.Println()
}

func waitFor(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// observers are the three vigil processes.
type observers struct {
	cmds []*exec.Cmd
	grpc []string
	http []string
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func startObservers(ctx context.Context, vigil, dir string, pg *pglab.Cluster, groupExtra string, agentOf map[string]string) (*observers, error) {
	ports, err := freePorts(12)
	if err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	var members strings.Builder
	for _, n := range pg.Nodes {
		agent := ""
		if a, ok := agentOf[n.Name]; ok {
			agent = fmt.Sprintf(", agent: %q", a)
		}
		fmt.Fprintf(&members, "\n      - {name: %s, address: %q%s}", n.Name, n.Addr(), agent)
	}
	var list strings.Builder
	for i := 0; i < 3; i++ {
		fmt.Fprintf(&list, "\n  - {id: obs%d, raft: \"127.0.0.1:%d\", gossip: \"127.0.0.1:%d\", grpc: \"127.0.0.1:%d\"}", i+1, ports[4*i], ports[4*i+1], ports[4*i+2])
	}
	o := &observers{}
	for i := 0; i < 3; i++ {
		cfg := fmt.Sprintf(`node_id: obs%d
data_dir: %s
log: {level: info, format: text}
raft: {bind: "127.0.0.1:%d"}
gossip: {bind: "127.0.0.1:%d", key: %s, label: vigil-demo}
grpc: {listen: "127.0.0.1:%d"}
http: {listen: "127.0.0.1:%d"}
observers:%s
groups:
  - name: pg-main
    kind: postgres
    primary: %s
    down_after: 2s
    cooldown: 5m
    probe: {type: postgres, interval: 500ms, timeout: 400ms}
%s    members:%s
`, i+1, filepath.Join(dir, fmt.Sprintf("obs%d", i+1)), ports[4*i], ports[4*i+1], base64.StdEncoding.EncodeToString(key), ports[4*i+2], ports[4*i+3], list.String(), pg.Primary().Name, groupExtra, members.String())
		path := filepath.Join(dir, fmt.Sprintf("obs%d.yaml", i+1))
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			return nil, err
		}
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("obs%d.log", i+1)))
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(vigil, "observer", "--config", path)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := spawn.Start(cmd); err != nil {
			o.stop()
			return nil, fmt.Errorf("start observer %d: %w", i+1, err)
		}
		o.cmds = append(o.cmds, cmd)
		o.grpc = append(o.grpc, fmt.Sprintf("127.0.0.1:%d", ports[4*i+2]))
		o.http = append(o.http, fmt.Sprintf("127.0.0.1:%d", ports[4*i+3]))
		say("observer obs%d started (pid %d, admin API %s, metrics http://127.0.0.1:%d/metrics)", i+1, cmd.Process.Pid, o.grpc[i], ports[4*i+3])
	}
	return o, nil
}

func (o *observers) stop() {
	for _, c := range o.cmds {
		_ = c.Process.Signal(syscall.SIGTERM)
	}
	for _, c := range o.cmds {
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = c.Process.Kill()
		}
	}
}

// admin is a small client of the observers' admin API that tries each.
type admin struct {
	conns []*grpc.ClientConn
}

func newAdmin(addrs []string) (*admin, error) {
	a := &admin{}
	for _, addr := range addrs {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		a.conns = append(a.conns, cc)
	}
	return a, nil
}

func (a *admin) close() {
	for _, c := range a.conns {
		c.Close()
	}
}

func (a *admin) group(ctx context.Context) (*vigilv1.GetGroupResponse, error) {
	var last error
	for _, cc := range a.conns {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		r, err := vigilv1.NewAdminClient(cc).GetGroup(cctx, &vigilv1.GetGroupRequest{Name: "pg-main"})
		cancel()
		if err == nil {
			return r, nil
		}
		last = err
	}
	return nil, last
}

func (a *admin) history(ctx context.Context) (*vigilv1.HistoryResponse, error) {
	var last error
	for _, cc := range a.conns {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		r, err := vigilv1.NewAdminClient(cc).History(cctx, &vigilv1.HistoryRequest{Group: "pg-main"})
		cancel()
		if err == nil {
			return r, nil
		}
		last = err
	}
	return nil, last
}

func (a *admin) watch(ctx context.Context) (<-chan *vigilv1.WatchEvent, error) {
	st, err := vigilv1.NewAdminClient(a.conns[1]).Watch(ctx, &vigilv1.WatchRequest{Group: "pg-main"})
	if err != nil {
		return nil, err
	}
	ch := make(chan *vigilv1.WatchEvent, 256)
	go func() {
		for {
			ev, err := st.Recv()
			if err != nil {
				return
			}
			select {
			case ch <- ev:
			default:
			}
		}
	}()
	return ch, nil
}

// writer inserts rows into the primary vigil names, one at a time,
// remembering which were acknowledged and when it first wrote to a member.
type writer struct {
	pg     *pglab.Cluster
	client *admin
	// dial connects the way clients do (VIP, HAProxy); nil means "to the
	// primary vigil names".
	dial func(context.Context) (*pgx.Conn, error)
	via  string

	mu    sync.Mutex
	acked []int64
	first map[string]time.Time
}

func newWriter(pg *pglab.Cluster, client *admin) *writer {
	return &writer{pg: pg, client: client, first: map[string]time.Time{}, via: "to the primary vigil names"}
}

func (w *writer) node(name string) *pglab.Node {
	for _, n := range w.pg.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

func (w *writer) prepare(ctx context.Context) error {
	conn, err := w.pg.Primary().Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE TABLE demo_writes (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
	return err
}

func (w *writer) run(ctx context.Context) {
	var conn *pgx.Conn
	cur := ""
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for id := int64(1); ctx.Err() == nil; id++ {
		if conn == nil {
			var err error
			conn, cur, err = w.connect(ctx)
			if err != nil {
				conn = nil
				time.Sleep(10 * time.Millisecond)
				continue
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := conn.Exec(cctx, "INSERT INTO demo_writes (id) VALUES ($1)", id)
		cancel()
		if err != nil {
			conn.Close(context.Background())
			conn = nil
			continue
		}
		w.mu.Lock()
		w.acked = append(w.acked, id)
		if _, ok := w.first[cur]; !ok {
			w.first[cur] = time.Now()
		}
		w.mu.Unlock()
	}
}

// connect opens a connection and says which member answered.
func (w *writer) connect(ctx context.Context) (*pgx.Conn, string, error) {
	// A 300ms connect timeout: while the VIP is on no host, a connect hangs
	// (no RST comes back) until it gives up.
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if w.dial == nil {
		r, err := w.client.group(cctx)
		if err != nil || w.node(r.GetGroup().GetPrimary()) == nil {
			return nil, "", fmt.Errorf("no primary known")
		}
		name := r.GetGroup().GetPrimary()
		conn, err := w.node(name).Connect(cctx)
		return conn, name, err
	}
	conn, err := w.dial(cctx)
	if err != nil {
		return nil, "", err
	}
	// cluster_name is the server's own name (pg0, pg1, …): through the VIP
	// or HAProxy the address that answered does not tell.
	var name string
	if err := conn.QueryRow(cctx, "SELECT current_setting('cluster_name')").Scan(&name); err != nil {
		conn.Close(context.Background())
		return nil, "", err
	}
	if w.node(name) != nil {
		return conn, name, nil
	}
	return conn, "unknown", nil
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func (w *writer) firstOn(member string) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.first[member]
}

// lost counts acknowledged writes missing on the new primary.
func (w *writer) lost(ctx context.Context, primary string) (lost, total int, err error) {
	n := w.node(primary)
	if n == nil {
		return 0, 0, errors.New("unknown new primary " + primary)
	}
	conn, err := n.Connect(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(ctx)
	w.mu.Lock()
	ids := append([]int64(nil), w.acked...)
	w.mu.Unlock()
	var have int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM demo_writes WHERE id = ANY($1)", ids).Scan(&have); err != nil {
		return 0, 0, err
	}
	return len(ids) - have, len(ids), nil
}

// startAgents runs `vigil node` on every database host of the lab.
// Each agent also fences its host's database (nftables: only the
// observers, on the gateway, and the other database hosts may reach the
// port while fenced) when it loses the observers' leases or the leader
// asks it to.
func startAgents(lab *netlab.Lab, vigil, dir, vip string, ports []int) (func(), error) {

	var cmds []*exec.Cmd
	stop := func() {
		for _, c := range cmds {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
		}
		for _, c := range cmds {
			_ = c.Wait()
		}
	}
	for i, h := range []string{"db0", "db1", "db2"} {
		// Not the host itself: a client on it connecting to its own
		// address is stranded on the old primary's side and must be cut.
		allow := []string{lab.Gateway}
		for _, o := range []string{"db0", "db1", "db2"} {
			if o != h {
				allow = append(allow, lab.IP(o))
			}
		}
		cfg := fmt.Sprintf(`node: %s
listen: %s:7501
data_dir: %s
observers: [obs1, obs2, obs3]
lease_timeout: 1s
groups:
  - name: pg-main
    member: pg%d
    vip: %s/32
    interface: %s
    database_fence: {kind: postgres, port: %d, host: 127.0.0.1, allow_from: [%s]}
`, h, lab.IP(h), filepath.Join(dir, "agent-"+h), i, vip, lab.Hosts[h].Iface, ports[i], strings.Join(allow, ", "))
		path := filepath.Join(dir, "agent-"+h+".yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			stop()
			return nil, err
		}
		logf, err := os.Create(filepath.Join(dir, "agent-"+h+".log"))
		if err != nil {
			stop()
			return nil, err
		}
		cmd := lab.Exec(context.Background(), h, vigil, "node", "--config", path)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := spawn.Start(cmd); err != nil {
			stop()
			return nil, fmt.Errorf("start node agent on %s: %w", h, err)
		}
		cmds = append(cmds, cmd)
	}
	return stop, nil
}

// startHAProxy runs HAProxy in front of the servers: health checks ask an
// observer's /primary role endpoint, and vigil re-points it through the
// Runtime API socket.
func startHAProxy(dir, sock string, pg *pglab.Cluster, observerHTTP string) (string, func(), error) {
	ports, err := freePorts(1)
	if err != nil {
		return "", nil, err
	}
	var servers strings.Builder
	for _, n := range pg.Nodes {
		fmt.Fprintf(&servers, "    server %s %s check addr 127.0.0.1 port %s\n", n.Name, n.Addr(), strings.Split(observerHTTP, ":")[1])
	}
	front := fmt.Sprintf("127.0.0.1:%d", ports[0])
	cfg := fmt.Sprintf(`global
    stats socket %s mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend pg
    bind %s
    default_backend pg-main
backend pg-main
    option httpchk
    http-check send meth GET uri-lf /primary/pg-main/%%[srv_name]
    http-check expect status 200
    default-server inter 200ms fall 1 rise 1 on-marked-down shutdown-sessions
%s`, sock, front, servers.String())
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return "", nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "haproxy.log"))
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command("haproxy", "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := spawn.Start(cmd); err != nil {
		return "", nil, fmt.Errorf("start haproxy: %w", err)
	}
	say("HAProxy listening on %s; its checks ask observer 1 (%s/primary/pg-main/<member>)", front, observerHTTP)
	return front, func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logf.Close() }, nil
}
