package health

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// PostgresProbeConfig configures a PostgreSQL probe.
type PostgresProbeConfig struct {
	// Address is "host:port".
	Address  string
	User     string
	Database string
	Password string
	// SSLMode is a libpq sslmode ("disable", "prefer" (default),
	// "require", "verify-ca", "verify-full").
	SSLMode string
	// Timeout bounds the whole probe: connect, authentication, queries.
	Timeout time.Duration
	// ApplicationName shows in pg_stat_activity; default "vigil-health".
	ApplicationName string
	// WriteStallAfter > 0 enables the write-path check: every probe of a
	// writable primary also commits a heartbeat row (see Probe), and a
	// primary whose heartbeat writes have been failing for this long
	// while it still answers reads is reported down (KindWriteStalled).
	// Zero disables it: the probe then only reads.
	WriteStallAfter time.Duration
	// HeartbeatID keys this observer's row in vigil.heartbeat (the
	// observer's node id), so observers do not contend for one row;
	// default ApplicationName.
	HeartbeatID string
}

// PostgresProbe connects afresh for every probe, reads the role and the
// WAL/replication state, with WriteStallAfter commits a heartbeat on a
// writable primary, and disconnects.
//
// A fresh connection per probe tests exactly what a client needs (the
// postmaster accepts, forks a backend, authenticates), cannot report a
// stale verdict after a server restart, and leaves nothing to clean up:
// a heartbeat write that hangs dies with its probe's connection, which
// pgx closes asynchronously when the probe's deadline passes, so the next
// probe starts afresh.
type PostgresProbe struct {
	cfg     *pgx.ConnConfig
	cfgErr  error
	timeout time.Duration

	writeStallAfter time.Duration
	heartbeatID     string

	mu     sync.Mutex
	writes writeTracker // guarded by mu
}

var _ Prober = (*PostgresProbe)(nil)

// NewPostgresProbe returns a PostgreSQL probe. An invalid configuration
// does not panic: every Probe then reports it as a down verdict.
func NewPostgresProbe(cfg PostgresProbeConfig) Prober {
	p := &PostgresProbe{timeout: cfg.Timeout, writeStallAfter: max(cfg.WriteStallAfter, 0), heartbeatID: cfg.HeartbeatID}
	if p.heartbeatID == "" {
		p.heartbeatID = cmp.Or(cfg.ApplicationName, defaultApplicationName)
	}
	p.cfg, p.cfgErr = pgConnConfig(cfg)
	return p
}

// defaultApplicationName is the probe's application_name by default.
const defaultApplicationName = "vigil-health"

func pgConnConfig(cfg PostgresProbeConfig) (*pgx.ConnConfig, error) {
	host, port, err := net.SplitHostPort(cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("health: postgres address %q: %w", cfg.Address, err)
	}
	sslmode := cfg.SSLMode
	if sslmode == "" {
		sslmode = "prefer"
	}
	app := cmp.Or(cfg.ApplicationName, defaultApplicationName)
	kv := []string{
		"host=" + quoteConnValue(host),
		"port=" + quoteConnValue(port),
		"sslmode=" + quoteConnValue(sslmode),
		"application_name=" + quoteConnValue(app),
	}
	if cfg.User != "" {
		kv = append(kv, "user="+quoteConnValue(cfg.User))
	}
	if cfg.Database != "" {
		kv = append(kv, "dbname="+quoteConnValue(cfg.Database))
	}
	if cfg.Password != "" {
		kv = append(kv, "password="+quoteConnValue(cfg.Password))
	}
	c, err := pgx.ParseConfig(strings.Join(kv, " "))
	if err != nil {
		// The connection string holds the password: do not echo it.
		return nil, fmt.Errorf("health: invalid postgres probe config for %s (check sslmode/user/database)", cfg.Address)
	}
	// One round trip per query and no cache to fill on a connection that
	// lives for three queries.
	c.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	c.StatementCacheCapacity = 0
	c.DescriptionCacheCapacity = 0
	if cfg.Timeout > 0 {
		c.ConnectTimeout = cfg.Timeout
	}
	return c, nil
}

// quoteConnValue quotes a libpq keyword/value connection string value.
func quoteConnValue(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `\'`)
	return "'" + v + "'"
}

// The role query. With the write check it also looks the heartbeat table
// up in the catalog: a plain catalog read cannot fail for lack of
// privileges on the schema (a failing role query would vote the member
// down) and takes no lock on the table, which a stalled write may hold.
const (
	roleQuery          = "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')"
	roleQueryHeartbeat = `SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'),
       EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'vigil' AND c.relname = 'heartbeat')`
)

// Probe connects, asks pg_is_in_recovery() and reads the role's details.
// With WriteStallAfter, on a primary whose sessions are not read-only, it
// then commits a heartbeat row and judges the write path (see
// judgeHeartbeat); a read-only primary (fenced by vigil) is not written
// to and never counts as stalled.
func (p *PostgresProbe) Probe(ctx context.Context) Result {
	start := time.Now()
	parent := ctx
	ctx, cancel := withTimeout(ctx, p.timeout)
	defer cancel()
	if p.cfgErr != nil {
		r := downResult(ctx, start, p.cfgErr)
		r.ErrKind = KindOther
		return r
	}
	conn, err := pgx.ConnectConfig(ctx, p.cfg)
	if err != nil {
		return downResult(ctx, start, err)
	}
	// Close is bounded by ctx: after a timeout it returns at once.
	defer conn.Close(ctx)

	var inRecovery, tableExists bool
	var readOnly string
	if p.writeStallAfter > 0 {
		err = conn.QueryRow(ctx, roleQueryHeartbeat).Scan(&inRecovery, &readOnly, &tableExists)
	} else {
		err = conn.QueryRow(ctx, roleQuery).Scan(&inRecovery, &readOnly)
	}
	if err != nil {
		return downResult(ctx, start, err)
	}
	r := Result{Verdict: VerdictUp, Role: RolePrimary, At: start, ReadOnly: !inRecovery && readOnly == "on"}
	if inRecovery {
		r.Role = RoleStandby
		err = readStandby(ctx, conn, &r)
	} else {
		err = readPrimary(ctx, conn, &r)
	}
	if err != nil {
		if !answeredSQLError(conn, err) {
			// The server stopped answering, hung up or sent garbage
			// after telling us its role: that is not up.
			return downResult(ctx, start, err)
		}
		// The server answered with an ordinary SQL error (e.g. missing
		// privileges): it is up, only details are missing.
		r.Err = err.Error()
		r.ErrKind = ClassifyError(err)
	}
	if p.writeStallAfter > 0 {
		if inRecovery || r.ReadOnly {
			// No write is expected of a standby or a fenced primary: the
			// stall clock starts afresh once it is writable again.
			p.resetWrites()
		} else {
			p.heartbeat(parent, ctx, conn, !tableExists, &r)
		}
	}
	r.Latency = time.Since(start)
	return r
}

// writeTracker is what one target's probes remember of its writes. A
// probe that cannot read (down) leaves it alone: it says nothing about
// writes, and a stall whose reads also time out now and then must still
// add up. Seeing the member as a standby or read-only resets it.
type writeTracker struct {
	// since is when writes were last known to work: the end of the last
	// heartbeat that committed or, when none did since the member was
	// last seen writable, the start of the first failed one. Zero until
	// a heartbeat commits or fails.
	since time.Time
	// firstFail is when the first failed heartbeat since since began.
	firstFail time.Time
}

func (p *PostgresProbe) resetWrites() {
	p.mu.Lock()
	p.writes = writeTracker{}
	p.mu.Unlock()
}

// Heartbeat statements. synchronous_commit = local: the heartbeat proves
// the local disk takes writes; it must not wait for a synchronous standby,
// whose absence is not a stalled disk (and is handled by failover's own
// rules). The schema and table are created only when missing: creating
// needs the CREATE privilege, which a monitor role usually lacks once an
// administrator has created them (docs/operations.md).
const (
	heartbeatCreate = "CREATE SCHEMA IF NOT EXISTS vigil; " +
		"CREATE TABLE IF NOT EXISTS vigil.heartbeat (observer text PRIMARY KEY, at timestamptz NOT NULL); "
	heartbeatUpsert = "INSERT INTO vigil.heartbeat (observer, at) VALUES ($1, now()) " +
		"ON CONFLICT (observer) DO UPDATE SET at = excluded.at; "
)

// heartbeat commits a heartbeat row on conn and records the outcome in r
// (see judgeHeartbeat). The write has its own timeout, the probe's, within
// what is left of the probe's deadline (probeCtx); parent is the caller's
// context, which tells our own cancellation from a timeout.
func (p *PostgresProbe) heartbeat(parent, probeCtx context.Context, conn *pgx.Conn, create bool, r *Result) {
	wctx, cancel := withTimeout(probeCtx, p.timeout)
	defer cancel()
	begin := time.Now()
	err := writeHeartbeat(wctx, conn, p.heartbeatID, create)
	end := time.Now()
	if err != nil && errors.Is(parent.Err(), context.Canceled) {
		// Cancelled by the caller (shutting down): no evidence either
		// way. The caller's deadline, though, is the probe timeout.
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.judgeHeartbeat(r, begin, end, err, heartbeatStalling(wctx, conn, err))
}

// writeHeartbeat runs the heartbeat transaction in one round trip. A
// statement_timeout equal to what is left of ctx makes the server give up
// a write blocked on a lock when we do (a backend stuck in disk I/O cannot
// be interrupted, but it goes away with the disk's return). After an
// error the transaction is left aborted, harmless: the connection is the
// probe's own and closes right after.
func writeHeartbeat(ctx context.Context, conn *pgx.Conn, id string, create bool) error {
	var b strings.Builder
	b.WriteString("BEGIN; SET LOCAL synchronous_commit = local; ")
	if dl, ok := ctx.Deadline(); ok {
		fmt.Fprintf(&b, "SET LOCAL statement_timeout = %d; ", max(time.Until(dl).Milliseconds(), 1))
	}
	if create {
		b.WriteString(heartbeatCreate)
	}
	b.WriteString(heartbeatUpsert)
	b.WriteString("COMMIT")
	_, err := conn.Exec(ctx, b.String(), id)
	return err
}

// heartbeatStalling reports whether a failed heartbeat counts toward a
// write stall: it ran out of time (our deadline, statement_timeout, a lock
// timeout), the server hung up or failed I/O during it. An answered error
// (missing privileges, a read-only transaction, a full disk) says the
// server processes writes, just not ours.
func heartbeatStalling(ctx context.Context, conn *pgx.Conn, err error) bool {
	if err == nil {
		return false
	}
	if ctx.Err() != nil || pgconn.Timeout(err) {
		return true
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return true // the connection broke mid-write
	}
	switch pgErr.Code {
	case "57014", // query_canceled: our statement_timeout
		"55P03", // lock_not_available
		"58030": // io_error: could not write or fsync
		return true
	}
	return !answeredSQLError(conn, err) // FATAL or PANIC
}

// judgeHeartbeat updates the write tracker with a heartbeat that ran from
// begin to end (err nil: committed) and fills r. Writes failing for
// WriteStallAfter make r down with KindWriteStalled while keeping what the
// reads saw; a shorter stall leaves r up with the failure in Err. A
// read-only answer (SQLSTATE 25006) is not a failure at all: whatever made
// the session read-only, the server answered.
func (p *PostgresProbe) judgeHeartbeat(r *Result, begin, end time.Time, err error, stalling bool) {
	r.Heartbeat = HeartbeatResult{Attempted: true}
	if err == nil {
		p.writes = writeTracker{since: end}
		return
	}
	r.Heartbeat.Err = err.Error()
	r.Heartbeat.ErrKind = ClassifyError(err)
	if isTimeout(err) {
		// Also statement_timeout and lock timeouts, which classify as
		// ordinary SQL errors.
		r.Heartbeat.ErrKind = KindTimeout
	}
	if !stalling {
		// Evidence that the server answers writes, if not ours.
		p.writes = writeTracker{}
		if !isSQLState(err, "25006") && r.Err == "" {
			r.Err = "heartbeat write: " + err.Error()
			r.ErrKind = r.Heartbeat.ErrKind
		}
		return
	}
	if p.writes.since.IsZero() {
		p.writes.since = begin
	}
	if p.writes.firstFail.IsZero() {
		p.writes.firstFail = begin
	}
	stalled := max(end.Sub(p.writes.since), 0)
	r.Heartbeat.Stalling = true
	r.Heartbeat.StalledFor = stalled
	r.Heartbeat.FailingFor = min(max(r.At.Sub(p.writes.firstFail), 0), stalled)
	summary := fmt.Sprintf("writes stalled for %s (heartbeat write %s)", stalled.Round(100*time.Millisecond), heartbeatFailure(err))
	if stalled < p.writeStallAfter {
		if r.Err == "" {
			r.Err = summary
			r.ErrKind = r.Heartbeat.ErrKind
		}
		return
	}
	r.Verdict = VerdictDown
	r.Err = summary
	r.ErrKind = KindWriteStalled
}

// heartbeatFailure describes a failed heartbeat for the Result's summary.
func heartbeatFailure(err error) string {
	if isTimeout(err) {
		return "timed out"
	}
	return "failed: " + err.Error()
}

// isTimeout reports whether err is a deadline or a server-side timeout.
func isTimeout(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) ||
		isSQLState(err, "57014") || isSQLState(err, "55P03")
}

// isSQLState reports whether err is a PostgreSQL error with code.
func isSQLState(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// answeredSQLError reports whether err is an ordinary SQL error on a
// connection that is still usable, as opposed to a lost connection or a
// FATAL such as "terminating connection due to administrator command".
func answeredSQLError(conn *pgx.Conn, err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || conn.IsClosed() {
		return false
	}
	sev := pgErr.SeverityUnlocalized
	if sev == "" {
		sev = pgErr.Severity
	}
	return sev != "FATAL" && sev != "PANIC"
}

// readPrimary fills a primary's WAL position, timeline and replicas.
func readPrimary(ctx context.Context, conn *pgx.Conn, r *Result) error {
	var lsn, walfile string
	err := conn.QueryRow(ctx,
		"SELECT l::text, pg_walfile_name(l) FROM pg_current_wal_lsn() AS l").Scan(&lsn, &walfile)
	if err != nil {
		return err
	}
	if r.CurrentLSN, err = ParseLSN(lsn); err != nil {
		return err
	}
	// pg_control_checkpoint() keeps the old timeline until the first
	// checkpoint after a promotion; the WAL file name is current.
	if tli, ok := timelineFromWALFile(walfile); ok {
		r.Timeline = tli
	} else {
		r.Timeline = checkpointTimeline(ctx, conn)
	}

	rows, err := conn.Query(ctx, `
SELECT coalesce(application_name, ''), coalesce(host(client_addr), ''),
       coalesce(state, ''), coalesce(sync_state, ''),
       coalesce(sent_lsn::text, ''), coalesce(flush_lsn::text, ''), coalesce(replay_lsn::text, '')
FROM pg_stat_replication
ORDER BY application_name, pid`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var ri ReplicaInfo
		var sent, flush, replay string
		if err := rows.Scan(&ri.ApplicationName, &ri.ClientAddr, &ri.State, &ri.SyncState, &sent, &flush, &replay); err != nil {
			return err
		}
		ri.SentLSN = parseOptionalLSN(sent)
		ri.FlushLSN = parseOptionalLSN(flush)
		ri.ReplayLSN = parseOptionalLSN(replay)
		if ri.SyncState == "sync" || ri.SyncState == "quorum" {
			r.SyncStandbys = append(r.SyncStandbys, ri.ApplicationName)
		}
		r.Replicas = append(r.Replicas, ri)
	}
	return rows.Err()
}

// readStandby fills a standby's WAL positions, lag and WAL receiver state.
func readStandby(ctx context.Context, conn *pgx.Conn, r *Result) error {
	var (
		receive, replay     string
		lagSeconds          float64
		status, senderHost  string
		senderPort, recvTLI int64
	)
	// The LEFT JOIN yields one row even when no WAL receiver runs.
	err := conn.QueryRow(ctx, `
SELECT coalesce(pg_last_wal_receive_lsn()::text, ''),
       coalesce(pg_last_wal_replay_lsn()::text, ''),
       CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
            ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
       END::float8,
       coalesce(w.status, ''), coalesce(w.sender_host, ''),
       coalesce(w.sender_port, 0)::int8, coalesce(w.received_tli, 0)::int8
FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS w ON true`).
		Scan(&receive, &replay, &lagSeconds, &status, &senderHost, &senderPort, &recvTLI)
	if err != nil {
		return err
	}
	r.ReceiveLSN = parseOptionalLSN(receive)
	r.ReplayLSN = parseOptionalLSN(replay)
	// After a restart the standby may replay local WAL beyond what it has
	// received in this run: no lag then.
	if r.ReceiveLSN > r.ReplayLSN {
		r.LagBytes = int64(r.ReceiveLSN - r.ReplayLSN)
	}
	r.LagSeconds = max(lagSeconds, 0)
	r.Streaming = status == "streaming"
	if r.Streaming && senderHost != "" {
		r.Upstream = net.JoinHostPort(senderHost, strconv.FormatInt(senderPort, 10))
	}
	if recvTLI > 0 && recvTLI <= 1<<32-1 {
		r.Timeline = uint32(recvTLI)
	} else {
		r.Timeline = checkpointTimeline(ctx, conn)
	}
	return nil
}

// checkpointTimeline is the fallback timeline source; it may lag behind a
// promotion and needs privileges, so a failure just leaves it zero.
func checkpointTimeline(ctx context.Context, conn *pgx.Conn) uint32 {
	var tli int64
	if err := conn.QueryRow(ctx, "SELECT timeline_id::int8 FROM pg_control_checkpoint()").Scan(&tli); err != nil {
		return 0
	}
	if tli < 0 || tli > 1<<32-1 {
		return 0
	}
	return uint32(tli)
}

// timelineFromWALFile reads the timeline from the first 8 hex digits of a
// WAL segment file name such as "000000010000000000000003".
func timelineFromWALFile(name string) (uint32, bool) {
	if len(name) < 8 {
		return 0, false
	}
	tli, err := strconv.ParseUint(name[:8], 16, 32)
	if err != nil || tli == 0 {
		return 0, false
	}
	return uint32(tli), true
}

// parseOptionalLSN parses an LSN that may be absent ("" from a NULL).
func parseOptionalLSN(s string) uint64 {
	if s == "" {
		return 0
	}
	lsn, err := ParseLSN(s)
	if err != nil {
		return 0
	}
	return lsn
}
