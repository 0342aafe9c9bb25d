package health

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// hangProber blocks until its context ends, like a SIGSTOPped server.
type hangProber struct{}

func (hangProber) Probe(ctx context.Context) Result {
	start := time.Now()
	<-ctx.Done()
	return downResult(ctx, start, ctx.Err())
}

// upProber answers at once and counts its calls.
type upProber struct{ calls atomic.Int64 }

func (p *upProber) Probe(ctx context.Context) Result {
	p.calls.Add(1)
	return Result{Verdict: VerdictUp, At: time.Now()}
}

type panicProber struct{}

func (panicProber) Probe(context.Context) Result { panic("bad answer") }

// collector is a concurrency-safe sink that also checks that nothing is
// delivered once the Runner said it stopped.
type collector struct {
	t       *testing.T
	mu      sync.Mutex
	results map[string][]Result
	targets map[string]Target
	closed  atomic.Bool
}

func newCollector(t *testing.T) *collector {
	return &collector{t: t, results: map[string][]Result{}, targets: map[string]Target{}}
}

func (c *collector) sink(t Target, r Result) {
	if c.closed.Load() {
		c.t.Errorf("result for %s delivered after Run returned", t.Member)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.results[t.Member] = append(c.results[t.Member], r)
	c.targets[t.Member] = t
}

func (c *collector) count(member string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.results[member])
}

func (c *collector) last(member string) (Result, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rs := c.results[member]
	if len(rs) == 0 {
		return Result{}, false
	}
	return rs[len(rs)-1], true
}

// startRunner runs r until the test ends (or stop is called) and checks
// that Run returns promptly once cancelled.
func startRunner(t *testing.T, r *Runner, c *collector) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
				if c != nil {
					c.closed.Store(true)
				}
			case <-time.After(5 * time.Second):
				t.Errorf("Run did not return within 5s of cancellation")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestRunnerHungTargetDoesNotDelayOthers(t *testing.T) {
	c := newCollector(t)
	r := NewRunner([]Target{
		{Group: "g", Member: "hung", Interval: 20 * time.Millisecond, Timeout: 2 * time.Second, Prober: hangProber{}},
		{Group: "g", Member: "fast", Interval: 20 * time.Millisecond, Timeout: time.Second, Prober: &upProber{}},
	}, c.sink, nil)
	stop := startRunner(t, r, c)

	waitFor(t, 5*time.Second, "20 results for the fast target", func() bool { return c.count("fast") >= 20 })
	if n := c.count("hung"); n != 0 {
		t.Fatalf("hung target delivered %d results before its timeout", n)
	}
	waitFor(t, 5*time.Second, "a timeout result for the hung target", func() bool { return c.count("hung") >= 1 })
	if res, _ := c.last("hung"); res.Verdict != VerdictDown || res.ErrKind != KindTimeout {
		t.Fatalf("hung target result: %+v", res)
	}

	// Cancelling interrupts the hung probe at once.
	start := time.Now()
	stop()
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Run took %v to return with a hung probe", d)
	}
}

func TestRunnerUpdate(t *testing.T) {
	c := newCollector(t)
	p1, p2, p3 := &upProber{}, &upProber{}, &upProber{}
	iv := 10 * time.Millisecond
	r := NewRunner([]Target{
		{Group: "g", Member: "m1", Interval: iv, Prober: p1},
		{Group: "g", Member: "m2", Interval: iv, Prober: p2},
	}, c.sink, nil)
	startRunner(t, r, c)
	waitFor(t, 5*time.Second, "m1 and m2 probed", func() bool { return c.count("m1") >= 3 && c.count("m2") >= 3 })

	// Invalid sets are rejected whole.
	for _, bad := range [][]Target{
		{{Group: "g", Member: "m1", Prober: p1}, {Group: "g", Member: "m1", Prober: p2}},
		{{Group: "g", Member: "m1"}},
		{{Member: "m1", Prober: p1}},
	} {
		if err := r.Update(bad); err == nil {
			t.Fatalf("Update(%+v) accepted", bad)
		}
	}
	if n := len(r.Targets()); n != 2 {
		t.Fatalf("rejected Update changed the set: %d targets", n)
	}

	if err := r.Update([]Target{
		{Group: "g", Member: "m2", Interval: iv, Prober: p2},
		{Group: "g", Member: "m3", Interval: iv, Prober: p3},
	}); err != nil {
		t.Fatal(err)
	}
	m1 := c.count("m1")
	m2 := c.count("m2")
	waitFor(t, 5*time.Second, "m3 probed and m2 still probed", func() bool {
		return c.count("m3") >= 5 && c.count("m2") >= m2+5
	})
	if n := c.count("m1"); n != m1 {
		t.Fatalf("removed target m1 delivered %d results after Update", n-m1)
	}

	// A changed interval restarts the target with the new settings.
	if err := r.Update([]Target{{Group: "g", Member: "m3", Interval: 2 * iv, Timeout: iv, Prober: p3}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "m3 probed with its new settings", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.targets["m3"].Interval == 2*iv && c.targets["m3"].Timeout == iv
	})
}

func TestRunnerDefaultsPanicsAndRestart(t *testing.T) {
	c := newCollector(t)
	r := NewRunner([]Target{
		{Group: "g", Member: "panics", Interval: 10 * time.Millisecond, Prober: panicProber{}},
		{Group: "g", Member: "defaults", Prober: &upProber{}},
		{Group: "g", Member: "no-prober"},
		{Group: "g", Member: "panics", Prober: &upProber{}}, // duplicate
	}, c.sink, nil)
	if n := len(r.Targets()); n != 2 {
		t.Fatalf("invalid targets kept: %d targets", n)
	}
	stop := startRunner(t, r, c)

	waitFor(t, 5*time.Second, "two results from the panicking prober", func() bool { return c.count("panics") >= 2 })
	// Running now: a second Run is refused (bounded, in case it is not).
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := r.Run(ctx); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run: %v", err)
	}
	res, _ := c.last("panics")
	if res.Verdict != VerdictUnknown || !strings.Contains(res.Err, "panicked") || res.At.IsZero() {
		t.Fatalf("panicking prober result: %+v", res)
	}
	waitFor(t, 5*time.Second, "a result with default interval", func() bool { return c.count("defaults") >= 1 })
	c.mu.Lock()
	tg := c.targets["defaults"]
	c.mu.Unlock()
	if tg.Interval != DefaultInterval || tg.Timeout != DefaultInterval {
		t.Fatalf("defaults not applied: %+v", tg)
	}
	stop()

	// A stopped Runner can run again.
	c2 := newCollector(t)
	r.sink = c2.sink
	startRunner(t, r, c2)
	waitFor(t, 5*time.Second, "results after restart", func() bool { return c2.count("panics") >= 1 })
}

// zeroAtProber answers without stamping its Result, leaving At to the
// runner.
type zeroAtProber struct{}

func (zeroAtProber) Probe(context.Context) Result { return Result{Verdict: VerdictUp} }

// TestRunnerClock: with a shifted Now (an observer's --clock-offset), the
// runner stamps every Result's At, and so the vote's ObservedAt, with the
// shifted clock, whether the prober stamped it (with time.Now) or not, and
// the probe latency stays a real duration, not the offset. The Monitor
// hands its clock to its runner.
func TestRunnerClock(t *testing.T) {
	const offset = -90 * time.Minute
	c := newCollector(t)
	r := NewRunner([]Target{
		{Group: "g", Member: "stamped", Interval: 10 * time.Millisecond, Prober: &upProber{}},
		{Group: "g", Member: "unstamped", Interval: 10 * time.Millisecond, Prober: zeroAtProber{}},
		{Group: "g", Member: "panics", Interval: 10 * time.Millisecond, Prober: panicProber{}},
	}, c.sink, nil)
	r.Now = func() time.Time { return time.Now().Add(offset) }
	before := time.Now()
	stop := startRunner(t, r, c)
	waitFor(t, 5*time.Second, "results from every target", func() bool {
		return c.count("stamped") >= 2 && c.count("unstamped") >= 2 && c.count("panics") >= 2
	})
	stop()
	after := time.Now()
	for _, m := range []string{"stamped", "unstamped", "panics"} {
		c.mu.Lock()
		rs := append([]Result(nil), c.results[m]...)
		c.mu.Unlock()
		for _, res := range rs {
			if res.At.Before(before.Add(offset)) || res.At.After(after.Add(offset)) {
				t.Errorf("%s: At %v is not on the shifted clock (want within [%v, %v])", m, res.At, before.Add(offset), after.Add(offset))
			}
			if res.Latency < 0 || res.Latency > after.Sub(before) {
				t.Errorf("%s: latency %v is not a real probe duration (test ran %v)", m, res.Latency, after.Sub(before))
			}
			v := VoteFromResult("o1", "g", m, res, 1)
			if !v.ObservedAt.Equal(res.At) {
				t.Errorf("%s: vote ObservedAt %v, result At %v", m, v.ObservedAt, res.At)
			}
		}
	}

	// Without Now, the probers' own stamps are kept as they are.
	c2 := newCollector(t)
	r2 := NewRunner([]Target{{Group: "g", Member: "stamped", Interval: 10 * time.Millisecond, Prober: &upProber{}}}, c2.sink, nil)
	before = time.Now()
	startRunner(t, r2, c2)
	waitFor(t, 5*time.Second, "a result on the real clock", func() bool { return c2.count("stamped") >= 1 })
	if res, _ := c2.last("stamped"); res.At.Before(before) || res.At.After(time.Now()) {
		t.Errorf("At %v not on the real clock (after %v)", res.At, before)
	}

	// NewMonitor gives its runner its clock.
	now := func() time.Time { return time.Now().Add(offset) }
	m, err := NewMonitor(MonitorConfig{Self: "o1", Observers: []string{"o1", "o2", "o3"}, Quorum: 2, Send: func([]byte) {}, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if m.runner.Now == nil || m.runner.Now().Sub(time.Now()) > offset/2 {
		t.Errorf("the monitor's runner is not on the monitor's clock")
	}
}
