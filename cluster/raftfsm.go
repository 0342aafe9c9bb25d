package cluster

import (
	"io"
	"log/slog"

	"github.com/hashicorp/raft"

	"github.com/vigilha/vigil/fsm"
)

// raftFSM adapts fsm.FSM, which knows nothing of Raft, to raft.FSM.
type raftFSM struct {
	f   *fsm.FSM
	m   *metrics
	log *slog.Logger
}

var _ raft.FSM = (*raftFSM)(nil)

func (r *raftFSM) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		return nil
	}
	res := r.f.Apply(l.Index, l.Data)
	result := "ok"
	if res.Err != nil {
		// The proposer gets the error back as the apply response; a refused
		// command changed nothing, on every observer alike.
		result = "refused"
		r.log.Warn("command refused by state machine", "index", l.Index, "command", res.Kind, "err", res.Err)
	}
	r.m.fsmApplies.WithLabelValues(res.Kind, result).Inc()
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
