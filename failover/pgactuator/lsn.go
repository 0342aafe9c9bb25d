package pgactuator

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/vigilha/vigil/failover"
)

// CurrentLSN returns m's WAL position: pg_current_wal_lsn() on a primary,
// pg_last_wal_replay_lsn() on a standby (0 if it replayed nothing yet),
// and whether m is in recovery.
func (a *Actuator) CurrentLSN(ctx context.Context, m failover.Member) (lsn uint64, inRecovery bool, err error) {
	ctx, cancel := a.bound(ctx, 0)
	defer cancel()
	conn, err := a.connect(ctx, m)
	if err != nil {
		return 0, false, fmt.Errorf("pgactuator: current LSN of %s: %w", desc(m), err)
	}
	defer closeConn(conn)
	var s string
	err = conn.QueryRow(ctx, `
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn(), '0/0')
            ELSE pg_current_wal_lsn() END::text`).Scan(&inRecovery, &s)
	if err != nil {
		return 0, false, fmt.Errorf("pgactuator: current LSN of %s: %w", desc(m), err)
	}
	if lsn, err = ParseLSN(s); err != nil {
		return 0, false, fmt.Errorf("pgactuator: current LSN of %s: %w", desc(m), err)
	}
	return lsn, inRecovery, nil
}

// WaitReplayed polls the standby m until its replay position
// (pg_last_wal_replay_lsn) reaches lsn, or ctx ends. A member that is not
// in recovery gives ErrNotInRecovery: a primary replays nothing, so
// whether it had reached lsn before it was promoted cannot be told.
func (a *Actuator) WaitReplayed(ctx context.Context, m failover.Member, lsn uint64) error {
	ctx, cancel := a.bound(ctx, 0)
	defer cancel()
	fail := func(err error) error {
		return fmt.Errorf("pgactuator: wait for %s to replay %s: %w", desc(m), FormatLSN(lsn), err)
	}
	conn, err := a.connect(ctx, m)
	if err != nil {
		return fail(err)
	}
	defer closeConn(conn)
	var replayed uint64
	err = poll(ctx, func() (bool, error) {
		var rec bool
		var s string
		err := conn.QueryRow(ctx,
			"SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn(), '0/0')::text").Scan(&rec, &s)
		if err != nil {
			return false, err
		}
		if !rec {
			return false, ErrNotInRecovery
		}
		if replayed, err = ParseLSN(s); err != nil {
			return false, err
		}
		return replayed >= lsn, nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return fail(fmt.Errorf("%w (replayed up to %s)", err, FormatLSN(replayed)))
		}
		return fail(err)
	}
	return nil
}

// SyncStandbyNames returns the primary m's synchronous_standby_names.
func (a *Actuator) SyncStandbyNames(ctx context.Context, m failover.Member) (string, error) {
	ctx, cancel := a.bound(ctx, 0)
	defer cancel()
	conn, err := a.connect(ctx, m)
	if err != nil {
		return "", fmt.Errorf("pgactuator: synchronous_standby_names of %s: %w", desc(m), err)
	}
	defer closeConn(conn)
	var s string
	if err := conn.QueryRow(ctx, "SHOW synchronous_standby_names").Scan(&s); err != nil {
		return "", fmt.Errorf("pgactuator: synchronous_standby_names of %s: %w", desc(m), err)
	}
	return s, nil
}

// ParseLSN parses PostgreSQL's textual pg_lsn ("16/B374D848": two
// hexadecimal 32-bit halves) into the 64-bit WAL position it denotes.
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	return h<<32 | l, nil
}

// FormatLSN formats a WAL position the way PostgreSQL prints pg_lsn.
func FormatLSN(lsn uint64) string {
	return fmt.Sprintf("%X/%X", lsn>>32, uint32(lsn))
}

// WALPosition returns how far m's WAL goes: on a standby the greater of
// what it received and what it replayed (a promotion replays everything
// received first), on a primary its current position. The controller uses
// it to choose, at the moment of failover, the standby that lost least.
func (a *Actuator) WALPosition(ctx context.Context, m failover.Member) (uint64, error) {
	ctx, cancel := a.bound(ctx, 0)
	defer cancel()
	conn, err := a.connect(ctx, m)
	if err != nil {
		return 0, fmt.Errorf("pgactuator: WAL position of %s: %w", desc(m), err)
	}
	defer closeConn(conn)
	var s string
	err = conn.QueryRow(ctx, `
SELECT CASE WHEN pg_is_in_recovery()
            THEN greatest(coalesce(pg_last_wal_receive_lsn(), '0/0'), coalesce(pg_last_wal_replay_lsn(), '0/0'))
            ELSE pg_current_wal_lsn() END::text`).Scan(&s)
	if err != nil {
		return 0, fmt.Errorf("pgactuator: WAL position of %s: %w", desc(m), err)
	}
	lsn, err := ParseLSN(s)
	if err != nil {
		return 0, fmt.Errorf("pgactuator: WAL position of %s: %w", desc(m), err)
	}
	return lsn, nil
}
