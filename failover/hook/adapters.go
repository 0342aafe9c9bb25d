package hook

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigilha/vigil/failover"
)

// PreFailover is a hook asked before a failover whether it may proceed.
type PreFailover struct {
	R   *Runner // nil: a Runner that discards logs
	Cmd Command
}

// Check runs the hook with VIGIL_STEP=pre_failover. It returns nil only if
// the hook exited 0. Anything else (non-zero exit, timeout, cancellation,
// a hook that cannot be started) returns an error wrapping ErrVetoed and
// the Run error (with the hook's output): the controller must not fail
// over. A broken hook therefore blocks failovers; Command.Validate at
// configuration time catches the obvious cases.
func (p PreFailover) Check(ctx context.Context, a failover.Action) error {
	if err := runnerOr(p.R).Run(ctx, p.Cmd, StepPreFailover, a, nil); err != nil {
		return fmt.Errorf("%w: %w", ErrVetoed, err)
	}
	return nil
}

// Fence is a failover.Fencer that runs a hook with VIGIL_STEP=fence. The
// hook must be idempotent: the controller may run it again for the same
// epoch.
type Fence struct {
	R   *Runner // nil: a Runner that discards logs
	Cmd Command
}

var _ failover.Fencer = Fence{}

// Fence confirms the fence only if the hook exited 0; otherwise the result
// is not confirmed and the Run error is returned. A fence hook is the
// operator's last resort (power the host off, cut it at the cloud API):
// its success counts for the database and the traffic alike.
func (f Fence) Fence(ctx context.Context, a failover.Action) (failover.FenceResult, error) {
	if err := runnerOr(f.R).Run(ctx, f.Cmd, StepFence, a, nil); err != nil {
		return failover.FenceResult{Confirmed: false, Detail: "fence hook failed: " + err.Error()}, err
	}
	return failover.FenceResult{Confirmed: true, Traffic: true, Detail: "fence hook succeeded"}, nil
}

// MaxConcurrentNotify is how many notifications one Notify runs at once;
// events beyond it are dropped (see Notify.Dropped).
const MaxConcurrentNotify = 4

// Notify backoff between attempts: notifyBackoff, doubling, capped.
const (
	notifyBackoff    = 100 * time.Millisecond
	notifyBackoffMax = 10 * time.Second
)

// Notify is a failover.Notifier that runs a hook for every event, without
// blocking the caller. The hook gets VIGIL_STEP=event's step (or "notify"
// if empty), VIGIL_OUTCOME, VIGIL_DETAIL and VIGIL_AT besides the usual
// variables. A failed run is retried Cmd.Retries times with backoff (100ms,
// doubling). At most MaxConcurrentNotify notifications run at once
// (retries included); events arriving beyond that, or after Close, are
// dropped and counted.
//
// Use a *Notify, built as &Notify{R: r, Cmd: cmd}; do not copy it after
// first use.
type Notify struct {
	R   *Runner // nil: a Runner that discards logs
	Cmd Command

	mu      sync.Mutex
	running int
	closed  bool
	base    context.Context // cancelled when Close gives up waiting
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	dropped atomic.Uint64
}

var _ failover.Notifier = (*Notify)(nil)

// initLocked sets up n's base context; n.mu must be held.
func (n *Notify) initLocked() {
	if n.base == nil {
		n.base, n.cancel = context.WithCancel(context.Background())
	}
}

// Notify starts delivering e and returns at once. The delivery keeps ctx's
// values but not its cancellation (a failover step ending must not kill
// its own notification); it is bounded by Cmd.Timeout per attempt and by
// Close.
func (n *Notify) Notify(ctx context.Context, e failover.Event) {
	n.mu.Lock()
	n.initLocked()
	if n.closed || n.running >= MaxConcurrentNotify {
		closed := n.closed
		n.mu.Unlock()
		total := n.dropped.Add(1)
		runnerOr(n.R).logger.Warn("notification hook dropped",
			"step", e.Step, "outcome", e.Outcome, "group", e.Group, "epoch", e.Epoch,
			"closed", closed, "running", MaxConcurrentNotify, "dropped_total", total)
		return
	}
	n.running++
	n.wg.Add(1)
	base := n.base
	n.mu.Unlock()

	go n.deliver(context.WithoutCancel(ctx), base, e)
}

func (n *Notify) deliver(ctx, base context.Context, e failover.Event) {
	defer func() {
		n.mu.Lock()
		n.running--
		n.mu.Unlock()
		n.wg.Done()
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(base, cancel)
	defer stop()

	r := runnerOr(n.R)
	step := e.Step
	if step == "" {
		step = "notify"
	}
	at := ""
	if !e.At.IsZero() {
		at = e.At.UTC().Format(time.RFC3339Nano)
	}
	extra := map[string]string{
		"VIGIL_OUTCOME": stripNUL(e.Outcome),
		"VIGIL_DETAIL":  stripNUL(e.Detail),
		"VIGIL_AT":      at,
	}
	a := e.Action
	a.Group, a.Kind = stripNUL(a.Group), stripNUL(a.Kind)
	a.Old.Name, a.Old.Address = stripNUL(a.Old.Name), stripNUL(a.Old.Address)
	a.New.Name, a.New.Address = stripNUL(a.New.Name), stripNUL(a.New.Address)
	step = stripNUL(step)

	attempts := 1 + n.Cmd.retries()
	backoff := notifyBackoff
	var err error
	for i := 1; i <= attempts; i++ {
		err = r.Run(ctx, n.Cmd, step, a, extra)
		if err == nil {
			return
		}
		if i == attempts || ctx.Err() != nil {
			break
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		if ctx.Err() != nil {
			break
		}
		backoff = min(2*backoff, notifyBackoffMax)
	}
	r.logger.Warn("notification hook gave up",
		"step", step, "outcome", e.Outcome, "group", e.Group, "epoch", e.Epoch, "err", err)
}

func stripNUL(s string) string { return strings.ReplaceAll(s, "\x00", "") }

// Dropped is how many events were not delivered because MaxConcurrentNotify
// notifications were already running or n was closed.
func (n *Notify) Dropped() uint64 { return n.dropped.Load() }

// Close stops accepting events (later ones are dropped) and waits for
// running notifications, retries included. If ctx ends first, the running
// hooks are killed and their retries abandoned, and Close returns ctx's
// error without waiting for them to wind down.
func (n *Notify) Close(ctx context.Context) error {
	n.mu.Lock()
	n.initLocked()
	n.closed = true
	cancel := n.cancel
	n.mu.Unlock()

	done := make(chan struct{})
	go func() {
		n.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		cancel()
		return nil
	case <-ctx.Done():
		cancel()
		return ctx.Err()
	}
}
