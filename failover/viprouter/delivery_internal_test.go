package viprouter

import (
	"context"
	"net"
	"testing"
	"time"
)

// TestSupportEndCountsOnlyCallsThatReachedAConnection: the lease-expiry
// fence bounds an old primary's support by the end of the last lease
// naming it that may have been delivered. A lease that reached the agent
// (even one left without an answer) counts from when its call ended; a
// lease that never found a connection (the host unreachable) does not
// count at all; a lease naming another member never counts. The dial
// record tells "unreachable" (attempts fail) from "up" (connected,
// refused).
func TestSupportEndCountsOnlyCallsThatReachedAConnection(t *testing.T) {
	stall := &stallAgent{}
	addr := serveStall(t, stall)
	a := NewAgents("obs1", func(string, string) (string, bool) { return addr, true }, 300*time.Millisecond, WithLeaseCallTimeout(150*time.Millisecond))
	defer a.Close()

	if end := a.SupportEnd("g", "pg0"); !end.IsZero() {
		t.Fatalf("support end before any call: %v", end)
	}
	// Delivered, not answered: counts from the end of the call.
	before := time.Now()
	_, _ = a.LeaseTo(context.Background(), "g", "pg0", 1, "pg0")
	after := time.Now()
	end := a.SupportEnd("g", "pg0")
	if end.Before(before.Add(100*time.Millisecond)) || end.After(after) {
		t.Fatalf("support end %v of a delivered lease without answer: want the call's end, in [%v, %v]", end, before.Add(100*time.Millisecond), after)
	}
	if d := a.Dials(addr); d.Connected.IsZero() || d.UnreachableSince(before, time.Minute, time.Now()) {
		t.Fatalf("dial record after connecting: %+v", d)
	}

	// A lease naming another member is no support for pg1.
	_, _ = a.LeaseTo(context.Background(), "g", "pg1", 1, "pg0")
	if e := a.SupportEnd("g", "pg1"); !e.IsZero() {
		t.Fatalf("a lease naming pg0 counted as support for pg1: %v", e)
	}

	// The host goes unreachable: connection attempts hang until cancelled.
	a.bookMu.Lock()
	a.dial = func(ctx context.Context, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	a.bookMu.Unlock()
	cut := time.Now()
	for i := 0; i < 2; i++ {
		if _, err := a.LeaseTo(context.Background(), "g", "pg0", 1, "pg0"); err == nil {
			t.Fatal("lease to an unreachable agent succeeded")
		}
	}
	if got := a.SupportEnd("g", "pg0"); !got.Equal(end) {
		t.Fatalf("support end moved to %v by leases that never reached a connection (want %v)", got, end)
	}
	if d := a.Dials(addr); !d.UnreachableSince(cut, time.Minute, time.Now()) {
		t.Fatalf("dial record after the cut does not say unreachable: %+v", d)
	}
	if d := a.Dials(addr); d.UnreachableSince(cut, time.Nanosecond, time.Now().Add(time.Second)) {
		t.Fatalf("stale evidence counted as fresh: %+v", d)
	}
}

// TestSupportEndRefusedAndInFlight: a refused connection says the host
// is up; while a support call is in flight, SupportEnd is its deadline.
func TestSupportEndRefusedAndInFlight(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := lis.Addr().String()
	_ = lis.Close()
	a := NewAgents("obs1", func(string, string) (string, bool) { return closed, true }, 300*time.Millisecond, WithLeaseCallTimeout(150*time.Millisecond))
	defer a.Close()
	start := time.Now()
	if _, err := a.LeaseTo(context.Background(), "g", "pg0", 1, "pg0"); err == nil {
		t.Fatal("lease to a closed port succeeded")
	}
	if d := a.Dials(closed); d.Refused.IsZero() || d.UnreachableSince(start, time.Minute, time.Now()) {
		t.Fatalf("dial record after a refusal: %+v", d)
	}
	if e := a.SupportEnd("g", "pg0"); !e.IsZero() {
		t.Fatalf("a refused connection counted as support: %v", e)
	}

	_, ended := a.beginSupport(context.Background(), "g", "pg0")
	if e := a.SupportEnd("g", "pg0"); e.Before(time.Now().Add(250 * time.Millisecond)) {
		t.Fatalf("support end with a call in flight: %v, want its deadline", e)
	}
	ended()
	if e := a.SupportEnd("g", "pg0"); !e.IsZero() {
		t.Fatalf("a call that sent nothing moved the support end: %v", e)
	}
}
