// Package pglab runs a real PostgreSQL primary with streaming standbys on
// 127.0.0.1 for tests: initdb, pg_basebackup, start, kill, hang (SIGSTOP)
// and restart individual servers, and tear everything down again.
//
// Every postmaster is a direct child of the test process (not daemonised
// by pg_ctl), in its own process group so that a terminal's signals do
// not reach it, and the kernel kills it if the test binary dies
// (Pdeathsig); its children notice and exit. PostgreSQL's children call
// setsid(), so Stop/Cont/Kill signal the postmaster and each of its
// children found in /proc. A test must still call Close (StartForTest
// registers it).
//
// PostgreSQL refuses to run as root: as root, every PostgreSQL program
// runs as the OS user "postgres"; as any other user, as that user.
package pglab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilha/vigil/deploy/lab/spawn"
)

// Options configures Start.
type Options struct {
	// Standbys is the number of streaming standbys besides the primary.
	Standbys int
	// BaseDir holds one directory per node (data dir and postgres.log).
	// Empty means a fresh directory under os.TempDir(), removed by Close.
	// A given directory (e.g. t.TempDir()) is chowned to the PostgreSQL
	// account; only the node directories inside it are removed by Close.
	BaseDir string
	// Port0 is the port of node 0; node i listens on Port0+i.
	// 0 picks free ports.
	Port0 int
	// Sync sets synchronous_standby_names = 'ANY 1 (<all standbys>)'.
	Sync bool
	// ExtraConf lines are appended to the primary's postgresql.conf
	// (and so copied to every standby by pg_basebackup).
	ExtraConf []string
	// Hosts, when set, places node i in network namespace Hosts[i].NetNS
	// listening on Hosts[i].IP (one entry per node), for labs where each
	// server is a host of its own. Ports then default to 5432.
	Hosts []Host
}

// Host is where one node runs in a network-namespace lab.
type Host struct {
	// NetNS is the name of an existing namespace (ip netns add …).
	NetNS string
	// IP is the node's address inside it, reachable from the test.
	IP string
}

// Cluster is a running lab: Nodes[0] was initialised as the primary, the
// others as its streaming standbys (roles may change if a test promotes).
type Cluster struct {
	Nodes []*Node

	acct    account
	baseDir string
	ownBase bool // we created baseDir, so Close removes it whole

	closeOnce sync.Once
	closeErr  error
}

// Node is one PostgreSQL server of the lab.
type Node struct {
	// Name is the node's name: "pg0" for the initial primary, "pg1"… for
	// standbys. It is the cluster_name, hence the application_name seen
	// in pg_stat_replication, and the slot is "slot_<Name>".
	Name string
	// Port is the TCP port on IP.
	Port int
	// IP is the address the node listens on: 127.0.0.1, or its host's
	// address in a network-namespace lab.
	IP string
	// NetNS is the network namespace the node runs in ("" = ours).
	NetNS string
	// DataDir is the PGDATA directory.
	DataDir string
	// Dir is the node's directory (DataDir and LogPath live inside).
	Dir string
	// LogPath is the file receiving the server's stdout and stderr.
	LogPath string

	acct account

	mu   sync.Mutex
	proc *process // nil when never started or after Close
}

// process is one run of a postmaster.
type process struct {
	pid    int
	done   chan struct{} // closed once the postmaster was reaped
	logOff int64         // log size when this run began
}

// Default budget for Start and Node.Start when ctx has no deadline.
const defaultStartTimeout = 2 * time.Minute

// How long Close waits for a fast shutdown before SIGKILL.
const shutdownGrace = 10 * time.Second

// Start creates, starts and waits for a primary and opts.Standbys
// streaming standbys. On error everything started so far is torn down.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if opts.Standbys < 0 {
		return nil, fmt.Errorf("pglab: negative Standbys %d", opts.Standbys)
	}
	acct, err := runAs()
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}

	c := &Cluster{acct: acct, baseDir: opts.BaseDir}
	if c.baseDir == "" {
		if c.baseDir, err = os.MkdirTemp("", "pglab-"); err != nil {
			return nil, err
		}
		c.ownBase = true
	} else if err := os.MkdirAll(c.baseDir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = c.Close()
		}
	}()
	if err := acct.chown(c.baseDir); err != nil {
		return nil, err
	}
	if err := acct.ensureTraversable(c.baseDir); err != nil {
		return nil, err
	}

	for i := 0; i <= opts.Standbys; i++ {
		name := fmt.Sprintf("pg%d", i)
		dir := filepath.Join(c.baseDir, name)
		n := &Node{
			Name:    name,
			Dir:     dir,
			DataDir: filepath.Join(dir, "data"),
			LogPath: filepath.Join(dir, "postgres.log"),
			acct:    acct,
		}
		if opts.Port0 > 0 {
			n.Port = opts.Port0 + i
		}
		n.IP = "127.0.0.1"
		if len(opts.Hosts) > 0 {
			if len(opts.Hosts) != opts.Standbys+1 {
				return nil, fmt.Errorf("pglab: %d hosts for %d nodes", len(opts.Hosts), opts.Standbys+1)
			}
			n.IP, n.NetNS = opts.Hosts[i].IP, opts.Hosts[i].NetNS
			if n.Port == 0 {
				n.Port = 5432
			}
		}
		c.Nodes = append(c.Nodes, n)
	}

	primary := c.Nodes[0]
	pickPort := opts.Port0 == 0 && len(opts.Hosts) == 0
	if err := c.initPrimary(ctx, primary, opts); err != nil {
		return nil, err
	}
	if err := primary.startFirst(ctx, pickPort); err != nil {
		return nil, err
	}
	// Standbys are independent of each other: clone and start them in
	// parallel.
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes[1:] {
		wg.Go(func() { errs[i+1] = c.startStandby(ctx, primary, n, pickPort) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := primary.WaitStreaming(ctx, c.Nodes[1:]...); err != nil {
		return nil, err
	}
	return c, nil
}

// startStandby clones the primary into n with its own replication slot
// and starts it.
func (c *Cluster) startStandby(ctx context.Context, primary, n *Node, pickPort bool) error {
	if err := c.acct.mkdir(n.Dir); err != nil {
		return err
	}
	err := c.acct.run(ctx, n.NetNS, "pg_basebackup",
		"-h", primary.IP, "-p", fmt.Sprint(primary.Port), "-U", "postgres",
		"-D", n.DataDir, "-R", "-X", "stream", "-C", "-S", "slot_"+n.Name,
		"-c", "fast", "--no-sync")
	if err != nil {
		return err
	}
	return n.startFirst(ctx, pickPort)
}

// initPrimary runs initdb and writes the lab's configuration.
func (c *Cluster) initPrimary(ctx context.Context, n *Node, opts Options) error {
	if err := c.acct.mkdir(n.Dir); err != nil {
		return err
	}
	err := c.acct.run(ctx, "", "initdb", "-D", n.DataDir, "-U", "postgres", "--auth=trust",
		"--data-checksums", "-E", "UTF8", "--locale=C", "--no-sync")
	if err != nil {
		return err
	}
	conf := []string{
		"",
		"# pglab",
		listen(opts),
		"unix_socket_directories = ''", // TCP only; temp paths can exceed the socket path limit
		"wal_level = replica",
		"max_wal_senders = 10",
		"max_replication_slots = 10",
		"hot_standby = on",
		"hot_standby_feedback = on",
		"wal_log_hints = on",
		"fsync = off",
		"shared_buffers = 32MB",
		"max_connections = 50",
		"wal_receiver_status_interval = 1s",
		"wal_retrieve_retry_interval = 200ms", // standbys reconnect quickly after a primary restart
		// pg_basebackup creates its slot only after the backup began; a
		// concurrent checkpoint (another standby's "-c fast") could
		// recycle the WAL it needs meanwhile.
		"wal_keep_size = 256MB",
		"logging_collector = off",
		"log_line_prefix = '%m [%p] %q%a '",
	}
	if opts.Sync && opts.Standbys > 0 {
		var names []string
		for _, s := range c.Nodes[1:] {
			names = append(names, s.Name)
		}
		conf = append(conf, fmt.Sprintf("synchronous_standby_names = 'ANY 1 (%s)'", strings.Join(names, ", ")))
	}
	conf = append(conf, opts.ExtraConf...)
	f, err := os.OpenFile(filepath.Join(n.DataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(strings.Join(conf, "\n") + "\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	lines := []string{
		"local all all trust",
		"local replication all trust",
		"host all all 127.0.0.1/32 trust",
		"host replication all 127.0.0.1/32 trust",
	}
	if len(opts.Hosts) > 0 {
		// The lab's private network only: namespaces the test created.
		lines = append(lines, "host all all 0.0.0.0/0 trust", "host replication all 0.0.0.0/0 trust")
	}
	hba := strings.Join(lines, "\n") + "\n"
	return c.acct.writeFile(filepath.Join(n.DataDir, "pg_hba.conf"), []byte(hba))
}

// Primary returns the node initialised as primary (Nodes[0]).
func (c *Cluster) Primary() *Node { return c.Nodes[0] }

// Standbys returns the nodes initialised as standbys.
func (c *Cluster) Standbys() []*Node { return c.Nodes[1:] }

// Close stops every postgres (SIGCONT, fast shutdown, SIGKILL to the
// postmaster and its children after a grace period), waits for them and
// removes the
// node directories. It is idempotent and safe to call on a partly
// started cluster.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		var errs []error
		// Standbys first, so the primary need not wait for walsenders.
		for i := len(c.Nodes) - 1; i >= 0; i-- {
			errs = append(errs, c.Nodes[i].shutdown(shutdownGrace))
		}
		if c.ownBase {
			errs = append(errs, os.RemoveAll(c.baseDir))
		} else {
			for _, n := range c.Nodes {
				errs = append(errs, os.RemoveAll(n.Dir))
			}
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// DSN returns a keyword/value connection string for the node.
func (n *Node) DSN() string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=5", n.ip(), n.Port)
}

// Addr returns the node's "IP:port".
func (n *Node) Addr() string { return net.JoinHostPort(n.ip(), fmt.Sprint(n.Port)) }

func (n *Node) ip() string {
	if n.IP == "" {
		return "127.0.0.1"
	}
	return n.IP
}

// listen is the listen_addresses line: loopback, or every address of the
// node's own namespace in a multi-host lab (the config is shared by all
// nodes through pg_basebackup).
func listen(opts Options) string {
	if len(opts.Hosts) > 0 {
		return "listen_addresses = '*'"
	}
	return "listen_addresses = '127.0.0.1'"
}

// Connect opens a pgx connection to the node.
func (n *Node) Connect(ctx context.Context) (*pgx.Conn, error) {
	return pgx.Connect(ctx, n.DSN())
}

// PID returns the postmaster's pid, or 0 when it is not running.
func (n *Node) PID() int {
	if p := n.running(); p != nil {
		return p.pid
	}
	return 0
}

// Running reports whether the postmaster is running (possibly stopped).
func (n *Node) Running() bool { return n.running() != nil }

// LogTail returns the last lines lines of the node's log.
func (n *Node) LogTail(lines int) string { return fileTail(n.LogPath, lines) }

// running returns the current process if it has not exited.
func (n *Node) running() *process {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if p == nil {
		return nil
	}
	select {
	case <-p.done:
		return nil
	default:
		return p
	}
}

// Kill sends SIGKILL to the postmaster and all its backends (a crash) and
// waits until they are gone.
func (n *Node) Kill() error {
	p := n.running()
	if p == nil {
		return fmt.Errorf("pglab: %s is not running", n.Name)
	}
	pids := killTree(p.pid)
	<-p.done
	// Backends must be gone too, or a restart finds their shared memory.
	return waitGone(pids, 10*time.Second)
}

// Stop sends SIGSTOP to the postmaster and all its children (backends,
// walsender/walreceiver, checkpointer…): the server hangs, with its port
// still accepting TCP connections into the listen backlog.
func (n *Node) Stop() error {
	p := n.running()
	if p == nil {
		return fmt.Errorf("pglab: %s is not running", n.Name)
	}
	return stopTree(p.pid)
}

// Cont resumes a node hung by Stop.
func (n *Node) Cont() error {
	p := n.running()
	if p == nil {
		return fmt.Errorf("pglab: %s is not running", n.Name)
	}
	return contTree(p.pid)
}

// Start starts the node again (after Kill) on the same data directory and
// port, and waits until it accepts connections.
func (n *Node) Start(ctx context.Context) error {
	if n.running() != nil {
		return fmt.Errorf("pglab: %s is already running", n.Name)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}
	p, err := n.spawn()
	if err != nil {
		return err
	}
	return n.waitReady(ctx, p)
}

// startFirst starts a freshly created node; with pickPort it chooses a
// free port and retries with another one if somebody else took it.
func (n *Node) startFirst(ctx context.Context, pickPort bool) error {
	const attempts = 3
	for i := 0; ; i++ {
		if pickPort {
			port, err := FreePort()
			if err != nil {
				return err
			}
			n.Port = port
		}
		p, err := n.spawn()
		if err != nil {
			return err
		}
		err = n.waitReady(ctx, p)
		if err == nil {
			return nil
		}
		portTaken := strings.Contains(fileTailFrom(n.LogPath, p.logOff, 50), "Address already in use")
		if !pickPort || !portTaken || i+1 == attempts {
			return err
		}
	}
}

// spawn starts the postmaster as a child in its own process group.
func (n *Node) spawn() (*process, error) {
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child keeps its own descriptor
	st, err := logf.Stat()
	if err != nil {
		return nil, err
	}
	cmd := n.acct.command(context.Background(), "postgres",
		"-D", n.DataDir, "-p", fmt.Sprint(n.Port), "-c", "cluster_name="+n.Name)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := spawn.StartInNetNS(n.NetNS, cmd); err != nil {
		return nil, fmt.Errorf("pglab: start %s: %w", n.Name, err)
	}
	p := &process{pid: cmd.Process.Pid, done: make(chan struct{}), logOff: st.Size()}
	go func() {
		_ = cmd.Wait() // the exit status is in the log; we only need the reaping
		close(p.done)
	}()
	n.mu.Lock()
	n.proc = p
	n.mu.Unlock()
	return p, nil
}

// waitReady polls until the node accepts a connection and answers a
// query, the postmaster exits, or ctx ends. A failure kills the process
// and reports the log tail.
func (n *Node) waitReady(ctx context.Context, p *process) error {
	var last error
	err := poll(ctx, 50*time.Millisecond, func() (bool, error) {
		select {
		case <-p.done:
			return false, fmt.Errorf("postgres exited")
		default:
		}
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		conn, err := pgx.Connect(actx, n.DSN())
		if err != nil {
			last = err
			return false, nil
		}
		defer conn.Close(actx)
		if _, err := conn.Exec(actx, "SELECT 1"); err != nil {
			last = err
			return false, nil
		}
		return true, nil
	})
	if err == nil {
		return nil
	}
	if last != nil {
		err = fmt.Errorf("%w (last attempt: %v)", err, last)
	}
	pids := killTree(p.pid)
	<-p.done
	_ = waitGone(pids, 10*time.Second)
	return fmt.Errorf("pglab: %s on port %d did not become ready: %w\n--- %s (tail) ---\n%s",
		n.Name, n.Port, err, n.LogPath, fileTailFrom(n.LogPath, p.logOff, 30))
}

// WaitStreaming waits until n (a primary) lists every given standby as
// 'streaming' in pg_stat_replication with a reported flush position:
// only then does a synchronous standby count as one.
func (n *Node) WaitStreaming(ctx context.Context, standbys ...*Node) error {
	if len(standbys) == 0 {
		return nil
	}
	var missing []string
	err := poll(ctx, 50*time.Millisecond, func() (bool, error) {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		conn, err := pgx.Connect(actx, n.DSN())
		if err != nil {
			return false, nil
		}
		defer conn.Close(actx)
		rows, err := conn.Query(actx, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' AND flush_lsn IS NOT NULL")
		if err != nil {
			return false, nil
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return false, nil
		}
		missing = missing[:0]
		for _, s := range standbys {
			found := false
			for _, name := range names {
				found = found || name == s.Name
			}
			if !found {
				missing = append(missing, s.Name)
			}
		}
		return len(missing) == 0, nil
	})
	if err != nil {
		var logs strings.Builder
		for _, s := range standbys {
			fmt.Fprintf(&logs, "\n--- %s (tail) ---\n%s", s.LogPath, s.LogTail(15))
		}
		return fmt.Errorf("pglab: standbys %v not streaming from %s: %w%s", missing, n.Name, err, logs.String())
	}
	return nil
}

// shutdown stops the node for Close: SIGCONT (it may be hung by Stop),
// SIGINT (PostgreSQL's fast shutdown; SIGTERM would wait for clients),
// then SIGKILL to the postmaster and its children after grace.
func (n *Node) shutdown(grace time.Duration) error {
	p := n.running()
	if p == nil {
		return nil
	}
	_ = contTree(p.pid)
	if err := signalPID(p.pid, syscall.SIGINT); err != nil {
		return err
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		// A postmaster exits only after all its children did.
		return nil
	case <-timer.C:
	}
	pids := killTree(p.pid)
	<-p.done
	return waitGone(pids, 10*time.Second)
}

// poll calls cond every interval until it returns true or an error, or
// ctx ends.
func poll(ctx context.Context, interval time.Duration, cond func() (bool, error)) error {
	t := time.NewTicker(interval)
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
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Rejoin turns n, a former primary (running, stopped or crashed), into a
// streaming standby of primary: it stops n, rewinds its data directory
// with pg_rewind against primary, points it at primary through its slot
// (created on primary if missing), and starts it. This is what an
// operator's rejoin hook or the node agent does on a real host.
func (n *Node) Rejoin(ctx context.Context, primary *Node) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}
	if p := n.running(); p != nil {
		_ = contTree(p.pid)
		if err := n.shutdown(shutdownGrace); err != nil {
			return fmt.Errorf("pglab: stop %s for rejoin: %w", n.Name, err)
		}
	}
	slot := "slot_" + n.Name
	conn, err := primary.Connect(ctx)
	if err != nil {
		return fmt.Errorf("pglab: rejoin %s: connect to %s: %w", n.Name, primary.Name, err)
	}
	_, err = conn.Exec(ctx, `SELECT pg_create_physical_replication_slot($1, true)
WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, slot)
	if err == nil {
		// Right after a promotion the control file still names the old
		// timeline until a checkpoint, and pg_rewind would then see
		// "same timeline, no rewind needed".
		_, err = conn.Exec(ctx, "CHECKPOINT")
	}
	conn.Close(ctx)
	if err != nil {
		return fmt.Errorf("pglab: rejoin %s: slot on %s: %w", n.Name, primary.Name, err)
	}
	src := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", primary.ip(), primary.Port)
	if err := n.acct.run(ctx, n.NetNS, "pg_rewind", "--target-pgdata", n.DataDir, "--source-server", src, "--no-sync"); err != nil {
		return fmt.Errorf("pglab: rejoin %s: %w", n.Name, err)
	}
	auto := fmt.Sprintf("\nprimary_conninfo = 'host=%s port=%d user=postgres application_name=%s'\nprimary_slot_name = '%s'\n",
		primary.ip(), primary.Port, n.Name, slot)
	f, err := os.OpenFile(filepath.Join(n.DataDir, "postgresql.auto.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(auto); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := n.acct.writeFile(filepath.Join(n.DataDir, "standby.signal"), nil); err != nil {
		return err
	}
	return n.Start(ctx)
}

// Rebuild turns n into a fresh streaming standby of primary when a rewind
// cannot (pg_rewind failed half-way, or the timelines have no common
// ancestor): it stops n, removes its data directory, clones primary with
// pg_basebackup through n's slot (created on primary if missing), and
// starts it. This is the "needs rebuild" path of an operator's runbook.
func (n *Node) Rebuild(ctx context.Context, primary *Node) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}
	if n.running() != nil {
		if err := n.shutdown(shutdownGrace); err != nil {
			return fmt.Errorf("pglab: stop %s for rebuild: %w", n.Name, err)
		}
	}
	slot := "slot_" + n.Name
	conn, err := primary.Connect(ctx)
	if err != nil {
		return fmt.Errorf("pglab: rebuild %s: connect to %s: %w", n.Name, primary.Name, err)
	}
	_, err = conn.Exec(ctx, `SELECT pg_create_physical_replication_slot($1, true)
WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, slot)
	conn.Close(ctx)
	if err != nil {
		return fmt.Errorf("pglab: rebuild %s: slot on %s: %w", n.Name, primary.Name, err)
	}
	if err := os.RemoveAll(n.DataDir); err != nil {
		return fmt.Errorf("pglab: rebuild %s: %w", n.Name, err)
	}
	err = n.acct.run(ctx, n.NetNS, "pg_basebackup",
		"-h", primary.ip(), "-p", fmt.Sprint(primary.Port), "-U", "postgres",
		"-D", n.DataDir, "-R", "-X", "stream", "-S", slot, "-c", "fast", "--no-sync")
	if err != nil {
		return fmt.Errorf("pglab: rebuild %s: %w", n.Name, err)
	}
	return n.Start(ctx)
}
