package nemesis

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// AllKinds are the fault kinds a plan draws from (KindClockOffset is
// drawn separately: it lasts the whole run).
var AllKinds = []string{
	KindKillPostgres, KindKillHost, KindHangPrimary, KindPartitionPrimary,
	KindPartitionOne, KindPartitionOneWay, KindSplitLeaderAlone, KindSplitLeaderMajor,
	KindKillLeader, KindKillLeaderMidFail, KindKillAgent, KindStallDisk,
	KindFlapPrimary, KindPauseReplay, KindPacketLoss, KindSwitchover, KindRestartObservers,
}

// justifies says which kinds make the primary unusable for a quorum of
// observers, so that failing it over is expected.
var justifies = map[string]bool{
	KindKillPostgres: true, KindKillHost: true, KindHangPrimary: true,
	KindPartitionPrimary: true, KindPartitionOneWay: true, KindKillLeaderMidFail: true,
	KindStallDisk: true, KindFlapPrimary: true,
}

// Planned is one fault of a plan.
type Planned struct {
	At   time.Duration // after the clients started
	Kind string
	Hold time.Duration // how long the fault stays before it is healed
	// Pick is a random number the fault uses to choose among targets or
	// points (which observer, which step), so that a seed fixes them.
	Pick int
	// until, when set, heals the fault as soon as it returns true (polled;
	// Hold stays the upper bound): the benchmark heals once the failover
	// is over. It gets the fault as recorded (Start, Target).
	until func(*recorder, Fault) bool
}

// Plan is the schedule a seed gives.
type Plan struct {
	Seed   int64
	Sync   bool
	Length time.Duration
	// ClockObserver runs with ClockOffset ("" = none).
	ClockObserver string
	ClockOffset   time.Duration
	Faults        []Planned
}

// NewPlan draws a plan from seed: 2 to 4 faults of kinds (nil = all)
// over length, some starting while the previous one is still being
// handled (mid-failover). sync < 0 lets the seed choose the replication
// mode; 0 is asynchronous, 1 synchronous.
func NewPlan(seed int64, length time.Duration, kinds []string, sync int) Plan {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x7669676c))
	if len(kinds) == 0 {
		kinds = AllKinds
	}
	p := Plan{Seed: seed, Length: length}
	switch sync {
	case 0, 1:
		p.Sync = sync == 1
	default:
		p.Sync = rng.IntN(2) == 0
	}
	if rng.IntN(4) == 0 {
		p.ClockObserver = fmt.Sprintf("obs%d", 1+rng.IntN(3))
		p.ClockOffset = time.Duration(2+rng.IntN(29)) * time.Second
		if rng.IntN(2) == 0 {
			p.ClockOffset = -p.ClockOffset
		}
	}
	n := 2 + rng.IntN(3)
	at := time.Duration(1000+rng.IntN(2000)) * time.Millisecond
	for i := 0; i < n && at < length; i++ {
		f := Planned{At: at, Kind: kinds[rng.IntN(len(kinds))], Pick: rng.IntN(1 << 30)}
		f.Hold = time.Duration(1000+rng.IntN(6000)) * time.Millisecond
		if f.Kind == KindPacketLoss {
			f.Hold = time.Duration(5000+rng.IntN(5000)) * time.Millisecond
		}
		p.Faults = append(p.Faults, f)
		if rng.IntN(10) < 3 {
			// The next fault lands while this one is being handled.
			at += time.Duration(1500+rng.IntN(2500)) * time.Millisecond
		} else {
			at += f.Hold + time.Duration(3000+rng.IntN(5000))*time.Millisecond
		}
	}
	return p
}

// String is the plan in one line per fault.
func (p Plan) String() string {
	var b strings.Builder
	mode := "async"
	if p.Sync {
		mode = "sync"
	}
	fmt.Fprintf(&b, "seed %d (%s, %s)", p.Seed, mode, p.Length)
	if p.ClockObserver != "" {
		fmt.Fprintf(&b, ", %s clock %+v", p.ClockObserver, p.ClockOffset)
	}
	for _, f := range p.Faults {
		fmt.Fprintf(&b, "; +%dms %s for %dms", f.At.Milliseconds(), f.Kind, f.Hold.Milliseconds())
	}
	return b.String()
}

// nemesis injects a plan's faults into a lab and heals them.
type nemesis struct {
	l   *Lab
	rec *recorder

	mu     sync.Mutex
	faults []Fault
	busy   map[string]int  // member -> faults holding it (the repairer keeps off)
	procs  map[string]bool // member -> a fault is killing/stopping/freezing its processes
}

// record appends a fault and returns its index.
func (n *nemesis) record(f Fault) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults = append(n.faults, f)
	return len(n.faults) - 1
}

func (n *nemesis) ended(i int, detail string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults[i].End = time.Now()
	if detail != "" {
		if n.faults[i].Detail != "" {
			n.faults[i].Detail += "; "
		}
		n.faults[i].Detail += detail
	}
}

func (n *nemesis) hold(m string, d int) {
	n.mu.Lock()
	n.busy[m] += d
	n.mu.Unlock()
}

func (n *nemesis) isBusy(m string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.busy[m] > 0
}

// claimProcs gives one fault at a time the right to kill, stop, restart
// or freeze a member's processes: two flappers on one postmaster would
// fight over it, and that tests the harness, not vigil.
func (n *nemesis) claimProcs(m string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.procs[m] {
		return false
	}
	n.procs[m] = true
	return true
}

func (n *nemesis) releaseProcs(m string) {
	n.mu.Lock()
	delete(n.procs, m)
	n.mu.Unlock()
}

// primary is the member the replicated state names primary now.
func (n *nemesis) primary(ctx context.Context) string {
	if r, _, err := n.l.GetGroup(ctx); err == nil {
		n.rec.noteGroup(r.GetGroup(), time.Now())
		return r.GetGroup().GetPrimary()
	}
	if g := n.rec.lastGroup(); g != nil {
		return g.GetPrimary()
	}
	return ""
}

// run injects every planned fault at its time and heals it after its
// hold; it returns when all are healed (or ctx ends, healing what is
// left).
func (n *nemesis) run(ctx context.Context, p Plan, start time.Time) {
	var wg sync.WaitGroup
	for _, f := range p.Faults {
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(start.Add(f.At))):
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() { n.inject(ctx, f) })
	}
	wg.Wait()
}

// inject runs one fault from injection to heal.
func (n *nemesis) inject(ctx context.Context, f Planned) {
	l := n.l
	prim := n.primary(ctx)
	if prim == "" {
		n.record(Fault{Kind: f.Kind, Start: time.Now(), End: time.Now(), Detail: "skipped: no primary known"})
		return
	}
	pn := l.Node(prim)
	host := hostOf(prim)
	fault := Fault{Kind: f.Kind, Target: prim, Justifies: justifies[f.Kind], Start: time.Now()}
	var heal func() string
	var err error
	holdMember := prim
	switch f.Kind {
	case KindKillPostgres, KindKillHost, KindHangPrimary, KindKillLeaderMidFail, KindKillAgent, KindStallDisk, KindFlapPrimary:
		if !n.claimProcs(prim) {
			n.record(Fault{Kind: f.Kind, Target: prim, Start: fault.Start, End: time.Now(), Detail: "skipped: another fault is acting on " + prim + "'s processes"})
			return
		}
		defer n.releaseProcs(prim)
	}
	switch f.Kind {
	case KindKillPostgres:
		i := n.record(fault)
		err = pn.Kill()
		heal = func() string { return errString(pn.Start(context.Background())) }
		n.finishHeld(ctx, i, f, prim, err, heal)
		return
	case KindKillHost:
		// Powered off: frozen, silent on the network (no RST), then
		// killed. At heal it "reboots": the VIP and the agent's fence
		// rules are gone with the old kernel, the agent starts first,
		// then PostgreSQL (as the vigil-node unit orders it).
		i := n.record(fault)
		_ = l.StopAgent(prim)
		_ = pn.Stop()
		err = l.isolate(host, true)
		err = firstErr(err, pn.Kill())
		err = firstErr(err, l.KillAgent(prim))
		heal = func() string {
			herr := l.reboot(host)
			herr = firstErr(herr, l.isolate(host, false))
			herr = firstErr(herr, l.StartAgent(prim))
			herr = firstErr(herr, l.waitAgent(context.Background(), prim))
			return errString(herr, pn.Start(context.Background()))
		}
		n.finishHeld(ctx, i, f, prim, err, heal)
		return
	case KindHangPrimary:
		i := n.record(fault)
		err = pn.Stop()
		heal = func() string { return errString(pn.Cont()) }
		n.finishHeld(ctx, i, f, prim, err, heal)
		return
	case KindPartitionPrimary, KindPartitionOne, KindPartitionOneWay:
		obs := l.Observers
		if f.Kind == KindPartitionOne {
			obs = []string{l.Observers[f.Pick%3]}
			fault.Detail = "from " + obs[0]
		}
		i := n.record(fault)
		for _, o := range obs {
			if f.Kind == KindPartitionOneWay {
				err = firstErr(err, l.Net.Block(host, o))
			} else {
				err = firstErr(err, l.Net.CutErr(host, o))
			}
		}
		heal = func() string {
			var herr error
			for _, o := range obs {
				if f.Kind == KindPartitionOneWay {
					herr = firstErr(herr, l.Net.Unblock(host, o))
				} else {
					herr = firstErr(herr, l.Net.HealErr(host, o))
				}
			}
			return errString(herr)
		}
		n.finishHeld(ctx, i, f, prim, err, heal)
		return
	case KindSplitLeaderAlone, KindSplitLeaderMajor:
		leader, lerr := l.Leader(ctx)
		if lerr != nil {
			n.record(Fault{Kind: f.Kind, Start: fault.Start, End: time.Now(), Detail: "skipped: " + lerr.Error()})
			return
		}
		alone := leader
		if f.Kind == KindSplitLeaderMajor {
			alone = except(l.Observers, leader)[f.Pick%2]
		}
		rest := except(l.Observers, alone)
		fault.Target = alone + "|" + strings.Join(rest, ",")
		fault.Detail = "leader " + leader
		holdMember = ""
		i := n.record(fault)
		for _, o := range rest {
			err = firstErr(err, l.Net.CutErr(alone, o))
		}
		heal = func() string {
			var herr error
			for _, o := range rest {
				herr = firstErr(herr, l.Net.HealErr(alone, o))
			}
			return errString(herr)
		}
		n.finishHeld(ctx, i, f, holdMember, err, heal)
		return
	case KindKillLeader:
		leader, lerr := l.Leader(ctx)
		if lerr != nil {
			n.record(Fault{Kind: f.Kind, Start: fault.Start, End: time.Now(), Detail: "skipped: " + lerr.Error()})
			return
		}
		fault.Target = leader
		i := n.record(fault)
		err = l.KillObserver(leader)
		heal = func() string { return errString(l.StartObserver(leader)) }
		n.finishHeld(ctx, i, f, "", err, heal)
		return
	case KindRestartObservers:
		// All at once: the state must come back from Raft's disk and
		// nothing may move while the observers relearn health (the
		// standbys are all reachable, so a spurious failover could).
		fault.Target = "observers"
		holdMember = ""
		i := n.record(fault)
		for _, o := range l.Observers {
			err = firstErr(err, l.KillObserver(o))
		}
		heal = func() string {
			var herr error
			for _, o := range l.Observers {
				herr = firstErr(herr, l.StartObserver(o))
			}
			return errString(herr)
		}
		n.finishHeld(ctx, i, f, holdMember, err, heal)
		return
	case KindKillLeaderMidFail:
		n.killLeaderMidFailover(ctx, f, prim, fault)
		return
	case KindKillAgent:
		i := n.record(fault)
		err = l.KillAgent(prim)
		heal = func() string { return errString(l.StartAgent(prim)) }
		n.finishHeld(ctx, i, f, prim, err, heal)
		return
	case KindStallDisk:
		mnt := l.Disk(prim)
		if mnt == "" {
			n.record(Fault{Kind: f.Kind, Target: prim, Start: fault.Start, End: time.Now(), Detail: "skipped: the lab has no disks"})
			return
		}
		i := n.record(fault)
		err = runCmd(ctx, "fsfreeze", "-f", mnt)
		heal = func() string { return errString(runCmd(context.Background(), "fsfreeze", "-u", mnt)) }
		n.finishHeld(ctx, i, f, prim, err, heal)
		return
	case KindFlapPrimary:
		i := n.record(fault)
		n.hold(prim, 1)
		rng := rand.New(rand.NewPCG(uint64(f.Pick), 1))
		deadline := time.Now().Add(f.Hold)
		flaps := 0
		for time.Now().Before(deadline) && ctx.Err() == nil {
			if err := pn.Kill(); err != nil {
				break
			}
			flaps++
			sleepCtx(ctx, time.Duration(200+rng.IntN(600))*time.Millisecond)
			if err := pn.Start(context.Background()); err != nil {
				n.ended(i, "restart failed: "+err.Error())
				break
			}
			sleepCtx(ctx, time.Duration(300+rng.IntN(900))*time.Millisecond)
		}
		if !pn.Running() {
			_ = pn.Start(context.Background())
		}
		n.ended(i, fmt.Sprintf("%d kills", flaps))
		n.hold(prim, -1)
		return
	case KindPauseReplay:
		standbys := except(l.Members, prim)
		sb := standbys[f.Pick%len(standbys)]
		fault.Target = sb
		holdMember = sb
		i := n.record(fault)
		err = n.sql(ctx, sb, "SELECT pg_wal_replay_pause()")
		// Enough WAL that the paused standby is past max_lag.
		_ = n.sql(ctx, prim, "INSERT INTO nemesis_bulk SELECT g, repeat('x', 500) FROM generate_series(1, 2000) g")
		heal = func() string { return errString(n.sql(context.Background(), sb, "SELECT pg_wal_replay_resume()")) }
		n.finishHeld(ctx, i, f, holdMember, err, heal)
		return
	case KindPacketLoss:
		pct := 3 + f.Pick%6
		fault.Target = "observers"
		fault.Detail = fmt.Sprintf("%d%% loss on every observer", pct)
		holdMember = ""
		i := n.record(fault)
		for _, o := range l.Observers {
			err = firstErr(err, l.Net.SetLoss(o, pct))
		}
		heal = func() string {
			var herr error
			for _, o := range l.Observers {
				herr = firstErr(herr, l.Net.SetLoss(o, 0))
			}
			return errString(herr)
		}
		n.finishHeld(ctx, i, f, holdMember, err, heal)
		return
	case KindSwitchover:
		standbys := except(l.Members, prim)
		to := standbys[f.Pick%len(standbys)]
		fault.Target = to
		fault.Justifies = true
		i := n.record(fault)
		var serr error
		for _, o := range l.Observers {
			if !l.ObserverAlive(o) {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			_, serr = l.Admin(o).Switchover(cctx, &vigilv1.SwitchoverRequest{Group: Group, To: to})
			cancel()
			if serr == nil {
				break
			}
		}
		n.ended(i, errString(serr))
		return
	default:
		n.record(Fault{Kind: f.Kind, Start: fault.Start, End: time.Now(), Detail: "unknown kind"})
	}
}

// finishHeld holds member m (none when "") for the fault's hold, then
// heals; a fault that could not be injected is healed at once.
func (n *nemesis) finishHeld(ctx context.Context, i int, f Planned, m string, err error, heal func() string) {
	if m != "" {
		n.hold(m, 1)
		defer n.hold(m, -1)
	}
	if err != nil {
		n.ended(i, "inject failed: "+err.Error())
		if heal != nil {
			heal()
		}
		return
	}
	n.holdFault(ctx, i, f)
	n.ended(i, heal())
}

// holdFault waits f.Hold, or less if f.until says the fault has done its
// work.
func (n *nemesis) holdFault(ctx context.Context, i int, f Planned) {
	if f.until == nil {
		sleepCtx(ctx, f.Hold)
		return
	}
	n.mu.Lock()
	fault := n.faults[i]
	n.mu.Unlock()
	_ = poll(ctx, f.Hold, func() (bool, error) { return f.until(n.rec, fault), nil })
}

// killLeaderMidFailover kills the primary's postgres, waits for the
// failover to reach a step chosen by Pick (started, fenced, promoted),
// and kills the Raft leader right then.
func (n *nemesis) killLeaderMidFailover(ctx context.Context, f Planned, prim string, fault Fault) {
	l := n.l
	pn := l.Node(prim)
	i := n.record(fault)
	n.hold(prim, 1)
	defer n.hold(prim, -1)
	if err := pn.Kill(); err != nil {
		n.ended(i, "inject failed: "+err.Error())
		return
	}
	steps := []string{"", "fenced", "promoted"}
	want := steps[f.Pick%len(steps)]
	var leader string
	err := poll(ctx, 20*time.Second, func() (bool, error) {
		r, _, err := l.GetGroup(ctx)
		if err != nil {
			return false, nil
		}
		a := r.GetGroup().GetActiveFailover()
		if a == nil {
			return false, nil
		}
		reached := want == ""
		for _, s := range a.GetSteps() {
			if s.GetName() == want {
				reached = true
			}
		}
		if !reached {
			return false, nil
		}
		leader, err = l.Leader(ctx)
		return err == nil, nil
	})
	detail := ""
	if err != nil {
		detail = "no failover step " + want + " seen: leader not killed"
	} else {
		_ = l.KillObserver(leader)
		detail = fmt.Sprintf("leader %s killed at step %q", leader, orStarted(want))
	}
	sleepCtx(ctx, f.Hold)
	var herr error
	if leader != "" {
		herr = l.StartObserver(leader)
	}
	herr = firstErr(herr, pn.Start(context.Background()))
	n.ended(i, detail+errSuffix(herr))
}

func orStarted(s string) string {
	if s == "" {
		return "started"
	}
	return s
}

// sql runs one statement on a member from the test process (the
// database fence lets it through).
func (n *nemesis) sql(ctx context.Context, m, q string) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, n.l.Node(m).DSN())
	if err != nil {
		return fmt.Errorf("%s: connect: %w", m, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(cctx, q); err != nil {
		return fmt.Errorf("%s: %s: %w", m, q, err)
	}
	return nil
}

// repairer does what an operator's automation does after a failover: a
// member that is not streaming from the primary (an old primary, a
// standby left on an old timeline) and that no fault holds is rejoined
// with pg_rewind. It runs until ctx ends.
func (n *nemesis) repairer(ctx context.Context) {
	since := map[string]time.Time{} // member -> first seen not streaming
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n.repairOnce(ctx, since)
	}
}

func (n *nemesis) repairOnce(ctx context.Context, since map[string]time.Time) {
	l := n.l
	r, _, err := l.GetGroup(ctx)
	if err != nil || r.GetGroup().GetActiveFailover() != nil {
		return
	}
	prim := r.GetGroup().GetPrimary()
	if prim == "" || n.isBusy(prim) {
		return
	}
	streaming, inRecovery, err := replicationOf(ctx, l, prim)
	if err != nil || inRecovery {
		return
	}
	for _, m := range l.Members {
		if m == prim || n.isBusy(m) || slices.Contains(streaming, m) {
			delete(since, m)
			continue
		}
		if _, ok := since[m]; !ok {
			since[m] = time.Now()
		}
		// A standby the leader just re-pointed needs a moment to
		// connect; an old primary is rejoined at once.
		rec, rerr := memberInRecovery(ctx, l, m)
		if rerr == nil && rec && time.Since(since[m]) < 5*time.Second {
			continue
		}
		// Hold both ends' processes: a fault killing the source in the
		// middle of pg_rewind tests the harness, not vigil.
		if !n.claimProcs(m) {
			continue
		}
		if !n.claimProcs(prim) {
			n.releaseProcs(m)
			return
		}
		// The state read above may be stale by now: replicationOf can
		// block on a hung primary until it is resumed, by which time
		// another member may have been promoted. Rewinding that one
		// from the old primary would be the harness's own split of
		// history, so act only on a state that still holds.
		if !n.stillPrimary(ctx, prim, r.GetGroup().GetEpoch()) {
			n.releaseProcs(prim)
			n.releaseProcs(m)
			return
		}
		i := n.record(Fault{Kind: "rejoin", Target: m, Start: time.Now(), Detail: "pg_rewind from " + prim})
		n.hold(m, 1)
		rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := l.Node(m).Rejoin(rctx, l.Node(prim))
		detail := errString(err)
		if err != nil {
			// What an operator does when a rewind cannot: a fresh clone.
			if err = l.Node(m).Rebuild(rctx, l.Node(prim)); err != nil {
				detail += "; rebuild with pg_basebackup failed too: " + err.Error()
			} else {
				detail += "; rebuilt with pg_basebackup"
			}
		}
		cancel()
		n.hold(m, -1)
		n.releaseProcs(prim)
		n.releaseProcs(m)
		n.ended(i, detail)
		delete(since, m)
	}
}

// stillPrimary reports whether the group's state still names prim as
// primary at epoch with no failover under way.
func (n *nemesis) stillPrimary(ctx context.Context, prim string, epoch uint64) bool {
	r, _, err := n.l.GetGroup(ctx)
	if err != nil {
		return false
	}
	g := r.GetGroup()
	return g.GetActiveFailover() == nil && g.GetPrimary() == prim && g.GetEpoch() == epoch
}

// replicationOf lists the members streaming from m (steadily: for 2 s
// at least) and whether m is in recovery.
func replicationOf(ctx context.Context, l *Lab, m string) (streaming []string, inRecovery bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, l.Node(m).DSN())
	if err != nil {
		return nil, false, err
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(cctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return nil, false, err
	}
	// Streaming for 2 s at least: a standby whose history diverged (it
	// received WAL past the new primary's fork point) reconnects every
	// 200 ms and is "streaming" for a moment each time.
	rows, err := conn.Query(cctx, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' AND backend_start < now() - interval '2 seconds'")
	if err != nil {
		return nil, false, err
	}
	streaming, err = pgx.CollectRows(rows, pgx.RowTo[string])
	return streaming, inRecovery, err
}

func memberInRecovery(ctx context.Context, l *Lab, m string) (bool, error) {
	_, rec, err := replicationOf(ctx, l, m)
	return rec, err
}

func runCmd(ctx context.Context, name string, args ...string) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// except returns list without drop, in order.
func except(list []string, drop string) []string {
	return slices.DeleteFunc(slices.Clone(list), func(x string) bool { return x == drop })
}

func firstErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func errString(errs ...error) string {
	var s []string
	for _, e := range errs {
		if e != nil {
			s = append(s, e.Error())
		}
	}
	return strings.Join(s, "; ")
}

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return "; heal: " + err.Error()
}
