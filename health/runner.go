package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"sync"
	"time"
)

// Target is one member to probe on a schedule.
type Target struct {
	Group, Member string
	// Interval between probe starts; default 1s.
	Interval time.Duration
	// Timeout bounds each probe; default Interval.
	Timeout time.Duration
	Prober  Prober
}

// DefaultInterval is used for a Target without an Interval.
const DefaultInterval = time.Second

type targetKey struct{ group, member string }

// Runner probes every Target on its own ticker in its own goroutine, so a
// hung member never delays the others, and hands each Result to a sink.
type Runner struct {
	// Now is the wall clock that stamps each Result's At, which becomes
	// the vote's ObservedAt: it must be the clock the Monitor judges vote
	// ages by, or an observer with a shifted clock (Options.Now, the
	// --clock-offset test hook) would misjudge its own votes. nil means
	// time.Now. Set it before Run; probe latency is measured with the
	// monotonic clock whatever it says.
	Now func() time.Time

	sink   func(Target, Result)
	logger *slog.Logger

	updateMu sync.Mutex // serialises Update

	mu      sync.Mutex
	targets map[targetKey]Target  // the desired set
	workers map[targetKey]*worker // running probes, while Run runs
	runCtx  context.Context       // nil unless Run runs
}

// worker is the goroutine probing one target.
type worker struct {
	target Target
	cancel context.CancelFunc
	done   chan struct{}
	kick   chan struct{} // probe now (buffered 1)
}

// NewRunner returns a Runner for targets. sink is called from many
// goroutines at once and must be safe for concurrent use and quick.
// Invalid targets (no Prober, empty or duplicate names) are logged and
// left out. A nil logger discards logs.
func NewRunner(targets []Target, sink func(Target, Result), logger *slog.Logger) *Runner {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Runner{sink: sink, logger: logger, targets: map[targetKey]Target{}, workers: map[targetKey]*worker{}}
	for _, t := range targets {
		t, err := normalizeTarget(t)
		if err == nil {
			if _, dup := r.targets[keyOf(t)]; dup {
				err = fmt.Errorf("health: duplicate target %s/%s", t.Group, t.Member)
			}
		}
		if err != nil {
			logger.Error("ignoring invalid probe target", "group", t.Group, "member", t.Member, "err", err)
			continue
		}
		r.targets[keyOf(t)] = t
	}
	return r
}

func keyOf(t Target) targetKey { return targetKey{t.Group, t.Member} }

func normalizeTarget(t Target) (Target, error) {
	if t.Group == "" || t.Member == "" {
		return t, errors.New("health: target needs a group and a member")
	}
	if t.Prober == nil {
		return t, fmt.Errorf("health: target %s/%s has no prober", t.Group, t.Member)
	}
	if t.Interval <= 0 {
		t.Interval = DefaultInterval
	}
	if t.Timeout <= 0 {
		t.Timeout = t.Interval
	}
	return t, nil
}

// ErrRunning is returned by Run when the Runner already runs.
var ErrRunning = errors.New("health: runner already running")

// Run probes all targets until ctx is cancelled, then waits for every
// probe goroutine to exit and returns nil. No sink call happens after Run
// returns.
func (r *Runner) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.runCtx != nil {
		r.mu.Unlock()
		return ErrRunning
	}
	r.runCtx = ctx
	for k, t := range r.targets {
		r.startLocked(k, t)
	}
	r.mu.Unlock()

	<-ctx.Done()

	r.mu.Lock()
	workers := r.workers
	r.workers = map[targetKey]*worker{}
	r.runCtx = nil
	for _, w := range workers {
		w.cancel()
	}
	r.mu.Unlock()
	for _, w := range workers {
		<-w.done
	}
	return nil
}

// Update replaces the target set. While running, probes of removed or
// changed targets stop (Update waits for them, so they deliver nothing
// afterwards) and new or changed ones start. An invalid set is rejected
// as a whole and changes nothing.
func (r *Runner) Update(targets []Target) error {
	next := make(map[targetKey]Target, len(targets))
	for _, t := range targets {
		t, err := normalizeTarget(t)
		if err != nil {
			return err
		}
		if _, dup := next[keyOf(t)]; dup {
			return fmt.Errorf("health: duplicate target %s/%s", t.Group, t.Member)
		}
		next[keyOf(t)] = t
	}

	r.updateMu.Lock()
	defer r.updateMu.Unlock()

	r.mu.Lock()
	r.targets = next
	var stopped []*worker
	for k, w := range r.workers {
		if t, ok := next[k]; !ok || !sameTarget(t, w.target) {
			w.cancel()
			delete(r.workers, k)
			stopped = append(stopped, w)
		}
	}
	r.mu.Unlock()

	// Wait outside the lock: a stopping probe is bounded by its timeout.
	for _, w := range stopped {
		<-w.done
	}

	r.mu.Lock()
	if r.runCtx != nil {
		for k, t := range r.targets {
			if _, ok := r.workers[k]; !ok {
				r.startLocked(k, t)
			}
		}
	}
	r.mu.Unlock()
	return nil
}

// Targets returns the current target set (in no particular order).
func (r *Runner) Targets() []Target {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Target, 0, len(r.targets))
	for _, t := range r.targets {
		out = append(out, t)
	}
	return out
}

// sameTarget compares targets without panicking on an uncomparable
// Prober implementation (treated as changed).
func sameTarget(a, b Target) bool {
	if a.Group != b.Group || a.Member != b.Member || a.Interval != b.Interval || a.Timeout != b.Timeout {
		return false
	}
	ta, tb := reflect.TypeOf(a.Prober), reflect.TypeOf(b.Prober)
	return ta == tb && ta.Comparable() && a.Prober == b.Prober
}

// Kick makes the target's worker probe now instead of at its next tick
// (e.g. right after a promotion, so the new primary's writable votes
// arrive without waiting up to one interval). Never blocks; a no-op for
// an unknown target or when Run is not running.
func (r *Runner) Kick(group, member string) {
	r.mu.Lock()
	w := r.workers[targetKey{group, member}]
	r.mu.Unlock()
	if w == nil {
		return
	}
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (r *Runner) startLocked(k targetKey, t Target) {
	ctx, cancel := context.WithCancel(r.runCtx)
	w := &worker{target: t, cancel: cancel, done: make(chan struct{}), kick: make(chan struct{}, 1)}
	r.workers[k] = w
	go r.loop(ctx, w)
}

// loop probes one target until ctx ends.
func (r *Runner) loop(ctx context.Context, w *worker) {
	defer close(w.done)
	t := w.target
	log := r.logger.With("group", t.Group, "member", t.Member)
	// Jitter the first probe so targets added together do not probe in
	// lock step.
	timer := time.NewTimer(rand.N(t.Interval))
	defer timer.Stop()
	last := Verdict(-1)
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-w.kick:
			timer.Stop() // Go ≥ 1.23: no stale tick after Stop
		}
		start := time.Now()
		res := r.probeOnce(ctx, t, log)
		if ctx.Err() != nil {
			// Our own cancellation, not the member's fault: report nothing.
			return
		}
		if res.Verdict != last {
			log.Info("probe verdict changed", "verdict", res.Verdict, "role", res.Role, "err", res.Err, "kind", res.ErrKind)
			last = res.Verdict
		} else {
			log.Debug("probe", "verdict", res.Verdict, "role", res.Role, "latency", res.Latency, "err", res.Err)
		}
		r.sink(t, res)
		// Fixed rate: a slow probe shortens the pause, never stacks probes.
		timer.Reset(max(0, t.Interval-time.Since(start)))
	}
}

// probeOnce runs one probe bounded by the target's timeout. A panicking
// prober yields an unknown verdict (never down: a bug shared by every
// observer must not look like a dead member) and is logged.
//
// Probers stamp At with time.Now; the runner moves that stamp onto its own
// clock (Now) by the offset between the two at the probe's start, so a
// prober's choice of At is kept and only the clock changes.
func (r *Runner) probeOnce(ctx context.Context, t Target, log *slog.Logger) (res Result) {
	start := time.Now()
	at := start
	if r.Now != nil {
		at = r.Now()
	}
	pctx, cancel := context.WithTimeout(ctx, t.Timeout)
	defer cancel()
	defer func() {
		if v := recover(); v != nil {
			log.Error("prober panicked", "panic", v)
			res = Result{Verdict: VerdictUnknown, Err: fmt.Sprintf("prober panicked: %v", v), ErrKind: KindOther}
		}
		if res.At.IsZero() {
			res.At = at
		} else {
			res.At = res.At.Add(at.Sub(start))
		}
		if res.Latency == 0 {
			res.Latency = time.Since(start)
		}
	}()
	return t.Prober.Probe(pctx)
}
