package netlab

import (
	"bufio"
	"io"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCutPorts: a port cut is one-way and per port: only the named
// source loses only the named ports of the host, with timeouts; the host
// still reaches the source; HealPorts restores it, established
// connections stall meanwhile.
func TestCutPorts(t *testing.T) {
	Require(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed")
	}
	t.Parallel()
	l := New(t, "vp", []string{"a", "b", "c"})
	a1, a2 := echoIn(t, l, "a"), echoIn(t, l, "a")
	b := echoIn(t, l, "b")
	p1, p2 := portOf(t, a1), portOf(t, a2)

	est, err := dialFrom(l, "", a1, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer est.Close()
	if got, err := roundTrip(est, "before", 2*time.Second); err != nil || got != "a: before" {
		t.Fatalf("established: %q %v", got, err)
	}

	// The root namespace (source: the gateway) loses a's port p1 only.
	l.CutPorts("a", l.Gateway, p1)
	l.CutPorts("a", l.Gateway, p1) // idempotent
	mustNotReach(t, l, "", "a", a1)
	if got, err := roundTrip(est, "during", 300*time.Millisecond); err == nil {
		t.Fatalf("established connection across the port cut still answered %q", got)
	}
	mustReach(t, l, "", "a", a2)
	mustReach(t, l, "b", "a", a1)
	mustReach(t, l, "c", "a", a1)
	mustReach(t, l, "", "b", b)
	mustReach(t, l, "a", "b", b)
	if got := l.PortCuts()["a"]; !slices.Equal(got, []string{l.Gateway + " . " + strconv.Itoa(p1)}) {
		t.Fatalf("PortCuts: %v", l.PortCuts())
	}

	// By host name, several ports: b loses both, c still has both.
	l.CutPorts("a", "b", p1, p2)
	mustNotReach(t, l, "b", "a", a1)
	mustNotReach(t, l, "b", "a", a2)
	mustReach(t, l, "c", "a", a2)
	mustReach(t, l, "a", "b", b)

	// Heal.
	l.HealPorts("a", "b", p1, p2)
	l.HealPorts("a", "b", p1) // idempotent
	l.HealPorts("a", l.Gateway, p1)
	l.HealPorts("c", "a", p1) // never cut: nothing to do
	mustReach(t, l, "", "a", a1)
	mustReach(t, l, "b", "a", a1)
	mustReach(t, l, "b", "a", a2)
	// The stalled line is retransmitted and answered, then the next one.
	_ = est.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(est, "after\n"); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(est)
	for _, want := range []string{"a: during", "a: after"} {
		if got, err := rd.ReadString('\n'); err != nil || strings.TrimSpace(got) != want {
			t.Fatalf("established connection after healing: %q %v, want %q", got, err, want)
		}
	}
	if cuts := l.PortCuts(); len(cuts["a"]) != 0 {
		t.Fatalf("PortCuts after healing: %v", cuts)
	}

	// Bad input is an error, not a cut.
	for _, bad := range []struct {
		host, from string
		ports      []int
	}{{"nope", "b", []int{1}}, {"a", "nope", []int{1}}, {"a", "b", nil}, {"a", "b", []int{0}}, {"a", "::1", []int{1}}} {
		if err := l.portCut(bad.host, bad.from, bad.ports, true); err == nil {
			t.Errorf("portCut(%q, %q, %v) succeeded", bad.host, bad.from, bad.ports)
		}
	}
}
