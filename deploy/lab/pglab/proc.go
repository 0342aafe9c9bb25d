package pglab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/vigilha/vigil/deploy/lab/spawn"
	"time"
)

// DefaultBinDir is where Debian's PostgreSQL 15 packages put the server
// binaries. Override it with the VIGIL_PG_BINDIR environment variable.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// OSUser is the account PostgreSQL runs as when the tests run as root
// (postgres refuses to run as root).
const OSUser = "postgres"

// BinDir returns the directory holding initdb, postgres and pg_basebackup:
// $VIGIL_PG_BINDIR if set, else DefaultBinDir.
func BinDir() string {
	if d := os.Getenv("VIGIL_PG_BINDIR"); d != "" {
		return d
	}
	return DefaultBinDir
}

// Available reports why a lab cluster cannot run on this machine, or nil
// if it can. Tests call it to skip with a clear message.
func Available() error {
	for _, b := range []string{"initdb", "postgres", "pg_basebackup"} {
		p := filepath.Join(BinDir(), b)
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("pglab: PostgreSQL binary %s missing (set VIGIL_PG_BINDIR): %w", p, err)
		}
		if st.Mode()&0o111 == 0 {
			return fmt.Errorf("pglab: %s is not executable", p)
		}
	}
	if _, err := runAs(); err != nil {
		return err
	}
	return nil
}

// account is the OS identity the PostgreSQL processes run as.
type account struct {
	uid, gid uint32
	// home replaces $HOME for children when switching users, so that
	// libpq does not look for root's ~/.pgpass.
	home string
	// cred is nil when we already are that identity (not root).
	cred *syscall.Credential
}

// runAs decides which identity PostgreSQL runs under: as root we switch
// to the postgres user; as any other user PostgreSQL runs as ourselves.
func runAs() (account, error) {
	if os.Geteuid() != 0 {
		return account{uid: uint32(os.Geteuid()), gid: uint32(os.Getegid())}, nil
	}
	u, err := user.Lookup(OSUser)
	if err != nil {
		return account{}, fmt.Errorf("pglab: running as root but OS user %q does not exist (postgres refuses to run as root): %w", OSUser, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return account{}, fmt.Errorf("pglab: OS user %q has non-numeric uid/gid %q/%q", OSUser, u.Uid, u.Gid)
	}
	if uid == 0 {
		return account{}, fmt.Errorf("pglab: OS user %q is root; postgres refuses to run as root", OSUser)
	}
	return account{
		uid:  uint32(uid),
		gid:  uint32(gid),
		home: u.HomeDir,
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true},
	}, nil
}

// sysProcAttr runs the child under the PostgreSQL account in its own
// process group (a terminal's Ctrl-C is for the test binary; cancelling
// initdb or pg_basebackup kills the group including their helper
// children) and asks the kernel to SIGKILL it if the test binary dies
// without running its cleanups.
func (a account) sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Setpgid:    true,
		Credential: a.cred,
		Pdeathsig:  syscall.SIGKILL,
	}
}

// chown gives path to the PostgreSQL account (no-op when not switching).
func (a account) chown(path string) error {
	if a.cred == nil {
		return nil
	}
	return os.Chown(path, int(a.uid), int(a.gid))
}

// mkdir creates dir (mode 0700) owned by the PostgreSQL account.
func (a account) mkdir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return a.chown(dir)
}

// writeFile writes a file owned by the PostgreSQL account.
func (a account) writeFile(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	return a.chown(path)
}

// ensureTraversable makes sure the PostgreSQL account can reach dir.
// t.TempDir creates a 0700 root-owned parent; for ancestors strictly
// inside os.TempDir() we add only the search bit for others (no listing).
// Anything outside the temp dir is left alone and reported.
func (a account) ensureTraversable(dir string) error {
	if a.cred == nil {
		return nil
	}
	tmp, err := filepath.Abs(os.TempDir())
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := filepath.Dir(abs); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !a.canSearch(st) {
			inTmp := strings.HasPrefix(p, tmp+string(filepath.Separator))
			if !inTmp {
				return fmt.Errorf("pglab: OS user %s cannot traverse %s; use a base dir under %s", OSUser, p, tmp)
			}
			if err := os.Chmod(p, st.Mode().Perm()|0o001); err != nil {
				return err
			}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func (a account) canSearch(st fs.FileInfo) bool {
	perm := st.Mode().Perm()
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		if sys.Uid == a.uid {
			return perm&0o100 != 0
		}
		if sys.Gid == a.gid {
			return perm&0o010 != 0
		}
	}
	return perm&0o001 != 0
}

// Command returns a command running a PostgreSQL binary (a name inside
// BinDir, or a path) as the PostgreSQL account, in its own process group.
// Cancelling ctx kills the whole group.
func Command(ctx context.Context, bin string, args ...string) (*exec.Cmd, error) {
	acct, err := runAs()
	if err != nil {
		return nil, err
	}
	return acct.command(ctx, bin, args...), nil
}

func (a account) command(ctx context.Context, bin string, args ...string) *exec.Cmd {
	if !strings.ContainsRune(bin, filepath.Separator) {
		bin = filepath.Join(BinDir(), bin)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.SysProcAttr = a.sysProcAttr()
	// The default Cancel kills only the direct child; kill the group.
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Dir = "/"
	cmd.Env = childEnv(a.home)
	return cmd
}

// childEnv is our environment without PG* variables (a developer's
// PGHOST or PGPORT must not redirect pg_basebackup) and with a C locale.
func childEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") ||
			(home != "" && strings.HasPrefix(kv, "HOME=")) {
			continue
		}
		env = append(env, kv)
	}
	if home != "" {
		env = append(env, "HOME="+home)
	}
	return append(env, "LC_ALL=C", "LANG=C")
}

// run executes bin as the PostgreSQL account, in network namespace ns
// ("" = ours), and returns its combined output in the error when it fails.
// It starts the process through spawn, like every lab process (Pdeathsig
// must not fire when some unrelated thread exits).
func (a account) run(ctx context.Context, ns, bin string, args ...string) error {
	cmd := a.command(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := spawn.StartInNetNS(ns, cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return fmt.Errorf("pglab: %s %s: %w\n%s", filepath.Base(bin), strings.Join(args, " "), err, tail(out.String(), 30))
	}
	return nil
}

// killGroup signals the process group led by pid (started with Setpgid).
func killGroup(pid int, sig syscall.Signal) error {
	if pid <= 0 {
		return errors.New("pglab: no process")
	}
	err := syscall.Kill(-pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// signalPID signals one process; a process that is already gone is fine.
func signalPID(pid int, sig syscall.Signal) error {
	err := syscall.Kill(pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// procStat reads a process's state letter and parent pid from
// /proc/<pid>/stat.
func procStat(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// Fields after "(comm)": state ppid pgrp ...
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], ppid, true
}

// alive reports whether pid is a live process. A zombie holds no
// resources (shared memory is detached at exit) and counts as gone: in a
// container, PID 1 may never reap orphaned backends.
func alive(pid int) bool {
	state, _, ok := procStat(pid)
	return ok && state != 'Z' && state != 'X'
}

// children returns the live processes whose parent is pid. PostgreSQL
// backends and auxiliary processes are all direct children of the
// postmaster, and each calls setsid(), so a process-group signal would
// miss them: we find them through /proc instead.
func children(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if state, ppid, ok := procStat(c); ok && ppid == pid && state != 'Z' && state != 'X' {
			out = append(out, c)
		}
	}
	return out
}

// stopTree freezes a postmaster and all its children: the postmaster
// first, so that it forks nothing new meanwhile. Signals are delivered
// asynchronously, so it waits until every process is really stopped.
func stopTree(pid int) error {
	if err := signalPID(pid, syscall.SIGSTOP); err != nil {
		return err
	}
	pids := append(children(pid), pid)
	for _, c := range pids[:len(pids)-1] {
		_ = signalPID(c, syscall.SIGSTOP)
	}
	return waitState(pids, true)
}

// contTree resumes a postmaster and all its children, and waits until
// none of them is stopped any more.
func contTree(pid int) error {
	pids := append(children(pid), pid)
	for _, c := range pids {
		_ = signalPID(c, syscall.SIGCONT)
	}
	return waitState(pids, false)
}

// waitState waits until each of pids is stopped (or not), or gone.
func waitState(pids []int, stopped bool) error {
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range pids {
		for {
			state, _, ok := procStat(p)
			if !ok || state == 'Z' || state == 'X' || (state == 'T') == stopped {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("pglab: process %d still in state %q", p, state)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

// killTree SIGKILLs a postmaster and all its children and returns their
// pids, to wait for. The postmaster is frozen first so the set is final.
func killTree(pid int) []int {
	_ = signalPID(pid, syscall.SIGSTOP)
	pids := append(children(pid), pid)
	for _, p := range pids {
		_ = signalPID(p, syscall.SIGKILL)
	}
	return pids
}

// waitGone waits until none of pids is alive.
func waitGone(pids []int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, p := range pids {
		for alive(p) {
			if time.Now().After(deadline) {
				return fmt.Errorf("pglab: process %d still alive after %v", p, timeout)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process may take it before we bind it; Start retries then.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// fileTail returns the last n lines of the file at path (best effort).
func fileTail(path string, n int) string { return fileTailFrom(path, 0, n) }

// fileTailFrom returns the last n lines of the file at path, looking only
// at bytes from offset from on (best effort).
func fileTailFrom(path string, from int64, n int) string {
	const maxRead = 64 << 10
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-maxRead, from, 0)
	buf := make([]byte, st.Size()-off)
	k, _ := f.ReadAt(buf, off)
	return tail(string(buf[:k]), n)
}
