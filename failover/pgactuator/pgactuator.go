// Package pgactuator is vigil's PostgreSQL actuator: it fences an old
// primary (SQL read-only + terminate sessions), promotes a standby
// (pg_promote) and re-points the other standbys at the new primary
// (ALTER SYSTEM SET primary_conninfo + reload), plus the small helpers a
// controller needs for a planned switchover (WAL positions, replay wait).
//
// Every method opens its own connection (bounded by Config.ConnectTimeout),
// closes it before returning, is idempotent, and is bounded by its ctx; a
// ctx without a deadline gets Config.OpTimeout. A hung (SIGSTOPped)
// server therefore costs at most the connect timeout or the ctx, never a
// hang.
//
// # Privileges
//
// vigil's role needs: superuser, or ALTER SYSTEM on
// default_transaction_read_only and primary_conninfo (PG ≥ 15 GRANT ALTER
// SYSTEM ON PARAMETER), EXECUTE on pg_reload_conf, pg_promote,
// pg_create_physical_replication_slot, membership in pg_signal_backend
// (to terminate other sessions; superuser sessions need a superuser),
// pg_read_all_settings (SHOW primary_conninfo) and pg_read_all_stats
// (sender_host/sender_port of pg_stat_wal_receiver), and REPLICATION for
// slot management.
//
// # Limits of the SQL fence
//
// Fence sets default_transaction_read_only = on for the whole server and
// terminates every client session, so ordinary clients can no longer
// write. It is not a hard guarantee: a client may still run
// "SET default_transaction_read_only = off" or "BEGIN READ WRITE" itself,
// and a server that refused connections (confirmed as fenced: nothing
// takes writes) may be restarted later. The controller re-fences a
// primary that comes back; stronger fencing (stopping the server, cutting
// it off, power) belongs to the node agent and exec-hook fencers, ordered
// before or after this one.
package pgactuator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vigilha/vigil/failover"
)

// Config says how vigil connects to the members of a group.
type Config struct {
	// User, Database, Password, SSLMode: vigil's own connections (a
	// superuser or a role with the rights listed in the package doc).
	// Defaults: postgres, postgres, "" (none: .pgpass or trust), disable.
	User, Database, Password, SSLMode string
	// ReplicationUser and ReplicationPassword go into the primary_conninfo
	// of re-pointed standbys; defaults: User and Password.
	ReplicationUser, ReplicationPassword string
	// ConnectTimeout bounds each connection attempt (TCP connect, startup,
	// authentication); default 2s.
	ConnectTimeout time.Duration
	// PromoteTimeout bounds the wait for a promotion to finish and the
	// new primary to accept writes; default 30s.
	PromoteTimeout time.Duration
	// OpTimeout bounds a call whose ctx carries no deadline (Promote gets
	// PromoteTimeout on top); default 30s.
	OpTimeout time.Duration
}

const (
	defaultConnectTimeout = 2 * time.Second
	defaultPromoteTimeout = 30 * time.Second
	defaultOpTimeout      = 30 * time.Second

	// pollInterval is the pause between two checks of a condition the
	// server reaches on its own (promotion, reload, streaming, replay).
	pollInterval = 20 * time.Millisecond
	// verifyTimeout caps the wait for a reloaded setting to show in a
	// fresh session: a reload takes milliseconds, so a longer wait means
	// the setting is overridden (per role or database) and will not come.
	verifyTimeout = 5 * time.Second

	applicationName = "vigil-actuator"
)

// ErrNotInRecovery is returned (wrapped) when an operation needs a
// standby and the member is a primary: Repoint never re-points a
// primary, WaitReplayed cannot wait on one.
var ErrNotInRecovery = errors.New("member is not in recovery (it is a primary)")

// Actuator fences, promotes and re-points PostgreSQL members. It holds no
// connection between calls and is safe for concurrent use.
type Actuator struct {
	cfg        Config
	sslModeSet bool // cfg.SSLMode came from the caller: pass it on to standbys
	log        *slog.Logger
}

var (
	_ failover.Fencer    = (*Actuator)(nil)
	_ failover.Promoter  = (*Actuator)(nil)
	_ failover.Repointer = (*Actuator)(nil)
)

// New returns an Actuator; zero Config fields take their defaults and a
// nil logger discards.
func New(cfg Config, logger *slog.Logger) *Actuator {
	a := &Actuator{sslModeSet: cfg.SSLMode != ""}
	if cfg.User == "" {
		cfg.User = "postgres"
	}
	if cfg.Database == "" {
		cfg.Database = "postgres"
	}
	if cfg.SSLMode == "" {
		cfg.SSLMode = "disable"
	}
	if cfg.ReplicationUser == "" {
		cfg.ReplicationUser = cfg.User
		if cfg.ReplicationPassword == "" {
			cfg.ReplicationPassword = cfg.Password
		}
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	if cfg.PromoteTimeout <= 0 {
		cfg.PromoteTimeout = defaultPromoteTimeout
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = defaultOpTimeout
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a.cfg = cfg
	a.log = logger.With("actuator", "postgres")
	return a
}

// bound gives ctx a deadline if it has none: OpTimeout plus extra.
func (a *Actuator) bound(ctx context.Context, extra time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, a.cfg.OpTimeout+extra)
}

// desc names a member in errors and logs: "pg1 (127.0.0.1:5433)".
func desc(m failover.Member) string {
	if m.Name == "" {
		return m.Address
	}
	return fmt.Sprintf("%s (%s)", m.Name, m.Address)
}

// sameMember reports whether x and y denote the same server.
func sameMember(x, y failover.Member) bool {
	if x.Address != "" && y.Address != "" {
		return x.Address == y.Address
	}
	return x.Name != "" && x.Name == y.Name
}

// connConfig builds the pgx configuration for m.
func (a *Actuator) connConfig(m failover.Member) (*pgx.ConnConfig, error) {
	host, port, err := net.SplitHostPort(m.Address)
	if err != nil {
		return nil, fmt.Errorf("invalid address %q: %w", m.Address, err)
	}
	kv := []string{
		"host=" + quoteConnValue(host),
		"port=" + quoteConnValue(port),
		"user=" + quoteConnValue(a.cfg.User),
		"dbname=" + quoteConnValue(a.cfg.Database),
		"sslmode=" + quoteConnValue(a.cfg.SSLMode),
		"application_name=" + quoteConnValue(applicationName),
	}
	if a.cfg.Password != "" {
		kv = append(kv, "password="+quoteConnValue(a.cfg.Password))
	}
	cc, err := pgx.ParseConfig(strings.Join(kv, " "))
	if err != nil {
		// The string holds the password: do not echo it.
		return nil, fmt.Errorf("invalid connection settings for %s (check sslmode/user/database)", m.Address)
	}
	cc.ConnectTimeout = a.cfg.ConnectTimeout
	// A handful of queries per connection: no statement caches, one
	// round trip each.
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	cc.StatementCacheCapacity = 0
	cc.DescriptionCacheCapacity = 0
	return cc, nil
}

// connect opens a connection to m, bounded by ConnectTimeout and ctx.
func (a *Actuator) connect(ctx context.Context, m failover.Member) (*pgx.Conn, error) {
	cc, err := a.connConfig(m)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("connect: %s: %w", connectFailure(err), err)
	}
	return conn, nil
}

// closeConn closes conn without letting a hung server hold us up.
func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// connectFailure says in words why a connection attempt failed.
func connectFailure(err error) string {
	switch {
	case allRefused(err):
		return "refused (nothing listens)"
	case isTimeout(err):
		return "timed out (server may be alive but hung or partitioned)"
	default:
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return "rejected by server"
		}
		return "failed"
	}
}

// allRefused reports whether every connection attempt behind err was
// refused with ECONNREFUSED. pgx joins the errors of all addresses and
// TLS/plain fallbacks it tried; one timeout or other failure among them
// means the server may be alive somewhere.
func allRefused(err error) bool {
	if err == nil {
		return false
	}
	if errno, ok := err.(syscall.Errno); ok {
		return errno == syscall.ECONNREFUSED
	}
	switch e := err.(type) {
	case interface{ Unwrap() []error }:
		errs := e.Unwrap()
		if len(errs) == 0 {
			return false
		}
		for _, sub := range errs {
			if !allRefused(sub) {
				return false
			}
		}
		return true
	case interface{ Unwrap() error }:
		return allRefused(e.Unwrap())
	}
	return false
}

// isTimeout reports whether err is a deadline or network timeout.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// sqlState returns the SQLSTATE of a server error, or "".
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// quoteConnValue quotes a value of a libpq keyword/value connection
// string: single quotes, with ' and \ escaped by a backslash.
func quoteConnValue(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `\'`)
	return "'" + v + "'"
}

// quoteLiteral returns s as an SQL string literal for statements that
// take no bind parameters (ALTER SYSTEM). The E'...' form, with both '
// and \ escaped, reads the same whatever standard_conforming_strings says.
// PostgreSQL text cannot hold NUL, so such input is refused.
func quoteLiteral(s string) (string, error) {
	if strings.ContainsRune(s, 0) {
		return "", errors.New("string contains a NUL byte")
	}
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `'`, `''`)
	return "E'" + s + "'", nil
}

// poll calls cond every pollInterval until it reports done, returns an
// error, or ctx ends (ctx.Err() then).
func poll(ctx context.Context, cond func() (done bool, err error)) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		done, err := cond()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// inRecovery asks pg_is_in_recovery().
func inRecovery(ctx context.Context, conn *pgx.Conn) (bool, error) {
	var rec bool
	err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec)
	return rec, err
}

// reloadConf asks the postmaster to reload its configuration.
func reloadConf(ctx context.Context, conn *pgx.Conn) error {
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_reload_conf()").Scan(&ok); err != nil {
		return fmt.Errorf("pg_reload_conf: %w", err)
	}
	if !ok {
		return errors.New("pg_reload_conf returned false")
	}
	return nil
}
