package hook

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vigilha/vigil/failover"
)

var testAction = failover.Action{
	Group: "pg-main",
	Epoch: 42,
	Kind:  "failover",
	Old:   failover.Member{Name: "db1", Address: "10.0.0.1:5432"},
	New:   failover.Member{Name: "db2", Address: "[2001:db8::2]:6432"},
}

// script writes body into an executable /bin/sh script in dir and returns
// argv running it via /bin/sh.
func script(t *testing.T, dir, body string) []string {
	t.Helper()
	f, err := os.CreateTemp(dir, "hook-*.sh")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("#!/bin/sh\n" + body + "\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return []string{"/bin/sh", f.Name()}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processGone: kill(pid, 0) says ESRCH. A zombie (state Z, killed but not
// yet reaped by whatever PID 1 the test runs under) counts as gone too.
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return os.IsNotExist(err)
	}
	// pid (comm) S ...: the state follows the last ')'.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] == 'Z'
	}
	return false
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	eventually(t, 5*time.Second, "pid file "+path, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	})
	return pid
}

func countFile(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return len(strings.Fields(string(b)))
}

func TestRunEnvironment(t *testing.T) {
	t.Setenv("VIGIL_OUTCOME", "stale")    // reserved: must not leak into the hook
	t.Setenv("VIGIL_ADDR", "127.0.0.1:1") // not ours: passed through
	t.Setenv("VIGIL_TEST_FOO", "inherited")
	dir := t.TempDir()
	envFile := filepath.Join(dir, "env")
	argv := script(t, dir, `env > "$1"`)
	argv = append(argv, envFile)

	err := New(nil).Run(t.Context(), Command{Argv: argv}, "pre_failover", testAction,
		map[string]string{"VIGIL_TEST_FOO": "a=b c"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = append(env[k], v)
		}
	}
	want := map[string]string{
		"VIGIL_GROUP":       "pg-main",
		"VIGIL_EPOCH":       "42",
		"VIGIL_KIND":        "failover",
		"VIGIL_STEP":        "pre_failover",
		"VIGIL_OLD_MEMBER":  "db1",
		"VIGIL_OLD_ADDRESS": "10.0.0.1:5432",
		"VIGIL_OLD_HOST":    "10.0.0.1",
		"VIGIL_OLD_PORT":    "5432",
		"VIGIL_NEW_MEMBER":  "db2",
		"VIGIL_NEW_ADDRESS": "[2001:db8::2]:6432",
		"VIGIL_NEW_HOST":    "2001:db8::2",
		"VIGIL_NEW_PORT":    "6432",
		"VIGIL_TEST_FOO":    "a=b c",
		"VIGIL_ADDR":        "127.0.0.1:1",
	}
	for k, v := range want {
		if got := env[k]; len(got) != 1 || got[0] != v {
			t.Errorf("%s = %q, want exactly [%q]", k, got, v)
		}
	}
	if got, ok := env["VIGIL_OUTCOME"]; ok {
		t.Errorf("inherited reserved VIGIL_OUTCOME leaked: %q", got)
	}
	if _, ok := env["PATH"]; !ok {
		t.Error("inherited PATH missing")
	}
}

func TestSplitAddr(t *testing.T) {
	for _, c := range []struct{ in, host, port string }{
		{"", "", ""},
		{"db:5432", "db", "5432"},
		{"[::1]:5432", "::1", "5432"},
		{"/var/run/postgresql", "/var/run/postgresql", ""},
	} {
		if h, p := splitAddr(c.in); h != c.host || p != c.port {
			t.Errorf("splitAddr(%q) = %q, %q; want %q, %q", c.in, h, p, c.host, c.port)
		}
	}
}

func TestBadExtraKeyNotRun(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	argv := append(script(t, dir, `touch "$1"`), marker)
	r := New(nil)
	for _, extra := range []map[string]string{
		{"vigil_lower": "x"},
		{"PATH": "/tmp"},
		{"VIGIL_": "x"},
		{"VIGIL_A-B": "x"},
		{"VIGIL_GROUP": "override"},
		{"VIGIL_OK": "nul\x00byte"},
	} {
		err := r.Run(t.Context(), Command{Argv: argv}, "fence", testAction, extra)
		if !errors.Is(err, ErrInvalidEnv) {
			t.Errorf("extra %q: err = %v, want ErrInvalidEnv", extra, err)
		}
		if _, serr := os.Stat(marker); serr == nil {
			t.Fatalf("extra %q: hook ran", extra)
		}
	}
	// A valid key does run.
	if err := r.Run(t.Context(), Command{Argv: argv}, "fence", testAction, map[string]string{"VIGIL_OK_1": "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatal("hook did not run with a valid extra key")
	}
}

func TestPreFailover(t *testing.T) {
	dir := t.TempDir()
	veto := PreFailover{R: New(nil), Cmd: Command{Argv: script(t, dir, `echo "checking lag"; echo "replica lag too high" >&2; exit 1`)}}
	err := veto.Check(t.Context(), testAction)
	if !errors.Is(err, ErrVetoed) {
		t.Fatalf("err = %v, want ErrVetoed", err)
	}
	if !strings.Contains(err.Error(), "replica lag too high") || !strings.Contains(err.Error(), "checking lag") {
		t.Errorf("error lacks the hook's output: %v", err)
	}
	var he *Error
	if !errors.As(err, &he) || he.ExitCode != 1 || he.Step != StepPreFailover {
		t.Errorf("err = %#v, want *Error with exit code 1, step pre_failover", he)
	}

	ok := PreFailover{Cmd: Command{Argv: script(t, dir, `exit 0`)}}
	if err := ok.Check(t.Context(), testAction); err != nil {
		t.Fatalf("exit 0: %v", err)
	}

	slow := PreFailover{Cmd: Command{Argv: script(t, dir, `exec sleep 30`), Timeout: 200 * time.Millisecond}}
	err = slow.Check(t.Context(), testAction)
	if !errors.Is(err, ErrVetoed) || !errors.Is(err, ErrTimeout) {
		t.Fatalf("timeout: err = %v, want ErrVetoed and ErrTimeout", err)
	}

	missing := PreFailover{Cmd: Command{Argv: []string{"/nonexistent/vigil-hook"}}}
	if err := missing.Check(t.Context(), testAction); !errors.Is(err, ErrVetoed) {
		t.Fatalf("missing program: err = %v, want ErrVetoed", err)
	}
}

func TestTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	mainPID := filepath.Join(dir, "main.pid")
	childPID := filepath.Join(dir, "child.pid")
	// A background child, then the script becomes sleep itself.
	argv := append(script(t, dir, `
sleep 30 &
echo $! > "$2.tmp" && mv "$2.tmp" "$2"
echo $$ > "$1.tmp" && mv "$1.tmp" "$1"
echo "about to sleep"
exec sleep 30`), mainPID, childPID)

	start := time.Now()
	err := New(nil).Run(t.Context(), Command{Argv: argv, Timeout: 300 * time.Millisecond}, "fence", testAction, nil)
	elapsed := time.Since(start)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	var he *Error
	if !errors.As(err, &he) || !he.TimedOut || he.ExitCode != -1 {
		t.Errorf("err = %#v, want TimedOut, exit code -1", he)
	}
	if !strings.Contains(err.Error(), "timed out") || !strings.Contains(err.Error(), "about to sleep") {
		t.Errorf("error message: %v", err)
	}
	if elapsed > 5*time.Second {
		t.Errorf("Run took %s with a 300ms timeout", elapsed)
	}
	for _, f := range []string{mainPID, childPID} {
		pid := readPID(t, f)
		eventually(t, 5*time.Second, fmt.Sprintf("process %d (%s) to be gone", pid, filepath.Base(f)), func() bool { return processGone(pid) })
	}
}

func TestParentContextCancelKillsHook(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	argv := append(script(t, dir, `echo $$ > "$1.tmp" && mv "$1.tmp" "$1"; exec sleep 30`), pidFile)
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- New(nil).Run(ctx, Command{Argv: argv}, "fence", testAction, nil) }()
	pid := readPID(t, pidFile)
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) || errors.Is(err, ErrTimeout) {
			t.Fatalf("err = %v, want context.Canceled, not ErrTimeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	eventually(t, 5*time.Second, "hook process gone", func() bool { return processGone(pid) })
}

func TestOutputTail(t *testing.T) {
	dir := t.TempDir()
	argv := script(t, dir, `i=0; while [ $i -lt 500 ]; do echo "line $i of noise noise noise"; i=$((i+1)); done; echo THE-END >&2; exit 2`)
	err := New(nil).Run(t.Context(), Command{Argv: argv}, "fence", testAction, nil)
	var he *Error
	if !errors.As(err, &he) || he.ExitCode != 2 {
		t.Fatalf("err = %v, want exit code 2", err)
	}
	if !strings.HasSuffix(he.Output, "THE-END") || !strings.HasPrefix(he.Output, "...") {
		t.Errorf("output tail = %q", he.Output)
	}
	if len(he.Output) > OutputTail+3 {
		t.Errorf("output tail is %d bytes", len(he.Output))
	}
	if strings.Contains(he.Output, "line 0 ") {
		t.Error("output kept the head")
	}
	if !strings.Contains(err.Error(), "exit status 2") {
		t.Errorf("message lacks exit status: %v", err)
	}
}

func TestTailBufferUTF8(t *testing.T) {
	b := &tailBuffer{max: 3}
	b.Write([]byte("ééé")) // 6 bytes; the last 3 start mid-rune
	if got := b.String(); got != "...é" {
		t.Errorf("got %q", got)
	}
	b = &tailBuffer{max: 8}
	b.Write([]byte("ab"))
	b.Write([]byte("cd"))
	if got := b.String(); got != "abcd" {
		t.Errorf("got %q", got)
	}
}

func TestFence(t *testing.T) {
	dir := t.TempDir()
	ok := Fence{R: New(nil), Cmd: Command{Argv: script(t, dir, `exit 0`)}}
	res, err := ok.Fence(t.Context(), testAction)
	if err != nil || !res.Confirmed || res.Detail != "fence hook succeeded" {
		t.Fatalf("exit 0: %+v, %v", res, err)
	}

	bad := Fence{R: New(nil), Cmd: Command{Argv: script(t, dir, `echo "cannot reach ipmi"; exit 3`)}}
	res, err = bad.Fence(t.Context(), testAction)
	if err == nil || res.Confirmed {
		t.Fatalf("exit 3: %+v, %v; want not confirmed and an error", res, err)
	}
	var he *Error
	if !errors.As(err, &he) || he.ExitCode != 3 || !strings.Contains(res.Detail, "cannot reach ipmi") {
		t.Errorf("exit 3: err %v, detail %q", err, res.Detail)
	}

	slow := Fence{Cmd: Command{Argv: script(t, dir, `exec sleep 30`), Timeout: 200 * time.Millisecond}}
	res, err = slow.Fence(t.Context(), testAction)
	if !errors.Is(err, ErrTimeout) || res.Confirmed {
		t.Fatalf("timeout: %+v, %v", res, err)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "hook")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	noexec := filepath.Join(dir, "noexec")
	if err := os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cmd Command
		ok  bool
	}{
		{Command{Argv: []string{"sh", "-c", "true"}}, true},
		{Command{Argv: []string{exe}, Timeout: time.Second}, true},
		{Command{}, false},
		{Command{Argv: []string{""}}, false},
		{Command{Argv: []string{"./hook"}}, false},
		{Command{Argv: []string{"no-such-program-vigil-xyz"}}, false},
		{Command{Argv: []string{filepath.Join(dir, "missing")}}, false},
		{Command{Argv: []string{noexec}}, false},
		{Command{Argv: []string{dir}}, false},
		{Command{Argv: []string{exe}, Timeout: -time.Second}, false},
	} {
		err := c.cmd.Validate()
		if (err == nil) != c.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", c.cmd, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("Validate(%+v) = %v, not ErrInvalidCommand", c.cmd, err)
		}
	}
	if err := New(nil).Run(t.Context(), Command{}, "fence", testAction, nil); !errors.Is(err, ErrInvalidCommand) {
		t.Errorf("Run(empty argv) = %v", err)
	}
}

func testEvent(step string) failover.Event {
	return failover.Event{Action: testAction, Step: step, Outcome: "ok", Detail: "promoted db2", At: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func TestNotifyRetries(t *testing.T) {
	dir := t.TempDir()
	counter := filepath.Join(dir, "count")
	out := filepath.Join(dir, "out")
	argv := append(script(t, dir, `
echo x >> "$1"
n=$(wc -l < "$1")
echo "$VIGIL_STEP|$VIGIL_OUTCOME|$VIGIL_DETAIL|$VIGIL_AT|$VIGIL_EPOCH" > "$2"
[ "$n" -ge 3 ]`), counter, out)
	n := &Notify{R: New(nil), Cmd: Command{Argv: argv}}

	start := time.Now()
	n.Notify(t.Context(), testEvent("promote"))
	eventually(t, 10*time.Second, "3 attempts", func() bool { return countFile(counter) >= 3 })
	elapsed := time.Since(start)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := countFile(counter); got != 3 {
		t.Errorf("attempts = %d, want 3", got)
	}
	if elapsed < 300*time.Millisecond {
		t.Errorf("3 attempts in %s; want backoff of 100ms+200ms", elapsed)
	}
	b, _ := os.ReadFile(out)
	if got, want := strings.TrimSpace(string(b)), "promote|ok|promoted db2|2026-01-02T03:04:05Z|42"; got != want {
		t.Errorf("hook saw %q, want %q", got, want)
	}
	if n.Dropped() != 0 {
		t.Errorf("dropped %d", n.Dropped())
	}
}

func TestNotifyGivesUp(t *testing.T) {
	dir := t.TempDir()
	counter := filepath.Join(dir, "count")
	argv := append(script(t, dir, `echo x >> "$1"; exit 1`), counter)
	n := &Notify{Cmd: Command{Argv: argv, Retries: 1}}
	n.Notify(t.Context(), testEvent("fence"))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := countFile(counter); got != 2 {
		t.Errorf("attempts = %d, want 2 (1 + 1 retry)", got)
	}

	counter2 := filepath.Join(dir, "count2")
	n = &Notify{Cmd: Command{Argv: append(argv[:len(argv)-1:len(argv)-1], counter2), Retries: -1}}
	n.Notify(t.Context(), testEvent("fence"))
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := countFile(counter2); got != 1 {
		t.Errorf("attempts = %d, want 1 (no retries)", got)
	}
}

func TestNotifyDoesNotBlock(t *testing.T) {
	dir := t.TempDir()
	release := filepath.Join(dir, "release")
	done := filepath.Join(dir, "done")
	argv := append(script(t, dir, `while [ ! -e "$1" ]; do sleep 0.02; done; touch "$2"`), release, done)
	n := &Notify{Cmd: Command{Argv: argv, Timeout: 30 * time.Second}}

	// The caller's context ends right after Notify: the delivery goes on.
	ctx, cancel := context.WithCancel(t.Context())
	start := time.Now()
	n.Notify(ctx, testEvent("promote"))
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Errorf("Notify blocked for %s", d)
	}
	cancel()

	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer ccancel()
	if err := n.Close(cctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(done); err != nil {
		t.Fatal("notification did not complete before Close returned")
	}
}

func TestNotifyBoundedConcurrency(t *testing.T) {
	dir := t.TempDir()
	release := filepath.Join(dir, "release")
	started := filepath.Join(dir, "started")
	argv := append(script(t, dir, `echo $$ >> "$2"; while [ ! -e "$1" ]; do sleep 0.02; done`), release, started)
	n := &Notify{Cmd: Command{Argv: argv, Timeout: 30 * time.Second}}

	for range MaxConcurrentNotify {
		n.Notify(t.Context(), testEvent("promote"))
	}
	eventually(t, 10*time.Second, "4 hooks running", func() bool { return countFile(started) == MaxConcurrentNotify })
	for range 3 {
		n.Notify(t.Context(), testEvent("repoint"))
	}
	if got := n.Dropped(); got != 3 {
		t.Errorf("Dropped = %d, want 3", got)
	}

	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := countFile(started); got != MaxConcurrentNotify {
		t.Errorf("%d hooks ran, want %d", got, MaxConcurrentNotify)
	}
	n.Notify(t.Context(), testEvent("after-close"))
	if got := n.Dropped(); got != 4 {
		t.Errorf("Dropped after Close = %d, want 4", got)
	}
}

func TestNotifySlotsFreed(t *testing.T) {
	dir := t.TempDir()
	counter := filepath.Join(dir, "count")
	argv := append(script(t, dir, `echo x >> "$1"`), counter)
	n := &Notify{Cmd: Command{Argv: argv}}
	// Sequential batches never exceed the bound once earlier ones finished.
	for batch := 1; batch <= 3; batch++ {
		for range MaxConcurrentNotify {
			n.Notify(t.Context(), testEvent("promote"))
		}
		eventually(t, 10*time.Second, "batch done", func() bool {
			n.mu.Lock()
			defer n.mu.Unlock()
			return n.running == 0
		})
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := countFile(counter), 3*MaxConcurrentNotify; got != want || n.Dropped() != 0 {
		t.Errorf("ran %d (want %d), dropped %d", got, want, n.Dropped())
	}
}

func TestNotifyCloseDeadlineKillsHooks(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	argv := append(script(t, dir, `echo $$ > "$1.tmp" && mv "$1.tmp" "$1"; exec sleep 30`), pidFile)
	n := &Notify{Cmd: Command{Argv: argv, Timeout: 30 * time.Second}}
	n.Notify(t.Context(), testEvent("promote"))
	pid := readPID(t, pidFile)

	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := n.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %s", d)
	}
	eventually(t, 5*time.Second, "hook killed after Close gave up", func() bool { return processGone(pid) })
	// No retry starts after Close gave up.
	eventually(t, 5*time.Second, "delivery goroutine done", func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.running == 0
	})
	if b, _ := os.ReadFile(pidFile); strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		t.Errorf("hook was retried after Close: pid file now %q", b)
	}
}
