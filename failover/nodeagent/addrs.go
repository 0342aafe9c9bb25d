package nodeagent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/vishvananda/netlink"
)

// Addrs is all the agent does to the host's network: add, remove and look
// up the VIP on an interface, and announce it with gratuitous ARP. The
// agent uses the netlink + ARP implementation unless New is given another
// with WithAddrs (tests use a fake, see nodeagenttest).
//
// cidr is the VIP with its prefix length ("10.0.0.100/32"); ip is the bare
// address. Add and Del are idempotent: they report whether they changed
// anything.
type Addrs interface {
	// Add adds cidr to iface; false (and no error) if it is already there.
	Add(iface, cidr string) (bool, error)
	// Del removes cidr from iface; false (and no error) if it is not there
	// (or iface does not exist). Connections still open on the address
	// are aborted (see netlinkAddrs.Del).
	Del(iface, cidr string) (bool, error)
	// Has reports whether cidr is on iface (false if iface does not exist).
	Has(iface, cidr string) (bool, error)
	// Announce sends count gratuitous ARP packets for ip out of iface,
	// interval apart.
	Announce(iface, ip string, count int, interval time.Duration) error
}

// netlinkAddrs is the real Addrs: netlink for addresses, a raw packet
// socket (mdlayher/arp) for gratuitous ARP. It acts in the network
// namespace of the calling OS thread.
type netlinkAddrs struct{}

func linkAndAddr(iface, cidr string) (netlink.Link, *netlink.Addr, error) {
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		return nil, nil, fmt.Errorf("VIP %q: %w", cidr, err)
	}
	link, err := netlink.LinkByName(iface)
	if err != nil {
		return nil, addr, err
	}
	return link, addr, nil
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, syscall.ENODEV)
}

func (netlinkAddrs) Add(iface, cidr string) (bool, error) {
	link, addr, err := linkAndAddr(iface, cidr)
	if err != nil {
		return false, fmt.Errorf("add %s on %s: %w", cidr, iface, err)
	}
	err = netlink.AddrAdd(link, addr)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, syscall.EEXIST): // "file exists": already there
		return false, nil
	}
	return false, fmt.Errorf("add %s on %s: %w", cidr, iface, err)
}

func (netlinkAddrs) Del(iface, cidr string) (bool, error) {
	link, addr, err := linkAndAddr(iface, cidr)
	if isLinkNotFound(err) {
		return false, nil // no interface, no VIP on it
	}
	if err != nil {
		return false, fmt.Errorf("remove %s from %s: %w", cidr, iface, err)
	}
	// Before the removal: a reset needs its source address to be local.
	// After it too: a client may have reconnected in between.
	abortConnections(addr.IP)
	err = netlink.AddrDel(link, addr)
	switch {
	case err == nil:
		abortConnections(addr.IP)
		return true, nil
	case errors.Is(err, syscall.EADDRNOTAVAIL): // "cannot assign requested address": not there
		return false, nil
	}
	return false, fmt.Errorf("remove %s from %s: %w", cidr, iface, err)
}

// abortConnections destroys the TCP connections whose local address is
// ip (SOCK_DESTROY, what `ss -K` does): the kernel keeps a connection
// open after its address is removed, and a client waiting for an answer
// from a hung or stalled primary would otherwise wait out its own
// timeout before it reconnects to the VIP's new holder. Destroying the
// socket sends the client a reset at once — while the address is still
// local (a reset from a removed address is not sent; Del aborts before
// removing it, and once more after). Best effort: a kernel without
// CONFIG_INET_DIAG_DESTROY refuses, and the VIP is gone all the same.
func abortConnections(ip net.IP) {
	if ip.To4() == nil {
		return // the netlink helper destroys IPv4 sockets only
	}
	socks, err := netlink.SocketDiagTCP(syscall.AF_INET)
	if err != nil && len(socks) == 0 {
		return
	}
	for _, s := range socks {
		id := s.ID
		if !id.Source.Equal(ip) || s.State == tcpListen {
			continue
		}
		_ = netlink.SocketDestroy(&net.TCPAddr{IP: id.Source, Port: int(id.SourcePort)},
			&net.TCPAddr{IP: id.Destination, Port: int(id.DestinationPort)})
	}
}

// tcpListen is TCP_LISTEN in the kernel's socket states.
const tcpListen = 10

func (netlinkAddrs) Has(iface, cidr string) (bool, error) {
	link, want, err := linkAndAddr(iface, cidr)
	if isLinkNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up %s on %s: %w", cidr, iface, err)
	}
	list, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return false, fmt.Errorf("list addresses of %s: %w", iface, err)
	}
	for _, a := range list {
		if a.Equal(*want) { // same IP and prefix length
			return true, nil
		}
	}
	return false, nil
}

// Announce sends gratuitous ARP the way keepalived and `arping -U` do: an
// ARP request whose sender and target protocol addresses are both the VIP,
// sender hardware address the interface's MAC, broadcast to
// ff:ff:ff:ff:ff:ff. Neighbours that already have an entry for the VIP
// (the clients and routers that talked to the old primary) update it to
// this host's MAC; the burst covers a lost packet.
func (netlinkAddrs) Announce(iface, ip string, count int, interval time.Duration) error {
	vip, err := netip.ParseAddr(ip)
	if err != nil || !vip.Is4() {
		return fmt.Errorf("gratuitous ARP: %q is not an IPv4 address", ip)
	}
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return fmt.Errorf("gratuitous ARP on %s: %w", iface, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return fmt.Errorf("gratuitous ARP on %s: interface has no Ethernet hardware address", iface)
	}
	// arp.Dial opens a raw AF_PACKET socket bound to the interface (in the
	// calling thread's network namespace); it needs an IPv4 address on the
	// interface, which the VIP just added is.
	c, err := arp.Dial(ifi)
	if err != nil {
		return fmt.Errorf("gratuitous ARP on %s: %w", iface, err)
	}
	defer c.Close()
	pkt, err := arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, vip, ethernet.Broadcast, vip)
	if err != nil {
		return fmt.Errorf("gratuitous ARP on %s: %w", iface, err)
	}
	for i := 0; i < count; i++ {
		if i > 0 && interval > 0 {
			time.Sleep(interval)
		}
		if err := c.SetWriteDeadline(time.Now().Add(time.Second)); err != nil {
			return fmt.Errorf("gratuitous ARP on %s: %w", iface, err)
		}
		if err := c.WriteTo(pkt, ethernet.Broadcast); err != nil {
			return fmt.Errorf("gratuitous ARP %d/%d for %s on %s: %w", i+1, count, ip, iface, err)
		}
	}
	return nil
}
