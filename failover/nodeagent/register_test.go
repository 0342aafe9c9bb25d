package nodeagent

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/vigilha/vigil/failover/nodeagent/nodeagenttest"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// TestRegisterInProcess serves the agent on a caller-owned gRPC server
// over an in-memory listener.
func TestRegisterInProcess(t *testing.T) {
	fake := nodeagenttest.New()
	a, err := New(testConfig(t.TempDir(), nil), nil, nil, WithAddrs(fake))
	if err != nil {
		t.Fatal(err)
	}
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	a.Register(s)
	a.Start()
	go s.Serve(lis)
	t.Cleanup(func() { s.Stop(); a.Close() })

	cc, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := vigilv1.NewNodeAgentClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.AddVIP(ctx, &vigilv1.VIPRequest{Group: tGroup, Epoch: 1, Observer: "obs1"}); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(ctx, &vigilv1.AgentStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Node != "db1host" || len(st.Groups) != 1 || !st.Groups[0].Holding || st.Groups[0].HighestEpoch != 1 {
		t.Fatalf("status %+v", st)
	}
	if !fake.Holds(tIface, tVIP) {
		t.Fatal("VIP not added")
	}
}
