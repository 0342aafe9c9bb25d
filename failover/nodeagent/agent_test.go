package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilha/vigil/failover/nodeagent/nodeagenttest"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

const (
	tGroup = "pg-main"
	tVIP   = "10.0.0.100/32"
	tIface = "eth0"
)

// fakeClock is a settable clock; readings keep Go's monotonic part.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fenceScript writes an executable script that appends its VIGIL_*
// variables to marker and exits with the content of exitFile (0 if
// absent).
func fenceScript(t *testing.T) (script, marker, exitFile string) {
	t.Helper()
	dir := t.TempDir()
	script = filepath.Join(dir, "fence.sh")
	marker = filepath.Join(dir, "fenced")
	exitFile = filepath.Join(dir, "exit")
	body := fmt.Sprintf(`#!/bin/sh
echo "$VIGIL_STEP group=$VIGIL_GROUP epoch=$VIGIL_EPOCH member=$VIGIL_MEMBER" >> %q
if [ -f %q ]; then exit "$(cat %q)"; fi
exit 0
`, marker, exitFile, exitFile)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, marker, exitFile
}

func markerLines(t *testing.T, marker string) []string {
	t.Helper()
	b, err := os.ReadFile(marker)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func testConfig(dataDir string, fence []string) *Config {
	return &Config{
		Node:         "db1host",
		Listen:       "127.0.0.1:7501",
		DataDir:      dataDir,
		Observers:    []string{"obs1", "obs2", "obs3"},
		LeaseTimeout: Duration(time.Second),
		GARP:         GARP{Count: 3, Interval: Duration(time.Millisecond)},
		Groups:       []Group{{Name: tGroup, Member: "db1", VIP: tVIP, Interface: tIface, FenceCommand: fence}},
	}
}

type harness struct {
	a      *Agent
	fake   *nodeagenttest.Addrs
	clock  *fakeClock
	reg    *prometheus.Registry
	marker string
	exit   string
	dir    string
}

// newHarness builds an agent on the fake Addrs and fake clock, without
// starting its loops: tests call reconcile by hand.
func newHarness(t *testing.T, mutate func(*Config), preset ...string) *harness {
	t.Helper()
	script, marker, exit := fenceScript(t)
	h := &harness{fake: nodeagenttest.New(), clock: newFakeClock(), reg: prometheus.NewRegistry(), marker: marker, exit: exit, dir: t.TempDir()}
	for _, cidr := range preset {
		h.fake.Set(tIface, cidr, true)
	}
	cfg := testConfig(h.dir, []string{script})
	if mutate != nil {
		mutate(cfg)
	}
	a, err := New(cfg, nil, h.reg, WithAddrs(h.fake), withClock(h.clock.now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	h.a = a
	return h
}

func (h *harness) reconcile() {
	g := h.a.groups[tGroup]
	g.act.Lock()
	h.a.reconcileLocked(g, "test")
	g.act.Unlock()
}

func (h *harness) holds() bool { return h.fake.Holds(tIface, tVIP) }

func (h *harness) add(t *testing.T, epoch uint64) *vigilv1.VIPResponse {
	t.Helper()
	r, err := h.a.AddVIP(context.Background(), &vigilv1.VIPRequest{Group: tGroup, Epoch: epoch, Observer: "obs1"})
	if err != nil {
		t.Fatalf("AddVIP(epoch %d): %v", epoch, err)
	}
	return r
}

func (h *harness) lease(obs string, epoch uint64, primary string) (*vigilv1.LeaseResponse, error) {
	return h.a.Lease(context.Background(), &vigilv1.LeaseRequest{Group: tGroup, Epoch: epoch, Observer: obs, Primary: primary})
}

func (h *harness) mustLease(t *testing.T, obs string, epoch uint64, primary string) *vigilv1.LeaseResponse {
	t.Helper()
	r, err := h.lease(obs, epoch, primary)
	if err != nil {
		t.Fatalf("Lease(%s, %d, %s): %v", obs, epoch, primary, err)
	}
	return r
}

func (h *harness) status(t *testing.T) *vigilv1.AgentGroupStatus {
	t.Helper()
	r, err := h.a.Status(context.Background(), &vigilv1.AgentStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return r.Groups[0]
}

// metric returns the value of the metric name with the given labels.
func (h *harness) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			switch {
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func wantCode(t *testing.T, err error, code codes.Code, contains ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("err = %v, want code %s", err, code)
	}
	for _, c := range contains {
		if !strings.Contains(err.Error(), c) {
			t.Errorf("error %q does not contain %q", err, c)
		}
	}
}

func TestAddVIPIdempotentAndAnnounced(t *testing.T) {
	h := newHarness(t, nil)
	r := h.add(t, 1)
	if !r.Changed || r.HighestEpoch != 1 || !h.holds() {
		t.Fatalf("first AddVIP: %+v, holds=%v", r, h.holds())
	}
	// Each AddVIP announces a burst of garp.count packets: the first one
	// before answering, the rest in the background.
	if h.fake.Packets("10.0.0.100") < 1 {
		t.Fatal("first GARP packet not sent before the answer")
	}
	waitFor(t, 5*time.Second, "a GARP burst of 3", func() bool { return h.fake.Packets("10.0.0.100") == 3 })
	r = h.add(t, 1) // replayed: changes nothing, announces again
	if r.Changed || !h.holds() {
		t.Fatalf("replayed AddVIP: %+v", r)
	}
	waitFor(t, 5*time.Second, "a second GARP burst of 3", func() bool { return h.fake.Packets("10.0.0.100") == 6 })
	for _, an := range h.fake.Announcements() {
		if an.Iface != tIface || an.IP != "10.0.0.100" {
			t.Errorf("announcement %+v", an)
		}
	}
	if st := h.status(t); !st.Holding || st.HighestEpoch != 1 || st.Vip != tVIP || st.Member != "db1" || st.Interface != tIface {
		t.Errorf("status %+v", st)
	}
	if v := h.metric(t, "vigil_agent_holding", map[string]string{"group": tGroup}); v != 1 {
		t.Errorf("vigil_agent_holding = %v", v)
	}
	if v := h.metric(t, "vigil_agent_requests_total", map[string]string{"rpc": "AddVIP", "result": "ok"}); v != 2 {
		t.Errorf("AddVIP ok requests = %v", v)
	}
}

func TestRemoveVIPIdempotent(t *testing.T) {
	h := newHarness(t, nil)
	h.add(t, 1)
	r, err := h.a.RemoveVIP(context.Background(), &vigilv1.VIPRequest{Group: tGroup, Epoch: 1})
	if err != nil || !r.Changed || h.holds() {
		t.Fatalf("RemoveVIP: %+v %v holds=%v", r, err, h.holds())
	}
	r, err = h.a.RemoveVIP(context.Background(), &vigilv1.VIPRequest{Group: tGroup, Epoch: 1})
	if err != nil || r.Changed {
		t.Fatalf("replayed RemoveVIP: %+v %v", r, err)
	}
}

// confirm has a quorum of observers (obs1, obs2) lease epoch naming
// primary, which confirms (and persists) the epoch.
func (h *harness) confirm(t *testing.T, epoch uint64, primary string) {
	t.Helper()
	h.mustLease(t, "obs1", epoch, primary)
	h.mustLease(t, "obs2", epoch, primary)
	if got := h.a.store.get(tGroup); got < epoch {
		t.Fatalf("epoch %d not confirmed by two observers' leases (persisted %d)", epoch, got)
	}
}

func TestEpochFencingToken(t *testing.T) {
	h := newHarness(t, nil)
	h.confirm(t, 5, "db1")
	h.add(t, 5)
	ctx := context.Background()
	_, err := h.a.AddVIP(ctx, &vigilv1.VIPRequest{Group: tGroup, Epoch: 4})
	wantCode(t, err, codes.FailedPrecondition, "stale epoch 4", "seen epoch 5")
	_, err = h.lease("obs1", 4, "db1")
	wantCode(t, err, codes.FailedPrecondition, "stale epoch 4")
	if !h.holds() {
		t.Fatal("a refused request removed the VIP")
	}

	// Removing the VIP and fencing are safe at any epoch: a stale
	// RemoveVIP or Fence acts, and changes no epoch.
	r, err := h.a.RemoveVIP(ctx, &vigilv1.VIPRequest{Group: tGroup, Epoch: 4})
	if err != nil || !r.Changed || r.HighestEpoch != 5 || h.holds() {
		t.Fatalf("stale RemoveVIP: %+v %v holds=%v", r, err, h.holds())
	}
	h.add(t, 5)
	fr, err := h.a.Fence(ctx, &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: 4})
	if err != nil || !fr.Confirmed || fr.HighestEpoch != 5 || h.holds() || !strings.Contains(fr.Detail, "stale epoch 4") {
		t.Fatalf("stale Fence: %+v %v holds=%v", fr, err, h.holds())
	}
	if lines := markerLines(t, h.marker); len(lines) != 1 || lines[0] != "fence group=pg-main epoch=4 member=db1" {
		t.Fatalf("fence command: %q", lines)
	}
	h.add(t, 5)

	// Bad input and unknown groups change nothing either.
	_, err = h.a.AddVIP(ctx, &vigilv1.VIPRequest{Group: "", Epoch: 9})
	wantCode(t, err, codes.InvalidArgument, "group is required")
	_, err = h.a.AddVIP(ctx, &vigilv1.VIPRequest{Group: tGroup, Epoch: 0})
	wantCode(t, err, codes.FailedPrecondition, "stale epoch 0")
	_, err = h.a.Fence(ctx, &vigilv1.AgentFenceRequest{Group: "nope", Epoch: 9})
	wantCode(t, err, codes.NotFound, `"nope"`)
	_, err = h.lease("intruder", 9, "db1")
	wantCode(t, err, codes.InvalidArgument, `"intruder"`)
	_, err = h.lease("obs1", 9, "")
	wantCode(t, err, codes.InvalidArgument, "primary")
	if st := h.status(t); st.HighestEpoch != 5 || !st.Holding {
		t.Fatalf("state changed by refused requests: %+v", st)
	}
	if h.a.store.get(tGroup) != 5 {
		t.Fatalf("persisted epoch %d", h.a.store.get(tGroup))
	}
	for result, want := range map[string]float64{"stale_epoch": 2, "invalid": 1} {
		if v := h.metric(t, "vigil_agent_requests_total", map[string]string{"rpc": "AddVIP", "result": result}); v != want {
			t.Errorf("AddVIP %s = %v, want %v", result, v, want)
		}
	}
	for _, rpc := range []string{"RemoveVIP", "Fence"} {
		if v := h.metric(t, "vigil_agent_requests_total", map[string]string{"rpc": rpc, "result": "stale_epoch_acted"}); v != 1 {
			t.Errorf("%s stale_epoch_acted = %v, want 1", rpc, v)
		}
	}
	if v := h.metric(t, "vigil_agent_highest_epoch", map[string]string{"group": tGroup}); v != 5 {
		t.Errorf("vigil_agent_highest_epoch = %v", v)
	}
}

func TestLeaseQuorumKeepsVIPAndLossSelfFences(t *testing.T) {
	h := newHarness(t, nil)
	h.add(t, 2) // grant valid for 1s
	h.clock.advance(500 * time.Millisecond)
	h.mustLease(t, "obs1", 2, "db1")
	h.mustLease(t, "obs2", 2, "db1")
	h.clock.advance(700 * time.Millisecond) // grant expired, leases 700ms old
	h.reconcile()
	if !h.holds() {
		t.Fatal("VIP dropped although 2 of 3 observers' leases are current")
	}
	if st := h.status(t); strings.Join(st.LeaseObservers, ",") != "obs1,obs2" {
		t.Errorf("lease observers %v", st.LeaseObservers)
	}
	// Leases keep coming from two observers: still held.
	h.mustLease(t, "obs1", 2, "db1")
	h.mustLease(t, "obs2", 2, "db1")
	h.clock.advance(900 * time.Millisecond)
	h.reconcile()
	if !h.holds() {
		t.Fatal("VIP dropped with current leases")
	}
	// Cut off: no more leases. At 1s past the last ones, support ends.
	h.clock.advance(99 * time.Millisecond)
	h.reconcile()
	if !h.holds() {
		t.Fatal("VIP dropped before lease_timeout")
	}
	h.clock.advance(time.Millisecond)
	h.reconcile()
	if h.holds() {
		t.Fatal("VIP kept after the quorum's leases expired")
	}
	lines := markerLines(t, h.marker)
	if len(lines) != 1 || lines[0] != "self_fence group=pg-main epoch=2 member=db1" {
		t.Fatalf("fence command runs: %q", lines)
	}
	st := h.status(t)
	if st.Holding || !st.Fenced || len(st.LeaseObservers) != 0 {
		t.Errorf("status after self-fence: %+v", st)
	}
	if v := h.metric(t, "vigil_agent_self_fences_total", map[string]string{"group": tGroup}); v != 1 {
		t.Errorf("self fences = %v", v)
	}
	// Nothing more happens on later ticks, and leases do not bring the
	// VIP back (only the leader's AddVIP does).
	h.reconcile()
	for _, o := range []string{"obs1", "obs2", "obs3"} {
		if r := h.mustLease(t, o, 2, "db1"); r.Holding {
			t.Fatal("lease response says holding")
		}
	}
	h.reconcile()
	if h.holds() || len(markerLines(t, h.marker)) != 1 {
		t.Fatal("leases re-added the VIP or re-ran the fence command")
	}
	h.add(t, 2)
	if st := h.status(t); !st.Holding || st.Fenced {
		t.Errorf("after AddVIP: %+v", st)
	}
}

func TestOneObserverIsNotAQuorum(t *testing.T) {
	h := newHarness(t, nil)
	h.add(t, 1)
	h.clock.advance(1100 * time.Millisecond) // grant expired
	h.mustLease(t, "obs3", 1, "db1")         // evaluated on the lease itself
	if h.holds() {
		t.Fatal("one observer's lease kept the VIP")
	}
}

func TestOldEpochLeasesDoNotCount(t *testing.T) {
	h := newHarness(t, nil)
	h.add(t, 1)
	h.clock.advance(800 * time.Millisecond)
	h.mustLease(t, "obs1", 1, "db1")
	h.mustLease(t, "obs2", 1, "db1")
	h.clock.advance(100 * time.Millisecond)
	// Epoch 2 still names db1, but only obs3 says so yet: the fresh
	// epoch-1 leases of obs1 and obs2 no longer count, nor does the
	// epoch-1 AddVIP grant.
	if r := h.mustLease(t, "obs3", 2, "db1"); r.Holding || h.holds() {
		t.Fatal("leases of an older epoch counted toward the quorum")
	}
	if _, err := h.lease("obs2", 1, "db1"); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("epoch-1 lease after epoch 2: %v", err)
	}
}

func TestLeasesAloneNeverAddTheVIP(t *testing.T) {
	h := newHarness(t, nil)
	for _, o := range []string{"obs1", "obs2", "obs3"} {
		if r := h.mustLease(t, o, 3, "db1"); r.Holding || r.HighestEpoch != 3 {
			t.Fatalf("lease response %+v", r)
		}
	}
	h.reconcile()
	st := h.status(t)
	if h.holds() || st.Holding || len(st.LeaseObservers) != 3 {
		t.Fatalf("leases added the VIP or were not recorded: holds=%v %+v", h.holds(), st)
	}
	if h.fake.Calls("Add") != 0 || len(markerLines(t, h.marker)) != 0 {
		t.Fatal("acted on leases of a host that does not hold the VIP")
	}
	if h.a.store.get(tGroup) != 3 {
		t.Fatal("epoch raised by a lease not persisted")
	}
}

func TestHigherEpochLeaseForAnotherMemberDropsAtOnce(t *testing.T) {
	h := newHarness(t, nil)
	h.add(t, 4)
	h.mustLease(t, "obs1", 4, "db1")
	h.mustLease(t, "obs2", 4, "db1")
	h.mustLease(t, "obs3", 4, "db1")
	r := h.mustLease(t, "obs2", 5, "db2") // no clock advance: grant and leases still fresh
	if r.Holding || r.HighestEpoch != 5 || h.holds() {
		t.Fatalf("VIP kept after a higher-epoch lease naming db2: %+v holds=%v", r, h.holds())
	}
	if lines := markerLines(t, h.marker); len(lines) != 1 || lines[0] != "self_fence group=pg-main epoch=5 member=db1" {
		t.Fatalf("fence command: %q", lines)
	}
	// One observer's word is acted on (the VIP is gone) but not
	// persisted: only a quorum of leases confirms an epoch.
	if got := h.a.store.get(tGroup); got != 4 {
		t.Fatalf("persisted epoch %d after one observer's epoch-5 lease, want 4", got)
	}
	h.mustLease(t, "obs3", 5, "db2")
	if got := h.a.store.get(tGroup); got != 5 {
		t.Fatalf("persisted epoch %d after two observers' epoch-5 leases, want 5", got)
	}
}

func TestSameEpochLeasesForAnotherMemberTakeAwaySupport(t *testing.T) {
	h := newHarness(t, nil)
	h.add(t, 1)
	h.clock.advance(600 * time.Millisecond)
	h.mustLease(t, "obs1", 1, "db1")
	h.mustLease(t, "obs2", 1, "db1")
	h.clock.advance(600 * time.Millisecond) // grant gone, leases current
	h.reconcile()
	if !h.holds() {
		t.Fatal("dropped with two current leases")
	}
	h.mustLease(t, "obs2", 1, "db2") // obs2 now says db2: one supporter left
	if h.holds() {
		t.Fatal("kept the VIP with one supporting observer")
	}
}

func TestFence(t *testing.T) {
	h := newHarness(t, nil)
	h.add(t, 1)
	r, err := h.a.Fence(context.Background(), &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: 2, Observer: "obs2"})
	if err != nil || !r.Confirmed || r.HighestEpoch != 2 || h.holds() {
		t.Fatalf("Fence: %+v %v holds=%v", r, err, h.holds())
	}
	if lines := markerLines(t, h.marker); len(lines) != 1 || lines[0] != "fence group=pg-main epoch=2 member=db1" {
		t.Fatalf("fence command: %q", lines)
	}
	if !h.status(t).Fenced {
		t.Error("status not fenced")
	}
	// Idempotent.
	r, err = h.a.Fence(context.Background(), &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: 2})
	if err != nil || !r.Confirmed || !strings.Contains(r.Detail, "not on eth0") {
		t.Fatalf("replayed Fence: %+v %v", r, err)
	}
	// A failing command: not confirmed, with its exit status.
	os.WriteFile(h.exit, []byte("3"), 0o644)
	r, err = h.a.Fence(context.Background(), &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: 2})
	if err != nil || r.Confirmed || !strings.Contains(r.Detail, "exit status 3") {
		t.Fatalf("Fence with failing command: %+v %v", r, err)
	}
	if h.status(t).Fenced {
		t.Error("status fenced after an unconfirmed fence")
	}
	// The VIP cannot be removed: not confirmed either.
	os.Remove(h.exit)
	h.add(t, 2)
	h.fake.Fail("Del", errors.New("netlink: boom"))
	r, err = h.a.Fence(context.Background(), &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: 2})
	if err != nil || r.Confirmed || !strings.Contains(r.Detail, "boom") {
		t.Fatalf("Fence with failing removal: %+v %v", r, err)
	}
}

func TestFenceWithoutCommand(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Groups[0].FenceCommand = nil })
	h.add(t, 1)
	r, err := h.a.Fence(context.Background(), &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: 1})
	if err != nil || !r.Confirmed || h.holds() || !strings.Contains(r.Detail, "no fence command") {
		t.Fatalf("Fence: %+v %v", r, err)
	}
}

func TestSelfFenceCommandRetriedWithBackoff(t *testing.T) {
	h := newHarness(t, nil)
	os.WriteFile(h.exit, []byte("1"), 0o644)
	h.add(t, 1)
	h.clock.advance(1001 * time.Millisecond)
	h.reconcile()
	if h.holds() || len(markerLines(t, h.marker)) != 1 {
		t.Fatal("VIP not removed or command not run")
	}
	h.reconcile() // within the back-off: not re-run
	if n := len(markerLines(t, h.marker)); n != 1 {
		t.Fatalf("command re-run within back-off (%d runs)", n)
	}
	if h.status(t).Fenced {
		t.Fatal("fenced while the command fails")
	}
	os.Remove(h.exit)
	h.clock.advance(time.Second)
	h.reconcile()
	if n := len(markerLines(t, h.marker)); n != 2 || !h.status(t).Fenced {
		t.Fatalf("command not retried after back-off (%d runs)", n)
	}
	h.clock.advance(time.Minute)
	h.reconcile()
	if n := len(markerLines(t, h.marker)); n != 2 {
		t.Fatalf("command re-run after success (%d runs)", n)
	}
	if v := h.metric(t, "vigil_agent_self_fences_total", map[string]string{"group": tGroup}); v != 1 {
		t.Errorf("self fences = %v", v)
	}
}

func TestSelfFenceRetriesVIPRemoval(t *testing.T) {
	h := newHarness(t, nil)
	h.add(t, 1)
	h.fake.Fail("Del", errors.New("netlink: busy"))
	h.clock.advance(1001 * time.Millisecond)
	h.reconcile()
	if !h.holds() || h.status(t).Fenced {
		t.Fatal("fake removal failure not seen")
	}
	h.fake.Fail("Del", nil)
	h.reconcile()
	if h.holds() || !h.status(t).Fenced {
		t.Fatal("VIP removal not retried")
	}
}

func TestStartupGraceForAPresentVIP(t *testing.T) {
	h := newHarness(t, nil, tVIP) // VIP left on the interface
	if st := h.status(t); !st.Holding {
		t.Fatal("present VIP not seen at start")
	}
	h.clock.advance(999 * time.Millisecond)
	h.reconcile()
	if !h.holds() {
		t.Fatal("VIP removed within the startup grace")
	}
	h.clock.advance(time.Millisecond)
	h.reconcile()
	if h.holds() {
		t.Fatal("VIP kept without leases after the startup grace")
	}

	// With leases in time, it stays, even when the agent knows no epoch
	// yet (first start on a host already holding the VIP).
	h2 := newHarness(t, nil, tVIP)
	h2.clock.advance(300 * time.Millisecond)
	h2.mustLease(t, "obs1", 4, "db1")
	if !h2.holds() {
		t.Fatal("VIP removed on the first lease in the grace period")
	}
	h2.mustLease(t, "obs3", 4, "db1")
	h2.clock.advance(800 * time.Millisecond)
	h2.reconcile()
	if !h2.holds() {
		t.Fatal("VIP removed although leases arrived in the grace period")
	}

	// A lease naming another member ends the grace at once.
	h3 := newHarness(t, nil, tVIP)
	h3.mustLease(t, "obs1", 4, "db2")
	if h3.holds() {
		t.Fatal("startup grace survived a lease naming db2")
	}
}

func TestEpochPersistsAcrossRestart(t *testing.T) {
	h := newHarness(t, nil)
	h.add(t, 7)
	h.confirm(t, 7, "db1")
	h.a.Close()
	a2, err := New(testConfig(h.dir, nil), nil, nil, WithAddrs(h.fake))
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	_, err = a2.AddVIP(context.Background(), &vigilv1.VIPRequest{Group: tGroup, Epoch: 6})
	wantCode(t, err, codes.FailedPrecondition, "stale epoch 6", "seen epoch 7")
}

func TestNewRejectsBadConfigAndUnreadableState(t *testing.T) {
	cfg := testConfig(t.TempDir(), nil)
	cfg.Groups[0].VIP = "nope"
	if _, err := New(cfg, nil, nil, WithAddrs(nodeagenttest.New())); err == nil || !strings.Contains(err.Error(), `groups[0].vip: "nope"`) {
		t.Fatalf("bad config: %v", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, epochFile), []byte("garbage"), 0o600)
	if _, err := New(testConfig(dir, nil), nil, nil, WithAddrs(nodeagenttest.New())); err == nil {
		t.Fatal("corrupt epoch file accepted")
	}
}

// TestLoopSelfFencesWithinLeaseTimeout runs the real enforcement loop (real
// clock): an agent that gets no leases after AddVIP drops the VIP shortly
// after lease_timeout.
func TestLoopSelfFencesWithinLeaseTimeout(t *testing.T) {
	fake := nodeagenttest.New()
	script, marker, _ := fenceScript(t)
	cfg := testConfig(t.TempDir(), []string{script})
	cfg.LeaseTimeout = Duration(200 * time.Millisecond)
	a, err := New(cfg, nil, nil, WithAddrs(fake))
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	defer a.Close()
	start := time.Now()
	if _, err := a.AddVIP(context.Background(), &vigilv1.VIPRequest{Group: tGroup, Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "VIP removed by the loop", func() bool { return !fake.Holds(tIface, tVIP) })
	elapsed := time.Since(start)
	if elapsed < 200*time.Millisecond {
		t.Fatalf("VIP removed after %s, before lease_timeout", elapsed)
	}
	t.Logf("VIP removed %s after AddVIP (lease_timeout 200ms)", elapsed)
	waitFor(t, 5*time.Second, "fence command run", func() bool { return len(markerLines(t, marker)) == 1 })
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
