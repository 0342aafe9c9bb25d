package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// defaultWait is how long switchover and failover wait for the failover
// to finish.
const defaultWait = 2 * time.Minute

// timelineHelp explains the timeline of a failover; shared by the help of
// switchover, failover and history.
const timelineHelp = `A failover is shown as a timeline:

  epoch 2  failover  db1 -> db2  completed  (started by obs1: primary db1 ODOWN since 01:02:03.456)
    01:02:03.456  +0ms    odown                      primary db1 objectively down
    01:02:03.500  +44ms   started                    intent committed
    01:02:03.530  +74ms   fenced              12ms   not accepting connections (refused)
    01:02:03.700  +244ms  promoted            160ms  db2 promoted and writable  [obs3]
    01:02:03.710  +254ms  rerouted            1ms    no router configured  [obs3]
    01:02:03.900  +444ms  standbys_repointed  180ms  following db2: [db3]  [obs3]
    01:02:03.910  +454ms  completed                  db2 is primary; 1 standby following

The header gives the epoch (the fencing token the failover raised), the
kind (failover: automatic; switchover: planned; forced: an operator's
failover --force), the old and new primary, the outcome (completed,
aborted, or "(in progress)") and who started it, and why. Each row gives
the time (UTC), the offset from the moment the old primary became ODOWN
(or, without one, from the start), the event, how long the step's action
took and what it did. A step marked [observer] was performed by another
observer than the one that started the failover: a new Raft leader
resumed it. A failover that did not complete ends with "aborted" and why;
it is aborted only before anything was promoted.`

func (a *app) newSwitchoverCmd() *cobra.Command {
	var to string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "switchover GROUP [--to MEMBER] [--wait 2m]",
		Short: "Hand the primary role to a standby without losing data; waits until done",
		Long: `Hand the primary role of GROUP to a standby without losing data (a planned
switchover): the Raft leader fences the primary (it goes read-only), waits
until the target standby has replayed everything the primary wrote,
promotes the target, reroutes clients and re-points the other standbys to
it. Without --to the best eligible standby is chosen (see "candidates" in
"vigilctl group"). The observers refuse a switchover while another
failover is in progress, when the primary is ODOWN (use failover --force)
or when the target is not eligible.

vigilctl waits until the switchover has finished, at most --wait (default
2m; it usually takes seconds), prints its timeline and a final line:

  pg-main: switchover completed, epoch 3, primary is db2
  pg-main: switchover aborted at promotion: db2 did not catch up within 30s

` + timelineHelp + `

The request is sent to one observer only; any observer forwards it to the
leader. --timeout bounds connecting to each address of --addr, and an
address that cannot be connected to is skipped. Once the request has been
sent it is never sent to another observer, even when the observer answers
that it has no leader or does not answer within --wait: a second request
could start a second failover. Check "vigilctl history GROUP" and try
again if nothing happened.

Exit status: 0 when the switchover completed; 1 when it was refused,
aborted, or had not finished within --wait (it goes on in the background
and "vigilctl history GROUP" shows how it ends); 2 on a usage error.
With -o json the FailoverResponse (the failover and the group after it)
is printed.`,
		Example: `  vigilctl switchover pg-main
  vigilctl switchover pg-main --to db2
  vigilctl switchover pg-main --to db2 --wait 5m -o json | jq -r .failover.outcome`,
		Args: exactArgs("GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			group := args[0]
			if wait <= 0 {
				return usageErrorf("invalid --wait %s: must be positive", wait)
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			resp, err := invokeOnce(cmd.Context(), c, wait, func(ctx context.Context, ac vigilv1.AdminClient) (*vigilv1.FailoverResponse, error) {
				return ac.Switchover(ctx, &vigilv1.SwitchoverRequest{Group: group, To: to})
			})
			return a.failoverDone(cmd.Context(), c, "switchover "+group, group, resp, err)
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "standby to promote; default: the best eligible one")
	cmd.Flags().DurationVar(&wait, "wait", defaultWait, "how long to wait for the switchover to finish")
	return cmd
}

func (a *app) newFailoverCmd() *cobra.Command {
	var to string
	var force bool
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "failover GROUP --to MEMBER --force [--wait 2m]",
		Short: "Force a failover to a named member, skipping the safety checks; waits until done",
		Long: `Force a failover of GROUP to MEMBER now. Unlike an automatic failover it
does not need the primary to be ODOWN, and it ignores the group's
cooldown and the target's replication lag: a lagging target loses what it
had not replayed. The leader fences the old primary as far as it can,
promotes MEMBER, reroutes clients and re-points the other standbys. Use it
when the observers will not fail over by themselves (e.g. the primary is
broken but still answers probes); for a planned change of primary without
data loss use "vigilctl switchover". --to and --force are required.

vigilctl waits until the failover has finished, at most --wait (default
2m), prints its timeline and a final line:

  pg-main: forced failover completed, epoch 4, primary is db3
  pg-main: forced failover aborted at fencing: <why>

` + timelineHelp + `

The request is sent to one observer only; any observer forwards it to the
leader. --timeout bounds connecting to each address of --addr, and an
address that cannot be connected to is skipped. Once the request has been
sent it is never sent to another observer, even when the observer answers
that it has no leader or does not answer within --wait: a second request
could start a second failover. Check "vigilctl history GROUP" and try
again if nothing happened.

Exit status: 0 when the failover completed; 1 when it was refused,
aborted, or had not finished within --wait (it goes on in the background
and "vigilctl history GROUP" shows how it ends); 2 on a usage error,
including a missing --to or --force. With -o json the FailoverResponse
is printed.`,
		Example: `  vigilctl failover pg-main --to db3 --force
  vigilctl failover pg-main --to db3 --force --wait 5m`,
		Args: exactArgs("GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			group := args[0]
			if strings.TrimSpace(to) == "" {
				return usageErrorf("failover needs --to MEMBER: name the member to promote (for a planned change of primary without data loss use \"vigilctl switchover\")")
			}
			if !force {
				return usageErrorf("failover needs --force: a forced failover skips the checks of automatic failover " +
					"(the primary need not be ODOWN, the cooldown is ignored, and so is the replication lag of --to, " +
					"so data not yet replayed there is lost); for a planned change without data loss use \"vigilctl switchover\"")
			}
			if wait <= 0 {
				return usageErrorf("invalid --wait %s: must be positive", wait)
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			resp, err := invokeOnce(cmd.Context(), c, wait, func(ctx context.Context, ac vigilv1.AdminClient) (*vigilv1.FailoverResponse, error) {
				return ac.Failover(ctx, &vigilv1.FailoverRequest{Group: group, To: to, Force: true})
			})
			return a.failoverDone(cmd.Context(), c, "failover "+group, group, resp, err)
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "member to promote (required)")
	cmd.Flags().BoolVar(&force, "force", false, "confirm that the ODOWN, cooldown and lag checks are skipped (required)")
	cmd.Flags().DurationVar(&wait, "wait", defaultWait, "how long to wait for the failover to finish")
	return cmd
}

// failoverDone reports the outcome of a switchover or failover of group:
// the response, or why there is none. It fails (exit 1) unless the
// failover completed.
func (a *app) failoverDone(ctx context.Context, c *client, what, group string, resp *vigilv1.FailoverResponse, err error) error {
	if err != nil {
		return a.failoverFailed(ctx, c, what, group, err)
	}
	if a.output == outputJSON {
		if err := printJSON(a.stdout, resp); err != nil {
			return &opError{what: "write output", err: err}
		}
		msg, ok := failoverOutcome(resp.GetFailover(), resp.GetGroup().GetPrimary())
		if ok {
			return nil
		}
		if resp.GetFailover() != nil && resp.GetFailover().GetOutcome() == "" {
			msg += "; " + backgroundNote(group)
		}
		return &opError{what: what, err: errors.New(msg)}
	}
	ok, err := printFailoverResult(a.stdout, resp, group, a.now())
	if err != nil {
		return &opError{what: "write output", err: err}
	}
	if !ok {
		return reportedFailure{}
	}
	return nil
}

// failoverFailed reports a switchover or failover that got no answer. A
// request that reached an observer and was not turned down may have
// started a failover; when vigilctl stopped waiting for it, the failover
// in progress is shown (in table mode) as far as the observers know it.
func (a *app) failoverFailed(ctx context.Context, c *client, what, group string, err error) error {
	var se *sentError
	if !errors.As(err, &se) || se.refused() {
		return &opError{what: what, err: err}
	}
	history := "\"vigilctl history " + cell(group) + "\""
	note := "it was not sent to another observer, as that could start a second failover; " + history + " shows whether one started"
	if interrupted, expired := ctx.Err() != nil, status.Code(se.err) == codes.DeadlineExceeded; interrupted || expired {
		note = "the failover may go on in the background; " + history + " shows how it ends"
		if !interrupted && a.output == outputTable && a.showActive(ctx, c, group) {
			return &opError{what: what, err: err}
		}
	}
	return &opError{what: what, err: fmt.Errorf("%s; %s", errMessage(err), note)}
}

// showActive prints the failover of group in progress, if the observers
// know one, and reports whether it did.
func (a *app) showActive(ctx context.Context, c *client, group string) bool {
	resp, err := invoke(ctx, c, func(ctx context.Context, ac vigilv1.AdminClient) (*vigilv1.HistoryResponse, error) {
		return ac.History(ctx, &vigilv1.HistoryRequest{Group: group})
	})
	if err != nil || resp.GetActive() == nil {
		return false
	}
	_, err = printFailoverResult(a.stdout, &vigilv1.FailoverResponse{Failover: resp.GetActive()}, group, a.now())
	return err == nil
}

func (a *app) newHistoryCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "history GROUP",
		Short: "Show a group's failovers and switchovers as timelines",
		Long: `Show the failovers of GROUP, newest last: automatic failovers, switchovers
and forced failovers, each as a timeline, the one in progress (if any)
last and marked "(in progress)" with the step it is at. The header gives
the group's current epoch and primary and how many failovers are listed:

  pg-main: epoch 3, primary db2, 2 failovers

The observers keep a bounded number of finished failovers; the oldest are
dropped first. Any observer answers from its own copy of the replicated
state. With -o json the HistoryResponse is printed, with full timestamps.

` + timelineHelp,
		Example: `  vigilctl history pg-main
  vigilctl history pg-main -o json | jq -r '.failovers[-1].outcome'`,
		Args: exactArgs("GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			group := args[0]
			c, err := a.newClient()
			if err != nil {
				return err
			}
			resp, err := invoke(cmd.Context(), c, func(ctx context.Context, ac vigilv1.AdminClient) (*vigilv1.HistoryResponse, error) {
				return ac.History(ctx, &vigilv1.HistoryRequest{Group: group})
			})
			if err != nil {
				return &opError{what: "history of " + group, err: err}
			}
			now := a.now()
			return a.emit(resp, func(w io.Writer) error {
				if resp.GetGroup() == "" {
					resp.Group = group
				}
				return printHistory(w, resp, now)
			})
		},
	}
}
