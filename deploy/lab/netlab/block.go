package netlab

import (
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"strings"
)

// Error-returning faults. Unlike Cut, Heal and the other helpers that fail
// a testing.TB, these return an error and work on any lab (one made by
// Create too) from any goroutine, so a nemesis can inject faults in the
// background. They share Cut's state and lock: Block, Unblock, CutErr and
// HealErr all set or clear "host drops what it receives from src" entries,
// which Cuts lists.

// GatewayHost names, as Block's and Unblock's `from`, the bridge address
// (Lab.Gateway): the source address of the test process and of everything
// else in the root namespace. A lab host named "gateway" takes precedence.
const GatewayHost = "gateway"

// Block makes host drop every packet it receives from `from` (a host of
// the lab, or GatewayHost), one way: connections from `from` to host time
// out, and so do host's own connections to `from` (their answers are
// dropped), but datagrams host sends to `from` still arrive. It uses
// Lab.CutMethod, like Cut. Blocking what is blocked does nothing.
func (l *Lab) Block(host, from string) error {
	return l.block("Block", host, from, true)
}

// Unblock undoes Block(host, from), and so also the host-side half of a
// Cut between them. Unblocking what is not blocked does nothing.
func (l *Lab) Unblock(host, from string) error {
	return l.block("Unblock", host, from, false)
}

func (l *Lab) block(op, host, from string, on bool) error {
	h, err := l.host(host)
	if err != nil {
		return fmt.Errorf("%w (%s(%s, %s))", err, op, host, from)
	}
	src := ""
	if o, ok := l.Hosts[from]; ok {
		src = o.IP
	} else if from == GatewayHost {
		src = l.Gateway
	} else {
		return fmt.Errorf("netlab: %s(%s, %s): %q is neither a host of this lab (%s) nor %q", op, host, from, from, strings.Join(l.order, ", "), GatewayHost)
	}
	if src == h.IP {
		return fmt.Errorf("netlab: %s(%s, %s): a host cannot be blocked from itself", op, host, from)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.drop(h, src, on); err != nil {
		return fmt.Errorf("netlab: %s(%s, %s): %w", op, host, from, err)
	}
	return nil
}

// CutErr is Cut returning an error instead of failing a test: each of a
// and b drops what it receives from the other. If the second direction
// fails the first stays in force (Cuts shows it; HealErr undoes it).
func (l *Lab) CutErr(a, b string) error {
	ha, hb, err := l.pair("Cut", a, b)
	if err != nil {
		return err
	}
	if a == b {
		return fmt.Errorf("netlab: Cut(%s, %s): a host cannot be cut from itself", a, b)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.drop(ha, hb.IP, true); err != nil {
		return fmt.Errorf("netlab: Cut(%s, %s): %w", a, b, err)
	}
	if err := l.drop(hb, ha.IP, true); err != nil {
		return fmt.Errorf("netlab: Cut(%s, %s): %w", a, b, err)
	}
	return nil
}

// HealErr is Heal returning an error instead of failing a test. It tries
// both directions even when the first fails.
func (l *Lab) HealErr(a, b string) error {
	ha, hb, err := l.pair("Heal", a, b)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	err = errors.Join(l.drop(ha, hb.IP, false), l.drop(hb, ha.IP, false))
	if err != nil {
		return fmt.Errorf("netlab: Heal(%s, %s): %w", a, b, err)
	}
	return nil
}

func (l *Lab) pair(op, a, b string) (*Host, *Host, error) {
	ha, err := l.host(a)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (%s(%s, %s))", err, op, a, b)
	}
	hb, err := l.host(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (%s(%s, %s))", err, op, a, b)
	}
	return ha, hb, nil
}

// lossTable is the nft table SetLoss keeps in a host's namespace,
// independent of the tables of Cut and CutPorts.
const lossTable = "vigil_loss"

// SetLoss makes host drop, at random, percent % of the packets it receives
// on its interface (Iface): from the other hosts and from the root
// namespace, in every direction of every connection; loopback is not
// affected, nor is ARP. It needs nft (a table "inet vigil_loss" with one
// rule "iifname eth0 numgen random mod 100 < N drop", or a plain drop for
// 100, whatever Lab.CutMethod says: this kernel has no netem). percent 0 removes the
// table; 100 drops everything, like a one-way CutAll. percent must be
// within 0..100. Setting the loss already in force does nothing.
func (l *Lab) SetLoss(host string, percent int) error {
	if percent < 0 || percent > 100 {
		return fmt.Errorf("netlab: SetLoss(%s, %d): percent %d is not within 0..100", host, percent, percent)
	}
	h, err := l.host(host)
	if err != nil {
		return fmt.Errorf("%w (SetLoss(%s, %d))", err, host, percent)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.loss[h.Name] == percent {
		return nil // 0 included: no table was made, or it is gone
	}
	// Declaring the table first makes the delete valid whether or not it
	// exists, and nft applies the file as one transaction: the old rule is
	// replaced, never doubled, and no packet sees neither.
	script := fmt.Sprintf("table inet %[1]s {}\ndelete table inet %[1]s\n", lossTable)
	if percent > 0 {
		// nft refuses "< 100" (numgen's range is 0..99): 100 is a plain drop.
		match := fmt.Sprintf("numgen random mod 100 < %d ", percent)
		if percent == 100 {
			match = ""
		}
		script += fmt.Sprintf(`table inet %s {
	chain input {
		type filter hook input priority filter - 10; policy accept;
		iifname %q %sdrop
	}
}
`, lossTable, h.Iface, match)
	}
	cmd := exec.Command("ip", "netns", "exec", h.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("netlab: SetLoss(%s, %d): nft -f in %s: %w: %s", host, percent, h.NS, err, strings.TrimSpace(string(out)))
	}
	if percent == 0 {
		delete(l.loss, h.Name)
		return nil
	}
	if l.loss == nil {
		l.loss = map[string]int{}
	}
	l.loss[h.Name] = percent
	return nil
}

// Loss lists the hosts with packet loss (SetLoss) and their percentages.
func (l *Lab) Loss() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	res := maps.Clone(l.loss)
	if res == nil {
		res = map[string]int{}
	}
	return res
}
