package netlab

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
)

// Port cuts: one-way, per TCP port. CutPorts(host, from, ports…) makes
// host drop the TCP packets it receives from from's address to the given
// destination ports, and nothing else. Connections from `from` to those
// ports time out (no RST), established ones stall; every other port and
// every other peer still get through, and so does everything host sends
// to `from` on its own connections. It uses nft alone (a table
// "inet vigil_netlab_ports" in host's namespace with a set of
// "address . port" pairs, independent of the table Cut uses), whatever
// Lab.CutMethod says. HealAll does not undo it: HealPorts does (and the
// lab's teardown, which deletes the namespace).

// portCuts: per lab, per host, the "addr . port" elements in force.
var portCuts = struct {
	sync.Mutex
	m        map[*Lab]map[string]map[string]bool
	prepared map[*Lab]map[string]bool
}{m: map[*Lab]map[string]map[string]bool{}, prepared: map[*Lab]map[string]bool{}}

const portCutTable = `table inet vigil_netlab_ports {
	set cut { type ipv4_addr . inet_service; }
	chain input {
		type filter hook input priority filter - 5; policy accept;
		ip saddr . tcp dport @cut drop
	}
}
`

// CutPorts makes host drop TCP packets from `from` to its ports (see the
// comment above). from is a host of the lab, or an IPv4 address — such as
// l.Gateway, the source address of the test process and of everything
// else in the root namespace. Cutting a cut pair again does nothing. It
// fails the test on error (call it from the test's goroutine).
func (l *Lab) CutPorts(host, from string, ports ...int) {
	l.t.Helper()
	if err := l.portCut(host, from, ports, true); err != nil {
		l.t.Fatalf("netlab: %v", err)
	}
}

// HealPorts undoes CutPorts(host, from, ports…). Healing what is not cut
// does nothing.
func (l *Lab) HealPorts(host, from string, ports ...int) {
	l.t.Helper()
	if err := l.portCut(host, from, ports, false); err != nil {
		l.t.Fatalf("netlab: %v", err)
	}
}

// PortCuts lists, per host, the "address . port" pairs it currently drops.
func (l *Lab) PortCuts() map[string][]string {
	portCuts.Lock()
	defer portCuts.Unlock()
	res := map[string][]string{}
	for h, els := range portCuts.m[l] {
		for e, on := range els {
			if on {
				res[h] = append(res[h], e)
			}
		}
	}
	return res
}

func (l *Lab) portCut(host, from string, ports []int, on bool) error {
	h, err := l.host(host)
	if err != nil {
		return err
	}
	src := from
	if o, ok := l.Hosts[from]; ok {
		src = o.IP
	}
	if ip := net.ParseIP(src); ip == nil || ip.To4() == nil {
		return fmt.Errorf("CutPorts(%s, %q): %q is neither a host of this lab nor an IPv4 address", host, from, from)
	}
	if len(ports) == 0 {
		return fmt.Errorf("CutPorts(%s, %s): no ports", host, from)
	}
	for _, p := range ports {
		if p <= 0 || p > 65535 {
			return fmt.Errorf("CutPorts(%s, %s): bad port %d", host, from, p)
		}
	}
	portCuts.Lock()
	defer portCuts.Unlock()
	if portCuts.m[l] == nil {
		portCuts.m[l] = map[string]map[string]bool{}
		portCuts.prepared[l] = map[string]bool{}
		if l.t != nil {
			l.t.Cleanup(func() {
				portCuts.Lock()
				delete(portCuts.m, l)
				delete(portCuts.prepared, l)
				portCuts.Unlock()
			})
		}
	}
	if !portCuts.prepared[l][h.Name] {
		if !on {
			return nil // nothing was ever cut on this host
		}
		cmd := exec.Command("ip", "netns", "exec", h.NS, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(portCutTable)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("prepare %s for port cuts (nft): %v: %s", h.Name, err, strings.TrimSpace(string(out)))
		}
		portCuts.prepared[l][h.Name] = true
	}
	if portCuts.m[l][h.Name] == nil {
		portCuts.m[l][h.Name] = map[string]bool{}
	}
	els := portCuts.m[l][h.Name]
	var todo []string
	for _, p := range ports {
		e := fmt.Sprintf("%s . %d", src, p)
		if els[e] != on {
			todo = append(todo, e)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	op := "add"
	if !on {
		op = "delete"
	}
	args := []string{"netns", "exec", h.NS, "nft", op, "element", "inet", "vigil_netlab_ports", "cut", "{ " + strings.Join(todo, ", ") + " }"}
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s ports of %s from %s: ip %s: %v: %s", map[bool]string{true: "cut", false: "heal"}[on], h.Name, src, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	for _, e := range todo {
		els[e] = on
	}
	return nil
}
