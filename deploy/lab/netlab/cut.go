package netlab

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
)

// defaultCutMethod: VIGIL_NETLAB_CUT, else iptables, else nft, else rules.
func defaultCutMethod() string {
	if m := os.Getenv("VIGIL_NETLAB_CUT"); m != "" {
		return m
	}
	return AvailableCutMethods()[0]
}

// AvailableCutMethods lists the cut methods this machine has, preferred
// first; CutRules (iproute2 alone) is always there.
func AvailableCutMethods() []string {
	var ms []string
	if _, err := exec.LookPath("iptables"); err == nil {
		ms = append(ms, CutIPTables)
	}
	if _, err := exec.LookPath("nft"); err == nil {
		ms = append(ms, CutNFT)
	}
	return append(ms, CutRules)
}

// Cut drops all traffic between hosts a and b, in both directions: each
// drops what it receives from the other. Packets already in flight are
// lost, connections stall, new ones time out. Cutting a cut pair again does
// nothing. Like the other methods that fail the test, call it from the
// test's goroutine; CutErr is the same, returning the error instead.
func (l *Lab) Cut(a, b string) {
	l.t.Helper()
	if err := l.CutErr(a, b); err != nil {
		l.t.Fatal(err)
	}
}

// Heal undoes Cut(a, b). Healing a pair that is not cut does nothing.
// HealErr is the same, returning the error instead of failing the test.
func (l *Lab) Heal(a, b string) {
	l.t.Helper()
	if err := l.HealErr(a, b); err != nil {
		l.t.Fatal(err)
	}
}

// CutAll isolates host from every other host of the lab (as Cut) and from
// the root namespace: it drops what it receives from the bridge address
// too, so connections between the test process and the host fail both
// ways. Only one-way datagrams from the host to the root namespace still
// arrive (the root namespace's firewall is never touched). The host keeps
// its link and addresses, so what runs inside goes on running.
func (l *Lab) CutAll(host string) {
	l.t.Helper()
	h := l.mustHost(host)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, o := range l.order {
		if o == host {
			continue
		}
		l.mustDrop(h, l.Hosts[o].IP, true)
		l.mustDrop(l.Hosts[o], h.IP, true)
	}
	l.mustDrop(h, l.Gateway, true)
}

// HealAll undoes CutAll(host) and every Cut involving host.
func (l *Lab) HealAll(host string) {
	l.t.Helper()
	h := l.mustHost(host)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, o := range l.order {
		if o == host {
			continue
		}
		l.mustDrop(h, l.Hosts[o].IP, false)
		l.mustDrop(l.Hosts[o], h.IP, false)
	}
	l.mustDrop(h, l.Gateway, false)
}

// Cuts lists, per host, the source addresses it currently drops.
func (l *Lab) Cuts() map[string][]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	res := map[string][]string{}
	for h, srcs := range l.dropping {
		for s, on := range srcs {
			if on {
				res[h] = append(res[h], s)
			}
		}
		slices.Sort(res[h])
	}
	return res
}

func (l *Lab) mustDrop(h *Host, src string, on bool) {
	l.t.Helper()
	if err := l.drop(h, src, on); err != nil {
		l.t.Fatalf("netlab: %v", err)
	}
}

// drop makes h drop (on) or accept again (!on) packets from src. l.mu held.
func (l *Lab) drop(h *Host, src string, on bool) error {
	if l.dropping[h.Name][src] == on {
		return nil
	}
	if err := l.prepare(h); err != nil {
		return err
	}
	var cmds [][]string
	switch l.prepared[h.Name] {
	case CutIPTables:
		op := "-I"
		if !on {
			op = "-D"
		}
		cmds = [][]string{{"ip", "netns", "exec", h.NS, "iptables", "-w", op, "INPUT", "-s", src + "/32", "-j", "DROP"}}
	case CutNFT:
		op := "add"
		if !on {
			op = "delete"
		}
		cmds = [][]string{{"ip", "netns", "exec", h.NS, "nft", op, "element", "inet", "vigil_netlab", "cut", "{ " + src + " }"}}
	case CutRules:
		op := "add"
		if !on {
			op = "del"
		}
		cmds = [][]string{{"ip", "-n", h.NS, "rule", op, "pref", "100", "iif", h.Iface, "from", src + "/32", "blackhole"}}
		if on {
			// Connections already established would otherwise go on using
			// cached routes: flush them.
			cmds = append(cmds, []string{"ip", "-n", h.NS, "route", "flush", "cache"})
		}
	}
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("cut %s from %s (%s): %s: %v: %s", h.Name, src, l.prepared[h.Name], strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	if l.dropping[h.Name] == nil {
		l.dropping[h.Name] = map[string]bool{}
	}
	l.dropping[h.Name][src] = on
	return nil
}

// prepare sets up h's namespace for l.CutMethod once. l.mu held.
func (l *Lab) prepare(h *Host) error {
	if m, ok := l.prepared[h.Name]; ok {
		if m != l.CutMethod {
			return fmt.Errorf("host %s: CutMethod changed from %s to %s after the first Cut", h.Name, m, l.CutMethod)
		}
		return nil
	}
	var cmds [][]string
	var stdin string
	switch l.CutMethod {
	case CutIPTables:
		// Nothing to prepare; check the tool works in this namespace.
		cmds = [][]string{{"ip", "netns", "exec", h.NS, "iptables", "-w", "-L", "INPUT", "-n"}}
	case CutNFT:
		cmds = [][]string{{"ip", "netns", "exec", h.NS, "nft", "-f", "-"}}
		stdin = `table inet vigil_netlab {
	set cut { type ipv4_addr; }
	chain input {
		type filter hook input priority filter; policy accept;
		ip saddr @cut drop
	}
}
`
	case CutRules:
		// Rules are looked up in priority order and the "local" rule
		// (priority 0) would deliver packets for our own addresses before
		// a blackhole rule could drop them: move it behind the cut rules.
		cmds = [][]string{
			{"ip", "-n", h.NS, "rule", "add", "pref", "1000", "lookup", "local"},
			{"ip", "-n", h.NS, "rule", "del", "pref", "0", "lookup", "local"},
		}
	default:
		return fmt.Errorf("unknown cut method %q (want %s, %s or %s)", l.CutMethod, CutIPTables, CutNFT, CutRules)
	}
	for _, c := range cmds {
		cmd := exec.Command(c[0], c[1:]...)
		if stdin != "" {
			cmd.Stdin = strings.NewReader(stdin)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("prepare %s for cuts with %s: %s: %v: %s", h.Name, l.CutMethod, strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	l.prepared[h.Name] = l.CutMethod
	return nil
}
