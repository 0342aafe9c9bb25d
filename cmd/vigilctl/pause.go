package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

func (a *app) newPauseCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "pause GROUP [--reason TEXT]",
		Short: "Put a group into maintenance: keep observing it, never fail it over",
		Long: `Pause a group for maintenance. The observers keep probing its members and
reporting their health, but the leader never fails the group over or
otherwise acts on it until it is resumed. Use it before planned work on the
primary (restarts, upgrades) that would otherwise look like an outage.

The pause is committed through the Raft leader (any observer forwards it)
and the command prints the Raft index at which it was committed. Pausing
a group that is already paused changes nothing and says so. The reason
(at most 512 characters) is recorded in the group's history and shown by
"vigilctl group".`,
		Example: `  vigilctl pause pg-main --reason "kernel upgrade on pg1"
  vigilctl pause pg-main -o json`,
		Args: exactArgs("GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			group := args[0]
			c, err := a.newClient()
			if err != nil {
				return err
			}
			resp, err := invoke(cmd.Context(), c, func(ctx context.Context, ac vigilv1.AdminClient) (*vigilv1.PauseGroupResponse, error) {
				return ac.PauseGroup(ctx, &vigilv1.PauseGroupRequest{Group: group, Reason: reason})
			})
			if err != nil {
				return &opError{what: "pause group " + group, err: err}
			}
			now := a.now()
			return a.emit(resp, func(w io.Writer) error { return printPaused(w, resp, now) })
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the group is paused; recorded in its history")
	return cmd
}

func (a *app) newResumeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "resume GROUP",
		Short: "End maintenance of a group: fail it over again when needed",
		Long: `Resume a paused group: the leader acts on the group's health again and
fails it over when a quorum of observers finds its primary down.

The change is committed through the Raft leader (any observer forwards it)
and the command prints the Raft index at which it was committed. Resuming
a group that is not paused changes nothing and says so.`,
		Example: `  vigilctl resume pg-main`,
		Args:    exactArgs("GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			group := args[0]
			c, err := a.newClient()
			if err != nil {
				return err
			}
			resp, err := invoke(cmd.Context(), c, func(ctx context.Context, ac vigilv1.AdminClient) (*vigilv1.ResumeGroupResponse, error) {
				return ac.ResumeGroup(ctx, &vigilv1.ResumeGroupRequest{Group: group})
			})
			if err != nil {
				return &opError{what: "resume group " + group, err: err}
			}
			return a.emit(resp, func(w io.Writer) error { return printResumed(w, resp) })
		},
	}
}
