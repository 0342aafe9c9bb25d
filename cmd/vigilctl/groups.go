package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

func (a *app) newGroupsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "groups",
		Aliases: []string{"ls"},
		Short:   "List every group with its primary, epoch and pause state",
		Long: `List every group of the replicated state, one row per group:

  GROUP     group name
  KIND      kind of service (e.g. postgres)
  PRIMARY   member currently holding the primary role
  EPOCH     fencing token, raised by every failover or switchover
  MEMBERS   member names as configured
  PAUSED    yes when the group is in maintenance: observed, never acted on
  UPDATED   how long ago the group's state last changed

Any observer answers from its own copy of the replicated state; with
-o json the response includes the Raft index that copy had applied.`,
		Example: `  vigilctl groups
  vigilctl groups -o json | jq -r '.groups[] | select(.paused) | .spec.name'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			resp, err := invoke(cmd.Context(), c, func(ctx context.Context, ac vigilv1.AdminClient) (*vigilv1.ListGroupsResponse, error) {
				return ac.ListGroups(ctx, &vigilv1.ListGroupsRequest{})
			})
			if err != nil {
				return &opError{what: "list groups", err: err}
			}
			now := a.now()
			return a.emit(resp, func(w io.Writer) error { return printGroups(w, resp, now) })
		},
	}
}

func (a *app) newGroupCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "group NAME",
		Short: "Show one group: configuration, members, their health and history",
		Long: `Show one group in detail.

The summary gives the current primary, the fencing epoch, whether the group
is paused (with the operator's reason and since when), and the configured
failover policy: how long a primary must look down before failover (down
after), the largest replication lag a standby may have to be promoted (max
lag), the minimum time between two failovers (cooldown), and how members
are probed (type, interval, timeout).

The members table lists each configured member with its address, priority
(higher wins; 0 is never promoted automatically), datacenter and current
role (primary or standby).

The health table shows each member as the answering observer aggregates
the votes of all observers (every observer probes every member and gossips
its vote):

  MEMBER          member name
  STATE           UP; SDOWN when this observer sees it down but no quorum
                  does; ODOWN when a quorum of observers' fresh votes has
                  said down continuously for the group's down after;
                  UNKNOWN without fresh votes
  DOWN VOTES      fresh down votes of how many observers, and the quorum:
                  "2 of 3 (quorum 2)"
  ROLE SEEN       role the answering observer's probe saw
  EXPECTED ROLE   role the replicated state gives it (primary or standby)
  SINCE           how long ago it became ODOWN (or, before that, since
                  when it has been voted down)
  WAL / LAG       WAL position in PostgreSQL notation and, for a standby,
                  its replication lag: "0/3000148 lag 0B" ("-" when the
                  probe reports none, e.g. tcp)
  <observer>      one column per observer: its latest verdict and the age
                  of that vote, e.g. "up 0.3s" or "down 1.2s"; "-" without
                  a vote; "- (stale 42.0s)" when the vote is too old to
                  count

"health: no votes yet" means the observer has no votes about the group
(it just started, or is too old to report health).

The candidates table ranks the standbys for promotion as the answering
observer sees them, best first: MEMBER, ELIGIBLE (yes or no), PRIORITY,
WAL (position), LAG (replication lag) and the REASON one is not
eligible. Below it:

  controller: ...             why the leader is not failing the group
                              over (cooldown, paused, no eligible
                              candidate, fence failed); only shown by
                              the leader when there is something to say
  failover in progress: ...   epoch, kind, old -> new primary and the
                              step it is at
  last failover: ...          the last finished failover: epoch, when,
                              old -> new primary and its outcome

"vigilctl history" shows every failover step by step. The history lists the
group's recorded events, newest last, with the Raft index, epoch and actor
(config, controller or an operator) of each.`,
		Example: `  vigilctl group pg-main
  vigilctl group pg-main -o json | jq -r .group.primary
  vigilctl group pg-main -o json | jq -r '.health[] | select(.state != "up") | .summary'`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			c, err := a.newClient()
			if err != nil {
				return err
			}
			resp, err := invoke(cmd.Context(), c, func(ctx context.Context, ac vigilv1.AdminClient) (*vigilv1.GetGroupResponse, error) {
				return ac.GetGroup(ctx, &vigilv1.GetGroupRequest{Name: name})
			})
			if err != nil {
				return &opError{what: "get group " + name, err: err}
			}
			now := a.now()
			return a.emit(resp, func(w io.Writer) error { return printGroup(w, resp, now) })
		},
	}
}
