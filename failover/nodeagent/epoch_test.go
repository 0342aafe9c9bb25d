package nodeagent

import (
	"context"
	"math"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

func (h *harness) wantEpochs(t *testing.T, enforced, persisted uint64) {
	t.Helper()
	if st := h.status(t); st.HighestEpoch != enforced {
		t.Errorf("enforced epoch (status) %d, want %d", st.HighestEpoch, enforced)
	}
	if got := h.a.store.get(tGroup); got != persisted {
		t.Errorf("persisted epoch %d, want %d", got, persisted)
	}
	if v := h.metric(t, "vigil_agent_highest_epoch", map[string]string{"group": tGroup}); v != float64(persisted) {
		t.Errorf("vigil_agent_highest_epoch = %v, want %d", v, persisted)
	}
}

// TestRogueAbsurdEpochRefused: one observer (a stolen certificate) sends
// every request with epoch 2^64-1. All are refused outright: nothing
// changes, the VIP stays, and the real observers' leases at the real
// epoch keep it.
func TestRogueAbsurdEpochRefused(t *testing.T) {
	h := newHarness(t, nil)
	h.confirm(t, 3, "db1")
	h.add(t, 3)
	ctx := context.Background()
	const rogue = math.MaxUint64
	_, err := h.lease("obs3", rogue, "db2")
	wantCode(t, err, codes.InvalidArgument, "more than 1000000 above", "epoch 3")
	_, err = h.lease("obs3", rogue, "db1")
	wantCode(t, err, codes.InvalidArgument)
	_, err = h.a.AddVIP(ctx, &vigilv1.VIPRequest{Group: tGroup, Epoch: rogue, Observer: "obs3"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = h.a.RemoveVIP(ctx, &vigilv1.VIPRequest{Group: tGroup, Epoch: rogue, Observer: "obs3"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = h.a.Fence(ctx, &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: rogue, Observer: "obs3"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = h.lease("obs3", 3+MaxEpochJump+1, "db1")
	wantCode(t, err, codes.InvalidArgument)
	if !h.holds() || len(markerLines(t, h.marker)) != 0 {
		t.Fatal("a refused absurd epoch acted")
	}
	h.wantEpochs(t, 3, 3)
	if v := h.metric(t, "vigil_agent_epoch_jumps_refused_total", map[string]string{"group": tGroup}); v != 6 {
		t.Errorf("vigil_agent_epoch_jumps_refused_total = %v, want 6", v)
	}
	if v := h.metric(t, "vigil_agent_tentative_epoch", map[string]string{"group": tGroup}); v != 0 {
		t.Errorf("vigil_agent_tentative_epoch = %v", v)
	}
	// The real observers go on at the real epoch: the VIP stays, well
	// past the AddVIP grant.
	for i := 0; i < 5; i++ {
		h.clock.advance(400 * time.Millisecond)
		h.mustLease(t, "obs1", 3, "db1")
		h.mustLease(t, "obs2", 3, "db1")
		h.reconcile()
		if !h.holds() {
			t.Fatalf("VIP dropped at round %d with two observers leasing the real epoch", i)
		}
	}

	// The bound itself: MaxEpochJump above the confirmed epoch is not
	// absurd (a tentative epoch), one more is.
	h2 := newHarness(t, nil)
	_, err = h2.lease("obs1", MaxEpochJump+1, "db1")
	wantCode(t, err, codes.InvalidArgument)
	if r := h2.mustLease(t, "obs1", MaxEpochJump, "db1"); r.HighestEpoch != MaxEpochJump {
		t.Fatalf("lease of epoch MaxEpochJump: %+v", r)
	}
	h2.wantEpochs(t, MaxEpochJump, 0)
}

// TestOneObserverNeverRaisesThePersistedEpoch: one observer's newer
// epoch (lease, AddVIP) is acted on — the VIP goes, real leases are
// refused — but only for lease_timeout, and it is never persisted: after
// it lapses, and after a restart, the real epoch works again.
func TestOneObserverNeverRaisesThePersistedEpoch(t *testing.T) {
	h := newHarness(t, nil)
	h.confirm(t, 3, "db1")
	h.add(t, 3)

	r := h.mustLease(t, "obs3", 10, "db1")
	if r.HighestEpoch != 10 || r.Holding || h.holds() {
		t.Fatalf("one observer's epoch-10 lease: %+v holds=%v; want it acted on (VIP dropped: no quorum at epoch 10)", r, h.holds())
	}
	h.wantEpochs(t, 10, 3)
	if v := h.metric(t, "vigil_agent_tentative_epoch", map[string]string{"group": tGroup}); v != 10 {
		t.Errorf("vigil_agent_tentative_epoch = %v, want 10", v)
	}
	// Requests below the tentative epoch are stale while it is valid.
	_, err := h.lease("obs1", 3, "db1")
	wantCode(t, err, codes.FailedPrecondition, "stale epoch 3", "seen epoch 10")
	_, err = h.a.AddVIP(context.Background(), &vigilv1.VIPRequest{Group: tGroup, Epoch: 3, Observer: "obs1"})
	wantCode(t, err, codes.FailedPrecondition)
	// The same observer again, and its AddVIP: still one observer.
	h.clock.advance(300 * time.Millisecond)
	h.mustLease(t, "obs3", 10, "db1")
	if _, err := h.a.AddVIP(context.Background(), &vigilv1.VIPRequest{Group: tGroup, Epoch: 10, Observer: "obs3"}); err != nil {
		t.Fatal(err)
	}
	h.wantEpochs(t, 10, 3)

	// It lapses lease_timeout after obs3's last word.
	h.clock.advance(time.Second)
	h.reconcile()
	if h.holds() {
		t.Fatal("one observer's AddVIP grant outlived lease_timeout")
	}
	h.wantEpochs(t, 3, 3)
	if v := h.metric(t, "vigil_agent_tentative_epoch", map[string]string{"group": tGroup}); v != 0 {
		t.Errorf("vigil_agent_tentative_epoch = %v after the lapse", v)
	}
	h.mustLease(t, "obs1", 3, "db1")
	h.mustLease(t, "obs2", 3, "db1")
	h.add(t, 3) // the leader's periodic VIP check
	if !h.holds() {
		t.Fatal("the real epoch does not get the VIP back")
	}

	// Restarted, the agent enforces what a quorum confirmed: 3.
	h.a.Close()
	a2, err := New(testConfig(h.dir, nil), nil, nil, WithAddrs(h.fake), withClock(h.clock.now))
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	for _, obs := range []string{"obs1", "obs2"} {
		if _, err := a2.Lease(context.Background(), &vigilv1.LeaseRequest{Group: tGroup, Epoch: 3, Observer: obs, Primary: "db1"}); err != nil {
			t.Fatalf("lease of the real epoch after restart: %v", err)
		}
	}
	if _, err := a2.AddVIP(context.Background(), &vigilv1.VIPRequest{Group: tGroup, Epoch: 3, Observer: "obs1"}); err != nil {
		t.Fatalf("AddVIP of the real epoch after restart: %v", err)
	}
	_, err = a2.AddVIP(context.Background(), &vigilv1.VIPRequest{Group: tGroup, Epoch: 2, Observer: "obs1"})
	wantCode(t, err, codes.FailedPrecondition, "stale epoch 2", "seen epoch 3")
}

// TestQuorumOfLeasesRaisesTheEpoch: the confirmed epoch is the quorum-th
// highest epoch of the observers' fresh leases, persisted.
func TestQuorumOfLeasesRaisesTheEpoch(t *testing.T) {
	h := newHarness(t, nil)
	h.mustLease(t, "obs1", 7, "db1")
	h.wantEpochs(t, 7, 0)
	h.mustLease(t, "obs2", 7, "db1")
	h.wantEpochs(t, 7, 7)
	if v := h.metric(t, "vigil_agent_tentative_epoch", map[string]string{"group": tGroup}); v != 0 {
		t.Errorf("vigil_agent_tentative_epoch = %v once confirmed", v)
	}

	// obs1 at 9, obs2 at 8: a quorum vouches for 8, not 9. obs2's lease is
	// refused (below the tentative 9) but is still its word on the epoch.
	h.mustLease(t, "obs1", 9, "db1")
	_, err := h.lease("obs2", 8, "db1")
	wantCode(t, err, codes.FailedPrecondition, "stale epoch 8")
	h.wantEpochs(t, 9, 8)

	// obs3 at 12: obs1 (9) and obs3 (12) vouch for 9.
	h.mustLease(t, "obs3", 12, "db1")
	h.wantEpochs(t, 12, 9)
	// Only fresh leases count: obs3's is a second old when obs2's comes.
	h.clock.advance(time.Second)
	h.mustLease(t, "obs2", 12, "db1")
	h.wantEpochs(t, 12, 9)
	h.mustLease(t, "obs3", 12, "db1")
	h.wantEpochs(t, 12, 12)
}

// TestRogueTentativeEpochDoesNotHideTheQuorum: a rogue observer keeps a
// high tentative epoch alive, yet the honest quorum's real failover epoch
// is confirmed, and once the rogue's epoch lapses the agent follows the
// real one.
func TestRogueTentativeEpochDoesNotHideTheQuorum(t *testing.T) {
	h := newHarness(t, nil)
	h.confirm(t, 3, "db1")
	h.add(t, 3)
	if _, err := h.a.AddVIP(context.Background(), &vigilv1.VIPRequest{Group: tGroup, Epoch: 50, Observer: "obs3"}); err != nil {
		t.Fatal(err)
	}
	// The real failover to db2 (epoch 4): its leases are refused below
	// the rogue's 50, but a quorum of them confirms 4.
	for _, obs := range []string{"obs1", "obs2"} {
		_, err := h.lease(obs, 4, "db2")
		wantCode(t, err, codes.FailedPrecondition)
	}
	h.wantEpochs(t, 50, 4)
	h.clock.advance(1001 * time.Millisecond)
	h.mustLease(t, "obs1", 4, "db2")
	h.reconcile()
	if h.holds() {
		t.Fatal("the rogue's grant kept the VIP past lease_timeout")
	}
	h.wantEpochs(t, 4, 4)
	_, err := h.a.AddVIP(context.Background(), &vigilv1.VIPRequest{Group: tGroup, Epoch: 3, Observer: "obs1"})
	wantCode(t, err, codes.FailedPrecondition, "seen epoch 4")
}

// TestStaleFenceLeavesSelfFenceRunning: a Fence of a stale epoch fences
// but neither changes an epoch nor cancels the self-fence episode in
// progress (whose failing command goes on being retried).
func TestStaleFenceLeavesSelfFenceRunning(t *testing.T) {
	h := newHarness(t, nil)
	h.confirm(t, 3, "db1")
	h.add(t, 3)
	if err := os.WriteFile(h.exit, []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.mustLease(t, "obs3", 5, "db1") // tentative 5: support lost, self-fence
	g := h.a.groups[tGroup]
	pending := func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.pendingFence
	}
	if h.holds() || !pending() || h.status(t).Fenced {
		t.Fatalf("setup: holds=%v pending=%v fenced=%v; want a self-fence episode with a failing command", h.holds(), pending(), h.status(t).Fenced)
	}
	r, err := h.a.Fence(context.Background(), &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: 3, Observer: "obs1"})
	if err != nil || r.Confirmed || r.HighestEpoch != 5 || !pending() {
		t.Fatalf("stale Fence with a failing command: %+v %v, episode pending=%v", r, err, pending())
	}
	h.wantEpochs(t, 5, 3)
	if v := h.metric(t, "vigil_agent_tentative_epoch", map[string]string{"group": tGroup}); v != 5 {
		t.Errorf("tentative epoch %v after a stale Fence, want 5", v)
	}
	os.Remove(h.exit)
	h.clock.advance(maxFenceRetry)
	h.reconcile()
	if !h.status(t).Fenced {
		t.Fatal("the self-fence episode stopped after a stale Fence")
	}
}

// TestStalledDiskDoesNotHoldUpFencing: while persisting a confirmed
// epoch is stuck (the disk stalls), the lease that raised it has already
// fenced, and Fence and the self-fencing loop go on; only that lease's
// answer waits for the disk.
func TestStalledDiskDoesNotHoldUpFencing(t *testing.T) {
	h := newHarness(t, nil)
	h.confirm(t, 3, "db1")
	h.add(t, 3)
	h.a.store.mu.Lock() // the disk stalls: persisting blocks
	stalled := true
	defer func() {
		if stalled {
			h.a.store.mu.Unlock()
		}
	}()
	// One observer's epoch 4 naming db2: acted on at once, nothing to
	// persist.
	h.mustLease(t, "obs1", 4, "db2")
	if h.holds() {
		t.Fatal("VIP kept after a higher-epoch lease naming db2")
	}
	// The second one confirms 4: persisting it blocks on the disk.
	answered := make(chan error, 1)
	go func() {
		_, err := h.lease("obs2", 4, "db2")
		answered <- err
	}()
	g := h.a.groups[tGroup]
	waitFor(t, 5*time.Second, "epoch 4 confirmed in memory", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.highest == 4
	})
	fenced := make(chan error, 1)
	go func() {
		_, err := h.a.Fence(context.Background(), &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: 4, Observer: "obs1"})
		if err == nil {
			h.reconcile()
		}
		fenced <- err
	}()
	select {
	case err := <-fenced:
		if err != nil {
			t.Fatalf("Fence during the stall: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Fence or the self-fencing loop is held up by the stalled disk")
	}
	select {
	case err := <-answered:
		t.Fatalf("the confirming lease answered (%v) before its epoch was on disk", err)
	default:
	}
	h.a.store.mu.Unlock()
	stalled = false
	if err := <-answered; err != nil {
		t.Fatalf("the confirming lease: %v", err)
	}
	if got := h.a.store.get(tGroup); got != 4 {
		t.Fatalf("persisted %d after the stall, want 4", got)
	}
}
