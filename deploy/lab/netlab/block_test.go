package netlab

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// udpIn opens, inside host's namespace, a UDP socket on host's address.
func udpIn(t *testing.T, l *Lab, host string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := l.InNS(host, func() error {
		var err error
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(l.IP(host))})
		return err
	})
	if err != nil {
		t.Fatalf("UDP socket in %s: %v", host, err)
	}
	// Room for a burst of datagrams while the reader catches up.
	_ = c.SetReadBuffer(1 << 20)
	t.Cleanup(func() { c.Close() })
	return c
}

// sendUDP sends n datagrams "0".."n-1" from inside host's namespace to
// addr.
func sendUDP(l *Lab, host, addr string, n int) error {
	return l.InNS(host, func() error {
		c, err := net.Dial("udp4", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		for i := range n {
			if _, err := fmt.Fprintf(c, "%d", i); err != nil {
				return fmt.Errorf("datagram %d: %w", i, err)
			}
		}
		return nil
	})
}

// recvUDP counts the datagrams c receives until want have arrived or none
// has for quiet.
func recvUDP(c *net.UDPConn, want int, quiet time.Duration) int {
	buf := make([]byte, 64)
	got := 0
	for got < want {
		_ = c.SetReadDeadline(time.Now().Add(quiet))
		if _, _, err := c.ReadFromUDP(buf); err != nil {
			break
		}
		got++
	}
	return got
}

// TestBlock: Block is one-way (the blocked source's connections time out,
// the host's datagrams to it still arrive), works on the root namespace
// as "gateway", leaves other peers alone, works from another goroutine,
// and Unblock restores everything.
func TestBlock(t *testing.T) {
	Require(t)
	t.Parallel()
	l := New(t, "vk", []string{"a", "b", "c"})
	a, b := echoIn(t, l, "a"), echoIn(t, l, "b")
	ua, ub := udpIn(t, l, "a"), udpIn(t, l, "b")

	// From a goroutine other than the test's: no testing.TB involved.
	errc := make(chan error, 1)
	go func() { errc <- l.Block("a", "b") }()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := l.Block("a", "b"); err != nil { // idempotent
		t.Fatal(err)
	}
	mustNotReach(t, l, "b", "a", a)
	if err := sendUDP(l, "b", ua.LocalAddr().String(), 3); err != nil {
		t.Fatal(err)
	}
	if n := recvUDP(ua, 3, 300*time.Millisecond); n != 0 {
		t.Fatalf("a received %d datagrams from b while blocking it", n)
	}
	// The other way still delivers: a's datagrams reach b.
	if err := sendUDP(l, "a", ub.LocalAddr().String(), 3); err != nil {
		t.Fatal(err)
	}
	if n := recvUDP(ub, 3, 2*time.Second); n != 3 {
		t.Fatalf("b received %d of a's 3 datagrams: Block is not one-way", n)
	}
	mustReach(t, l, "c", "a", a)
	mustReach(t, l, "", "a", a)
	mustReach(t, l, "b", "c", echoIn(t, l, "c"))
	if cuts := l.Cuts(); len(cuts) != 1 || len(cuts["a"]) != 1 || cuts["a"][0] != l.IP("b") {
		t.Fatalf("Cuts: %v", cuts)
	}

	if err := l.Unblock("a", "b"); err != nil {
		t.Fatal(err)
	}
	if err := l.Unblock("a", "b"); err != nil { // idempotent
		t.Fatal(err)
	}
	mustReach(t, l, "b", "a", a)
	mustReach(t, l, "a", "b", b)

	// The root namespace, by its name.
	if err := l.Block("a", GatewayHost); err != nil {
		t.Fatal(err)
	}
	mustNotReach(t, l, "", "a", a)
	mustReach(t, l, "b", "a", a)
	if err := l.Unblock("a", GatewayHost); err != nil {
		t.Fatal(err)
	}
	mustReach(t, l, "", "a", a)

	// CutErr and HealErr are both ways, and Cut, Heal use them.
	if err := l.CutErr("a", "b"); err != nil {
		t.Fatal(err)
	}
	mustNotReach(t, l, "a", "b", b)
	mustNotReach(t, l, "b", "a", a)
	if err := l.HealErr("a", "b"); err != nil {
		t.Fatal(err)
	}
	mustReach(t, l, "a", "b", b)
	mustReach(t, l, "b", "a", a)
	if cuts := l.Cuts(); len(cuts["a"])+len(cuts["b"]) != 0 {
		t.Fatalf("Cuts after healing: %v", cuts)
	}

	// Bad input is an error naming it, and changes nothing.
	for _, bad := range []struct {
		name string
		err  error
		want string
	}{
		{"Block self", l.Block("a", "a"), "itself"},
		{"Block unknown host", l.Block("nope", "a"), "nope"},
		{"Block unknown source", l.Block("a", "nope"), "nope"},
		{"Unblock unknown source", l.Unblock("a", "10.0.0.1"), "10.0.0.1"},
		{"CutErr self", l.CutErr("b", "b"), "itself"},
		{"CutErr unknown", l.CutErr("a", "nope"), "nope"},
		{"HealErr unknown", l.HealErr("nope", "a"), "nope"},
	} {
		if bad.err == nil || !strings.Contains(bad.err.Error(), bad.want) {
			t.Errorf("%s: error %v, want one naming %q", bad.name, bad.err, bad.want)
		}
	}
	if cuts := l.Cuts(); len(cuts["a"])+len(cuts["b"]) != 0 {
		t.Fatalf("Cuts after bad input: %v", cuts)
	}
}

// TestSetLoss: 100% loss makes connections to the host time out (its own
// loopback still works), 0 restores them and removes the table, 30% loses
// some but not all of 200 datagrams, a new percentage replaces the old
// rule, and bad percentages are errors.
func TestSetLoss(t *testing.T) {
	Require(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed")
	}
	t.Parallel()
	l := New(t, "vl", []string{"a", "b"})
	a := echoIn(t, l, "a")
	ua := udpIn(t, l, "a")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ruleset := func() string {
		out, err := l.Exec(ctx, "a", "nft", "list", "ruleset").CombinedOutput()
		if err != nil {
			t.Fatalf("nft list ruleset in a: %v %s", err, out)
		}
		return string(out)
	}

	if err := l.SetLoss("a", 100); err != nil {
		t.Fatal(err)
	}
	if err := l.SetLoss("a", 100); err != nil { // idempotent
		t.Fatal(err)
	}
	mustNotReach(t, l, "b", "a", a)
	mustNotReach(t, l, "", "a", a)
	mustReach(t, l, "a", "a", a) // loopback is not affected
	if got := l.Loss(); len(got) != 1 || got["a"] != 100 {
		t.Fatalf("Loss: %v", got)
	}

	if err := l.SetLoss("a", 0); err != nil {
		t.Fatal(err)
	}
	if err := l.SetLoss("a", 0); err != nil { // idempotent
		t.Fatal(err)
	}
	mustReach(t, l, "b", "a", a)
	mustReach(t, l, "", "a", a)
	if got := l.Loss(); len(got) != 0 {
		t.Fatalf("Loss after SetLoss(a, 0): %v", got)
	}
	if rs := ruleset(); strings.Contains(rs, lossTable) {
		t.Fatalf("table %s left after SetLoss(a, 0):\n%s", lossTable, rs)
	}

	// Some loss: of 200 datagrams, a few but not all are dropped.
	if err := l.SetLoss("a", 50); err != nil {
		t.Fatal(err)
	}
	if err := l.SetLoss("a", 30); err != nil { // replaces the rule
		t.Fatal(err)
	}
	if rs := ruleset(); strings.Count(rs, "numgen random mod 100") != 1 || !strings.Contains(rs, "< 30 drop") {
		t.Fatalf("want one loss rule at 30%%:\n%s", rs)
	}
	if got := l.Loss(); got["a"] != 30 {
		t.Fatalf("Loss: %v", got)
	}
	const n = 200
	var wg sync.WaitGroup
	var got int
	wg.Add(1)
	go func() { defer wg.Done(); got = recvUDP(ua, n, time.Second) }()
	if err := sendUDP(l, "b", ua.LocalAddr().String(), n); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	lost := float64(n-got) / n
	t.Logf("30%% loss: %d of %d datagrams arrived (%.0f%% lost)", got, n, 100*lost)
	if lost <= 0.05 || lost >= 0.70 {
		t.Fatalf("%d of %d datagrams arrived at 30%% loss: want between 5%% and 70%% lost", got, n)
	}

	// Bad input.
	for _, p := range []int{-1, 101, 1000} {
		err := l.SetLoss("a", p)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprint(p)) {
			t.Errorf("SetLoss(a, %d): error %v, want one naming %d", p, err, p)
		}
	}
	if err := l.SetLoss("nope", 10); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("SetLoss(nope, 10): %v", err)
	}
	if got := l.Loss(); len(got) != 1 || got["a"] != 30 {
		t.Fatalf("Loss after bad input: %v", got)
	}
}

// TestErrAPIWithoutTest: a lab made by Create (no testing.TB) takes
// Block, CutErr and SetLoss, and Close removes it with its loss table
// and forgets the faults.
func TestErrAPIWithoutTest(t *testing.T) {
	Require(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed")
	}
	t.Parallel()
	l, err := Create("vc", []string{"a", "b", "c"})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = l.Close()
		}
	})
	for _, f := range []func() error{
		func() error { return l.Block("a", "b") },
		func() error { return l.CutErr("b", "c") },
		func() error { return l.SetLoss("c", 20) },
	} {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	if len(l.Cuts()) != 3 || l.Loss()["c"] != 20 {
		t.Fatalf("Cuts %v, Loss %v", l.Cuts(), l.Loss())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	for _, h := range l.Hosts {
		if nsExists(h.NS) {
			t.Errorf("namespace %s left after Close", h.NS)
		}
	}
	if len(l.Cuts()) != 0 || len(l.Loss()) != 0 {
		t.Fatalf("after Close: Cuts %v, Loss %v", l.Cuts(), l.Loss())
	}
	// A closed lab's faults fail with an error, not a panic.
	if err := l.SetLoss("a", 10); err == nil {
		t.Error("SetLoss on a closed lab succeeded")
	}
}
