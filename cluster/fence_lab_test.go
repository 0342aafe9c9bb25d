package cluster_test

// Fencing in the network-namespace lab (startVIPLab): what the leader
// may count as "the old primary is fenced" when its node agent is dead,
// and how long a client stranded on a cut-off primary's host can still
// write. Every test samples, every 10 ms per database host, whether the
// host is writable-and-routed — it holds the VIP and a write from the
// client host to its own address succeeds — and fails if two ever are at
// once.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vigilha/vigil/cluster"
	"github.com/vigilha/vigil/cluster/clustertest"
	"github.com/vigilha/vigil/cluster/config"
	"github.com/vigilha/vigil/deploy/lab/pglab"
	"github.com/vigilha/vigil/fsm"
)

// The lab's lease_timeout (startVIPLab) and the bound the design states
// for a stranded client: its last acknowledgement at most lease_timeout
// (+ this slack) after the cut.
const (
	labLeaseTimeout = time.Second
	strandedSlack   = 200 * time.Millisecond
)

// ---------------------------------------------------------------------
// Observer logs: kept (Info and above, and the observers' own debug
// lines such as "lease not delivered") while still written as before.

type logRecord struct {
	at    time.Time
	obs   int
	level slog.Level
	msg   string
	attrs string
}

func (r logRecord) String() string {
	return fmt.Sprintf("%s obs%d %s %q %s", r.at.Format("15:04:05.000"), r.obs+1, r.level, r.msg, r.attrs)
}

type logCapture struct {
	mu   sync.Mutex
	recs []logRecord
}

// fenceLabOptions is the startVIPLab customizer of these tests: it
// installs lc (when not nil) on every observer and gives the observers'
// Raft more slack than the defaults (heartbeat and election 500 ms,
// leader lease 250 ms). On a loaded 2-core machine running -race the
// defaults make the leader step down and elections run for seconds; any
// leaderless spell over about lease_timeout stops every observer's
// leases (an observer without a leader leases nothing), so db0's agent
// self-fences before the test injects its fault, and nothing brings it
// back (see the report). The tests are about fencing, not elections.
func fenceLabOptions(lc *logCapture) func(i int, o *cluster.Options) {
	return func(i int, o *cluster.Options) {
		o.Config.Raft.HeartbeatTimeout = config.Duration(2 * time.Second)
		o.Config.Raft.ElectionTimeout = config.Duration(2 * time.Second)
		o.Config.Raft.LeaderLeaseTimeout = config.Duration(time.Second)
		if lc != nil {
			o.Logger = slog.New(&captureHandler{lc: lc, obs: i, inner: o.Logger.Handler()})
		}
	}
}

// find returns the records since `since` of observer obs (-1: any) whose
// message is msg and whose attributes contain every one of subs.
func (lc *logCapture) find(obs int, since time.Time, msg string, subs ...string) []logRecord {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	var out []logRecord
next:
	for _, r := range lc.recs {
		if r.at.Before(since) || r.msg != msg || (obs >= 0 && r.obs != obs) {
			continue
		}
		for _, s := range subs {
			if !strings.Contains(r.attrs, s) {
				continue next
			}
		}
		out = append(out, r)
	}
	return out
}

type captureHandler struct {
	lc        *logCapture
	obs       int
	inner     slog.Handler
	attrs     string
	component bool // a library's logger (raft, memberlist…): no debug
}

func (h *captureHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || !h.component || h.inner.Enabled(ctx, l)
}

func (h *captureHandler) Handle(ctx context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%q", a.Key, a.Value.String())
		return true
	})
	h.lc.mu.Lock()
	h.lc.recs = append(h.lc.recs, logRecord{at: time.Now(), obs: h.obs, level: r.Level, msg: r.Message, attrs: b.String()})
	h.lc.mu.Unlock()
	if h.inner.Enabled(ctx, r.Level) {
		return h.inner.Handle(ctx, r)
	}
	return nil
}

func (h *captureHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	n.inner = h.inner.WithAttrs(as)
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range as {
		if a.Key == "component" {
			n.component = true
		}
		fmt.Fprintf(&b, " %s=%q", a.Key, a.Value.String())
	}
	n.attrs = b.String()
	return &n
}

func (h *captureHandler) WithGroup(name string) slog.Handler {
	n := *h
	n.inner = h.inner.WithGroup(name)
	return &n
}

// ---------------------------------------------------------------------
// Writable-and-routed sampling.

type wrSample struct {
	host       string
	start, end time.Time
	wrote      bool // a write from the client host to its address succeeded
	err        string
}

type wrSampler struct {
	v      *vipLab
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	mu      sync.Mutex
	samples map[string][]wrSample
}

// startWRSampler samples every database host, every 10 ms, from the
// client host: one connection per host to the host's own address, a
// write with a 150 ms budget including a reconnect (a connection that
// cannot write is "not writable"). Whether the host held the VIP comes
// from the lab's own 10 ms samples of the holders: a write sample counts
// as routed if any VIP sample within 15 ms of it saw the host hold it.
func (v *vipLab) startWRSampler(t testing.TB) *wrSampler {
	t.Helper()
	execSQL(t, v.pg.Primary(), "CREATE TABLE IF NOT EXISTS wr_probe (host text, at timestamptz DEFAULT now())")
	ctx, cancel := context.WithCancel(context.Background())
	s := &wrSampler{v: v, cancel: cancel, samples: map[string][]wrSample{}}
	for i, h := range v.dbs {
		n := v.pg.Nodes[i]
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.run(ctx, h, n) }()
	}
	t.Cleanup(s.stop)
	return s
}

func (s *wrSampler) stop() { s.once.Do(func() { s.cancel(); s.wg.Wait() }) }

// vipNear reports whether a lab sample of the VIP holders within 15 ms
// of [from, to] saw host hold the VIP.
func (v *vipLab) vipNear(host string, from, to time.Time) bool {
	lo, hi := from.Add(-15*time.Millisecond), to.Add(15*time.Millisecond)
	v.mu.Lock()
	defer v.mu.Unlock()
	i := sort.Search(len(v.samples), func(i int) bool { return !v.samples[i].at.Before(lo) })
	for ; i < len(v.samples) && !v.samples[i].at.After(hi); i++ {
		if slices.Contains(v.samples[i].holders, host) {
			return true
		}
	}
	return false
}

// wr: the sample wrote and the host held the VIP around it.
func (s *wrSampler) wr(x wrSample) bool { return x.wrote && s.v.vipNear(x.host, x.start, x.end) }

func (v *vipLab) holdsVIP(host string) bool {
	addrs, err := v.lab.Addrs(host)
	return err == nil && slices.Contains(addrs, v.vip)
}

func (s *wrSampler) run(ctx context.Context, host string, n *pglab.Node) {
	dsn := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", n.IP, n.Port)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		smp := wrSample{host: host, start: time.Now()}
		err := func() error {
			wctx, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
			defer cancel()
			if conn == nil {
				var c *pgx.Conn
				if err := s.v.lab.InNS("client", func() (err error) { c, err = pgx.Connect(wctx, dsn); return err }); err != nil {
					return err
				}
				conn = c
			}
			_, err := conn.Exec(wctx, "INSERT INTO wr_probe (host) VALUES ($1)", host)
			return err
		}()
		smp.end = time.Now()
		smp.wrote = err == nil
		if err != nil {
			smp.err = err.Error()
			var pgErr *pgconn.PgError
			if conn != nil && (conn.IsClosed() || !errors.As(err, &pgErr)) {
				conn.Close(context.Background())
				conn = nil
			}
		}
		if ctx.Err() != nil {
			return // a sample cut short by the end is no sample
		}
		s.mu.Lock()
		s.samples[host] = append(s.samples[host], smp)
		s.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
}

// count returns how many samples of host in [from, to) there are and how
// many of them wrote and were writable-and-routed.
func (s *wrSampler) count(host string, from, to time.Time) (n, wrote, wr int, lastErr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, x := range s.samples[host] {
		if x.start.Before(from) || !x.start.Before(to) {
			continue
		}
		n++
		if x.wrote {
			wrote++
		} else {
			lastErr = x.err
		}
		if s.wr(x) {
			wr++
		}
	}
	return n, wrote, wr, lastErr
}

// assertNeverTwo fails t if two hosts were ever writable-and-routed at
// once: two such samples of different hosts whose intervals, widened by
// the sampling period on each side, overlap. It logs a summary.
func (s *wrSampler) assertNeverTwo(t testing.TB) {
	t.Helper()
	const pad = 10 * time.Millisecond
	s.mu.Lock()
	var wr []wrSample
	var summary []string
	for _, h := range s.v.dbs {
		n, w, r := 0, 0, 0
		var first, last time.Time
		for _, x := range s.samples[h] {
			n++
			if x.wrote {
				w++
			}
			if s.wr(x) {
				r++
				wr = append(wr, x)
				if first.IsZero() {
					first = x.start
				}
				last = x.end
			}
		}
		d := fmt.Sprintf("%s: %d samples, %d wrote, %d writable-and-routed", h, n, w, r)
		if r > 0 {
			d += fmt.Sprintf(" (%s…%s)", first.Format("15:04:05.000"), last.Format("15:04:05.000"))
		}
		summary = append(summary, d)
	}
	s.mu.Unlock()
	sort.Slice(wr, func(i, j int) bool { return wr[i].start.Before(wr[j].start) })
	lastOf := map[string]wrSample{}
	for _, x := range wr {
		for h, o := range lastOf {
			if h != x.host && !o.end.Add(pad).Before(x.start.Add(-pad)) {
				t.Fatalf("two servers writable-and-routed at once: %s [%s, %s] and %s [%s, %s]", o.host,
					o.start.Format("15:04:05.000"), o.end.Format("15:04:05.000"), x.host, x.start.Format("15:04:05.000"), x.end.Format("15:04:05.000"))
			}
		}
		if o, ok := lastOf[x.host]; !ok || x.end.After(o.end) {
			lastOf[x.host] = x
		}
	}
	t.Logf("writable-and-routed from the client: %s", strings.Join(summary, "; "))
}

// ---------------------------------------------------------------------
// A client stranded on a database host: it runs in the host's own
// namespace and writes to the host's own address (not the VIP, not
// loopback), one row at a time, recording every acknowledged write.

type writeAck struct {
	id int64
	at time.Time
}

type strandedWriter struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	mu      sync.Mutex
	acks    []writeAck
	lastErr string
	errAt   time.Time
}

func startStrandedWriter(t testing.TB, v *vipLab, host string, n *pglab.Node) *strandedWriter {
	t.Helper()
	execSQL(t, v.pg.Primary(), "CREATE TABLE IF NOT EXISTS stranded (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
	ctx, cancel := context.WithCancel(context.Background())
	w := &strandedWriter{cancel: cancel}
	dsn := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", n.IP, n.Port)
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for id := int64(1); ctx.Err() == nil; id++ {
			err := func() error {
				wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				defer cancel()
				if conn == nil {
					var c *pgx.Conn
					if err := v.lab.InNS(host, func() (err error) { c, err = pgx.Connect(wctx, dsn); return err }); err != nil {
						return err
					}
					conn = c
				}
				_, err := conn.Exec(wctx, "INSERT INTO stranded (id) VALUES ($1)", id)
				return err
			}()
			now := time.Now()
			w.mu.Lock()
			if err == nil {
				w.acks = append(w.acks, writeAck{id: id, at: now})
			} else {
				w.lastErr, w.errAt = err.Error(), now
			}
			w.mu.Unlock()
			if err != nil {
				if conn != nil {
					conn.Close(context.Background())
					conn = nil
				}
				time.Sleep(5 * time.Millisecond)
				continue
			}
			time.Sleep(3 * time.Millisecond)
		}
	}()
	t.Cleanup(w.stop)
	return w
}

func (w *strandedWriter) stop() { w.once.Do(func() { w.cancel(); w.wg.Wait() }) }

func (w *strandedWriter) snapshot() []writeAck {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.acks)
}

func (w *strandedWriter) lastError() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}

// ---------------------------------------------------------------------
// Helpers.

func fenceFailures(t testing.TB, v *vipLab) (sum float64, per []string) {
	for _, i := range v.c.Running() {
		n := counterValue(t, v.c.Nodes[i].Obs, "vigil_fence_failures_total", map[string]string{"group": "pg-main"})
		sum += n
		per = append(per, fmt.Sprintf("%s%s=%v", v.c.Nodes[i].ID, map[bool]string{true: "(leader)"}[v.c.Nodes[i].Obs.IsLeader()], n))
	}
	return sum, per
}

// roleStatus asks observer i's role endpoint about member.
func roleStatus(v *vipLab, i int, member string) (int, error) {
	cl := http.Client{Timeout: time.Second}
	resp, err := cl.Get(fmt.Sprintf("http://%s/primary/pg-main/%s", v.c.Nodes[i].Obs.HTTPAddr(), member))
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// clientWriteTo writes once from the client host to host's own address.
func (v *vipLab) clientWriteTo(host string, n *pglab.Node, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var conn *pgx.Conn
	err := v.lab.InNS("client", func() (err error) {
		conn, err = pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", n.IP, n.Port))
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "INSERT INTO wr_probe (host) VALUES ($1)", host)
	return err
}

// waitWR waits until the sampler has seen host writable-and-routed
// since `since` (the sampler sees what it must see).
func waitWR(t testing.TB, s *wrSampler, host string, since time.Time) {
	t.Helper()
	clustertest.WaitFor(t, waitLong, host+" writable-and-routed from the client", func() (bool, string) {
		n, w, r, e := s.count(host, since, time.Now().Add(time.Hour))
		return r >= 3, fmt.Sprintf("%d samples, %d wrote, %d writable-and-routed; last error %s", n, w, r, e)
	})
}

// ---------------------------------------------------------------------
// 1 and 2: the old primary's agent is dead.

// agentKilled kills db0's agent (postgres keeps running), waits until
// every observer's lease to it was refused (and at least a second), then
// applies cut. The failover must abort under fence: strict, saying that
// lease expiry does not count (a refused connection means the host is up
// and nothing enforces the lease), and nothing may be promoted.
// It returns when the cut was complete.
func agentKilled(t *testing.T, what string, cut func(v *vipLab)) (*vipLab, *wrSampler, *strandedWriter, time.Time) {
	lc := &logCapture{}
	v := startVIPLab(t, false, fenceLabOptions(lc))
	s := v.startWRSampler(t)
	waitWR(t, s, "db0", time.Time{})
	w := startStrandedWriter(t, v, "db0", v.pg.Nodes[0])
	clustertest.WaitFor(t, waitLong, "the stranded writer writing", func() (bool, string) {
		n := len(w.snapshot())
		return n >= 20, fmt.Sprintf("%d acks, last error %s", n, w.lastError())
	})

	killed := time.Now()
	v.killAgent(t, "db0")
	clustertest.WaitFor(t, waitLong, "every observer's lease to db0's agent refused, ≥ 1s after the kill", func() (bool, string) {
		var missing []string
		for i := range v.c.Nodes {
			if len(lc.find(i, killed, "lease not delivered", "connection refused")) == 0 {
				missing = append(missing, v.c.Nodes[i].ID)
			}
		}
		since := time.Since(killed)
		return len(missing) == 0 && since >= time.Second, fmt.Sprintf("%s since the kill, no refused lease yet on %v", since.Round(time.Millisecond), missing)
	})
	if !v.holdsVIP("db0") {
		t.Fatalf("db0 lost the VIP before the cut (holders %v)", v.holders())
	}
	cutAt := time.Now()
	cut(v)
	cutDone := time.Now()
	t.Logf("db0's agent killed at %s; %s at %s (took %s)", killed.Format("15:04:05.000"), what, cutAt.Format("15:04:05.000"), cutDone.Sub(cutAt).Round(time.Millisecond))

	f := waitFailovers(t, v.c, 1, fsm.OutcomeAborted)
	detail := f.GetOutcomeDetail()
	t.Logf("failover epoch %d aborted: %s", f.GetEpoch(), detail)
	for _, want := range []string{"fence: strict", "pg0", "lease expiry not counted", "refused a lease connection after its last answer"} {
		if !strings.Contains(detail, want) {
			t.Errorf("abort reason lacks %q: %s", want, detail)
		}
	}
	for _, st := range f.GetSteps() {
		if st.GetName() == fsm.StepPromoted || st.GetName() == fsm.StepFenced {
			t.Errorf("aborted failover has a %s step: %s", st.GetName(), st.GetDetail())
		}
	}
	for _, r := range lc.find(-1, cutAt, "failover aborted") {
		t.Logf("log: %s", r)
	}
	clustertest.WaitFor(t, waitLong, "vigil_fence_failures_total on the leader", func() (bool, string) {
		sum, per := fenceFailures(t, v)
		return sum >= 1, strings.Join(per, " ")
	})
	_, per := fenceFailures(t, v)
	t.Logf("vigil_fence_failures_total: %s", strings.Join(per, " "))

	// Nothing promoted: the state keeps pg0, both standbys stay standbys,
	// and no other host got the VIP (sampled all along).
	g := group(v.c)
	if g.GetPrimary() != "pg0" || g.GetActiveFailover() != nil {
		t.Fatalf("after the abort: primary %s, active failover %v", g.GetPrimary(), g.GetActiveFailover())
	}
	for _, n := range v.pg.Standbys() {
		if rec := query(t, n, "SELECT pg_is_in_recovery()"); rec != "true" {
			t.Fatalf("%s left recovery (in recovery = %s) though the failover aborted", n.Name, rec)
		}
	}
	for _, h := range v.holders() {
		if h != "db0" {
			t.Fatalf("the VIP is on %s after an aborted failover", h)
		}
	}
	s.assertNeverTwo(t)
	v.assertNeverTwo(t, "db0", "db1")
	return v, s, w, cutDone
}

// TestFenceLabAgentKilledHostReachable: db0's agent is SIGKILLed, then
// db0 looks dead to the observers only (they lose its ports 5432 and
// 7501; the client still reaches it): the agent cannot fence, SQL cannot
// reach, and lease expiry must not count — the lease connection was
// refused after the agent's last answer, so nothing enforces it there.
// The failover aborts; db0 stays the one writable-and-routed server.
func TestFenceLabAgentKilledHostReachable(t *testing.T) {
	t.Parallel()
	_, s, w, cutAt := agentKilled(t, "db0's ports 5432 and 7501 cut from the observers", func(v *vipLab) {
		v.lab.CutPorts("db0", v.lab.Gateway, v.pg.Nodes[0].Port, 7501)
	})
	// db0 (the only primary, with the VIP) still takes the client's writes.
	n, wrote, wr, lastErr := s.count("db0", cutAt, time.Now())
	t.Logf("after the port cut, db0 from the client: %d samples, %d wrote, %d writable-and-routed (last error %q)", n, wrote, wr, lastErr)
	if wr == 0 {
		t.Fatal("db0 never writable-and-routed from the client after the port cut: the lab does not do what the test means")
	}
	acks := w.snapshot()
	t.Logf("writer on db0's own address: %d acks, %d after the cut, last %s after it", len(acks), countAfter(acks, cutAt), acks[len(acks)-1].at.Sub(cutAt).Round(time.Millisecond))
}

// TestFenceLabAgentKilledHostCut: db0's agent is SIGKILLed, then db0 is
// cut off from everyone. Lease expiry must not count (refused since its
// last answer): the failover aborts and nothing is promoted. Nothing on
// db0 fences it (its agent is dead), so a client inside db0's namespace
// keeps writing to it — harmless, it is still the only primary — while
// from the client host nothing is writable-and-routed at all.
func TestFenceLabAgentKilledHostCut(t *testing.T) {
	t.Parallel()
	v, s, w, cutAt := agentKilled(t, "db0 cut off from everyone", func(v *vipLab) {
		v.lab.CutAll("db0")
		t.Cleanup(func() { v.lab.HealAll("db0") })
	})
	n, wrote, wr, _ := s.count("db0", cutAt, time.Now())
	if wrote != 0 || wr != 0 {
		t.Fatalf("the client host wrote to the cut-off db0 (%d of %d samples)", wrote, n)
	}
	acks := w.snapshot()
	after := countAfter(acks, cutAt)
	t.Logf("stranded writer in db0's namespace (its agent dead, nothing fences it): %d acks after the cut, the last %s after it; VIP holders now %v",
		after, acks[len(acks)-1].at.Sub(cutAt).Round(time.Millisecond), v.holders())
}

func countAfter(acks []writeAck, t0 time.Time) int {
	n := 0
	for _, a := range acks {
		if a.at.After(t0) {
			n++
		}
	}
	return n
}

// ---------------------------------------------------------------------
// 3: the primary's host is cut off with a writer stranded on it.

type strandedResult struct {
	window     time.Duration // stranded writer's last acknowledgement − cut (CutAll returned)
	cutTook    time.Duration // how long CutAll took (not in the window)
	acked      int           // stranded writer's acknowledged writes
	afterCut   int           // of which after the cut
	lost       int           // acknowledged by the old primary, missing on the new one
	vipLost    int           // same for the writer through the VIP
	firstVIP   time.Duration // cut → first write acknowledged through the VIP by the new primary
	promoted   time.Duration // cut → the promoted step (wall clock of the leader)
	newPrimary string
	fence      string
	timeline   string // failover steps after the cut (wall clock)
}

// strandedRun runs scenario 3 in a fresh lab: a writer inside db0's
// namespace writes to db0's own address, a client writes through the VIP,
// db0 is cut off from everyone at T; the failover must complete and the
// stranded writer be fenced; with heal, db0 is then healed and must stay
// unrouted and fenced for 5 s. Safety (never two writable-and-routed,
// never the VIP on two hosts) is asserted; the bounds are the caller's.
// startVIPWriter starts a client on the client host writing continuously
// through the VIP (table acked) and returns it with its stop function
// (also run at cleanup).
func startVIPWriter(t testing.TB, v *vipLab) (*ackWriter, func()) {
	t.Helper()
	execSQL(t, v.pg.Primary(), "CREATE TABLE acked (id bigint PRIMARY KEY)")
	vw := &ackWriter{pg: v.pg, first: map[string]time.Time{}, dial: func(ctx context.Context) (*pgx.Conn, error) {
		var conn *pgx.Conn
		err := v.lab.InNS("client", func() (err error) {
			conn, err = pgx.Connect(ctx, fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable", v.vip))
			return err
		})
		return conn, err
	}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); vw.run(ctx) }()
	stop := sync.OnceFunc(func() { cancel(); wg.Wait() })
	t.Cleanup(stop)
	return vw, stop
}

func strandedRun(t testing.TB, syncRep, heal bool) strandedResult {
	t.Helper()
	lc := &logCapture{}
	v := startVIPLab(t, syncRep, fenceLabOptions(lc))
	s := v.startWRSampler(t)
	waitWR(t, s, "db0", time.Time{})
	w := startStrandedWriter(t, v, "db0", v.pg.Nodes[0])

	// A client through the VIP, to time when the new primary takes writes.
	vw, stopVW := startVIPWriter(t, v)

	clustertest.WaitFor(t, waitLong, "both writers writing", func() (bool, string) {
		vw.mu.Lock()
		nv := len(vw.acked)
		vw.mu.Unlock()
		n := len(w.snapshot())
		return n >= 50 && nv >= 10, fmt.Sprintf("stranded %d acks (last error %s), through the VIP %d", n, w.lastError(), nv)
	})

	// The premise: db0 is the supported primary right up to the cut, and
	// every observer's leases are answered in time. Lease expiry counts
	// only if this observer saw the agent answer up to the cut (within
	// down_after + 2 probes + lease_timeout + 1 s before the intent); on
	// a machine so loaded that lease calls miss their 300 ms deadline the
	// leader rightly refuses it, and this test would measure the load.
	clustertest.WaitFor(t, waitLong, "db0 holding the VIP, every observer's leases answered for 2 s", func() (bool, string) {
		if !v.holdsVIP("db0") {
			return false, fmt.Sprintf("VIP holders %v", v.holders())
		}
		if bad := lc.find(-1, time.Now().Add(-2*time.Second), "lease not delivered"); len(bad) > 0 {
			return false, bad[len(bad)-1].String()
		}
		for i := range v.c.Nodes {
			if id, _ := v.c.Nodes[i].Obs.Leader(); id == "" {
				return false, v.c.Nodes[i].ID + " knows no leader (it leases nothing)"
			}
		}
		return true, ""
	})
	// T, the cut, is when CutAll has returned: its last rule is the one
	// that cuts db0 off from the observers (the gateway), so only from
	// then on no lease reaches db0's agent. CutAll runs a handful of
	// commands and takes from tens of ms to a second under load; that
	// time is logged and not counted.
	cutStart := time.Now()
	v.lab.CutAll("db0")
	cut := time.Now()
	res := strandedResult{cutTook: cut.Sub(cutStart)}
	t.Cleanup(func() { v.lab.HealAll("db0") })

	f := waitFailovers(t, v.c, 1, fsm.OutcomeCompleted)
	res.newPrimary = f.GetNewPrimary()
	newHost := v.host[res.newPrimary]
	timeline := []string{fmt.Sprintf("ODOWN +%s, intent +%s", f.GetOdownAt().AsTime().Sub(cut).Round(time.Millisecond), f.GetStartedAt().AsTime().Sub(cut).Round(time.Millisecond))}
	for _, st := range f.GetSteps() {
		if st.GetName() == fsm.StepFenced {
			res.fence = st.GetDetail()
		}
		if st.GetName() == fsm.StepPromoted {
			res.promoted = st.GetAt().AsTime().Sub(cut)
		}
		timeline = append(timeline, fmt.Sprintf("%s +%s (took %dms)", st.GetName(), st.GetAt().AsTime().Sub(cut).Round(time.Millisecond), st.GetDurationMs()))
	}
	res.timeline = strings.Join(timeline, ", ")
	clustertest.WaitFor(t, waitLong, "a write acknowledged through the VIP by "+res.newPrimary, func() (bool, string) {
		vw.mu.Lock()
		defer vw.mu.Unlock()
		at, ok := vw.first[res.newPrimary]
		res.firstVIP = at.Sub(cut)
		return ok, fmt.Sprintf("first acks by server: %v", vw.first)
	})
	waitWR(t, s, newHost, cut)
	for _, r := range append(lc.find(-1, cutStart, "live WAL positions changed the candidate"), lc.find(-1, cutStart, "failover started")...) {
		t.Logf("log: %s", r)
	}

	if heal {
		healCheck(t, v, s, w, res.newPrimary)
	}

	stopVW()
	w.stop()
	acks := w.snapshot()
	res.acked = len(acks)
	res.afterCut = countAfter(acks, cut)
	last := acks[len(acks)-1]
	res.window = last.at.Sub(cut)
	// The writer was really writing at the cut: otherwise the window
	// measures nothing.
	var lastBefore time.Time
	for _, a := range acks {
		if !a.at.After(cut) {
			lastBefore = a.at
		}
	}
	if gap := cut.Sub(lastBefore); gap > 250*time.Millisecond {
		t.Fatalf("the stranded writer's last acknowledgement before the cut was %s before it: it was not writing", gap)
	}

	ids := make([]int64, len(acks))
	for i, a := range acks {
		ids[i] = a.id
	}
	newNode := node(v.pg, res.newPrimary)
	var present int
	fmt.Sscan(query(t, newNode, "SELECT count(*) FROM stranded WHERE id = ANY($1)", ids), &present)
	res.lost = len(ids) - present
	vw.mu.Lock()
	vids := slices.Clone(vw.acked)
	vw.mu.Unlock()
	fmt.Sscan(query(t, newNode, "SELECT count(*) FROM acked WHERE id = ANY($1)", vids), &present)
	res.vipLost = len(vids) - present

	s.assertNeverTwo(t)
	v.assertNeverTwo(t, "db0", newHost)
	t.Logf("sync=%v: cut at %s (CutAll took %s before); stranded writer: %d acks, %d after the cut, last %s after it (writer's last error: %s); lost on %s: %d stranded, %d through the VIP; first write through the VIP on %s %s after the cut; failover after the cut: %s; fence: %s",
		syncRep, cut.Format("15:04:05.000"), res.cutTook.Round(time.Millisecond), res.acked, res.afterCut, res.window.Round(time.Millisecond), w.lastError(),
		res.newPrimary, res.lost, res.vipLost, res.newPrimary, res.firstVIP.Round(time.Millisecond), res.timeline, res.fence)
	return res
}

// healCheck heals db0 and, for 5 s, checks that it is never routed (no
// VIP on db0, /primary/pg-main/pg0 answers 503 on every observer, which
// answer 200 for the new primary) and stays fenced (the client host
// cannot write to its address).
func healCheck(t testing.TB, v *vipLab, s *wrSampler, w *strandedWriter, newPrimary string) {
	t.Helper()
	healed := time.Now()
	v.lab.HealAll("db0")
	roleChecks := 0
	for end := healed.Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		for i := range v.c.Nodes {
			code, err := roleStatus(v, i, "pg0")
			if err != nil || code != http.StatusServiceUnavailable {
				t.Fatalf("%s /primary/pg-main/pg0 after healing db0: %d %v; want 503", v.c.Nodes[i].ID, code, err)
			}
			roleChecks++
		}
		if v.holdsVIP("db0") {
			t.Fatalf("db0 holds the VIP again %s after healing", time.Since(healed).Round(time.Millisecond))
		}
	}
	// The endpoint does answer 200, for the new primary.
	for i := range v.c.Nodes {
		if code, err := roleStatus(v, i, newPrimary); err != nil || code != http.StatusOK {
			t.Fatalf("%s /primary/pg-main/%s: %d %v; want 200", v.c.Nodes[i].ID, newPrimary, code, err)
		}
	}
	n, wrote, _, lastErr := s.count("db0", healed, time.Now())
	if n < 10 {
		t.Fatalf("only %d client write samples to db0 in the 5 s after healing", n)
	}
	if wrote != 0 {
		t.Fatalf("the client host wrote to the healed old primary db0 in %d of %d samples", wrote, n)
	}
	err := v.clientWriteTo("db0", v.pg.Nodes[0], 2*time.Second)
	if err == nil {
		t.Fatal("a client write (2 s budget) to db0's address succeeded after healing")
	}
	v.mu.Lock()
	for _, smp := range v.samples {
		if !smp.at.Before(healed) && slices.Contains(smp.holders, "db0") {
			v.mu.Unlock()
			t.Fatalf("db0 held the VIP at %s, after healing", smp.at.Format("15:04:05.000"))
		}
	}
	v.mu.Unlock()
	var refences []string
	for i := range v.c.Nodes {
		r := counterValue(t, v.c.Nodes[i].Obs, "vigil_refences_total", map[string]string{"group": "pg-main", "member": "pg0", "result": "confirmed"})
		refences = append(refences, fmt.Sprintf("%s=%v", v.c.Nodes[i].ID, r))
	}
	t.Logf("5 s after healing db0: %d role checks all 503, %d client write samples to db0 all failed (last: %s); a 2 s write: %v; stranded writer's last error: %s; confirmed re-fences of pg0: %s",
		roleChecks, n, lastErr, err, w.lastError(), strings.Join(refences, " "))
}

// TestFenceLabPartitionStrandedWriter: db0 is cut off from everyone
// while a writer on db0 itself keeps writing to db0's own address. Its
// agent, losing its lease quorum, drops the VIP and cuts the database
// port off: the writer's last acknowledgement is at most lease_timeout +
// 200 ms after the cut. The failover completes (lease expiry counted:
// the agent answered leases up to the cut and its host no longer
// answers); with synchronous replication every acknowledged write is on
// the new primary. Healed, db0 is never routed again and stays fenced.
func TestFenceLabPartitionStrandedWriter(t *testing.T) {
	t.Parallel()
	for _, mode := range []struct {
		name string
		sync bool
	}{{"async", false}, {"sync", true}} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			res := strandedRun(t, mode.sync, true)
			if !strings.Contains(res.fence, "lease expired") {
				t.Errorf("fence step does not count lease expiry: %s", res.fence)
			}
			bound := labLeaseTimeout + strandedSlack
			t.Logf("stranded writer's last acknowledgement %s after the cut (bound %s)", res.window.Round(time.Millisecond), bound)
			if res.window > bound {
				t.Errorf("the stranded writer's last write was acknowledged %s after the cut: more than lease_timeout + %s = %s", res.window.Round(time.Millisecond), strandedSlack, bound)
			}
			if mode.sync && res.lost != 0 {
				t.Errorf("synchronous replication: %d acknowledged writes of the stranded writer missing on the new primary %s", res.lost, res.newPrimary)
			}
			if mode.sync && res.vipLost != 0 {
				t.Errorf("synchronous replication: %d acknowledged writes through the VIP missing on the new primary %s", res.vipLost, res.newPrimary)
			}
		})
	}
}

// TestFenceLabSwitchoverVIPAndDirectWriters: a planned switchover in the
// namespace lab with one writer through the VIP and one writer on the
// client host connected straight to the old primary's own address: no
// acknowledged write of either is missing on the new primary, and the
// direct writer gets nothing acknowledged after the fence step.
func TestFenceLabSwitchoverVIPAndDirectWriters(t *testing.T) {
	t.Parallel()
	lc := &logCapture{}
	v := startVIPLab(t, false, fenceLabOptions(lc))
	direct := startStrandedWriter(t, v, "client", v.pg.Nodes[0])
	vw, stopVW := startVIPWriter(t, v)
	clustertest.WaitFor(t, waitLong, "both writers writing", func() (bool, string) {
		vw.mu.Lock()
		nv := len(vw.acked)
		vw.mu.Unlock()
		n := len(direct.snapshot())
		return n >= 50 && nv >= 50, fmt.Sprintf("direct %d acks (last error %s), through the VIP %d", n, direct.lastError(), nv)
	})

	leader := v.c.WaitForLeader(waitLong)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	f, err := v.c.Nodes[leader].Obs.Controller().Request(ctx, "pg-main", fsm.KindSwitchover, "pg1")
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if f.GetOutcome() == "" {
		f = waitFailovers(t, v.c, 1, fsm.OutcomeCompleted) // a leader change mid-way: the next one finishes it
	}
	if f.GetOutcome() != fsm.OutcomeCompleted || f.GetNewPrimary() != "pg1" {
		t.Fatalf("switchover: %v", f)
	}
	var fencedAt time.Time
	for _, st := range f.GetSteps() {
		if st.GetName() == fsm.StepFenced {
			fencedAt = st.GetAt().AsTime()
		}
	}
	// Writes through the VIP reach the new primary; then stop both.
	vw.mu.Lock()
	n0 := len(vw.acked)
	vw.mu.Unlock()
	clustertest.WaitFor(t, waitLong, "writes through the VIP on the new primary", func() (bool, string) {
		vw.mu.Lock()
		defer vw.mu.Unlock()
		return len(vw.acked) > n0+20, fmt.Sprint(len(vw.acked) - n0)
	})
	stopVW()
	direct.stop()

	newP := node(v.pg, "pg1")
	acks := direct.snapshot()
	ids := make([]int64, 0, len(acks))
	for _, a := range acks {
		ids = append(ids, a.id)
		if a.at.After(fencedAt) {
			t.Errorf("direct write %d acknowledged at %s, after the fenced step (%s)", a.id, a.at.Format("15:04:05.000"), fencedAt.Format("15:04:05.000"))
		}
	}
	if have := query(t, newP, "SELECT count(*) FROM stranded WHERE id = ANY($1)", ids); have != fmt.Sprint(len(ids)) {
		t.Fatalf("direct writer: %d acknowledged, %s on the new primary", len(ids), have)
	}
	vw.mu.Lock()
	vids := slices.Clone(vw.acked)
	vw.mu.Unlock()
	if have := query(t, newP, "SELECT count(*) FROM acked WHERE id = ANY($1)", vids); have != fmt.Sprint(len(vids)) {
		t.Fatalf("VIP writer: %d acknowledged, %s on the new primary", len(vids), have)
	}
	assertOneWritable(t, v.pg, "pg1")
	t.Logf("switchover in the VIP lab: direct writer %d acked (last %s before fenced), VIP writer %d acked, none lost; steps: %v",
		len(ids), func() time.Duration {
			if len(acks) == 0 {
				return 0
			}
			return fencedAt.Sub(acks[len(acks)-1].at)
		}(), len(vids), f.GetSteps())
}
