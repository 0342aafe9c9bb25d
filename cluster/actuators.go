package cluster

import (
	"log/slog"
	"os"
	"strings"

	"github.com/vigilha/vigil/cluster/config"
	"github.com/vigilha/vigil/failover"
	"github.com/vigilha/vigil/failover/hook"
	"github.com/vigilha/vigil/failover/pgactuator"
)

// buildActuators turns each group's failover config into its actuators.
// They are built once at start; the notify hooks' goroutines are closed
// at shutdown.
func buildActuators(cfg *config.Config, log *slog.Logger) (map[string]failover.GroupActuators, []*hook.Notify) {
	runner := hook.New(log.With("component", "hook"))
	out := map[string]failover.GroupActuators{}
	var notifiers []*hook.Notify
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
			acts.Fencers = append(acts.Fencers, pg)
			acts.Promoter, acts.Repointer, acts.CatchUp, acts.Unfencer, acts.Positioner = pg, pg, pg, pg, pg
		}
		h := f.Hooks
		if h.Fence != nil {
			acts.Fencers = append(acts.Fencers, hook.Fence{R: runner, Cmd: hookCmd(h.Fence)})
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
	return out, notifiers
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
