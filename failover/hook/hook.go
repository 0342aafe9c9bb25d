// Package hook runs operator-supplied programs ("exec hooks") at failover
// steps: a pre-failover check that can veto a failover, a fence hook
// (failover.Fencer) and a notification hook (failover.Notifier).
//
// A hook is run directly (no shell) with the environment of the vigil
// process plus VIGIL_* variables describing the failover, bounded by a
// timeout. The hook runs in its own process group, and on timeout or
// cancellation the whole group is killed, so children a hook started do
// not outlive it.
//
// Variables set for every hook:
//
//	VIGIL_GROUP        group name
//	VIGIL_EPOCH        epoch (fencing token) of the failover, decimal
//	VIGIL_KIND         "failover", "switchover" or "forced"
//	VIGIL_STEP         "pre_failover", "fence", or the notified event's step
//	VIGIL_OLD_MEMBER   name of the old primary
//	VIGIL_OLD_ADDRESS  its host:port
//	VIGIL_OLD_HOST     its host (without brackets for IPv6)
//	VIGIL_OLD_PORT     its port
//	VIGIL_NEW_MEMBER   name of the new primary
//	VIGIL_NEW_ADDRESS, VIGIL_NEW_HOST, VIGIL_NEW_PORT
//
// Notification hooks also get VIGIL_OUTCOME, VIGIL_DETAIL and VIGIL_AT
// (RFC 3339 time of the event). An address that is not host:port is passed
// whole as the host, with an empty port.
//
// Inherited variables with any of these names are removed, so a hook never
// sees a stale value; other inherited VIGIL_* variables (VIGIL_ADDR, for
// vigilctl) are passed through.
package hook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/vigilha/vigil/failover"
)

// Defaults for a Command's zero fields.
const (
	DefaultTimeout = 10 * time.Second
	DefaultRetries = 3
)

// OutputTail is how many bytes of a hook's combined stdout and stderr are
// kept for error messages (the last ones).
const OutputTail = 2048

// waitDelay bounds how long Run waits for a hook's output pipe after the
// hook itself exited (or was killed): a background child that escaped the
// process group, or that a successful hook left running, may hold it open.
const waitDelay = time.Second

// Step names used by the adapters.
const (
	StepPreFailover = "pre_failover"
	StepFence       = "fence"
)

var (
	// ErrVetoed is wrapped by PreFailover.Check when the hook did not
	// succeed: the failover must not proceed.
	ErrVetoed = errors.New("hook: pre-failover hook vetoed the failover")
	// ErrTimeout is wrapped by a Run error when the hook ran out of its
	// Command.Timeout and was killed.
	ErrTimeout = errors.New("hook: timed out")
	// ErrInvalidCommand is wrapped by Command.Validate errors and by Run
	// errors for a command that cannot be run.
	ErrInvalidCommand = errors.New("hook: invalid command")
	// ErrInvalidEnv is wrapped by Run errors for a bad extra variable
	// (name not matching ^VIGIL_[A-Z0-9_]+$, a name Run sets itself, or a
	// value containing a NUL byte). Nothing is run.
	ErrInvalidEnv = errors.New("hook: invalid environment variable")
)

// Command is one hook program.
type Command struct {
	// Argv is the program and its arguments, run directly (no shell). The
	// program is an absolute path or a name looked up in PATH.
	Argv []string
	// Timeout bounds one run; 0 means DefaultTimeout.
	Timeout time.Duration
	// Retries is for notification hooks only: extra attempts after a
	// failed one (backoff 100ms, doubling). 0 means DefaultRetries; a
	// negative value means no retries.
	Retries int
}

// Validate checks that c can be run: Argv is non-empty, the program is an
// absolute path to an executable file or a name found in PATH (a relative
// path such as "./hook.sh" is refused: vigil's working directory is not a
// stable base), and Timeout is not negative.
func (c Command) Validate() error {
	if len(c.Argv) == 0 || c.Argv[0] == "" {
		return fmt.Errorf("%w: empty argv", ErrInvalidCommand)
	}
	prog := c.Argv[0]
	if strings.ContainsRune(prog, os.PathSeparator) && !filepath.IsAbs(prog) {
		return fmt.Errorf("%w: program %q is a relative path; use an absolute path or a name in PATH", ErrInvalidCommand, prog)
	}
	if _, err := exec.LookPath(prog); err != nil {
		return fmt.Errorf("%w: program %q: %v", ErrInvalidCommand, prog, err)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("%w: negative timeout %s", ErrInvalidCommand, c.Timeout)
	}
	return nil
}

func (c Command) timeout() time.Duration {
	if c.Timeout == 0 {
		return DefaultTimeout
	}
	return c.Timeout
}

func (c Command) retries() int {
	switch {
	case c.Retries == 0:
		return DefaultRetries
	case c.Retries < 0:
		return 0
	}
	return c.Retries
}

// Error is the error Run returns for a hook that ran (or was meant to run)
// and did not succeed.
type Error struct {
	Step    string
	Program string
	// ExitCode is the hook's exit status, or -1 if it did not exit on its
	// own (killed, not started).
	ExitCode int
	// TimedOut: the hook ran out of Timeout and its process group was
	// killed.
	TimedOut bool
	Timeout  time.Duration
	// Output is the tail (up to OutputTail bytes) of the hook's combined
	// stdout and stderr.
	Output string
	// Err is ErrTimeout, the context's error (cancelled), an
	// *exec.ExitError, or the error that prevented starting the hook.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "hook %q (%s): ", e.Step, e.Program)
	var ee *exec.ExitError
	switch {
	case e.TimedOut:
		fmt.Fprintf(&b, "timed out after %s, process group killed", e.Timeout)
	case errors.Is(e.Err, context.Canceled) || errors.Is(e.Err, context.DeadlineExceeded):
		fmt.Fprintf(&b, "cancelled (%v), process group killed", e.Err)
	case errors.As(e.Err, &ee):
		b.WriteString(ee.Error()) // "exit status 3" / "signal: killed"
	default:
		fmt.Fprintf(&b, "%v", e.Err)
	}
	if e.Output != "" {
		fmt.Fprintf(&b, "; output: %q", e.Output)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Runner runs hooks. It is safe for concurrent use.
type Runner struct {
	logger *slog.Logger
}

// New returns a Runner logging to logger (nil discards logs).
func New(logger *slog.Logger) *Runner {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Runner{logger: logger}
}

var defaultRunner = New(nil)

func runnerOr(r *Runner) *Runner {
	if r == nil {
		return defaultRunner
	}
	return r
}

// baseVars are the variables Run sets itself; extra may not name them.
var baseVars = map[string]bool{
	"VIGIL_GROUP": true, "VIGIL_EPOCH": true, "VIGIL_KIND": true, "VIGIL_STEP": true,
	"VIGIL_OLD_MEMBER": true, "VIGIL_OLD_ADDRESS": true, "VIGIL_OLD_HOST": true, "VIGIL_OLD_PORT": true,
	"VIGIL_NEW_MEMBER": true, "VIGIL_NEW_ADDRESS": true, "VIGIL_NEW_HOST": true, "VIGIL_NEW_PORT": true,
}

// reservedVars are never inherited from vigil's own environment.
var reservedVars = func() map[string]bool {
	m := map[string]bool{"VIGIL_OUTCOME": true, "VIGIL_DETAIL": true, "VIGIL_AT": true}
	for k := range baseVars {
		m[k] = true
	}
	return m
}()

var extraKeyRE = regexp.MustCompile(`^VIGIL_[A-Z0-9_]+$`)

// Run runs cmd with the environment of the current process plus the VIGIL_*
// variables for step and a, plus extra (names must match
// ^VIGIL_[A-Z0-9_]+$ and not be one Run sets itself; otherwise nothing is
// run). The run is bounded by cmd.Timeout and ctx; when either ends first,
// the hook's whole process group is killed. A nil error means the hook
// exited with status 0; otherwise the error is an *Error (wrapping
// ErrTimeout on timeout) carrying the exit status and the last OutputTail
// bytes of combined output, or wraps ErrInvalidCommand/ErrInvalidEnv.
func (r *Runner) Run(ctx context.Context, cmd Command, step string, a failover.Action, extra map[string]string) error {
	r = runnerOr(r)
	if len(cmd.Argv) == 0 || cmd.Argv[0] == "" {
		return fmt.Errorf("hook %q: %w: empty argv", step, ErrInvalidCommand)
	}
	if cmd.Timeout < 0 {
		return fmt.Errorf("hook %q: %w: negative timeout %s", step, ErrInvalidCommand, cmd.Timeout)
	}
	env, err := buildEnv(os.Environ(), step, a, extra)
	if err != nil {
		return fmt.Errorf("hook %q: %w", step, err)
	}

	timeout := cmd.timeout()
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	c := exec.CommandContext(runCtx, cmd.Argv[0], cmd.Argv[1:]...)
	c.Env = env
	out := &tailBuffer{max: OutputTail}
	c.Stdout = out
	c.Stderr = out
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error { return killGroup(c.Process) }
	c.WaitDelay = waitDelay

	log := r.logger.With("step", step, "group", a.Group, "epoch", a.Epoch, "program", cmd.Argv[0])
	start := time.Now()
	log.Debug("running hook", "timeout", timeout)

	hookErr := &Error{Step: step, Program: cmd.Argv[0], ExitCode: -1, Timeout: timeout}
	if err := c.Start(); err != nil {
		hookErr.Err = err
		log.Warn("hook did not start", "err", err)
		return hookErr
	}
	err = c.Wait()
	elapsed := time.Since(start)
	if c.ProcessState != nil && c.ProcessState.Exited() {
		hookErr.ExitCode = c.ProcessState.ExitCode()
	}
	if err != nil && c.ProcessState == nil {
		hookErr.Err = err
		log.Warn("hook wait failed", "err", err)
		return hookErr
	}

	exited := c.ProcessState != nil && c.ProcessState.Exited()
	switch {
	case exited && hookErr.ExitCode == 0:
		// The hook's verdict is its exit status: err may still be
		// ErrWaitDelay (something it left running held its output open)
		// or the context's error (the deadline hit as it exited).
		if err != nil {
			log.Warn("hook succeeded", "elapsed", elapsed, "note", err)
		} else {
			log.Debug("hook succeeded", "elapsed", elapsed)
		}
		return nil
	case exited:
		hookErr.Err = err // *exec.ExitError
	case runCtx.Err() != nil && ctx.Err() == nil:
		hookErr.TimedOut = true
		hookErr.Err = ErrTimeout
	case ctx.Err() != nil:
		hookErr.Err = ctx.Err()
	default:
		hookErr.Err = err // killed by a signal we did not send
	}
	hookErr.Output = out.String()
	log.Warn("hook failed", "elapsed", elapsed, "err", hookErr)
	return hookErr
}

// killGroup kills the process group p leads (started with Setpgid).
func killGroup(p *os.Process) error {
	if p == nil || p.Pid <= 0 {
		return os.ErrProcessDone
	}
	err := syscall.Kill(-p.Pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return os.ErrProcessDone
	}
	return err
}

// buildEnv returns inherited minus reserved names and extra's names, plus
// the hook variables.
func buildEnv(inherited []string, step string, a failover.Action, extra map[string]string) ([]string, error) {
	for k, v := range extra {
		if !extraKeyRE.MatchString(k) {
			return nil, fmt.Errorf("%w: name %q does not match ^VIGIL_[A-Z0-9_]+$", ErrInvalidEnv, k)
		}
		if baseVars[k] {
			return nil, fmt.Errorf("%w: %s is set by the hook runner", ErrInvalidEnv, k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return nil, fmt.Errorf("%w: value of %s contains a NUL byte", ErrInvalidEnv, k)
		}
	}
	oldHost, oldPort := splitAddr(a.Old.Address)
	newHost, newPort := splitAddr(a.New.Address)
	vars := [][2]string{
		{"VIGIL_GROUP", a.Group},
		{"VIGIL_EPOCH", strconv.FormatUint(a.Epoch, 10)},
		{"VIGIL_KIND", a.Kind},
		{"VIGIL_STEP", step},
		{"VIGIL_OLD_MEMBER", a.Old.Name},
		{"VIGIL_OLD_ADDRESS", a.Old.Address},
		{"VIGIL_OLD_HOST", oldHost},
		{"VIGIL_OLD_PORT", oldPort},
		{"VIGIL_NEW_MEMBER", a.New.Name},
		{"VIGIL_NEW_ADDRESS", a.New.Address},
		{"VIGIL_NEW_HOST", newHost},
		{"VIGIL_NEW_PORT", newPort},
	}
	for _, kv := range vars {
		if strings.IndexByte(kv[1], 0) >= 0 {
			return nil, fmt.Errorf("%w: value of %s contains a NUL byte", ErrInvalidEnv, kv[0])
		}
	}

	env := make([]string, 0, len(inherited)+len(vars)+len(extra))
	for _, kv := range inherited {
		name, _, _ := strings.Cut(kv, "=")
		if reservedVars[name] {
			continue
		}
		if _, ok := extra[name]; ok {
			continue
		}
		env = append(env, kv)
	}
	for _, kv := range vars {
		env = append(env, kv[0]+"="+kv[1])
	}
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	return env, nil
}

// splitAddr splits host:port; an address that is not host:port is returned
// whole as the host.
func splitAddr(addr string) (host, port string) {
	if addr == "" {
		return "", ""
	}
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, ""
	}
	return h, p
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu    sync.Mutex
	max   int
	buf   []byte
	total int64
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total += int64(len(p))
	if len(p) >= b.max {
		b.buf = append(b.buf[:0], p[len(p)-b.max:]...)
		return len(p), nil
	}
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		n := copy(b.buf, b.buf[over:])
		b.buf = b.buf[:n]
	}
	return len(p), nil
}

// String returns the kept output, trimmed, prefixed with "..." if earlier
// output was dropped.
func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf
	truncated := b.total > int64(len(s))
	if truncated {
		// Do not start in the middle of a UTF-8 sequence.
		for i := 0; i < utf8.UTFMax && len(s) > 0 && !utf8.RuneStart(s[0]); i++ {
			s = s[1:]
		}
	}
	out := strings.TrimSpace(strings.ToValidUTF8(string(s), "\uFFFD"))
	if truncated && out != "" {
		out = "..." + out
	}
	return out
}
