package cluster

import (
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/vigilha/vigil/cluster/config"
	"github.com/vigilha/vigil/cluster/tlsconf"
	"github.com/vigilha/vigil/failover"
	"github.com/vigilha/vigil/failover/haproxy"
	"github.com/vigilha/vigil/failover/hook"
	"github.com/vigilha/vigil/failover/pgactuator"
	"github.com/vigilha/vigil/failover/viprouter"
)

// actuatorSet is what buildActuators makes: per-group actuators, the
// notify hooks to close at shutdown, and the node agents' clients.
type actuatorSet struct {
	groups    map[string]failover.GroupActuators
	notifiers []*hook.Notify
	agents    *viprouter.Agents
}

// buildActuators turns each group's failover config into its actuators.
// They are built once at start.
func buildActuators(o *Observer, cfg *config.Config, log *slog.Logger, store *tlsconf.Store) actuatorSet {
	runner := hook.New(log.With("component", "hook"))
	out := map[string]failover.GroupActuators{}
	var notifiers []*hook.Notify
	agents := viprouter.NewAgents(cfg.NodeID, func(group, member string) (string, bool) {
		g, ok := cfg.Group(group)
		if !ok {
			return "", false
		}
		for _, m := range g.Members {
			if m.Name == member && m.Agent != "" {
				return m.Agent, true
			}
		}
		return "", false
	}, 2*time.Second, append(agentOptions(log, store), viprouter.WithRegisterer(o.reg))...)
	for _, g := range cfg.Groups {
		f := g.Failover
		acts := failover.GroupActuators{
			BestEffortFence:    f.Fence == config.FenceBestEffort,
			NeedTrafficFence:   f.VIP,
			StepTimeout:        f.StepTimeout.D(),
			PromoteTimeout:     f.PromoteTimeout.D(),
			VetoBackoff:        f.VetoBackoff.D(),
			AnyStandby:         f.AnyStandby,
			AllowedDatacenters: f.AllowedDatacenters,
		}
		if p := f.Postgres; p != nil && g.Kind == config.KindPostgres {
			password, err := config.ReadSecret(p.PasswordFile)
			if err != nil {
				// Validate checked it at start; it went away since.
				log.Error("failover password unreadable; acting without it", "group", g.Name, "err", err)
			}
			pg := pgactuator.New(pgactuator.Config{
				User: p.User, Database: p.Database, Password: password, SSLMode: p.SSLMode,
				ReplicationUser: p.ReplicationUser, PromoteTimeout: f.PromoteTimeout.D(), OpTimeout: f.StepTimeout.D(),
			}, log.With("component", "pgactuator", "group", g.Name))
			// All at once (failover.fence): the host's agent (VIP off, and
			// its database fence), the SQL fence, and — for a host nobody
			// can reach — the agent's own enforcement of lease expiry.
			if f.VIP {
				acts.Fencers = append(acts.Fencers, agents.Fencer())
			}
			acts.Fencers = append(acts.Fencers, pg)
			acts.Promoter, acts.Repointer, acts.CatchUp, acts.Unfencer, acts.Positioner = pg, pg, pg, pg, pg
			acts.CandidateFencer = pg
		}
		h := f.Hooks
		if h.Fence != nil {
			acts.LastResortFencers = append(acts.LastResortFencers, hook.Fence{R: runner, Cmd: hookCmd(h.Fence)})
		}
		if f.VIP {
			acts.Routers = append(acts.Routers, agents.Router())
			acts.Fencers = append(acts.Fencers, leaseExpiry{o: o, group: g.Name, leaseTimeout: f.LeaseTimeout.D(),
				window: g.DownAfter.D() + 2*g.Probe.Interval.D() + f.LeaseTimeout.D() + 3*time.Second})
			acts.VIPEnsure = agents.Router()
		}
		if hp := f.HAProxy; hp != nil {
			acts.Routers = append(acts.Routers, haproxy.New(haproxy.Config{Socket: hp.Socket, Backend: hp.Backend, Timeout: 2 * time.Second}, nil))
		}
		if h.PreFailover != nil {
			acts.PreFailover = hook.PreFailover{R: runner, Cmd: hookCmd(h.PreFailover)}
		}
		if h.Notify != nil {
			n := &hook.Notify{R: runner, Cmd: hookCmd(h.Notify)}
			notifiers = append(notifiers, n)
			acts.Notifiers = append(acts.Notifiers, n)
		}
		if h.Rejoin != nil {
			n := &hook.Notify{R: runner, Cmd: hookCmd(h.Rejoin)}
			notifiers = append(notifiers, n)
			acts.Rejoiner = n
		}
		if acts.Promoter == nil {
			// A generic group has no built-in promotion: nothing to act with.
			continue
		}
		out[g.Name] = acts
	}
	return actuatorSet{groups: out, notifiers: notifiers, agents: agents}
}

// agentOptions: mutual TLS to the node agents (they accept observer
// certificates only, and we accept only agent certificates) when the
// observer has TLS.
func agentOptions(log *slog.Logger, store *tlsconf.Store) []viprouter.Option {
	opts := []viprouter.Option{viprouter.WithLogger(log.With("component", "viprouter"))}
	if store != nil {
		opts = append(opts, viprouter.WithDialOptions(grpc.WithTransportCredentials(credentials.NewTLS(store.ClientConfig("", kindAgent)))))
	}
	return opts
}

func hookCmd(h *config.Hook) hook.Command {
	return hook.Command{Argv: h.Command, Timeout: h.Timeout.D(), Retries: h.Retries}
}
