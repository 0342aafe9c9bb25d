// Command vigil is the vigil observer daemon. Three (or five) observers
// elect a leader with Raft, share health votes by gossip and let only the
// leader act on a quorum's verdict.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/vigilha/vigil/cluster"
	"github.com/vigilha/vigil/cluster/config"
	"github.com/vigilha/vigil/failover/nodeagent"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		fmt.Fprintf(stderr, "vigil: %v\n", err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

type usageError struct{ error }

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "vigil",
		Short: "vigil keeps a primary/standby service writable when its primary dies, without split-brain",
		Long: `vigil runs as three (or five) observer processes. They elect a leader with
Raft, probe every monitored server on their own, share their health votes by
gossip, and only the Raft leader fails a group over, once a quorum of
observers agrees that its primary is down.

Start one observer per machine with "vigil observer --config FILE" and
inspect the cluster with vigilctl.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newObserverCmd(stderr), newNodeCmd(stderr), newConfigCmd(stdout), newKeygenCmd(stdout), newCertsCmd(stdout), newVersionCmd(stdout))
	return root
}

func newObserverCmd(stderr io.Writer) *cobra.Command {
	var path string
	var clockOffset time.Duration
	cmd := &cobra.Command{
		Use:   "observer --config FILE",
		Short: "Run one observer of the cluster",
		Long: `Run one observer: Raft (state in data_dir), gossip, the gRPC admin API and
the HTTP /metrics and /health endpoints, as given by the YAML config.

On first start the observer bootstraps Raft with the static observer list
of its config; on later starts it reuses the state in data_dir. SIGINT or
SIGTERM shut it down gracefully. An invalid config starts nothing and
prints every problem with the field and value at fault.`,
		Example: "  vigil observer --config /etc/vigil/observer.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if path == "" {
				return usageError{errors.New("observer: --config is required")}
			}
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			logger := newLogger(stderr, cfg.Log)
			// SIGHUP reloads certificates (when TLS is on); it must never
			// kill the observer, whatever its config.
			signal.Ignore(syscall.SIGHUP)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			warnUnsafeBuild(logger)
			opts := cluster.Options{Config: cfg, Logger: logger}
			if clockOffset != 0 {
				// Nemesis tests skew one observer's clock to check that
				// votes and leases survive disagreeing clocks.
				logger.Warn("TEST HOOK: this observer's wall clock is shifted (--clock-offset); never use in production", "clock_offset", clockOffset.String())
				offset := clockOffset
				opts.Now = func() time.Time { return time.Now().Add(offset) }
			}
			obs, err := cluster.New(opts)
			if err != nil {
				return err
			}
			<-ctx.Done()
			logger.Info("signal received, shutting down")
			sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			return obs.Shutdown(sctx)
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "path to the observer's YAML config (required)")
	cmd.Flags().DurationVar(&clockOffset, "clock-offset", 0, "test hook: shift this observer's wall clock by DURATION (nemesis tests); never use in production")
	if err := cmd.Flags().MarkHidden("clock-offset"); err != nil {
		panic(fmt.Sprintf("hide --clock-offset: %v", err)) // the flag is defined just above
	}
	return cmd
}

func newNodeCmd(stderr io.Writer) *cobra.Command {
	var path, level string
	cmd := &cobra.Command{
		Use:   "node --config FILE",
		Short: "Run the node agent on a managed database host",
		Long: `Run the node agent on a host that runs a member of a group. It serves the
observers only: it adds the group's virtual IP on a named interface (netlink)
and announces it with gratuitous ARP when the leader moves the primary here,
removes it when told, and runs the host-local fence command.

Every request carries the group's epoch. The agent confirms (and persists in
data_dir) a newer epoch only when a quorum of observers' leases carry it; one
observer's newer epoch is acted on for lease_timeout only. Requests to add the
VIP or leases of an older epoch are refused. The agent keeps the VIP
only while a quorum of observers keeps sending leases naming this host's
member as primary: cut off from them for lease_timeout, it drops the VIP and
runs the fence command on its own, before the observers can promote another.
With metrics_listen set it serves its Prometheus metrics on GET /metrics.
Needs CAP_NET_ADMIN and CAP_NET_RAW.`,
		Example: "  vigil node --config /etc/vigil/node.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if path == "" {
				return usageError{errors.New("node: --config is required")}
			}
			cfg, err := nodeagent.Load(path)
			if err != nil {
				return err
			}
			logger := newLogger(stderr, config.Log{Level: level, Format: "text"})
			warnUnsafeBuild(logger)
			signal.Ignore(syscall.SIGHUP) // reloads certificates with TLS; never fatal
			// The agent's metrics, served on metrics_listen when set, with
			// the Go runtime's and the process's.
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			agent, err := nodeagent.New(cfg, logger, reg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return agent.Serve(ctx)
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "path to the node agent's YAML config (required)")
	cmd.Flags().StringVar(&level, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func newConfigCmd(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Work with observer and node agent config files"}
	var path, kind string
	check := &cobra.Command{
		Use:   "check --config FILE [--kind auto|observer|node]",
		Short: "Validate a config file and report every problem",
		Long: `Validate an observer config (vigil observer) or a node agent config
(vigil node) and report every problem at once, each naming its field and
value. --kind auto (the default) tells them apart by their keys: an
observer config has node_id, a node agent config has node.`,
		Example: "  vigil config check --config /etc/vigil/observer.yaml\n  vigil config check --config /etc/vigil/node.yaml",
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if path == "" {
				return usageError{errors.New("config check: --config is required")}
			}
			k := kind
			if k == "auto" {
				k = configKind(path)
			}
			switch k {
			case "observer":
				cfg, err := config.Load(path)
				if err != nil {
					return err
				}
				fmt.Fprintf(stdout, "%s: valid observer config (observer %s, %d observers, quorum %d, %d groups)\n",
					path, cfg.NodeID, len(cfg.Observers), cfg.QuorumSize(), len(cfg.Groups))
			case "node":
				cfg, err := nodeagent.Load(path)
				if err != nil {
					return err
				}
				fmt.Fprintf(stdout, "%s: valid node agent config (node %s, listen %s, %d observers, quorum %d, lease_timeout %s, %d groups)\n",
					path, cfg.Node, cfg.Listen, len(cfg.Observers), cfg.QuorumSize(), cfg.LeaseTimeout, len(cfg.Groups))
			default:
				return usageError{fmt.Errorf("config check: --kind %q: want auto, observer or node", kind)}
			}
			return nil
		},
	}
	check.Flags().StringVarP(&path, "config", "c", "", "path to the YAML config (required)")
	check.Flags().StringVar(&kind, "kind", "auto", "which config: auto, observer or node")
	cmd.AddCommand(check)
	return cmd
}

// configKind tells a node agent config (top-level key node, no node_id)
// from an observer config; anything unreadable is left to the observer
// loader, whose errors are the more complete.
func configKind(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "observer"
	}
	var top map[string]any
	if yaml.Unmarshal(data, &top) != nil {
		return "observer"
	}
	_, node := top["node"]
	_, nodeID := top["node_id"]
	if node && !nodeID {
		return "node"
	}
	return "observer"
}

func newKeygenCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "keygen",
		Short: "Print a new random gossip encryption key (base64, 32 bytes)",
		Long: `Print a new random 32-byte key for gossip.key (or the file named by
gossip.key_file). All observers of one cluster must share it.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			k, err := config.GenerateGossipKey()
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, k)
			return nil
		},
	}
}

func newVersionCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run:   func(*cobra.Command, []string) { fmt.Fprintln(stdout, "vigil", version) },
	}
}

// warnUnsafeBuild logs, in the vigil_unsafe_nofence build only, that this
// binary does not fence: it must never be mistaken for a real one.
func warnUnsafeBuild(logger *slog.Logger) {
	if unsafeNoFence {
		logger.Error("UNSAFE BUILD: fencing disabled; for checker tests only", "build_tag", "vigil_unsafe_nofence")
	}
}

// newLogger builds the process logger from the config's log section.
func newLogger(w io.Writer, c config.Log) *slog.Logger {
	var level slog.Level
	switch c.Level {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
