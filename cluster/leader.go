package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilha/vigil/cluster/config"
	"github.com/vigilha/vigil/fsm"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// ErrNotLeader is returned by Propose on an observer that is not the leader.
var ErrNotLeader = errors.New("not the raft leader")

// NotLeaderError says who the leader is, when known.
type NotLeaderError struct {
	LeaderID, LeaderAddr string
}

func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" {
		return "not the raft leader, and no leader is known (election in progress or no quorum)"
	}
	return fmt.Sprintf("not the raft leader; the leader is %s at %s", e.LeaderID, e.LeaderAddr)
}

func (e *NotLeaderError) Unwrap() error { return ErrNotLeader }

// monitorLeadership turns Raft's leadership notifications into a leader
// loop that runs under a context cancelled when leadership is lost.
// NotifyCh is buffered and always drained, unlike LeaderCh which may drop.
func (o *Observer) monitorLeadership() {
	defer o.wg.Done()
	var run *leaderRun
	defer func() { run.stop() }()
	for {
		select {
		case <-o.stopCh:
			return
		case isLeader := <-o.notifyCh:
			switch {
			case isLeader && run == nil:
				now := time.Now()
				o.leaderSince.Store(&now)
				o.metrics.leaderChanges.WithLabelValues("gained").Inc()
				o.log.Info("gained leadership", "term", o.raft.Stats()["term"])
				run = startLeaderRun(o.leaderLoop)
			case !isLeader && run != nil:
				o.metrics.leaderChanges.WithLabelValues("lost").Inc()
				o.log.Info("lost leadership")
				run.stop()
				run = nil
			}
		}
	}
}

// leaderRun is one term of leadership: leader work under a context that
// stop cancels, waiting until the work has returned.
type leaderRun struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func startLeaderRun(loop func(context.Context)) *leaderRun {
	ctx, cancel := context.WithCancel(context.Background())
	r := &leaderRun{cancel: cancel, done: make(chan struct{})}
	go func() { defer close(r.done); loop(ctx) }()
	return r
}

func (r *leaderRun) stop() {
	if r == nil {
		return
	}
	r.cancel()
	<-r.done
}

// observeLeaders counts leader changes seen by this observer, whoever won.
func (o *Observer) observeLeaders() {
	defer o.wg.Done()
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(ob *raft.Observation) bool {
		_, ok := ob.Data.(raft.LeaderObservation)
		return ok
	})
	o.raft.RegisterObserver(obs)
	defer o.raft.DeregisterObserver(obs)
	for {
		select {
		case <-o.stopCh:
			return
		case ob := <-ch:
			lo := ob.Data.(raft.LeaderObservation)
			if lo.LeaderID != "" {
				o.metrics.leaderChanges.WithLabelValues("observed").Inc()
				o.log.Info("raft leader", "leader", string(lo.LeaderID), "addr", string(lo.LeaderAddr))
			}
		}
	}
}

// leaderLoop establishes leadership (barrier so the state is current, then
// config sync) and runs leader-only work until ctx is cancelled. When
// establishing keeps failing it hands leadership to another observer.
func (o *Observer) leaderLoop(ctx context.Context) {
	const attempts = 3
	for i := 0; ; i++ {
		err := o.establishLeadership(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		o.metrics.leaderLoops.Inc()
		o.log.Error("establish leadership", "attempt", i+1, "err", err)
		if i+1 >= attempts {
			o.log.Error("giving leadership away after failing to establish it")
			if err := o.raft.LeadershipTransfer().Error(); err != nil {
				o.log.Error("leadership transfer", "err", err)
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	o.log.Info("leadership established", "applied_index", o.fsm.AppliedIndex())
	// Leadership ends only when all leader work has returned.
	var wg sync.WaitGroup
	for _, work := range o.leaderWork {
		wg.Add(1)
		go func() { defer wg.Done(); work(ctx) }()
	}
	<-ctx.Done()
	wg.Wait()
}

func (o *Observer) establishLeadership(ctx context.Context) error {
	if err := o.raft.Barrier(o.cfg.Raft.ApplyTimeout.D()).Error(); err != nil {
		return fmt.Errorf("raft barrier: %w", err)
	}
	if err := o.syncGroups(ctx); err != nil {
		return fmt.Errorf("sync groups from config: %w", err)
	}
	return nil
}

// syncGroups writes the config's groups into the replicated state when
// they differ, so that every observer serves the leader's view.
func (o *Observer) syncGroups(ctx context.Context) error {
	want := GroupSpecs(o.cfg)
	if specsEqual(want, o.fsm.Groups()) {
		return nil
	}
	res, err := o.Propose(ctx, &vigilv1.Command{Actor: "config",
		Cmd: &vigilv1.Command_SyncGroups{SyncGroups: &vigilv1.SyncGroups{Groups: want}}})
	if err != nil {
		return err
	}
	o.log.Info("synced groups from config into raft", "groups", len(want), "index", res.Index)
	return nil
}

func specsEqual(want []*vigilv1.GroupSpec, have []*vigilv1.Group) bool {
	if len(want) != len(have) {
		return false
	}
	byName := map[string]*vigilv1.GroupSpec{}
	for _, g := range have {
		byName[g.GetSpec().GetName()] = g.GetSpec()
	}
	for _, s := range want {
		if !proto.Equal(s, byName[s.GetName()]) {
			return false
		}
	}
	return true
}

// GroupSpecs converts the config's groups to their replicated form.
func GroupSpecs(cfg *config.Config) []*vigilv1.GroupSpec {
	out := make([]*vigilv1.GroupSpec, 0, len(cfg.Groups))
	for _, g := range cfg.Groups {
		s := &vigilv1.GroupSpec{
			Name: g.Name, Kind: g.Kind, InitialPrimary: g.Primary,
			DownAfterMs: g.DownAfter.D().Milliseconds(), MaxLagBytes: g.MaxLag.Int64(), CooldownMs: g.Cooldown.D().Milliseconds(),
			ProbeType: g.Probe.Type, ProbeIntervalMs: g.Probe.Interval.D().Milliseconds(), ProbeTimeoutMs: g.Probe.Timeout.D().Milliseconds(),
		}
		for _, m := range g.Members {
			s.Members = append(s.Members, &vigilv1.MemberSpec{Name: m.Name, Address: m.Address, Priority: int32(m.Priority), Datacenter: m.Datacenter})
		}
		out = append(out, s)
	}
	return out
}

// Propose commits a command through Raft on the leader and returns the
// state machine's result. It fails on a follower (NotLeaderError) and on
// a leader that cannot reach a quorum: a deposed leader cannot commit.
func (o *Observer) Propose(ctx context.Context, cmd *vigilv1.Command) (fsm.Result, error) {
	if o.raft.State() != raft.Leader {
		id, addr := o.Leader()
		return fsm.Result{}, &NotLeaderError{LeaderID: id, LeaderAddr: addr}
	}
	if cmd.At == nil {
		cmd.At = timestamppb.New(o.now())
	}
	b, err := fsm.Encode(cmd)
	if err != nil {
		return fsm.Result{}, err
	}
	timeout := o.cfg.Raft.ApplyTimeout.D()
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	start := time.Now()
	f := o.raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			id, addr := o.Leader()
			return fsm.Result{}, fmt.Errorf("commit command: %w (%w)", &NotLeaderError{LeaderID: id, LeaderAddr: addr}, err)
		}
		return fsm.Result{}, fmt.Errorf("commit command: %w", err)
	}
	o.metrics.commitLatency.Observe(time.Since(start).Seconds())
	res, _ := f.Response().(fsm.Result)
	if res.Err != nil {
		return res, res.Err
	}
	return res, nil
}
