package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
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
func buildActuators(cfg *config.Config, log *slog.Logger, store *tlsconf.Store) actuatorSet {
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
	}, 2*time.Second, agentOptions(log, store)...)
	for _, g := range cfg.Groups {
		f := g.Failover
		acts := failover.GroupActuators{
			BestEffortFence:    f.Fence == config.FenceBestEffort,
			StepTimeout:        f.StepTimeout.D(),
			PromoteTimeout:     f.PromoteTimeout.D(),
			VetoBackoff:        f.VetoBackoff.D(),
			AnyStandby:         f.AnyStandby,
			AllowedDatacenters: f.AllowedDatacenters,
		}
		if p := f.Postgres; p != nil && g.Kind == config.KindPostgres {
			pg := pgactuator.New(pgactuator.Config{
				User: p.User, Database: p.Database, Password: readSecret(p.PasswordFile), SSLMode: p.SSLMode,
				ReplicationUser: p.ReplicationUser, PromoteTimeout: f.PromoteTimeout.D(), OpTimeout: f.StepTimeout.D(),
			}, log.With("component", "pgactuator", "group", g.Name))
			if f.VIP {
				// Host-local fencing through the node agent comes first.
				acts.Fencers = append(acts.Fencers, agents.Fencer())
			}
			acts.Fencers = append(acts.Fencers, pg)
			acts.Promoter, acts.Repointer, acts.CatchUp, acts.Unfencer, acts.Positioner = pg, pg, pg, pg, pg
		}
		h := f.Hooks
		if h.Fence != nil {
			acts.Fencers = append(acts.Fencers, hook.Fence{R: runner, Cmd: hookCmd(h.Fence)})
		}
		if f.VIP {
			acts.Routers = append(acts.Routers, agents.Router())
			// Last resort: an isolated old primary's agent drops the VIP by
			// itself once it stops hearing a quorum of leases.
			acts.Fencers = append(acts.Fencers, leaseExpiry{timeout: f.LeaseTimeout.D()})
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

// leaseExpiry confirms a fence by waiting out the node agents' lease:
// once a failover's intent is committed, no observer leases the old
// primary any more, so its agent — reachable or not — drops the VIP
// within lease_timeout of the last lease it received. A lease sent just
// before an observer applied the intent may arrive up to one lease call
// timeout later, so the wait, counted from the intent's commit, is
// lease_timeout + that call timeout + 10% + 100ms for drift and
// scheduling (failover/DESIGN.md).
type leaseExpiry struct{ timeout time.Duration }

func (l leaseExpiry) Fence(ctx context.Context, a failover.Action) (failover.FenceResult, error) {
	wait := l.timeout + viprouter.DefaultLeaseCallTimeout + l.timeout/10 + 100*time.Millisecond
	if !a.Started.IsZero() {
		wait = time.Until(a.Started.Add(wait))
	}
	if wait > 0 {
		select {
		case <-ctx.Done():
			return failover.FenceResult{}, fmt.Errorf("wait for the old primary's lease to expire: %w", ctx.Err())
		case <-time.After(wait):
		}
	}
	return failover.FenceResult{Confirmed: true, Detail: fmt.Sprintf("lease expired: %s's node agent dropped the VIP on its own within lease_timeout %s", a.Old.Name, l.timeout)}, nil
}

func hookCmd(h *config.Hook) hook.Command {
	return hook.Command{Argv: h.Command, Timeout: h.Timeout.D(), Retries: h.Retries}
}

func readSecret(path string) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
