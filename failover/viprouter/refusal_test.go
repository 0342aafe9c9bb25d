package viprouter_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilha/vigil/failover/viprouter"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRefusalsCountedAndLogged: a call an agent refuses (stale epoch)
// raises vigil_node_agent_refusals_total{group, member, rpc, code} and
// is logged at Warn, at most once per agent and kind every 10s; an agent
// that cannot be reached is no refusal.
func TestRefusalsCountedAndLogged(t *testing.T) {
	db1 := startHost(t, "db1", hostOpts{})
	b := book(db1)
	reg := prometheus.NewRegistry()
	var logs syncBuffer
	ag := viprouter.NewAgents("obs1", b.addrOf, 2*time.Second, viprouter.WithRegisterer(reg),
		viprouter.WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	t.Cleanup(ag.Close)
	obs2 := newAgents(t, "obs2", b)
	// Epoch 3 confirmed by obs1 and obs2.
	if err := ag.Router().Route(ctx(t), action(3, "", "db1")); err != nil {
		t.Fatal(err)
	}
	for _, a := range []*viprouter.Agents{ag, obs2} {
		if _, err := a.SendLeases(ctx(t), group, 3, "db1"); err != nil {
			t.Fatal(err)
		}
	}
	counter := func(rpc, code string) float64 { return refusalCount(t, reg, "db1", rpc, code) }
	if err := ag.Router().Route(ctx(t), action(2, "", "db1")); !errors.Is(err, viprouter.ErrStaleEpoch) {
		t.Fatalf("stale Route: %v", err)
	}
	if v := counter("AddVIP", "FailedPrecondition"); v != 1 {
		t.Errorf("AddVIP refusals = %v, want 1", v)
	}
	for i := 0; i < 5; i++ {
		if _, err := ag.SendLeases(ctx(t), group, 2, "db1"); !errors.Is(err, viprouter.ErrStaleEpoch) {
			t.Fatalf("stale lease: %v", err)
		}
	}
	if v := counter("Lease", "FailedPrecondition"); v != 5 {
		t.Errorf("Lease refusals = %v, want 5", v)
	}
	out := logs.String()
	if n := strings.Count(out, "node agent refused a call"); n != 2 {
		t.Errorf("%d refusal warnings, want 2 (one AddVIP, one Lease: rate-limited):\n%s", n, out)
	}
	for _, want := range []string{"rpc=Lease", "rpc=AddVIP", "code=FailedPrecondition", "agent=" + db1.addr, "member=db1", "stale epoch 2"} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal log lacks %q:\n%s", want, out)
		}
	}
	// Unreachable: not a refusal.
	b.set("db1", deadAddr(t))
	if _, err := ag.SendLeases(ctx(t), group, 3, "db1"); err == nil {
		t.Fatal("lease to a dead agent delivered")
	}
	if v := counter("Lease", "Unavailable"); v != 0 {
		t.Errorf("an unreachable agent counted as a refusal (%v)", v)
	}
}

// refusalCount is vigil_node_agent_refusals_total{group, member, rpc,
// code} in reg (0 if absent).
func refusalCount(t *testing.T, reg *prometheus.Registry, member, rpc, code string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"group": group, "member": member, "rpc": rpc, "code": code}
	for _, mf := range mfs {
		if mf.GetName() != "vigil_node_agent_refusals_total" {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want[lp.GetName()] != lp.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestRogueObserverCannotLockOutTheVIP: obs3's certificate is stolen.
// Its epoch 2^64-1 (lease, AddVIP) is refused; its merely higher epoch is
// acted on (the VIP goes) but lapses; the real observers at the real epoch
// keep and get back the VIP; and a restarted agent still enforces the
// real epoch, not the rogue's.
func TestRogueObserverCannotLockOutTheVIP(t *testing.T) {
	const lt = 300 * time.Millisecond
	dir := t.TempDir()
	db1 := startHost(t, "db1", hostOpts{leaseTimeout: lt, dataDir: dir})
	b := book(db1)
	obs1, obs2, rogue := newAgents(t, "obs1", b), newAgents(t, "obs2", b), newAgents(t, "obs3", b)
	if err := obs1.Router().Route(ctx(t), action(1, "", "db1")); err != nil {
		t.Fatal(err)
	}
	startLeaser(t, obs1, 1, "db1", lt/3)
	startLeaser(t, obs2, 1, "db1", lt/3)
	waitFor(t, 5*time.Second, "two current leases", func() bool { return len(db1.status(t).LeaseObservers) == 2 })

	const absurd = 1<<64 - 1
	for i := 0; i < 20; i++ {
		if _, err := rogue.SendLeases(ctx(t), group, absurd, "db1"); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("rogue lease of epoch 2^64-1: %v, want refused as invalid", err)
		}
	}
	if err := rogue.Router().Route(ctx(t), action(absurd, "", "db1")); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("rogue AddVIP of epoch 2^64-1: %v, want refused as invalid", err)
	}
	holdsThroughout(t, db1, 3*lt, "real leases at the real epoch after the rogue's epoch 2^64-1")
	if st := db1.status(t); st.HighestEpoch != 1 {
		t.Fatalf("status after the rogue: %+v", st)
	}

	// A merely higher epoch from the rogue: acted on, for lease_timeout.
	if _, err := rogue.SendLeases(ctx(t), group, 7, "db1"); err != nil {
		t.Fatalf("rogue lease of epoch 7: %v", err)
	}
	if db1.holds() {
		t.Fatal("one observer's higher epoch did not take the support away")
	}
	waitFor(t, 5*time.Second, "the rogue's epoch lapsed", func() bool { return db1.status(t).HighestEpoch == 1 })
	// The leader's periodic VIP check puts it back.
	if err := obs1.Router().Route(ctx(t), action(1, "", "db1")); err != nil {
		t.Fatalf("AddVIP of the real epoch after the lapse: %v", err)
	}
	holdsThroughout(t, db1, 3*lt, "real leases at the real epoch after the rogue's epoch 7 lapsed")

	// Restart: the persisted epoch is the real one.
	db1.stop()
	restarted := startHost(t, "db1", hostOpts{leaseTimeout: lt, dataDir: dir, fake: db1.fake})
	b.set("db1", restarted.addr)
	if st := restarted.status(t); st.HighestEpoch != 1 {
		t.Fatalf("restarted agent enforces epoch %d, want 1", st.HighestEpoch)
	}
	if _, err := obs1.SendLeases(ctx(t), group, 1, "db1"); err != nil {
		t.Fatalf("real lease after restart: %v", err)
	}
	if err := obs1.Router().Route(ctx(t), action(1, "", "db1")); err != nil {
		t.Fatalf("real AddVIP after restart: %v", err)
	}
	resp, err := restarted.client(t).AddVIP(ctx(t), &vigilv1.VIPRequest{Group: group, Epoch: 0, Observer: "obs1"})
	if err == nil {
		t.Fatalf("AddVIP of epoch 0 after restart accepted: %+v", resp)
	}
}

func TestAnsweredTellsRefusalsFromLostCalls(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{fmt.Errorf("%w: Lease refused", viprouter.ErrStaleEpoch), true},
		{fmt.Errorf("viprouter: Lease: %w", status.Error(codes.PermissionDenied, "not an observer")), true},
		{fmt.Errorf("viprouter: Lease: %w", status.Error(codes.Unavailable, "connection refused")), false},
		{fmt.Errorf("viprouter: Lease: %w", status.Error(codes.DeadlineExceeded, "deadline")), false},
		{errors.New("plain"), false},
	} {
		if got := viprouter.Answered(tc.err); got != tc.want {
			t.Errorf("Answered(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
