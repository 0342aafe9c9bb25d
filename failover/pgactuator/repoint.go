package pgactuator

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilha/vigil/failover"
)

// Repoint makes standby stream from the new primary a.New:
//
//  1. On the standby: refuse if it is not in recovery (a primary is never
//     re-pointed; ErrNotInRecovery), read its primary_slot_name and
//     cluster_name.
//  2. On the new primary: create that physical slot if missing
//     (immediately reserving WAL), so the standby's WAL is kept.
//  3. On the standby: ALTER SYSTEM SET primary_conninfo = 'host=… port=…
//     user=… application_name=<cluster_name or member name> [password=…]
//     [sslmode=…]' and reload; PostgreSQL ≥ 13 restarts the WAL receiver
//     on reload. recovery_target_timeline defaults to 'latest', so the
//     standby follows the promotion's new timeline — provided it had not
//     replayed past the fork point, i.e. it was not ahead of the promoted
//     candidate.
//  4. Wait until the standby's pg_stat_wal_receiver shows 'streaming'
//     from the new primary's port (and host, when comparable), within ctx.
//
// Re-pointing the new primary itself is a no-op. Repoint is idempotent:
// an existing slot is kept, an unchanged primary_conninfo is not
// rewritten.
func (a *Actuator) Repoint(ctx context.Context, act failover.Action, standby failover.Member) error {
	if sameMember(standby, act.New) {
		return nil
	}
	ctx, cancel := a.bound(ctx, 0)
	defer cancel()
	log := a.log.With("op", "repoint", "group", act.Group, "epoch", act.Epoch,
		"standby", standby.Name, "standby_address", standby.Address, "primary", act.New.Name, "primary_address", act.New.Address)
	fail := func(what string, err error) error {
		return fmt.Errorf("pgactuator: repoint %s to %s: %s: %w", desc(standby), desc(act.New), what, err)
	}
	start := time.Now()

	host, port, err := net.SplitHostPort(act.New.Address)
	if err != nil {
		return fail("new primary address", err)
	}
	portNum, err := strconv.Atoi(port)
	if err != nil {
		return fail("new primary port", err)
	}

	conn, err := a.connect(ctx, standby)
	if err != nil {
		return fail("standby", err)
	}
	defer closeConn(conn)

	var rec bool
	var version int
	var slot, clusterName, current string
	err = conn.QueryRow(ctx, `
SELECT pg_is_in_recovery(), current_setting('server_version_num')::int,
       current_setting('primary_slot_name'), current_setting('cluster_name')`).Scan(&rec, &version, &slot, &clusterName)
	if err != nil {
		return fail("read standby settings", err)
	}
	if !rec {
		return fail("check role", ErrNotInRecovery)
	}
	if version < 130000 {
		return fail("check version", fmt.Errorf("server_version_num %d: re-pointing by reload needs PostgreSQL 13 or later", version))
	}
	if err := conn.QueryRow(ctx, "SHOW primary_conninfo").Scan(&current); err != nil {
		return fail("SHOW primary_conninfo", err)
	}

	if slot != "" {
		if err := a.ensureSlot(ctx, act.New, slot); err != nil {
			return fail("ensure slot "+slot+" on new primary", err)
		}
	}

	appName := clusterName
	if appName == "" {
		appName = standby.Name
	}
	conninfo := a.primaryConninfo(host, port, appName)
	if current != conninfo {
		lit, err := quoteLiteral(conninfo)
		if err != nil {
			return fail("build primary_conninfo", err)
		}
		if _, err := conn.Exec(ctx, "ALTER SYSTEM SET primary_conninfo = "+lit); err != nil {
			return fail("ALTER SYSTEM SET primary_conninfo", err)
		}
		if err := reloadConf(ctx, conn); err != nil {
			return fail("reload", err)
		}
		log.Info("primary_conninfo set", "slot", slot, "application_name", appName)
	}

	if err := waitStreaming(ctx, conn, host, portNum); err != nil {
		return fail("wait for streaming", err)
	}
	log.Info("standby streams from new primary", "took", time.Since(start))
	return nil
}

// primaryConninfo builds the primary_conninfo of a re-pointed standby.
func (a *Actuator) primaryConninfo(host, port, appName string) string {
	kv := []string{
		"host=" + quoteConnValue(host),
		"port=" + quoteConnValue(port),
		"user=" + quoteConnValue(a.cfg.ReplicationUser),
		"application_name=" + quoteConnValue(appName),
	}
	if a.cfg.ReplicationPassword != "" {
		kv = append(kv, "password="+quoteConnValue(a.cfg.ReplicationPassword))
	}
	if a.sslModeSet {
		kv = append(kv, "sslmode="+quoteConnValue(a.cfg.SSLMode))
	}
	return strings.Join(kv, " ")
}

// ensureSlot creates the physical replication slot name on m unless it
// exists.
func (a *Actuator) ensureSlot(ctx context.Context, m failover.Member, name string) error {
	conn, err := a.connect(ctx, m)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	var slotType string
	err = conn.QueryRow(ctx, "SELECT slot_type FROM pg_replication_slots WHERE slot_name = $1", name).Scan(&slotType)
	switch {
	case err == nil:
		if slotType != "physical" {
			return fmt.Errorf("slot exists but is %s, not physical", slotType)
		}
		return nil
	case err != pgx.ErrNoRows:
		return fmt.Errorf("read pg_replication_slots: %w", err)
	}
	_, err = conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", name)
	if err != nil && sqlState(err) != "42710" { // duplicate_object: created concurrently
		return fmt.Errorf("pg_create_physical_replication_slot: %w", err)
	}
	a.log.Info("created replication slot", "member", m.Name, "address", m.Address, "slot", name)
	return nil
}

// waitStreaming polls pg_stat_wal_receiver on the standby until it
// streams from host:port. sender_host is compared only when the standby
// shows it (it needs pg_read_all_stats) and it is comparable: equal
// names, or equal IP addresses.
func waitStreaming(ctx context.Context, conn *pgx.Conn, host string, port int) error {
	last := "no WAL receiver"
	err := poll(ctx, func() (bool, error) {
		var status, senderHost string
		var senderPort int
		err := conn.QueryRow(ctx, `
SELECT coalesce(status, ''), coalesce(sender_host, ''), coalesce(sender_port, 0)
FROM pg_stat_wal_receiver`).Scan(&status, &senderHost, &senderPort)
		if err == pgx.ErrNoRows {
			last = "no WAL receiver"
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("read pg_stat_wal_receiver: %w", err)
		}
		last = fmt.Sprintf("WAL receiver %s from %s", status, net.JoinHostPort(senderHost, strconv.Itoa(senderPort)))
		return status == "streaming" && senderPort == port && hostMatches(senderHost, host), nil
	})
	if err != nil {
		return fmt.Errorf("%w (last seen: %s)", err, last)
	}
	return nil
}

// hostMatches compares the WAL receiver's sender_host with the host we
// configured. An empty sender_host (not visible to us) or a socket
// directory cannot be compared and matches.
func hostMatches(sender, want string) bool {
	if sender == "" || strings.HasPrefix(sender, "/") || strings.EqualFold(sender, want) {
		return true
	}
	s, w := net.ParseIP(sender), net.ParseIP(want)
	if s != nil && w != nil {
		return s.Equal(w)
	}
	// One is a name and the other an address: not comparable.
	return (s == nil) != (w == nil)
}
