package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
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
}

// PostgresProbe connects afresh for every probe, reads the role and the
// WAL/replication state, and disconnects.
//
// A fresh connection per probe tests exactly what a client needs (the
// postmaster accepts, forks a backend, authenticates), cannot report a
// stale verdict after a server restart, and leaves nothing to clean up.
type PostgresProbe struct {
	cfg     *pgx.ConnConfig
	cfgErr  error
	timeout time.Duration
}

var _ Prober = (*PostgresProbe)(nil)

// NewPostgresProbe returns a PostgreSQL probe. An invalid configuration
// does not panic: every Probe then reports it as a down verdict.
func NewPostgresProbe(cfg PostgresProbeConfig) Prober {
	p := &PostgresProbe{timeout: cfg.Timeout}
	p.cfg, p.cfgErr = pgConnConfig(cfg)
	return p
}

func pgConnConfig(cfg PostgresProbeConfig) (*pgx.ConnConfig, error) {
	host, port, err := net.SplitHostPort(cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("health: postgres address %q: %w", cfg.Address, err)
	}
	sslmode := cfg.SSLMode
	if sslmode == "" {
		sslmode = "prefer"
	}
	app := cfg.ApplicationName
	if app == "" {
		app = "vigil-health"
	}
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

// Probe connects, asks pg_is_in_recovery() and reads the role's details.
func (p *PostgresProbe) Probe(ctx context.Context) Result {
	start := time.Now()
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

	var inRecovery bool
	var readOnly string
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')").Scan(&inRecovery, &readOnly); err != nil {
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
	r.Latency = time.Since(start)
	return r
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
