package clustertest

import (
	"bytes"
	"context"
	"fmt"
	"github.com/vigilha/vigil/deploy/lab/spawn"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigilha/vigil/cluster/config"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// BuildBinaries builds vigil and vigilctl from this module into dir and
// returns their paths. Tests that run real processes call it once.
func BuildBinaries(t testing.TB, dir string) (vigil, vigilctl string) {
	t.Helper()
	root := moduleRoot(t)
	vigil = filepath.Join(dir, "vigil")
	vigilctl = filepath.Join(dir, "vigilctl")
	for bin, pkg := range map[string]string{vigil: "./cmd/vigil", vigilctl: "./cmd/vigilctl"} {
		cmd := exec.Command("go", "build", "-tags", "hashicorpmetrics", "-o", bin, pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	return vigil, vigilctl
}

func moduleRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate module root")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// ProcCluster is a set of real `vigil observer` processes.
type ProcCluster struct {
	t       testing.TB
	Bin     string
	Dir     string
	Set     *ConfigSet
	Configs []*config.Config
	Paths   []string
	procs   []*proc
}

type proc struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error
}

// StartProcs writes one config file per observer into dir and starts every
// observer as a child process; all are killed at test cleanup.
func StartProcs(t testing.TB, bin, dir string, opts ConfigOptions) *ProcCluster {
	t.Helper()
	if opts.DataRoot == "" {
		opts.DataRoot = filepath.Join(dir, "data")
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	set := GenerateConfigs(t, opts)
	pc := &ProcCluster{t: t, Bin: bin, Dir: dir, Set: set, procs: make([]*proc, len(set.IDs))}
	for i, id := range set.IDs {
		path := filepath.Join(dir, id+".yaml")
		if err := os.WriteFile(path, set.YAML[i], 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		pc.Paths = append(pc.Paths, path)
		pc.Configs = append(pc.Configs, cfg)
	}
	t.Cleanup(pc.KillAll)
	for i := range set.IDs {
		pc.Start(i)
	}
	return pc
}

// Start starts observer i (again).
func (pc *ProcCluster) Start(i int) {
	pc.t.Helper()
	if p := pc.procs[i]; p != nil && !p.exited() {
		pc.t.Fatalf("observer %s already running", pc.Set.IDs[i])
	}
	logf, err := os.OpenFile(filepath.Join(pc.Dir, pc.Set.IDs[i]+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		pc.t.Fatal(err)
	}
	cmd := exec.Command(pc.Bin, "observer", "--config", pc.Paths[i])
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group, and SIGKILL if the test process dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// From spawn's dedicated thread: Pdeathsig is per thread.
	if err := spawn.Start(cmd); err != nil {
		_ = logf.Close()
		pc.t.Fatalf("start observer %s: %v", pc.Set.IDs[i], err)
	}
	p := &proc{cmd: cmd, log: logf, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); _ = logf.Close(); close(p.done) }()
	pc.procs[i] = p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL to observer i and waits for it to die.
func (pc *ProcCluster) Kill(i int) {
	p := pc.procs[i]
	if p == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Terminate sends SIGTERM to observer i and returns its exit error, failing
// the test if it does not exit within timeout.
func (pc *ProcCluster) Terminate(i int, timeout time.Duration) error {
	pc.t.Helper()
	p := pc.procs[i]
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		pc.Kill(i)
		pc.t.Fatalf("observer %s did not exit within %s of SIGTERM", pc.Set.IDs[i], timeout)
		return nil
	}
}

// KillAll kills every observer still running.
func (pc *ProcCluster) KillAll() {
	var wg sync.WaitGroup
	for i := range pc.procs {
		wg.Add(1)
		go func() { defer wg.Done(); pc.Kill(i) }()
	}
	wg.Wait()
}

// Log returns observer i's output so far.
func (pc *ProcCluster) Log(i int) string {
	b, _ := os.ReadFile(filepath.Join(pc.Dir, pc.Set.IDs[i]+".log"))
	return string(b)
}

// GRPCAddr is observer i's admin API address.
func (pc *ProcCluster) GRPCAddr(i int) string { return pc.Configs[i].GRPC.Listen }

// HTTPAddr is observer i's metrics address.
func (pc *ProcCluster) HTTPAddr(i int) string { return pc.Configs[i].HTTP.Listen }

// LocalStatus asks observer i for its own view (no fan-out), with a short
// deadline; it returns an error while the observer is down.
func (pc *ProcCluster) LocalStatus(ctx context.Context, i int) (*vigilv1.ObserverStatus, error) {
	cc, err := grpc.NewClient(pc.GRPCAddr(i), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	r, err := vigilv1.NewAdminClient(cc).Status(ctx, &vigilv1.StatusRequest{LocalOnly: true})
	if err != nil {
		return nil, err
	}
	for _, o := range r.GetObservers() {
		if o.GetId() == pc.Set.IDs[i] {
			return o, nil
		}
	}
	return nil, fmt.Errorf("observer %d did not report itself", i)
}

// AgreedLeader returns the leader id all the given observers report, or an
// error saying how they disagree.
func (pc *ProcCluster) AgreedLeader(ctx context.Context, among []int) (string, error) {
	var leader string
	var views bytes.Buffer
	for _, i := range among {
		st, err := pc.LocalStatus(ctx, i)
		if err != nil {
			return "", fmt.Errorf("%s: %w", pc.Set.IDs[i], err)
		}
		fmt.Fprintf(&views, "%s:%s(leader %q) ", st.GetId(), st.GetRaftRole(), st.GetLeaderId())
		if st.GetLeaderId() == "" || (leader != "" && st.GetLeaderId() != leader) {
			return "", fmt.Errorf("no agreement: %s", views.String())
		}
		leader = st.GetLeaderId()
	}
	return leader, nil
}

// Index returns the position of observer id.
func (pc *ProcCluster) Index(id string) int {
	for i, x := range pc.Set.IDs {
		if x == id {
			return i
		}
	}
	return -1
}

// PID is observer i's process id (0 when not running).
func (pc *ProcCluster) PID(i int) int {
	p := pc.procs[i]
	if p == nil || p.exited() {
		return 0
	}
	return p.cmd.Process.Pid
}
