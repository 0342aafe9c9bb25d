package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/vigilha/vigil/cluster/config"
	"github.com/vigilha/vigil/health"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// healthPlans turns the replicated groups into what this observer probes:
// the members and primary come from Raft (every observer judges the same
// thing), how to reach them (probe type, credentials, addresses) from the
// local config, so observers may reach a member by different routes.
func healthPlans(cfg *config.Config, groups []*vigilv1.Group) []health.GroupPlan {
	var plans []health.GroupPlan
	for _, g := range groups {
		spec := g.GetSpec()
		local, ok := cfg.Group(spec.GetName())
		if !ok {
			// Config drift: this observer cannot probe a group it does not
			// know how to reach; its votes stay absent ("no vote").
			continue
		}
		plan := health.GroupPlan{
			Name: spec.GetName(), Primary: g.GetPrimary(),
			DownAfter: local.DownAfter.D(), StaleAfter: local.StaleAfter.D(),
			RoleBlind: local.Probe.Type != config.ProbePostgres,
			// A standby's replay stalls as a primary's writes do.
			ReplayStallAfter: local.WriteStallAfter.D(),
		}
		addrs := map[string]string{}
		for _, m := range local.Members {
			addrs[m.Name] = m.Address
		}
		for _, m := range spec.GetMembers() {
			addr, ok := addrs[m.GetName()]
			if !ok {
				addr = m.GetAddress()
			}
			mp := health.MemberPlan{Name: m.GetName(), Interval: local.Probe.Interval.D(), Timeout: local.Probe.Timeout.D()}
			mp.ProberKey, mp.NewProber = proberFor(local, addr, cfg.NodeID)
			plan.Members = append(plan.Members, mp)
		}
		plans = append(plans, plan)
	}
	return plans
}

// proberFor returns a key identifying the probe settings and a constructor.
// self is this observer's node id: its row in the heartbeat table.
func proberFor(g config.Group, addr, self string) (string, func() health.Prober) {
	timeout := g.Probe.Timeout.D()
	switch g.Probe.Type {
	case config.ProbeHTTP:
		h := g.Probe.HTTP
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		key := fmt.Sprintf("http|%s|%d|%s|%s|%d|%s", host, h.Port, h.Scheme, h.Path, h.ExpectStatus, timeout)
		return key, func() health.Prober {
			return health.NewHTTPProbe(health.HTTPProbeConfig{Scheme: h.Scheme, Host: host, Port: h.Port, Path: h.Path, ExpectStatus: h.ExpectStatus, Timeout: timeout})
		}
	case config.ProbePostgres:
		pg := g.Probe.Postgres
		// The stall setting is part of the key: changing it rebuilds the
		// prober, which also starts its write tracking afresh.
		stall := g.WriteStallAfter.D()
		key := fmt.Sprintf("postgres|%s|%s|%s|%s|%s|%s|%s", addr, pg.User, pg.Database, pg.SSLMode, pg.PasswordFile, timeout, stall)
		return key, func() health.Prober {
			// Read when the prober is built, not at config load, so a
			// rotated password is picked up when the probe restarts. The
			// file was checked at start-up (config.Validate); if it has
			// gone since, say so rather than probe with no password.
			password, err := config.ReadSecret(pg.PasswordFile)
			if err != nil {
				slog.Error("probe password unreadable; probing without it", "group", g.Name, "member", addr, "err", err)
			}
			return health.NewPostgresProbe(health.PostgresProbeConfig{Address: addr, User: pg.User, Database: pg.Database,
				Password: password, SSLMode: pg.SSLMode, Timeout: timeout, ApplicationName: "vigil-health",
				WriteStallAfter: stall, HeartbeatID: self})
		}
	default:
		key := fmt.Sprintf("tcp|%s|%s", addr, timeout)
		return key, func() health.Prober { return health.NewTCPProbe(addr, timeout) }
	}
}

// planLoop keeps the monitor's plans in step with the replicated state:
// after every applied command it rebuilds them (cheap) and hands them over
// when they changed.
func (o *Observer) planLoop(ctx context.Context) {
	var last string
	for {
		o.raftFSM.mu.Lock()
		ch := o.raftFSM.applied
		o.raftFSM.mu.Unlock()
		plans := healthPlans(o.cfg, o.fsm.Groups())
		if fp := fingerprint(plans); fp != last {
			if err := o.monitor.SetGroups(plans); err != nil {
				o.log.Error("update health plans", "err", err)
			} else {
				last = fp
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-time.After(5 * time.Second):
		}
	}
}

func fingerprint(plans []health.GroupPlan) string {
	var b strings.Builder
	for _, p := range plans {
		fmt.Fprintf(&b, "%s|%s|%s|%s;", p.Name, p.Primary, p.DownAfter, p.StaleAfter)
		for _, m := range p.Members {
			fmt.Fprintf(&b, "%s|%s|%s|%s;", m.Name, m.Interval, m.Timeout, m.ProberKey)
		}
	}
	return b.String()
}
