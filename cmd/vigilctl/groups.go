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
		Short: "Show one group: configuration, members and history",
		Long: `Show one group in detail.

The summary gives the current primary, the fencing epoch, whether the group
is paused (with the operator's reason and since when), and the configured
failover policy: how long a primary must look down before failover (down
after), the largest replication lag a standby may have to be promoted (max
lag), the minimum time between two failovers (cooldown), and how members
are probed (type, interval, timeout).

The members table lists each configured member with its address, priority
(higher wins; 0 is never promoted automatically), datacenter and current
role (primary or standby). The history lists the group's recorded events,
newest last, with the Raft index, epoch and actor (config, controller or
an operator) of each.`,
		Example: `  vigilctl group pg-main
  vigilctl group pg-main -o json | jq -r .group.primary`,
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
