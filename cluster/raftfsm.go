package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/vigilha/vigil/fsm"
)

// raftFSM adapts fsm.FSM, which knows nothing of Raft, to raft.FSM.
type raftFSM struct {
	f    *fsm.FSM
	m    *metrics
	log  *slog.Logger
	seen *seenClock
	now  func() time.Time
	// promoted, once set, is told of every committed promotion, so the
	// health monitor probes the new primary at once.
	promoted atomic.Pointer[func(group, member string)]

	mu      sync.Mutex
	applied chan struct{} // closed and replaced after every apply
}

func newRaftFSM(f *fsm.FSM, m *metrics, log *slog.Logger, seen *seenClock, now func() time.Time) *raftFSM {
	return &raftFSM{f: f, m: m, log: log, seen: seen, now: now, applied: make(chan struct{})}
}

// signalApplied wakes everyone waiting for the applied index to move.
func (r *raftFSM) signalApplied() {
	r.mu.Lock()
	close(r.applied)
	r.applied = make(chan struct{})
	r.mu.Unlock()
}

// waitApplied blocks until the state machine has applied index, so that a
// read after a forwarded write sees that write on this observer too.
func (r *raftFSM) waitApplied(ctx context.Context, index uint64) error {
	for {
		r.mu.Lock()
		ch := r.applied
		r.mu.Unlock()
		if r.f.AppliedIndex() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for index %d to be applied locally: %w", index, ctx.Err())
		}
	}
}

var _ raft.FSM = (*raftFSM)(nil)

func (r *raftFSM) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		return nil
	}
	res := r.f.Apply(l.Index, l.Data)
	defer r.signalApplied()
	result := "ok"
	if res.Err != nil {
		// The proposer gets the error back as the apply response; a refused
		// command changed nothing, on every observer alike.
		result = "refused"
		r.log.Warn("command refused by state machine", "index", l.Index, "command", res.Kind, "err", res.Err)
	}
	r.m.fsmApplies.WithLabelValues(res.Kind, result).Inc()
	if res.Kind == "record_failover_step" && res.Err == nil {
		if f := r.promoted.Load(); f != nil {
			if g, ok := r.f.Group(res.Group); ok {
				if a := g.GetActiveFailover(); a != nil && len(a.GetSteps()) > 0 && a.GetSteps()[len(a.GetSteps())-1].GetName() == fsm.StepPromoted {
					(*f)(res.Group, a.GetNewPrimary())
				}
			}
		}
	}
	if (res.Kind == "start_failover" || res.Kind == "finish_failover" || res.Kind == "set_backoff") && r.seen != nil {
		g, _ := r.f.Group(res.Group)
		r.seen.observe(res, g, r.now())
	}
	return res
}

func (r *raftFSM) Snapshot() (raft.FSMSnapshot, error) {
	// The state is small (a few KiB per group): copying it under the read
	// lock is cheaper than making it persistent.
	b, err := r.f.Snapshot()
	if err != nil {
		return nil, err
	}
	return snapshotBytes(b), nil
}

func (r *raftFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	defer r.signalApplied()
	return r.f.Restore(rc)
}

type snapshotBytes []byte

func (s snapshotBytes) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s snapshotBytes) Release() {}
