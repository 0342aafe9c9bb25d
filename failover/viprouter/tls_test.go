package viprouter_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/vigilha/vigil/cluster/tlsconf"
	"github.com/vigilha/vigil/failover/nodeagent"
	"github.com/vigilha/vigil/failover/nodeagent/nodeagenttest"
	"github.com/vigilha/vigil/failover/viprouter"
)

// TestWithDialOptionsTLSReplacesInsecure: transport credentials passed
// with WithDialOptions replace the default insecure ones (grpc-go uses the
// last WithTransportCredentials; the caller's come after the default).
func TestWithDialOptionsTLSReplacesInsecure(t *testing.T) {
	pki := nodeagenttest.NewPKI(t)
	af := pki.Issue(t, tlsconf.KindAgent, "db1host")
	secure := startHost(t, "db1", hostOpts{tls: nodeagent.TLS{CA: af.CA, Cert: af.Cert, Key: af.Key}})
	plain := startHost(t, "db2", hostOpts{})
	b := book(secure, plain)
	withTLS := func(t *testing.T, extra ...grpc.DialOption) *viprouter.Agents {
		opts := append(extra, grpc.WithTransportCredentials(pki.ClientCreds(t, tlsconf.KindObserver, "obs1")))
		a := viprouter.NewAgents("obs1", b.addrOf, 2*time.Second, viprouter.WithDialOptions(opts...))
		t.Cleanup(a.Close)
		return a
	}

	// TLS credentials reach the TLS agent: Route, lease and fence.
	tlsAgents := withTLS(t)
	if err := tlsAgents.Router().Route(ctx(t), action(3, "", "db1")); err != nil {
		t.Fatalf("Route over TLS: %v", err)
	}
	if !secure.holds() {
		t.Fatal("Route over TLS did not add the VIP")
	}
	if holding, err := tlsAgents.SendLeases(ctx(t), group, 3, "db1"); err != nil || !holding {
		t.Fatalf("SendLeases over TLS: holding=%v err=%v", holding, err)
	}
	res, err := tlsAgents.Fencer().Fence(ctx(t), action(4, "db1", "db2"))
	if err != nil || !res.Traffic || secure.holds() {
		t.Fatalf("Fence over TLS: %+v %v holds=%v", res, err, secure.holds())
	}

	// ... and they are really used: the plaintext agent cannot be
	// reached with them (had the insecure default won, it would answer).
	_, err = tlsAgents.SendLeases(ctx(t), group, 1, "db2")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("TLS client to a plaintext agent: %v, want Unavailable", err)
	}
	if st := plain.status(t); st.HighestEpoch != 0 {
		t.Fatalf("plaintext agent got the TLS client's lease: %+v", st)
	}

	// Insecure credentials passed first, TLS last: TLS wins.
	if _, err := withTLS(t, grpc.WithTransportCredentials(insecure.NewCredentials())).SendLeases(ctx(t), group, 4, "db1"); err != nil {
		t.Fatalf("insecure then TLS dial options: %v", err)
	}

	// The default (no options) is plaintext: it reaches the plaintext
	// agent and not the TLS one.
	def := newAgents(t, "obs1", b)
	if _, err := def.SendLeases(ctx(t), group, 1, "db2"); err != nil {
		t.Fatalf("default credentials to a plaintext agent: %v", err)
	}
	_, err = def.SendLeases(ctx(t), group, 4, "db1")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "db1") {
		t.Fatalf("default (insecure) credentials to a TLS agent: %v, want Unavailable", err)
	}
}
