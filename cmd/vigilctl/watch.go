package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

const (
	// watchBackoffMin and watchBackoffMax bound the pause before
	// reconnecting a broken watch; it doubles after every failed attempt.
	watchBackoffMin = 200 * time.Millisecond
	watchBackoffMax = 5 * time.Second
	// snapshotIdle ends the initial snapshot for --once: the server does
	// not mark its end, so it is over when no event came for this long.
	snapshotIdle = 500 * time.Millisecond
)

func (a *app) newWatchCmd() *cobra.Command {
	var once bool
	cmd := &cobra.Command{
		Use:   "watch [GROUP]",
		Short: "Stream changes of the members' health (UP, SDOWN, ODOWN)",
		Long: `Stream the aggregate health of every member (of every group, or only of
GROUP) as the answering observer computes it, one line per change, until
interrupted (exit 0) or the observer ends the stream:

  2026-11-22T01:02:03.456Z  pg-main/db1  UP -> ODOWN  (down 3 of 3, quorum 2)  [obs2]

The line gives when the change happened (UTC), group/member, the previous
and new state, how many observers' fresh votes say down out of how many
observers against the quorum, and the observer that computed the change.
States are UP, SDOWN (this observer sees the member down, no quorum yet),
ODOWN (a quorum of observers has said down continuously for the group's
down-after) and UNKNOWN (no fresh votes). The observer first sends the
current state of every member; those lines have no previous state
("-> UP").

With -o json every event is printed as one compact JSON object per line,
with the field names of the .proto files, for scripts to read line by line.

Only connecting uses --timeout; the stream itself has no deadline. When it
breaks (the observer stops or becomes unreachable) vigilctl says so on
stderr and reconnects to the next address of --addr, after a pause that
starts at 200ms and doubles up to 5s; the new observer sends its current
state again. If no address can be watched at the start, vigilctl fails
like the other commands (exit 1).

With --once vigilctl prints the current state of every member and exits:
the snapshot is over when no further event came for 500ms (or, with no
member to report, after --timeout).`,
		Example: `  vigilctl watch
  vigilctl watch pg-main
  vigilctl watch pg-main --once
  vigilctl watch -o json | jq -r 'select(.health.state == "odown") | .health.member'`,
		Args: maxArgs("GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var group string
			if len(args) > 0 {
				group = args[0]
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			w := &watcher{
				c:          c,
				req:        &vigilv1.WatchRequest{Group: group},
				once:       once,
				idle:       snapshotIdle,
				backoffMin: watchBackoffMin,
				backoffMax: watchBackoffMax,
				stderr:     a.stderr,
				print:      a.printEvent,
			}
			what := "watch"
			if group != "" {
				what += " " + group
			}
			if err := w.run(cmd.Context()); err != nil {
				var oe *opError
				if errors.As(err, &oe) {
					return err
				}
				return &opError{what: what, err: err}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&once, "once", false, "print the current state of every member, then exit")
	return cmd
}

// maxArgs accepts up to len(names) positional arguments, with a usage
// error otherwise.
func maxArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > len(names) {
			return usageErrorf("%s takes at most %d argument(s) (%s), got %d", cmd.Name(), len(names), strings.Join(names, " "), len(args))
		}
		return nil
	}
}

// printEvent writes one watch event as a table line or one compact JSON
// line.
func (a *app) printEvent(ev *vigilv1.WatchEvent) error {
	var err error
	if a.output == outputJSON {
		err = printJSONLine(a.stdout, ev)
	} else {
		_, err = io.WriteString(a.stdout, formatEvent(ev, a.now())+"\n")
	}
	if err != nil {
		return &opError{what: "write output", err: err}
	}
	return nil
}

// jsonLineOptions print a message on one line, field names as in the
// .proto files.
// printJSONLine writes m in the -o json shape (jsonout.go) on a single
// line.
func printJSONLine(w io.Writer, m proto.Message) error {
	b, err := marshalJSON(m, "")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// eventTime is the layout of the time of a watch event: RFC 3339 in UTC
// with milliseconds.
const eventTime = "2006-01-02T15:04:05.000Z07:00"

// formatEvent renders a watch event as one line:
//
//	2026-11-22T01:02:03.456Z  pg-main/db1  UP -> ODOWN  (down 3 of 3, quorum 2)  [obs2]
//
// An event without a previous state (the initial snapshot) reads "-> UP";
// one without a time is stamped with now.
func formatEvent(ev *vigilv1.WatchEvent, now time.Time) string {
	at := now
	if ev.GetAt() != nil {
		at = ev.GetAt().AsTime()
	}
	h := ev.GetHealth()
	change := "-> " + stateLabel(h.GetState())
	if prev := ev.GetPreviousState(); prev != "" {
		change = stateLabel(prev) + " " + change
	}
	line := fmt.Sprintf("%s  %s/%s  %s  (down %d of %d, quorum %d)",
		at.UTC().Format(eventTime), cell(h.GetGroup()), cell(h.GetMember()), change,
		h.GetDownVotes(), h.GetObservers(), h.GetQuorum())
	if o := ev.GetObserver(); o != "" {
		line += "  [" + cell(o) + "]"
	}
	return line
}

// watcher follows the Watch stream of one observer after the other.
type watcher struct {
	c    *client
	req  *vigilv1.WatchRequest
	once bool
	// idle ends the snapshot in once mode.
	idle                   time.Duration
	backoffMin, backoffMax time.Duration
	stderr                 io.Writer
	print                  func(*vigilv1.WatchEvent) error
}

// run watches until ctx is done or a stream ends (nil), or until watching
// failed for good.
//
// At the start, as for the other commands, each address is tried once in
// order and the command fails when none can be watched. Once a stream has
// delivered an event the watch is running: a stream that breaks with a
// retryable error (Unavailable, or a connection that cannot be made) is
// reported on stderr and followed by another attempt at the next address
// after a backoff, indefinitely. In once mode the events of an attempt are
// kept until its snapshot is complete, so a broken attempt prints nothing
// and is simply one failed address.
func (w *watcher) run(ctx context.Context) error {
	addrs := w.c.addrs
	var failed []attempt
	running := false
	backoff := w.backoffMin
	for i := 0; ; i++ {
		addr := addrs[i%len(addrs)]
		var snapshot []*vigilv1.WatchEvent
		handle := w.print
		if w.once {
			handle = func(ev *vigilv1.WatchEvent) error {
				snapshot = append(snapshot, ev)
				return nil
			}
		}
		start := time.Now()
		got, err := w.watchOnce(ctx, addr, handle)
		if ctx.Err() != nil {
			return nil // interrupted
		}
		if err == nil {
			for _, ev := range snapshot {
				if err := w.print(ev); err != nil {
					return err
				}
			}
			return nil
		}
		if !retryable(err) {
			return err
		}
		if got > 0 && !w.once {
			running = true
			if time.Since(start) >= w.backoffMax {
				// It was up for a while: a new outage, not the same one.
				backoff = w.backoffMin
			}
		}
		if !running {
			failed = append(failed, attempt{addr: addr, err: err})
			if len(failed) == len(addrs) {
				return &allFailedError{attempts: failed}
			}
			continue
		}
		next := addrs[(i+1)%len(addrs)]
		fmt.Fprintf(w.stderr, "vigilctl: watch broken: %s: %s; reconnecting to %s in %s\n",
			addr, errMessage(err), next, backoff)
		if !sleepCtx(ctx, backoff) {
			return nil
		}
		backoff = min(2*backoff, w.backoffMax)
	}
}

// sleepCtx waits for d and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// recvResult is the outcome of one Recv on a watch stream.
type recvResult struct {
	ev  *vigilv1.WatchEvent
	err error
}

// watchOnce opens one Watch stream against addr and passes every event to
// handle. It returns how many events arrived and nil when the stream ended
// (or, in once mode, the snapshot was complete), the stream's error
// otherwise, or ctx's error once ctx is done.
func (w *watcher) watchOnce(ctx context.Context, addr string, handle func(*vigilv1.WatchEvent) error) (got int, err error) {
	conn, err := connect(ctx, addr, w.c.timeout, w.c.creds)
	if err != nil {
		return 0, err
	}
	defer conn.Close()

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := vigilv1.NewAdminClient(conn).Watch(sctx, w.req)
	if err != nil {
		return 0, err
	}
	results := make(chan recvResult)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := stream.Recv()
			select {
			case results <- recvResult{ev, err}:
			case <-sctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		cancel()
		<-done
	}()

	// In once mode the snapshot ends after --timeout without any event,
	// or when no further event came for w.idle.
	var idle <-chan time.Time
	var timer *time.Timer
	if w.once {
		timer = time.NewTimer(w.c.timeout)
		defer timer.Stop()
		idle = timer.C
	}
	for {
		select {
		case <-ctx.Done():
			return got, ctx.Err()
		case <-idle:
			return got, nil
		case r := <-results:
			if errors.Is(r.err, io.EOF) {
				return got, nil
			}
			if r.err != nil {
				return got, r.err
			}
			got++
			if err := handle(r.ev); err != nil {
				return got, err
			}
			if timer != nil {
				timer.Reset(w.idle)
			}
		}
	}
}

// connect opens a connection to addr and waits at most timeout until it
// is ready or has failed; a failed connection is returned too, so that the
// call made on it reports why.
func connect(ctx context.Context, addr string, timeout time.Duration, creds credentials.TransportCredentials) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(addr, dialOptions(creds)...)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn.Connect()
	for {
		s := conn.GetState()
		if s == connectivity.Ready || s == connectivity.TransientFailure {
			return conn, nil
		}
		if !conn.WaitForStateChange(cctx, s) {
			conn.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, status.Errorf(codes.DeadlineExceeded, "no answer within %s", timeout)
		}
	}
}
