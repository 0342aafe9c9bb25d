package nodeagent

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netns"
)

// requireNetns skips the test unless it runs as root with iproute2, or
// fails it when VIGIL_REQUIRE_NETNS=1 (CI runs the lab tests as root).
func requireNetns(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root to create network namespaces"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs iproute2 (ip)"
	}
	if why == "" {
		return
	}
	if os.Getenv("VIGIL_REQUIRE_NETNS") == "1" {
		t.Fatalf("VIGIL_REQUIRE_NETNS=1 but the test %s", why)
	}
	t.Skip(why)
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNetns creates a named network namespace, deleted at cleanup.
func newNetns(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	name := fmt.Sprintf("%s-%d-%s", prefix, os.Getpid(), hex.EncodeToString(b))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// inNetns runs fn on a dedicated OS thread switched into the named
// network namespace, and switches the thread back before releasing it.
// Sockets fn opens stay in that namespace after it returns.
func inNetns(t *testing.T, name string, fn func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", name, err)
			return
		}
		var ferr error
		func() {
			defer func() {
				if r := recover(); r != nil {
					ferr = fmt.Errorf("panic in netns %s: %v", name, r)
				}
			}()
			ferr = fn()
		}()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine
			// instead of running other goroutines in the wrong netns.
			errc <- fmt.Errorf("restoring the original netns: %w (fn: %v)", err, ferr)
			return
		}
		if cur, err := netns.Get(); err != nil || !cur.Equal(orig) {
			errc <- fmt.Errorf("thread not back in the original netns (%v)", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// TestNetlinkAddrsInNetns exercises the real Addrs: a VIP added to and
// removed from a veth interface in a fresh network namespace with netlink,
// and announced with gratuitous ARP that the neighbour namespace both
// receives on the wire and applies to its ARP table.
func TestNetlinkAddrsInNetns(t *testing.T) {
	requireNetns(t)
	host := newNetns(t, "vigil-na-host")
	peer := newNetns(t, "vigil-na-peer")
	const (
		vip    = "192.0.2.100"
		cidr   = vip + "/32"
		bogus  = "02:00:00:00:00:01"
		ifHost = "va"
		ifPeer = "vb"
	)
	run(t, "ip", "-n", host, "link", "add", ifHost, "type", "veth", "peer", "name", ifPeer, "netns", peer)
	run(t, "ip", "-n", host, "link", "set", ifHost, "up")
	run(t, "ip", "-n", peer, "link", "set", ifPeer, "up")
	run(t, "ip", "-n", peer, "addr", "add", "192.0.2.2/24", "dev", ifPeer)
	// The peer already talks to the VIP at some other MAC (the old
	// primary): gratuitous ARP updates existing entries. locktime 0 lets
	// an entry that was just created be overridden.
	run(t, "ip", "-n", peer, "neigh", "add", vip, "lladdr", bogus, "dev", ifPeer, "nud", "stale")
	run(t, "ip", "netns", "exec", peer, "sysctl", "-q", "-w", "net.ipv4.neigh."+ifPeer+".locktime=0")

	var hostMAC net.HardwareAddr
	if err := inNetns(t, host, func() error {
		ifi, err := net.InterfaceByName(ifHost)
		hostMAC = ifi.HardwareAddr
		return err
	}); err != nil {
		t.Fatal(err)
	}

	// Listen for ARP on the peer side before announcing.
	var conn *packet.Conn
	if err := inNetns(t, peer, func() error {
		ifi, err := net.InterfaceByName(ifPeer)
		if err != nil {
			return err
		}
		conn, err = packet.Listen(ifi, packet.Raw, int(ethernet.EtherTypeARP), nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	var a Addrs = netlinkAddrs{}
	step := func(what string, fn func() error) {
		t.Helper()
		if err := inNetns(t, host, fn); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	expect := func(op string, got bool, err error, want bool) error {
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		if got != want {
			return fmt.Errorf("%s = %v, want %v", op, got, want)
		}
		return nil
	}
	addrShow := func() string { return run(t, "ip", "-n", host, "-4", "addr", "show", "dev", ifHost) }

	step("add", func() error {
		ok, err := a.Has(ifHost, cidr)
		if e := expect("Has before add", ok, err, false); e != nil {
			return e
		}
		ok, err = a.Add(ifHost, cidr)
		if e := expect("Add", ok, err, true); e != nil {
			return e
		}
		ok, err = a.Add(ifHost, cidr) // "file exists"
		if e := expect("Add again", ok, err, false); e != nil {
			return e
		}
		ok, err = a.Has(ifHost, cidr)
		return expect("Has after add", ok, err, true)
	})
	if out := addrShow(); !strings.Contains(out, "inet "+cidr) {
		t.Fatalf("ip addr show after Add:\n%s", out)
	}

	if out := run(t, "ip", "-n", peer, "neigh", "show", vip, "dev", ifPeer); !strings.Contains(out, bogus) {
		t.Fatalf("peer's neighbour entry before the announcement: %q", out)
	}
	start := time.Now()
	step("announce", func() error { return a.Announce(ifHost, vip, 3, 20*time.Millisecond) })
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("3 packets 20ms apart took %s", d)
	}

	// Three gratuitous ARP packets on the wire.
	want := netip.MustParseAddr(vip)
	got := 0
	buf := make([]byte, 1500)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for got < 3 {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("reading ARP on the peer after %d packets: %v", got, err)
		}
		var f ethernet.Frame
		if err := f.UnmarshalBinary(buf[:n]); err != nil || f.EtherType != ethernet.EtherTypeARP {
			continue
		}
		var p arp.Packet
		if err := p.UnmarshalBinary(f.Payload); err != nil || p.SenderIP != want {
			continue // e.g. the peer's own ARP traffic
		}
		if p.Operation != arp.OperationRequest || p.TargetIP != want ||
			p.SenderHardwareAddr.String() != hostMAC.String() || f.Source.String() != hostMAC.String() ||
			f.Destination.String() != ethernet.Broadcast.String() {
			t.Fatalf("not a gratuitous ARP for %s from %s: frame %s -> %s, %+v", vip, hostMAC, f.Source, f.Destination, p)
		}
		got++
	}

	// And the neighbour moved its entry for the VIP to this host's MAC.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := run(t, "ip", "-n", peer, "neigh", "show", vip, "dev", ifPeer)
		if strings.Contains(out, hostMAC.String()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("peer's neighbour entry for %s not updated to %s: %q", vip, hostMAC, out)
		}
		time.Sleep(10 * time.Millisecond)
	}

	step("remove", func() error {
		ok, err := a.Del(ifHost, cidr)
		if e := expect("Del", ok, err, true); e != nil {
			return e
		}
		ok, err = a.Del(ifHost, cidr) // "cannot assign requested address"
		if e := expect("Del again", ok, err, false); e != nil {
			return e
		}
		ok, err = a.Has(ifHost, cidr)
		if e := expect("Has after del", ok, err, false); e != nil {
			return e
		}
		ok, err = a.Del("nosuch0", cidr)
		if e := expect("Del on a missing link", ok, err, false); e != nil {
			return e
		}
		ok, err = a.Has("nosuch0", cidr)
		if e := expect("Has on a missing link", ok, err, false); e != nil {
			return e
		}
		if _, err := a.Add("nosuch0", cidr); err == nil {
			return fmt.Errorf("Add on a missing link: no error")
		}
		if err := a.Announce(ifHost, vip, 1, 0); err == nil {
			return fmt.Errorf("Announce without an IPv4 address on the interface: no error")
		}
		return nil
	})
	if out := addrShow(); strings.Contains(out, vip) {
		t.Fatalf("ip addr show after Del:\n%s", out)
	}
	// The test's own namespace was never touched.
	if out := run(t, "ip", "-4", "addr", "show"); strings.Contains(out, vip) {
		t.Fatalf("VIP leaked into the test's namespace:\n%s", out)
	}
}

// TestDelAbortsConnectionsOnTheVIP: removing the VIP resets the
// connections still open on it, so a client waiting for an answer from a
// hung or stalled old primary reconnects at once instead of waiting out
// its own timeout.
func TestDelAbortsConnectionsOnTheVIP(t *testing.T) {
	requireNetns(t)
	ns := newNetns(t, "vigil-na-abort")
	const vip, cidr = "192.0.2.50", "192.0.2.50/32"
	a := netlinkAddrs{}
	var ln net.Listener
	var client, server net.Conn
	if err := inNetns(t, ns, func() error {
		if _, err := a.Add("lo", cidr); err != nil {
			return err
		}
		var err error
		if ln, err = net.Listen("tcp", vip+":0"); err != nil {
			return err
		}
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1")}, Timeout: 5 * time.Second}
		if client, err = d.Dial("tcp", ln.Addr().String()); err != nil {
			return err
		}
		server, err = ln.Accept()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	defer client.Close()
	defer server.Close()

	if err := inNetns(t, ns, func() error { _, err := a.Del("lo", cidr); return err }); err != nil {
		t.Fatal(err)
	}
	// The server never answers: only a reset ends this read early.
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := client.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read after the VIP was removed: %v, want a connection reset", err)
	}
}
