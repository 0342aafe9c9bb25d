// Command vigilctl is the admin client of vigil. It talks to the gRPC admin
// API of the observers: it shows the observer cluster and the replicated
// state of every group, pauses or resumes automatic failover of a group,
// hands the primary role over (switchover, forced failover) and shows the
// failovers of a group as timelines.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const (
	defaultAddr    = "127.0.0.1:7301"
	defaultTimeout = 5 * time.Second
	addrEnv        = "VIGIL_ADDR"

	outputTable = "table"
	outputJSON  = "json"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes vigilctl with args and returns the process exit code: 0 on
// success, 1 when the operation failed, 2 on a usage error.
func run(args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr, now: time.Now, getenv: os.Getenv}
	return a.run(args)
}

// app holds the I/O, clock and global flags of one vigilctl invocation, so
// that tests can run commands in-process with their own writers and clock.
type app struct {
	stdout, stderr io.Writer
	now            func() time.Time
	getenv         func(string) string

	// Global flags.
	addrs   string
	timeout time.Duration
	output  string
	// Mutual TLS material (files); empty means plaintext.
	ca, cert, key string
}

// opError is the failure of the operation a command performs (exit 1), as
// opposed to a usage error (exit 2).
type opError struct {
	what string
	err  error
}

func (e *opError) Error() string { return e.what + ": " + errMessage(e.err) }

func (e *opError) Unwrap() error { return e.err }

// usageError is a mistake in the command line (exit 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// reportedFailure fails the command (exit 1) when its output has already
// said why; nothing more is printed.
type reportedFailure struct{}

func (reportedFailure) Error() string { return "failed (see output)" }

func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

func (a *app) run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return a.runContext(ctx, args)
}

// runContext is run with the context that SIGINT and SIGTERM cancel.
func (a *app) runContext(ctx context.Context, args []string) int {
	root := a.newRootCmd()
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	var rf reportedFailure
	if errors.As(err, &rf) {
		return 1
	}
	fmt.Fprintf(a.stderr, "vigilctl: %v\n", err)
	var oe *opError
	if errors.As(err, &oe) {
		return 1
	}
	// Every other error comes from parsing the command line: unknown
	// command or flag, bad flag value, wrong number of arguments.
	if cmd == nil {
		cmd = root
	}
	fmt.Fprintf(a.stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	return 2
}

func (a *app) newRootCmd() *cobra.Command {
	defAddr := a.getenv(addrEnv)
	if strings.TrimSpace(defAddr) == "" {
		defAddr = defaultAddr
	}
	root := &cobra.Command{
		Use:   "vigilctl",
		Short: "Inspect and steer a vigil observer cluster",
		Long: `vigilctl is the admin client of vigil. It talks to the gRPC admin API that
every observer serves: it shows the observer cluster (Raft leader, term,
indexes, gossip state), the replicated state of every group (primary,
fencing epoch, members, history) with the members' health as the
observers vote on it, streams changes of that health, pauses or resumes
automatic failover of a group for maintenance, hands the primary role to
another member (switchover without data loss, or a forced failover) and
shows a group's failovers step by step.

Any observer can answer: reads come from its replicated state and writes
are forwarded to the Raft leader. Give several observers with --addr (or
$VIGIL_ADDR), separated by commas; vigilctl tries them in order and uses
the first that answers, so it keeps working while one observer is down.
An observer that cannot be reached, does not answer within --timeout, or
reports that no leader is available makes vigilctl try the next address.
Switchover and failover are the exception: they wait up to --wait for
the failover to finish and are never sent to a second observer once one
has received them (only an address that cannot be connected to is
skipped), since that could start a second failover.

Exit status: 0 on success, 1 when the operation failed (the error names
every address that was tried), 2 on a usage error.`,
		Example: `  export VIGIL_ADDR=10.0.0.1:7301,10.0.0.2:7301,10.0.0.3:7301
  vigilctl status
  vigilctl groups
  vigilctl group pg-main -o json
  vigilctl watch pg-main
  vigilctl pause pg-main --reason "kernel upgrade on pg1"
  vigilctl resume pg-main
  vigilctl switchover pg-main --to db2
  vigilctl failover pg-main --to db3 --force
  vigilctl history pg-main`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			switch a.output {
			case outputTable, outputJSON:
			default:
				return usageErrorf("invalid --output %q: want %s or %s", a.output, outputTable, outputJSON)
			}
			if a.timeout <= 0 {
				return usageErrorf("invalid --timeout %s: must be positive", a.timeout)
			}
			return nil
		},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	pf := root.PersistentFlags()
	pf.StringVarP(&a.addrs, "addr", "a", defAddr,
		"comma-separated gRPC addresses (host:port) of observers, tried in order (env "+addrEnv+")")
	pf.DurationVar(&a.timeout, "timeout", defaultTimeout, "deadline of each attempt against one observer (switchover, failover: of connecting; see their --wait)")
	pf.StringVarP(&a.output, "output", "o", outputTable, "output format: table or json")
	pf.StringVar(&a.ca, "ca", "", "CA certificate (PEM) for mutual TLS with the observers (env VIGIL_CA)")
	pf.StringVar(&a.cert, "cert", "", "client certificate (PEM), an operator or viewer certificate from 'vigil certs' (env VIGIL_CERT)")
	pf.StringVar(&a.key, "key", "", "client key (PEM) (env VIGIL_KEY)")

	root.AddCommand(
		a.newStatusCmd(),
		a.newGroupsCmd(),
		a.newGroupCmd(),
		a.newWatchCmd(),
		a.newPauseCmd(),
		a.newResumeCmd(),
		a.newSwitchoverCmd(),
		a.newFailoverCmd(),
		a.newHistoryCmd(),
		a.newExplainCmd(),
		a.newVersionCmd(),
	)
	return root
}

// exactArgs is cobra.ExactArgs with a usage error and the names of the
// expected arguments.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			return usageErrorf("%s takes %d argument(s) (%s), got %d", cmd.Name(), len(names), strings.Join(names, " "), len(args))
		}
		return nil
	}
}

// noArgs is cobra.NoArgs with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("%s takes no arguments, got %q", cmd.Name(), args)
	}
	return nil
}

// emit writes m as JSON or, in table mode, with table.
func (a *app) emit(m proto.Message, table func(io.Writer) error) error {
	var err error
	if a.output == outputJSON {
		err = printJSON(a.stdout, m)
	} else {
		err = table(a.stdout)
	}
	if err != nil {
		return &opError{what: "write output", err: err}
	}
	return nil
}
