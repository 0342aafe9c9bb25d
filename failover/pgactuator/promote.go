package pgactuator

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilha/vigil/failover"
)

// Promote makes a.New the primary and returns once it accepts writes
// from an ordinary session.
//
// A standby is promoted with pg_promote(wait => true). A member that
// already is primary is not promoted again (idempotent). Either way, a
// system-level default_transaction_read_only = on — a fence left by an
// earlier failover, or inherited by a standby cloned from a fenced
// primary — is reset, so the new primary is writable. Promote then polls
// until the server is out of recovery and a default (read-write)
// transaction can take a transaction id, within PromoteTimeout and ctx.
//
// The probe transaction is rolled back: a commit could wait for
// synchronous standbys that are not re-pointed yet.
func (a *Actuator) Promote(ctx context.Context, act failover.Action) error {
	m := act.New
	ctx, cancel := a.bound(ctx, a.cfg.PromoteTimeout)
	defer cancel()
	log := a.log.With("op", "promote", "group", act.Group, "epoch", act.Epoch, "member", m.Name, "address", m.Address)
	start := time.Now()

	conn, err := a.connect(ctx, m)
	if err != nil {
		return fmt.Errorf("pgactuator: promote %s: %w", desc(m), err)
	}
	defer func() { closeConn(conn) }()

	rec, err := inRecovery(ctx, conn)
	if err != nil {
		return fmt.Errorf("pgactuator: promote %s: pg_is_in_recovery: %w", desc(m), err)
	}
	// The promotion and the wait for writability share PromoteTimeout.
	pctx, pcancel := context.WithTimeout(ctx, a.cfg.PromoteTimeout)
	defer pcancel()
	if rec {
		promoted, err := pgPromote(pctx, conn)
		if err != nil {
			return fmt.Errorf("pgactuator: promote %s: %w", desc(m), err)
		}
		log.Info("pg_promote returned", "promoted", promoted, "took", time.Since(start))
	} else {
		log.Info("already primary")
	}

	// Clear a fence. ALTER SYSTEM works in recovery too, so this is safe
	// even if pg_promote returned before the end of recovery.
	var ro string
	if err := conn.QueryRow(pctx, "SHOW default_transaction_read_only").Scan(&ro); err != nil {
		return fmt.Errorf("pgactuator: promote %s: SHOW default_transaction_read_only: %w", desc(m), err)
	}
	if ro == "on" {
		if err := unfenceConnected(pctx, conn); err != nil {
			return fmt.Errorf("pgactuator: promote %s: clear fence: %w", desc(m), err)
		}
		log.Info("cleared read-only fence")
	}

	if err := a.waitWritable(pctx, m, &conn); err != nil {
		return fmt.Errorf("pgactuator: promote %s: wait until writable: %w", desc(m), err)
	}
	log.Info("promoted: accepts writes", "took", time.Since(start))
	return nil
}

// pgPromote calls pg_promote, waiting as long as ctx allows (at least a
// second). It reports whether the promotion completed in that time; a
// server that left recovery concurrently (another call promoted it) is
// not an error.
func pgPromote(ctx context.Context, conn *pgx.Conn) (bool, error) {
	secs := 1
	if dl, ok := ctx.Deadline(); ok {
		// Return a little before ctx ends, so we can still poll and
		// report.
		if s := int(math.Ceil(time.Until(dl).Seconds() - 0.5)); s > secs {
			secs = s
		}
	}
	var ok bool
	err := conn.QueryRow(ctx, "SELECT pg_promote(wait => true, wait_seconds => $1)", secs).Scan(&ok)
	if err != nil {
		// 55000 object_not_in_prerequisite_state: "recovery is not in
		// progress" — it got promoted meanwhile.
		if sqlState(err) == "55000" {
			return true, nil
		}
		return false, fmt.Errorf("pg_promote: %w", err)
	}
	return ok, nil
}

// waitWritable polls until m is out of recovery and a default
// transaction is read-write and gets a transaction id. It reuses *conn
// and reconnects if the session was lost.
func (a *Actuator) waitWritable(ctx context.Context, m failover.Member, conn **pgx.Conn) error {
	var last error
	err := poll(ctx, func() (bool, error) {
		if (*conn).IsClosed() {
			c, err := a.connect(ctx, m)
			if err != nil {
				last = err
				return false, nil
			}
			*conn = c
		}
		last = tryWrite(ctx, *conn)
		return last == nil, nil
	})
	if err != nil && last != nil {
		return fmt.Errorf("%w (last attempt: %v)", err, last)
	}
	return err
}

var errReadOnly = errors.New("transaction is read-only")

// tryWrite opens a transaction in the session's default access mode and
// asks for a transaction id: that fails in recovery, and a read-only
// transaction says so in transaction_read_only. The transaction is rolled
// back.
func tryWrite(ctx context.Context, conn *pgx.Conn) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var ro string
	var xid int64
	err = tx.QueryRow(ctx, "SELECT current_setting('transaction_read_only'), txid_current()").Scan(&ro, &xid)
	if err != nil {
		return err
	}
	if ro != "off" {
		var source string
		_ = tx.QueryRow(ctx, "SELECT source FROM pg_settings WHERE name = 'default_transaction_read_only'").Scan(&source)
		return fmt.Errorf("%w (default_transaction_read_only from %s)", errReadOnly, source)
	}
	return nil
}
