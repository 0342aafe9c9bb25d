package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Verdict is one probe's opinion of a member.
type Verdict int

// Verdicts. The zero value is VerdictUnknown, which never counts as down.
const (
	VerdictUnknown Verdict = iota
	VerdictUp
	VerdictDown
)

// String returns "unknown", "up" or "down".
func (v Verdict) String() string {
	switch v {
	case VerdictUnknown:
		return "unknown"
	case VerdictUp:
		return "up"
	case VerdictDown:
		return "down"
	}
	return fmt.Sprintf("Verdict(%d)", int(v))
}

// LogValue logs a verdict by name, also in JSON logs (not as a number).
func (v Verdict) LogValue() slog.Value { return slog.StringValue(v.String()) }

// Role is the role a member was seen in.
type Role int

// Roles. RoleUnknown is reported by probes that cannot tell (TCP).
const (
	RoleUnknown Role = iota
	RolePrimary
	RoleStandby
)

// String returns "unknown", "primary" or "standby".
func (r Role) String() string {
	switch r {
	case RoleUnknown:
		return "unknown"
	case RolePrimary:
		return "primary"
	case RoleStandby:
		return "standby"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// LogValue logs a role by name, also in JSON logs (not as a number).
func (r Role) LogValue() slog.Value { return slog.StringValue(r.String()) }

// ReplicaInfo is one row of pg_stat_replication on a primary. Columns the
// probing user may not read (without pg_read_all_stats) are left zero.
type ReplicaInfo struct {
	ApplicationName string
	ClientAddr      string
	State           string // e.g. "streaming", "catchup"
	SyncState       string // "async", "potential", "sync" or "quorum"
	SentLSN         uint64
	FlushLSN        uint64
	ReplayLSN       uint64
}

// Result is the outcome of one probe.
type Result struct {
	Verdict Verdict
	// Role is the role actually seen; a member in the other role than
	// expected is still Up.
	Role Role
	// ReadOnly: a primary whose new sessions start read-only
	// (default_transaction_read_only = on, e.g. fenced by vigil). Such a
	// primary is up but takes no ordinary writes.
	ReadOnly bool
	// Err describes why the probe failed. It may also be set with
	// VerdictUp when the member answered but optional details (WAL
	// positions, replication rows) could not be read.
	Err     string
	ErrKind ErrorKind
	// Latency is how long the probe took.
	Latency time.Duration
	// At is when the probe started: a verdict never looks fresher than
	// the moment its observation began.
	At time.Time

	// PostgreSQL details; zero when not applicable.

	// CurrentLSN is pg_current_wal_lsn() on a primary.
	CurrentLSN uint64
	// ReceiveLSN and ReplayLSN are pg_last_wal_receive_lsn() and
	// pg_last_wal_replay_lsn() on a standby.
	ReceiveLSN, ReplayLSN uint64
	// LagBytes is ReceiveLSN-ReplayLSN on a standby (never negative).
	LagBytes int64
	// LagSeconds is the age of the last replayed transaction on a
	// standby, 0 when it has replayed everything it received.
	LagSeconds float64
	// Timeline is the primary's current timeline (from its WAL file
	// name) or, on a standby, the timeline it receives.
	Timeline uint32
	// Upstream is the host:port a standby streams from, "" if it is not
	// streaming.
	Upstream string
	// Streaming is true when a standby's WAL receiver is streaming.
	Streaming bool
	// SyncStandbys are the application_names a primary considers
	// synchronous (sync_state 'sync' or 'quorum').
	SyncStandbys []string
	// Replicas are a primary's pg_stat_replication rows.
	Replicas []ReplicaInfo

	// Heartbeat is the outcome of the write-path check of a PostgreSQL
	// primary (write_stall_after); zero when the probe made none.
	Heartbeat HeartbeatResult
}

// HeartbeatResult is the outcome of one heartbeat write: a row committed
// to vigil.heartbeat to prove that the primary's writes complete, which
// the read queries cannot (a frozen file system still answers them).
type HeartbeatResult struct {
	// Attempted: the check is enabled and the member answered as a
	// writable primary, so the probe tried to commit a heartbeat.
	Attempted bool
	// Err says why the write failed, "" when it committed; ErrKind
	// classifies it.
	Err     string
	ErrKind ErrorKind
	// Stalling: the failure counts toward a write stall (the write did
	// not complete in time, or the server hung up or failed I/O during
	// it), as opposed to an answered error such as missing privileges
	// or a read-only transaction, which says nothing about the disk.
	Stalling bool
	// StalledFor is how long heartbeat writes have been failing as of
	// this probe: since the last one that committed or, when none did
	// since the member was last seen writable, since the first failed
	// one began. Zero when this one committed. Once it reaches the
	// configured write_stall_after, the Result is down with
	// KindWriteStalled.
	StalledFor time.Duration
	// FailingFor is how long before this probe began the first of the
	// failed heartbeats now adding up to StalledFor began (never more
	// than StalledFor). A stall verdict has been true on this evidence
	// for that long: the vote carries it (Vote.DownFor).
	FailingFor time.Duration
}

// Prober checks one member. Probe must return promptly once ctx is done,
// never panic on bad answers, and be safe for concurrent use.
type Prober interface {
	Probe(ctx context.Context) Result
}

// downResult builds the Result of a failed probe that began at start.
// ctx is the probe's own context: when it expired, the failure is a
// timeout whatever error the transport surfaced.
func downResult(ctx context.Context, start time.Time, err error) Result {
	kind := ClassifyError(err)
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		kind = KindTimeout
	}
	return Result{
		Verdict: VerdictDown,
		Err:     err.Error(),
		ErrKind: kind,
		Latency: time.Since(start),
		At:      start,
	}
}

// withTimeout bounds ctx by d when d > 0.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}
