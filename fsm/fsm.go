// Package fsm is vigil's replicated state machine: the groups, their
// members, current primary, epoch, pause flag and bounded history.
//
// It knows nothing of the network or of Raft's types: cluster/ feeds it the
// committed log entries (index + bytes) in order and takes its snapshots.
// Apply is deterministic and has no side effects: the time of every change
// travels inside the command.
package fsm

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// DefaultHistoryLimit bounds the events kept per group; the oldest go first.
const DefaultHistoryLimit = 100

// maxSnapshotBytes refuses absurd snapshots before allocating for them.
const maxSnapshotBytes = 256 << 20

// ErrGroupNotFound is returned for commands and reads naming an unknown group.
var ErrGroupNotFound = errors.New("group not found")

// ErrInvalidCommand marks a command that Apply refused as a whole: it
// changed nothing.
var ErrInvalidCommand = errors.New("invalid command")

// Result is what Apply returns for one log entry.
type Result struct {
	// Index is the Raft log index of the entry.
	Index uint64
	// Kind names the command ("sync_groups", …) for metrics and logs.
	Kind string
	// Group is the group the command names, if it names one.
	Group string
	// Err is non-nil when the command was refused; the state is unchanged.
	Err error
}

// FSM holds the replicated state. All methods are safe for concurrent use;
// Apply, Restore and Snapshot are called by Raft from one goroutine, reads
// from any.
type FSM struct {
	mu           sync.RWMutex
	groups       map[string]*vigilv1.Group
	appliedIndex uint64
	historyLimit int
}

// New returns an empty state machine.
func New() *FSM {
	return &FSM{groups: map[string]*vigilv1.Group{}, historyLimit: DefaultHistoryLimit}
}

// Encode marshals a command for the Raft log.
func Encode(cmd *vigilv1.Command) ([]byte, error) {
	if cmd.GetAt() == nil {
		return nil, fmt.Errorf("encode command: %w: missing timestamp", ErrInvalidCommand)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode command: %w", err)
	}
	return b, nil
}

// Apply applies one committed log entry. A refused command leaves the state
// as it was and says why in Result.Err; it never panics on bad bytes.
func (f *FSM) Apply(index uint64, data []byte) Result {
	res := Result{Index: index, Kind: "unknown"}
	var cmd vigilv1.Command
	if err := proto.Unmarshal(data, &cmd); err != nil {
		res.Err = fmt.Errorf("decode command at index %d: %w: %v", index, ErrInvalidCommand, err)
		f.advance(index)
		return res
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if index > f.appliedIndex {
		f.appliedIndex = index
	}
	if cmd.GetAt() == nil {
		res.Err = fmt.Errorf("command at index %d: %w: missing timestamp", index, ErrInvalidCommand)
		return res
	}
	res.Group = groupOf(&cmd)
	switch c := cmd.Cmd.(type) {
	case *vigilv1.Command_SyncGroups:
		res.Kind = "sync_groups"
		res.Err = f.applySyncGroups(index, &cmd, c.SyncGroups)
	case *vigilv1.Command_SetPaused:
		res.Kind = "set_paused"
		res.Err = f.applySetPaused(index, &cmd, c.SetPaused)
	case *vigilv1.Command_StartFailover:
		res.Kind = "start_failover"
		res.Err = f.applyStartFailover(index, &cmd, c.StartFailover)
	case *vigilv1.Command_RecordFailoverStep:
		res.Kind = "record_failover_step"
		res.Err = f.applyRecordFailoverStep(index, &cmd, c.RecordFailoverStep)
	case *vigilv1.Command_FinishFailover:
		res.Kind = "finish_failover"
		res.Err = f.applyFinishFailover(index, &cmd, c.FinishFailover)
	case *vigilv1.Command_SetBackoff:
		res.Kind = "set_backoff"
		res.Err = f.applySetBackoff(index, &cmd, c.SetBackoff)
	default:
		// A newer observer's command: skippable only when it says so.
		if cmd.GetIgnoreUnknown() {
			res.Kind = "ignored"
			return res
		}
		res.Err = fmt.Errorf("command at index %d: %w: unknown command type", index, ErrInvalidCommand)
	}
	return res
}

// groupOf names the group a command is about ("" for sync_groups).
func groupOf(cmd *vigilv1.Command) string {
	switch c := cmd.Cmd.(type) {
	case *vigilv1.Command_SetPaused:
		return c.SetPaused.GetGroup()
	case *vigilv1.Command_StartFailover:
		return c.StartFailover.GetGroup()
	case *vigilv1.Command_RecordFailoverStep:
		return c.RecordFailoverStep.GetGroup()
	case *vigilv1.Command_FinishFailover:
		return c.FinishFailover.GetGroup()
	case *vigilv1.Command_SetBackoff:
		return c.SetBackoff.GetGroup()
	}
	return ""
}

func (f *FSM) advance(index uint64) {
	f.mu.Lock()
	if index > f.appliedIndex {
		f.appliedIndex = index
	}
	f.mu.Unlock()
}

// AppliedIndex is the log index of the last entry applied.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.appliedIndex
}

// Group returns a copy of one group.
func (f *FSM) Group(name string) (*vigilv1.Group, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	g, ok := f.groups[name]
	if !ok {
		return nil, false
	}
	return proto.Clone(g).(*vigilv1.Group), true
}

// Groups returns copies of every group, sorted by name.
func (f *FSM) Groups() []*vigilv1.Group {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.sortedCopies()
}

func (f *FSM) sortedCopies() []*vigilv1.Group {
	out := make([]*vigilv1.Group, 0, len(f.groups))
	for _, g := range f.groups {
		out = append(out, proto.Clone(g).(*vigilv1.Group))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetSpec().GetName() < out[j].GetSpec().GetName() })
	return out
}

// State returns a copy of the whole state.
func (f *FSM) State() *vigilv1.State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &vigilv1.State{Groups: f.sortedCopies(), AppliedIndex: f.appliedIndex}
}

// Snapshot returns the encoded state. The encoding is deterministic, so two
// observers at the same index produce the same bytes.
func (f *FSM) Snapshot() ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(f.State())
	if err != nil {
		return nil, fmt.Errorf("encode snapshot: %w", err)
	}
	return b, nil
}

// Restore replaces the state with a snapshot. The snapshot is decoded and
// checked completely before the swap, so readers never see a half-restored
// state and a bad snapshot leaves the current state in place.
func (f *FSM) Restore(r io.Reader) error {
	b, err := io.ReadAll(io.LimitReader(r, maxSnapshotBytes+1))
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	if len(b) > maxSnapshotBytes {
		return fmt.Errorf("read snapshot: larger than %d bytes", maxSnapshotBytes)
	}
	var st vigilv1.State
	if err := proto.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("decode snapshot: %w", err)
	}
	groups := make(map[string]*vigilv1.Group, len(st.GetGroups()))
	for i, g := range st.GetGroups() {
		name := g.GetSpec().GetName()
		if name == "" {
			return fmt.Errorf("decode snapshot: groups[%d]: empty name", i)
		}
		if _, dup := groups[name]; dup {
			return fmt.Errorf("decode snapshot: groups[%d]: duplicate group %q", i, name)
		}
		groups[name] = g
	}
	f.mu.Lock()
	f.groups = groups
	f.appliedIndex = st.GetAppliedIndex()
	f.mu.Unlock()
	return nil
}
