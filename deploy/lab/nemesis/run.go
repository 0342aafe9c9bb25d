package nemesis

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// RunConfig is one nemesis run.
type RunConfig struct {
	Seed int64
	// Length is how long faults are drawn over (default 30s).
	Length time.Duration
	// Kinds limits the fault kinds (nil: all).
	Kinds []string
	// Sync: -1 lets the seed choose, 0 async, 1 sync.
	Sync int
	// Vigil is the vigil binary; Dir the run's directory (kept by the
	// caller for a failing run).
	Vigil string
	Dir   string
	// Settle bounds the wait for one primary and every standby streaming
	// after the last heal (default 60s).
	Settle time.Duration
	Log    *slog.Logger
}

// Run builds a lab, plays the seed's plan on it (RunOn) and tears it
// down. An error means the run itself could not be carried out (the lab
// did not start); the checker judges the rest.
func Run(ctx context.Context, cfg RunConfig) (*History, Plan, error) {
	cfg.defaults()
	plan := NewPlan(cfg.Seed, cfg.Length, cfg.Kinds, cfg.Sync)
	l, err := NewLab(ctx, LabConfig{Vigil: cfg.Vigil, Dir: cfg.Dir, Sync: plan.Sync, Disks: true, Log: cfg.Log})
	if err != nil {
		return nil, plan, err
	}
	defer l.Close()
	h, err := RunOn(ctx, l, cfg)
	return h, plan, err
}

func (cfg *RunConfig) defaults() {
	if cfg.Length == 0 {
		cfg.Length = 30 * time.Second
	}
	if cfg.Settle == 0 {
		cfg.Settle = 60 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
}

// RunOn plays the seed's plan on a lab that is settled (one primary,
// every standby streaming from it): it starts the clients, injects and
// heals the faults, lets the cluster settle again and returns what was
// recorded. The lab's replication mode must be the plan's (the soak
// keeps one lab per mode). An error means the run could not be carried
// out; a lab that did not settle is reported in History.Final.Error.
func RunOn(ctx context.Context, l *Lab, cfg RunConfig) (*History, error) {
	cfg.defaults()
	return runPlan(ctx, l, NewPlan(cfg.Seed, cfg.Length, cfg.Kinds, cfg.Sync), cfg)
}

// runPlan plays plan on a settled lab (RunOn).
func runPlan(ctx context.Context, l *Lab, plan Plan, cfg RunConfig) (*History, error) {
	cfg.defaults()
	if plan.Sync != l.Cfg.Sync {
		return nil, fmt.Errorf("seed %d wants sync=%v, the lab has sync=%v", cfg.Seed, plan.Sync, l.Cfg.Sync)
	}
	cfg.Log.Info("nemesis run", "plan", plan.String())
	if plan.ClockObserver != "" {
		if err := l.RestartObserver(ctx, plan.ClockObserver, plan.ClockOffset); err != nil {
			return nil, err
		}
		defer func() { _ = l.RestartObserver(context.Background(), plan.ClockObserver, 0) }()
	}
	if err := l.WaitReady(ctx, 60*time.Second); err != nil {
		return nil, fmt.Errorf("lab not ready before seed %d: %w", cfg.Seed, err)
	}
	table := fmt.Sprintf("nemesis_writes_%d", uint64(cfg.Seed))
	h := &History{
		Seed: cfg.Seed, Sync: plan.Sync, Members: l.Members, Observers: l.Observers,
		DownAfter: l.Cfg.DownAfter, SampleEvery: sampleEvery,
	}
	rec := newRecorder()
	r, _, err := l.GetGroup(ctx)
	if err != nil {
		return nil, err
	}
	rec.base = r.GetGroup().GetEpoch()
	rec.noteGroup(r.GetGroup(), time.Now())
	h.InitialPrimary, h.InitialEpoch = r.GetGroup().GetPrimary(), r.GetGroup().GetEpoch()
	if err := prepareTables(ctx, l, h.InitialPrimary, table); err != nil {
		return nil, err
	}

	cctx, stopClients := context.WithCancel(ctx)
	var wg sync.WaitGroup
	samplerErr := make(chan error, 1)
	wg.Go(func() { samplerErr <- l.sampler(cctx, rec) })
	wg.Go(func() { l.watchFailovers(cctx, rec) })
	wg.Go(func() { l.writer(cctx, rec, table, "vip", l.dialFrom("client", l.VIP, pgPort)) })
	wg.Go(func() { l.writer(cctx, rec, table, "haproxy", l.dialFrom("client", l.Net.IP("hap"), haproxyPort)) })
	for _, m := range l.Members {
		ip := l.Net.IP(hostOf(m))
		wg.Go(func() { l.writer(cctx, rec, table, "stranded-"+m, l.dialFrom(hostOf(m), ip, pgPort)) })
	}
	n := &nemesis{l: l, rec: rec, busy: map[string]int{}, procs: map[string]bool{}}
	rctx, stopRepair := context.WithCancel(ctx)
	var rwg sync.WaitGroup
	rwg.Go(func() { n.repairer(rctx) })

	h.Start = time.Now()
	if plan.ClockObserver != "" {
		n.record(Fault{Kind: KindClockOffset, Target: plan.ClockObserver, Start: h.Start, Detail: fmt.Sprintf("clock %+v", plan.ClockOffset)})
	}
	n.run(ctx, plan, h.Start)
	// Every fault heals itself after its hold; the plan's length is a
	// floor for the run.
	sleepCtx(ctx, time.Until(h.Start.Add(plan.Length)))
	h.Healed = time.Now()
	cfg.Log.Info("healed; settling", "seed", cfg.Seed)
	settleErr := settle(ctx, l, rec, cfg.Settle)
	// A little more traffic on the settled primary, then the final state.
	sleepCtx(ctx, 500*time.Millisecond)
	stopRepair()
	rwg.Wait()
	stopClients()
	wg.Wait()
	if err := <-samplerErr; err != nil {
		return nil, fmt.Errorf("sampler: %w", err)
	}
	n.mu.Lock()
	for i := range n.faults {
		if n.faults[i].Kind == KindClockOffset {
			n.faults[i].End = time.Now()
		}
	}
	h.Faults = slices.Clone(n.faults)
	n.mu.Unlock()
	h.Final = finalState(ctx, l, rec, table)
	if settleErr != nil && h.Final.Error == "" {
		h.Final.Error = "did not settle: " + settleErr.Error()
	}
	rec.mu.Lock()
	h.Attempts, h.Samples = rec.attempts, rec.samples
	rec.mu.Unlock()
	h.Failovers = rec.failoverList()
	h.End = time.Now()
	dropTable(ctx, l, h.Final.Primary, table)
	return h, nil
}

// prepareTables creates the run's table on the primary (and the bulk
// table the replay-pause fault fills).
func prepareTables(ctx context.Context, l *Lab, primary, table string) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, l.Node(primary).DSN())
	if err != nil {
		return fmt.Errorf("prepare tables on %s: %w", primary, err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(cctx, fmt.Sprintf(`DROP TABLE IF EXISTS %[1]s;
CREATE TABLE %[1]s (client text, id bigint, at timestamptz DEFAULT now(), PRIMARY KEY (client, id));
CREATE TABLE IF NOT EXISTS nemesis_bulk (id bigint, pad text);
TRUNCATE nemesis_bulk`, table))
	if err != nil {
		return fmt.Errorf("prepare tables on %s: %w", primary, err)
	}
	return nil
}

// dropTable removes a finished run's table (best effort: the next run
// with the same seed drops it anyway).
func dropTable(ctx context.Context, l *Lab, primary, table string) {
	if primary == "" {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, l.Node(primary).DSN())
	if err != nil {
		return
	}
	defer conn.Close(context.Background())
	_, _ = conn.Exec(cctx, "DROP TABLE IF EXISTS "+table)
}

// settle waits until no failover is in progress and exactly one member
// is writable, routed by the VIP and HAProxy and named primary, with
// every other member streaming from it.
func settle(ctx context.Context, l *Lab, rec *recorder, timeout time.Duration) error {
	var why string
	err := poll(ctx, timeout, func() (bool, error) {
		r, _, err := l.GetGroup(ctx)
		if err != nil {
			why = "no observer answered: " + err.Error()
			return false, nil
		}
		g := r.GetGroup()
		if g.GetActiveFailover() != nil {
			why = fmt.Sprintf("failover of epoch %d in progress", g.GetActiveFailover().GetEpoch())
			return false, nil
		}
		prim := g.GetPrimary()
		rec.mu.Lock()
		var last Sample
		if len(rec.samples) > 0 {
			last = rec.samples[len(rec.samples)-1]
		}
		rec.mu.Unlock()
		if !slices.Equal(last.Writable, []string{prim}) || !slices.Equal(last.VIP, []string{prim}) || !slices.Equal(last.HAProxy, []string{prim}) {
			why = fmt.Sprintf("primary %s; writable %v, VIP on %v, HAProxy to %v", prim, last.Writable, last.VIP, last.HAProxy)
			return false, nil
		}
		streaming, _, err := replicationOf(ctx, l, prim)
		if err != nil {
			why = err.Error()
			return false, nil
		}
		if len(streaming) != len(l.Members)-1 {
			why = fmt.Sprintf("streaming from %s: %v", prim, streaming)
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%w (%s)", err, why)
	}
	return nil
}

// finalState reads the state the checker judges.
func finalState(ctx context.Context, l *Lab, rec *recorder, table string) Final {
	f := Final{ObserverState: map[string]string{}}
	var errs []error
	if r, _, err := l.GetGroup(ctx); err == nil {
		g := r.GetGroup()
		rec.noteGroup(g, time.Now())
		f.Primary, f.Epoch = g.GetPrimary(), g.GetEpoch()
		if a := g.GetActiveFailover(); a != nil {
			f.Active = a.GetEpoch()
		}
	} else {
		errs = append(errs, fmt.Errorf("group: %w", err))
	}
	rec.mu.Lock()
	if len(rec.samples) > 0 {
		s := rec.samples[len(rec.samples)-1]
		f.Writable, f.VIP, f.HAProxy = s.Writable, s.VIP, s.HAProxy
	}
	rec.mu.Unlock()
	if f.Primary != "" {
		// A standby's walreceiver may be between two connections at the
		// instant of one read (catchup after a timeline switch): give it
		// a few seconds to be streaming, as settle did.
		var streaming []string
		var err error
		_ = poll(ctx, 10*time.Second, func() (bool, error) {
			streaming, _, err = replicationOf(ctx, l, f.Primary)
			return err == nil && len(streaming) == len(l.Members)-1, nil
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("replication on %s: %w", f.Primary, err))
		}
		f.Streaming = streaming
		sort.Strings(f.Streaming)
		present, err := presentRows(ctx, l, f.Primary, table)
		if err != nil {
			errs = append(errs, fmt.Errorf("rows on %s: %w", f.Primary, err))
		} else {
			f.Present = present
		}
	}
	digests, err := observerDigests(ctx, l)
	if err != nil {
		errs = append(errs, err)
	}
	f.ObserverState = digests
	if err := errors.Join(errs...); err != nil {
		f.Error = err.Error()
	}
	return f
}

func presentRows(ctx context.Context, l *Lab, m, table string) (map[string][]int64, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, l.Node(m).DSN())
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(cctx, "SELECT client, id FROM "+table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	res := map[string][]int64{}
	for rows.Next() {
		var c string
		var id int64
		if err := rows.Scan(&c, &id); err != nil {
			return nil, err
		}
		res[c] = append(res[c], id)
	}
	return res, rows.Err()
}

// observerDigests waits until every observer has applied the same Raft
// index, then digests each one's own copy of the group.
func observerDigests(ctx context.Context, l *Lab) (map[string]string, error) {
	res := map[string]string{}
	var why string
	err := poll(ctx, 20*time.Second, func() (bool, error) {
		clear(res)
		var idx []uint64
		for _, o := range l.Observers {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := l.Admin(o).Status(cctx, &vigilv1.StatusRequest{LocalOnly: true})
			if err != nil {
				cancel()
				why = fmt.Sprintf("%s: %v", o, err)
				return false, nil
			}
			g, err := l.Admin(o).GetGroup(cctx, &vigilv1.GetGroupRequest{Name: Group})
			cancel()
			if err != nil {
				why = fmt.Sprintf("%s: %v", o, err)
				return false, nil
			}
			if g.GetAnsweredBy() != o {
				why = fmt.Sprintf("%s answered for %s", g.GetAnsweredBy(), o)
				return false, nil
			}
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(g.GetGroup())
			if err != nil {
				return false, err
			}
			sum := sha256.Sum256(b)
			res[o] = hex.EncodeToString(sum[:])
			idx = append(idx, st.GetAppliedIndex(), g.GetAppliedIndex())
		}
		for _, i := range idx {
			if i != idx[0] {
				why = fmt.Sprintf("applied indexes differ: %v", idx)
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return res, fmt.Errorf("observer states: %w (%s)", err, why)
	}
	return res, nil
}

// WriteHistory writes h as JSON to path (for a failing run).
func WriteHistory(path string, h *History) error {
	b, err := json.MarshalIndent(h, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
