package viprouter

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// stallAgent answers Lease by stalling (a host whose answers never come
// back) or by refusing, as told.
type stallAgent struct {
	vigilv1.UnimplementedNodeAgentServer
	refuse atomic.Bool
}

func (s *stallAgent) Lease(ctx context.Context, _ *vigilv1.LeaseRequest) (*vigilv1.LeaseResponse, error) {
	if s.refuse.Load() {
		return nil, status.Error(codes.FailedPrecondition, "stale epoch")
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

func serveStall(t *testing.T, s *stallAgent) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	vigilv1.RegisterNodeAgentServer(srv, s)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// TestCallWithoutAnswerDropsTheConnection: a lease that times out must
// not stay queued in its connection (TCP would deliver it when a cut
// heals, seconds late): the connection is closed and the next call dials
// a new one. A refusal is an answer: the connection stays.
func TestCallWithoutAnswerDropsTheConnection(t *testing.T) {
	stall := &stallAgent{}
	addr := serveStall(t, stall)
	a := NewAgents("obs1", func(string, string) (string, bool) { return addr, true }, 300*time.Millisecond, WithLeaseCallTimeout(150*time.Millisecond))
	defer a.Close()

	_, err := a.LeaseTo(context.Background(), "g", "pg0", 1, "pg0")
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("lease to a stalling agent: %v, want DeadlineExceeded", err)
	}
	a.mu.Lock()
	_, cached := a.conns[addr]
	a.mu.Unlock()
	if cached {
		t.Fatal("the connection of a call without an answer is still in use")
	}

	stall.refuse.Store(true)
	if _, err := a.LeaseTo(context.Background(), "g", "pg0", 1, "pg0"); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("lease to a refusing agent: %v, want a stale-epoch refusal", err)
	}
	a.mu.Lock()
	cc := a.conns[addr]
	a.mu.Unlock()
	if cc == nil || cc.GetState() == connectivity.Shutdown {
		t.Fatal("a refusal dropped the connection")
	}
}
