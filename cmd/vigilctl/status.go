package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

func (a *app) newStatusCmd() *cobra.Command {
	var local bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the observer cluster: leader, term, quorum and every observer's Raft state",
		Long: `Show the observer cluster as seen by the observer that answers.

The header line names the Raft leader (or "none" during an election), the
current term, the quorum (how many observers must agree, of how many) and
the observer that answered. The table then has one row per configured
observer, as that observer reports itself (the answering observer asks
each of its peers):

  OBSERVER     observer id
  RAFT ROLE    leader, follower, candidate or shutdown; "unknown" when the
               observer could not be asked
  TERM         Raft term the observer is in
  LAST INDEX   index of the last entry in its Raft log
  APPLIED      index of the last entry applied to its replicated state; a
               follower far behind LAST INDEX is catching up
  GOSSIP       alive, suspect, dead, left or unknown, as the answering
               observer's gossip sees it
  RAFT ADDR    Raft address
  GRPC ADDR    admin API address
  ERROR        why the observer could not be asked (only shown if any)

With --local the answering observer does not ask its peers and the other
rows show role "unknown".`,
		Example: `  vigilctl status
  vigilctl status --addr 10.0.0.2:7301 --local
  vigilctl status -o json | jq -r .leader_id`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			resp, err := invoke(cmd.Context(), c, func(ctx context.Context, ac vigilv1.AdminClient) (*vigilv1.StatusResponse, error) {
				return ac.Status(ctx, &vigilv1.StatusRequest{LocalOnly: local})
			})
			if err != nil {
				return &opError{what: "get status", err: err}
			}
			return a.emit(resp, func(w io.Writer) error { return printStatus(w, resp) })
		},
	}
	cmd.Flags().BoolVar(&local, "local", false, "only the answering observer's own view; do not ask its peers")
	return cmd
}
