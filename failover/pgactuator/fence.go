package pgactuator

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/vigilha/vigil/failover"
)

// Fence makes the old primary a.Old stop accepting writes from ordinary
// clients:
//
//   - connection refused on every address (nothing listens): confirmed,
//     a server that refuses connections takes no writes. It may start
//     again later; the controller re-fences a returning primary.
//   - connection timed out, host unreachable, any other failure: not
//     confirmed, with an error — the server may be alive (hung or
//     partitioned away from us only).
//   - connected to a standby (in recovery): confirmed, nothing to do.
//   - connected to a primary: ALTER SYSTEM SET default_transaction_read_only
//     = on, reload, terminate every other client session (so that no
//     session keeps writing with the old setting or in an open
//     transaction), then verify from a new session that the server
//     starts sessions read-only, and terminate any session that slipped
//     in meanwhile. Replication connections (walsenders) are kept: the
//     standbys may still catch up from a fenced primary.
//
// See the package doc for what this fence cannot stop. Fence is
// idempotent; a second call finds the setting in place and terminates
// whatever sessions reconnected.
func (a *Actuator) Fence(ctx context.Context, act failover.Action) (failover.FenceResult, error) {
	m := act.Old
	if sameMember(m, act.New) {
		return failover.FenceResult{}, fmt.Errorf("pgactuator: fence %s: refusing to fence the promotion candidate of the same action", desc(m))
	}
	ctx, cancel := a.bound(ctx, 0)
	defer cancel()
	log := a.log.With("op", "fence", "group", act.Group, "epoch", act.Epoch, "member", m.Name, "address", m.Address)

	conn, err := a.connect(ctx, m)
	if err != nil {
		if allRefused(err) {
			log.Info("fence confirmed: connection refused")
			return failover.FenceResult{Confirmed: true, Detail: "not accepting connections (refused)"}, nil
		}
		log.Warn("fence not confirmed: cannot connect", "err", err)
		return failover.FenceResult{Detail: "cannot connect: " + connectFailure(err)},
			fmt.Errorf("pgactuator: fence %s: %w", desc(m), err)
	}
	n, err := a.fenceConnected(ctx, conn)
	closeConn(conn)
	if errors.Is(err, errAlreadyStandby) {
		log.Info("fence confirmed: member is a standby")
		return failover.FenceResult{Confirmed: true, Detail: "already a standby"}, nil
	}
	if err != nil {
		log.Warn("fence not confirmed", "err", err)
		return failover.FenceResult{Detail: err.Error()}, fmt.Errorf("pgactuator: fence %s: %w", desc(m), err)
	}

	// Verify from a new session: it must start read-only. Then terminate
	// whoever connected between the first pass and now.
	n2, err := a.verifySetting(ctx, m, true, true)
	if err != nil {
		log.Warn("fence not confirmed: verification failed", "err", err)
		return failover.FenceResult{Detail: "verification failed"}, fmt.Errorf("pgactuator: fence %s: verify: %w", desc(m), err)
	}
	detail := fmt.Sprintf("read-only, %d sessions terminated", n+n2)
	log.Info("fence confirmed", "detail", detail)
	return failover.FenceResult{Confirmed: true, Detail: detail}, nil
}

var errAlreadyStandby = errors.New("already a standby")

// fenceConnected sets the server read-only and terminates other client
// sessions; it returns how many it terminated.
func (a *Actuator) fenceConnected(ctx context.Context, conn *pgx.Conn) (int, error) {
	rec, err := inRecovery(ctx, conn)
	if err != nil {
		return 0, fmt.Errorf("pg_is_in_recovery: %w", err)
	}
	if rec {
		return 0, errAlreadyStandby
	}
	if _, err := conn.Exec(ctx, "ALTER SYSTEM SET default_transaction_read_only = on"); err != nil {
		return 0, fmt.Errorf("ALTER SYSTEM SET default_transaction_read_only: %w", err)
	}
	if err := reloadConf(ctx, conn); err != nil {
		return 0, err
	}
	return terminateClients(ctx, conn)
}

// terminateClients terminates every client backend but our own and
// returns how many it terminated.
func terminateClients(ctx context.Context, conn *pgx.Conn) (int, error) {
	var n int
	err := conn.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("terminate client sessions: %w", err)
	}
	return n, nil
}

// verifySetting opens a new session on m and waits (at most
// verifyTimeout) until default_transaction_read_only shows want there.
// With terminate, it then terminates every other client session and
// returns how many.
func (a *Actuator) verifySetting(ctx context.Context, m failover.Member, want, terminate bool) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, verifyTimeout)
	defer cancel()
	conn, err := a.connect(ctx, m)
	if err != nil {
		return 0, err
	}
	defer closeConn(conn)
	wantStr := "off"
	if want {
		wantStr = "on"
	}
	var got, source string
	err = poll(ctx, func() (bool, error) {
		// A session takes a reloaded setting at its next command: asking
		// again on the same session is enough.
		err := conn.QueryRow(ctx,
			"SELECT setting, source FROM pg_settings WHERE name = 'default_transaction_read_only'").Scan(&got, &source)
		if err != nil {
			return false, fmt.Errorf("read default_transaction_read_only: %w", err)
		}
		return got == wantStr, nil
	})
	if err != nil {
		if ctx.Err() != nil && got != "" {
			return 0, fmt.Errorf("new sessions still get default_transaction_read_only = %s (source: %s; a per-role or per-database setting overrides ALTER SYSTEM): %w", got, source, err)
		}
		return 0, err
	}
	if !terminate {
		return 0, nil
	}
	return terminateClients(ctx, conn)
}

// Unfence undoes Fence on m (an operator aborted the failover, or the
// member becomes primary again): ALTER SYSTEM RESET
// default_transaction_read_only, reload, and verify from a new session
// that sessions start read-write again. Idempotent.
func (a *Actuator) Unfence(ctx context.Context, m failover.Member) error {
	ctx, cancel := a.bound(ctx, 0)
	defer cancel()
	conn, err := a.connect(ctx, m)
	if err != nil {
		return fmt.Errorf("pgactuator: unfence %s: %w", desc(m), err)
	}
	err = unfenceConnected(ctx, conn)
	closeConn(conn)
	if err != nil {
		return fmt.Errorf("pgactuator: unfence %s: %w", desc(m), err)
	}
	if _, err := a.verifySetting(ctx, m, false, false); err != nil {
		return fmt.Errorf("pgactuator: unfence %s: verify: %w", desc(m), err)
	}
	a.log.Info("unfenced", "member", m.Name, "address", m.Address)
	return nil
}

// unfenceConnected resets the system-level read-only setting and reloads.
func unfenceConnected(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, "ALTER SYSTEM RESET default_transaction_read_only"); err != nil {
		return fmt.Errorf("ALTER SYSTEM RESET default_transaction_read_only: %w", err)
	}
	return reloadConf(ctx, conn)
}

// IsFenced reports whether m refuses ordinary writes: it is in recovery,
// or a new session starts with default_transaction_read_only = on (set by
// Fence, or by any other configuration). A member that cannot be reached
// gives an error, never a guess.
func (a *Actuator) IsFenced(ctx context.Context, m failover.Member) (bool, error) {
	ctx, cancel := a.bound(ctx, 0)
	defer cancel()
	conn, err := a.connect(ctx, m)
	if err != nil {
		return false, fmt.Errorf("pgactuator: is-fenced %s: %w", desc(m), err)
	}
	defer closeConn(conn)
	var rec bool
	var ro string
	err = conn.QueryRow(ctx,
		"SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')").Scan(&rec, &ro)
	if err != nil {
		return false, fmt.Errorf("pgactuator: is-fenced %s: %w", desc(m), err)
	}
	return rec || ro == "on", nil
}

// FenceCandidate makes m — a standby whose promotion failed — start every
// new session read-only and terminates its client sessions, so that a
// pg_promote that completes after its timeout still leaves it taking no
// writes (ALTER SYSTEM works in recovery; the setting outlives the
// promotion). Promote clears it again. Verified from a new session.
func (a *Actuator) FenceCandidate(ctx context.Context, m failover.Member) error {
	ctx, cancel := a.bound(ctx, 0)
	defer cancel()
	conn, err := a.connect(ctx, m)
	if err != nil {
		return fmt.Errorf("pgactuator: fence candidate %s: %w", desc(m), err)
	}
	_, err = conn.Exec(ctx, "ALTER SYSTEM SET default_transaction_read_only = on")
	if err == nil {
		err = reloadConf(ctx, conn)
	}
	closeConn(conn)
	if err != nil {
		return fmt.Errorf("pgactuator: fence candidate %s: %w", desc(m), err)
	}
	if _, err := a.verifySetting(ctx, m, true, true); err != nil {
		return fmt.Errorf("pgactuator: fence candidate %s: verify: %w", desc(m), err)
	}
	a.log.Info("candidate made read-only after a failed promotion", "member", m.Name, "address", m.Address)
	return nil
}
