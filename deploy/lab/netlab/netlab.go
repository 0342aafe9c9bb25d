// Package netlab builds, for tests, a small network of "hosts" on one
// machine: each host is a network namespace joined by a veth pair to a
// bridge, with its own private address. It needs root and iproute2 ("ip");
// Available says why a machine cannot run it, and New skips the test there
// (or fails it when VIGIL_REQUIRE_NETNS=1).
//
// Layout of one lab:
//
//	root namespace:   bridge vlbXXXXXX, address 10.213.Y.1/24 (Lab.Gateway)
//	                  veth vlXXXXXX-N on the bridge, one per host
//	host namespace:   <prefix>-XXXXXX-<host> (Host.NS), "eth0" with
//	                  10.213.Y.(11+N)/24 (Host.IP), and lo, both up
//
// XXXXXX is random per lab, and Y is chosen so that no route of the machine
// overlaps 10.213.Y.0/24 (under a lock file, so labs of parallel test
// processes do not collide): several labs, in one test binary or several,
// can run at once. The root namespace reaches every host through the
// bridge; hosts have no default route, so nothing leaves the lab.
//
// Everything New creates is removed by t.Cleanup, also after a failure (the
// cleanup is registered before the first object is created): processes
// still running inside a lab namespace are killed, then the veths, the
// bridge and the namespaces are deleted.
//
// # Partitions
//
// Cut(a, b) makes each of the two hosts drop every packet it receives from
// the other, so neither direction gets through and both sides see
// timeouts (not refusals), as in a real partition; established connections
// stall too. It uses, in order of preference, whichever is installed:
// iptables ("iptables -I INPUT -s PEER -j DROP" inside the namespace), nft
// (a table "vigil_netlab" with a set of cut peers), or, with iproute2 alone,
// policy-routing rules ("ip rule add iif eth0 from PEER blackhole", placed
// before the "local" rule, which is moved from priority 0 to 1000 inside
// the namespace). The environment variable VIGIL_NETLAB_CUT
// (iptables|nft|rules) or Lab.CutMethod forces one. All three drop by
// source address, so a host is cut off whatever address it uses as a
// destination (its own or a VIP it holds), and packets from a peer's VIP
// (rare: only replies on connections to that VIP) are not.
package netlab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Cut methods (Lab.CutMethod).
const (
	CutIPTables = "iptables"
	CutNFT      = "nft"
	CutRules    = "rules" // iproute2 policy routing only
)

// Iface is the name of every host's interface inside its namespace.
const Iface = "eth0"

// Lab is one bridge and its hosts.
type Lab struct {
	Bridge  string           // bridge in the root namespace
	Subnet  string           // "10.213.Y.0/24"
	Gateway string           // the bridge's address, 10.213.Y.1
	Hosts   map[string]*Host // by name
	// CutMethod is how Cut drops traffic: CutIPTables, CutNFT or CutRules.
	// New sets it from VIGIL_NETLAB_CUT or from what is installed; it can be
	// changed before the first Cut.
	CutMethod string

	t     testing.TB
	id    string
	order []string // host names in the order given to New

	mu       sync.Mutex
	dropping map[string]map[string]bool // host -> source IPs it drops
	prepared map[string]string          // host -> cut method set up in its namespace
	loss     map[string]int             // host -> percent of received packets dropped (SetLoss)

	closeOnce sync.Once
	closeErr  error
}

// Host is one network namespace of a lab.
type Host struct {
	Name  string
	NS    string // network namespace name (ip netns)
	IP    string // IPv4 address on Iface, in the lab's /24
	Iface string // interface inside the namespace: "eth0"
	Veth  string // its peer in the root namespace, on the bridge
}

// Available returns nil if this machine can build labs: running as root,
// "ip" from iproute2 installed, and network namespaces supported by the
// kernel. Otherwise the error says what is missing.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("netlab: not running as root (network namespaces, bridges and veths need root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("netlab: 'ip' not found: install iproute2")
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		return fmt.Errorf("netlab: network namespaces not supported: %w", err)
	}
	// Creating a namespace is the real test (a container may forbid it).
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("netlab: current network namespace: %w", err)
			return // stays locked: the thread ends with this goroutine
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netlab: cannot create a network namespace: %w", err)
			return
		}
		ns.Close()
		// Back to where we were, and unlocked: a thread that ends takes
		// with it the Pdeathsig children it once forked (see spawn).
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- nil
	}()
	return <-errc
}

// Require skips t unless Available; with VIGIL_REQUIRE_NETNS=1 it fails t
// instead.
func Require(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("VIGIL_REQUIRE_NETNS") == "1" {
			t.Fatalf("%v (VIGIL_REQUIRE_NETNS=1)", err)
		}
		t.Skipf("%v; set VIGIL_REQUIRE_NETNS=1 to make this a failure", err)
	}
}

// New builds a lab with the given hosts (see the package comment) and
// registers its teardown with t.Cleanup. It skips t where labs cannot run
// (see Require). Host names must be unique, non-empty and without "/".
func New(t testing.TB, prefix string, hosts []string) *Lab {
	t.Helper()
	Require(t)
	l, err := Create(prefix, hosts)
	if err != nil {
		t.Fatal(err)
	}
	l.t = t
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("%v", err)
		}
	})
	t.Logf("netlab: bridge %s %s, hosts %s", l.Bridge, l.Subnet, l.describe())
	return l
}

// Create builds a lab outside a test (the demo uses it); the caller must
// Close it. On error nothing is left behind. Cut, Heal and the other
// helpers that fail a test are only for labs made by New; CutErr, HealErr,
// Block, Unblock and SetLoss return errors instead and work on any lab,
// from any goroutine.
func Create(prefix string, hosts []string) (_ *Lab, err error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if len(hosts) == 0 || len(hosts) > 200 {
		return nil, fmt.Errorf("netlab: %d hosts: want 1 to 200", len(hosts))
	}
	seen := map[string]bool{}
	for _, h := range hosts {
		if h == "" || strings.ContainsAny(h, "/ \t") || seen[h] {
			return nil, fmt.Errorf("netlab: bad or duplicate host name %q", h)
		}
		seen[h] = true
	}
	if prefix == "" {
		prefix = "vigil"
	}
	id := randomHex(3)
	l := &Lab{
		Bridge:   "vlb" + id,
		Hosts:    map[string]*Host{},
		id:       id,
		order:    slices.Clone(hosts),
		dropping: map[string]map[string]bool{},
		prepared: map[string]string{},
	}
	l.CutMethod = defaultCutMethod()
	for i, name := range hosts {
		l.Hosts[name] = &Host{
			Name:  name,
			NS:    fmt.Sprintf("%s-%s-%s", prefix, id, name),
			Iface: Iface,
			Veth:  fmt.Sprintf("vl%s-%d", id, i),
		}
	}
	defer func() {
		if err != nil {
			_ = l.Close()
		}
	}()
	y, err := l.createBridge()
	if err != nil {
		return nil, fmt.Errorf("netlab: %w", err)
	}
	l.Subnet = fmt.Sprintf("10.213.%d.0/24", y)
	l.Gateway = fmt.Sprintf("10.213.%d.1", y)
	for i, name := range hosts {
		h := l.Hosts[name]
		h.IP = fmt.Sprintf("10.213.%d.%d", y, 11+i)
		for _, args := range [][]string{
			{"netns", "add", h.NS},
			{"link", "add", h.Veth, "type", "veth", "peer", "name", h.Iface, "netns", h.NS},
			{"link", "set", h.Veth, "master", l.Bridge, "up"},
			{"-n", h.NS, "addr", "add", h.IP + "/24", "dev", h.Iface},
			{"-n", h.NS, "link", "set", h.Iface, "up"},
			{"-n", h.NS, "link", "set", "lo", "up"},
		} {
			if err := ip(args...); err != nil {
				return nil, fmt.Errorf("netlab: host %s: %w", name, err)
			}
		}
	}
	return l, nil
}

func (l *Lab) describe() string {
	var b strings.Builder
	for i, n := range l.order {
		if i > 0 {
			b.WriteString(", ")
		}
		h := l.Hosts[n]
		fmt.Fprintf(&b, "%s=%s (netns %s)", n, h.IP, h.NS)
	}
	return b.String()
}

// Names returns the host names in the order given to New.
func (l *Lab) Names() []string { return slices.Clone(l.order) }

// IP returns the address of a host ("" for an unknown one).
func (l *Lab) IP(host string) string {
	if h, ok := l.Hosts[host]; ok {
		return h.IP
	}
	return ""
}

func (l *Lab) host(name string) (*Host, error) {
	h, ok := l.Hosts[name]
	if !ok {
		return nil, fmt.Errorf("netlab: no host %q in this lab (hosts: %s)", name, strings.Join(l.order, ", "))
	}
	return h, nil
}

func (l *Lab) mustHost(name string) *Host {
	l.t.Helper()
	h, err := l.host(name)
	if err != nil {
		l.t.Fatal(err)
	}
	return h
}

// lockFile serializes subnet choice between labs of different processes.
const lockFile = "/run/vigil-netlab.lock"

var (
	subnetMu    sync.Mutex
	subnetsUsed = map[int]bool{} // third octets taken by labs of this process
)

// createBridge picks a free 10.213.Y.0/24, creates the bridge with
// 10.213.Y.1 and brings it up, all under a process and a file lock, so
// that the next lab sees the new route.
func (l *Lab) createBridge() (int, error) {
	subnetMu.Lock()
	defer subnetMu.Unlock()
	path := lockFile
	if _, err := os.Stat(filepath.Dir(path)); err != nil {
		path = filepath.Join(os.TempDir(), "vigil-netlab.lock")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return 0, fmt.Errorf("lock %s: %w", path, err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return 0, fmt.Errorf("lock %s: %w", path, err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)

	routes, err := rootPrefixes()
	if err != nil {
		return 0, err
	}
	y := -1
	start := int(randomByte())
	for i := 0; i < 256; i++ {
		c := (start + i) % 256
		if subnetsUsed[c] {
			continue
		}
		_, cand, _ := net.ParseCIDR(fmt.Sprintf("10.213.%d.0/24", c))
		if !conflicts(cand, routes) {
			y = c
			break
		}
	}
	if y < 0 {
		return 0, errors.New("no free /24 in 10.213.0.0/16 (every one overlaps a route of this machine)")
	}
	for _, args := range [][]string{
		{"link", "add", l.Bridge, "type", "bridge"},
		{"link", "set", l.Bridge, "up"},
		{"addr", "add", fmt.Sprintf("10.213.%d.1/24", y), "dev", l.Bridge},
	} {
		if err := ip(args...); err != nil {
			return 0, err
		}
	}
	subnetsUsed[y] = true
	return y, nil
}

// rootPrefixes lists the IPv4 destinations of every route of the root
// namespace, in all tables.
func rootPrefixes() ([]*net.IPNet, error) {
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ip route show table all: %v: %s", err, out)
	}
	var res []*net.IPNet
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		dst := f[0]
		if slices.Contains([]string{"local", "broadcast", "unicast", "blackhole", "unreachable", "prohibit", "throw", "multicast", "anycast"}, dst) && len(f) > 1 {
			dst = f[1]
		}
		if dst == "default" {
			continue
		}
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if _, n, err := net.ParseCIDR(dst); err == nil {
			res = append(res, n)
		}
	}
	return res, nil
}

// conflicts reports whether cand overlaps a route, ignoring very broad ones
// (/8 and shorter, such as 10.0.0.0/8): a /24 is more specific and wins.
func conflicts(cand *net.IPNet, routes []*net.IPNet) bool {
	for _, r := range routes {
		if ones, _ := r.Mask.Size(); ones <= 8 {
			continue
		}
		if r.Contains(cand.IP) || cand.Contains(r.IP) {
			return true
		}
	}
	return false
}

// Close tears the lab down; it tolerates a half-built lab and a second
// call.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.close() })
	return l.closeErr
}

func (l *Lab) close() error {
	var errs []error
	inodes := map[string]string{} // host -> namespace inode
	for _, name := range l.order {
		if ino := nsInode(l.Hosts[name].NS); ino != "" {
			inodes[name] = ino
			killNetns(ino)
		}
	}
	for _, name := range l.order {
		h := l.Hosts[name]
		if linkExists(h.Veth) {
			if err := ip("link", "del", h.Veth); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if linkExists(l.Bridge) {
		if err := ip("link", "del", l.Bridge); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range l.order {
		h := l.Hosts[name]
		if nsExists(h.NS) {
			if err := ip("netns", "del", h.NS); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// A process that entered a namespace during the teardown keeps it
	// alive, unnamed: find it by inode.
	for _, ino := range inodes {
		killNetns(ino)
	}
	// Cuts and packet loss lived in the namespaces' firewalls, gone with
	// them: forget them so that Cuts and Loss report nothing.
	l.mu.Lock()
	clear(l.dropping)
	clear(l.loss)
	l.mu.Unlock()
	if l.Gateway != "" {
		subnetMu.Lock()
		y, _ := strconv.Atoi(strings.Split(l.Gateway, ".")[2])
		delete(subnetsUsed, y)
		subnetMu.Unlock()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("netlab: teardown: %w", err)
	}
	return nil
}

// nsInode returns the inode of a named namespace ("" if it is gone).
func nsInode(ns string) string {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join("/run/netns", ns), &st); err != nil {
		return ""
	}
	return strconv.FormatUint(st.Ino, 10)
}

// pidsInNetns lists the processes inside the network namespace with this
// inode, or holding it open (such as "ip netns exec" just before it enters
// it), except this process: one of its threads may be in there (InNS).
func pidsInNetns(inode string) []int {
	want := "net:[" + inode + "]"
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		if l, _ := os.Readlink(filepath.Join(dir, "ns", "net")); l == want {
			pids = append(pids, pid)
			continue
		}
		fds, _ := os.ReadDir(filepath.Join(dir, "fd"))
		for _, fd := range fds {
			if l, _ := os.Readlink(filepath.Join(dir, "fd", fd.Name())); l == want {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// killNetns kills (SIGKILL) the processes found by pidsInNetns (the test
// started them) and waits briefly until they are gone or zombies. It scans
// again until a scan finds nothing, so that a process that was entering
// the namespace is caught too.
func killNetns(inode string) {
	deadline := time.Now().Add(3 * time.Second)
	for round := 0; time.Now().Before(deadline); round++ {
		pids := pidsInNetns(inode)
		if len(pids) == 0 && round > 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		for _, pid := range pids {
			for time.Now().Before(deadline) && syscall.Kill(pid, 0) == nil {
				if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(b), ") Z ") {
					break // a zombie holds no namespace; its parent reaps it
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func nsExists(ns string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", ns))
	return err == nil
}

func linkExists(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name))
	return err == nil
}

// Exec returns a command that runs argv inside the host's namespace
// ("ip netns exec NS argv..."). For an unknown host the command fails to
// start with an error saying so.
func (l *Lab) Exec(ctx context.Context, host string, argv ...string) *exec.Cmd {
	h, err := l.host(host)
	if err != nil || len(argv) == 0 {
		cmd := exec.CommandContext(ctx, "false")
		if err == nil {
			err = errors.New("netlab: Exec without a command")
		}
		cmd.Err = err
		return cmd
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS}, argv...)...)
}

// InNS runs f on a goroutine locked to an OS thread that is switched into
// the host's namespace, and returns f's error (see RunInNetNS).
func (l *Lab) InNS(host string, f func() error) error {
	h, err := l.host(host)
	if err != nil {
		return err
	}
	return RunInNetNS(h.NS, f)
}

// RunInNetNS runs f on a goroutine locked to an OS thread that is switched
// into the named network namespace, and returns f's error. Sockets that f
// creates, and processes it starts, stay in that namespace after it
// returns (a listener can be served from any goroutine); goroutines that f
// starts do not run in it. The thread is switched back afterwards; if
// that fails it is discarded, never reused. A panic in f is re-raised in
// the caller.
func RunInNetNS(name string, f func() error) error {
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("netlab: netns %s: %w", name, err)
	}
	defer target.Close()
	type result struct {
		err   error
		panic any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			done <- result{err: fmt.Errorf("netlab: current netns: %w", err)}
			return // thread stays locked, and ends with this goroutine
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("netlab: enter netns %s: %w", name, err)}
			return
		}
		var res result
		func() {
			defer func() { res.panic = recover() }()
			res.err = f()
		}()
		if err := netns.Set(orig); err != nil {
			res.err = errors.Join(res.err, fmt.Errorf("netlab: leave netns %s: %w", name, err))
			done <- res
			return // stays locked: the thread is discarded
		}
		runtime.UnlockOSThread()
		done <- res
	}()
	res := <-done
	if res.panic != nil {
		panic(res.panic)
	}
	return res.err
}

// Addrs returns the IPv4 addresses on the host's interface (Host.Iface),
// its own address first as the kernel lists them: use it to see which host
// holds a VIP.
func (l *Lab) Addrs(host string) ([]string, error) {
	h, err := l.host(host)
	if err != nil {
		return nil, err
	}
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		return nil, fmt.Errorf("netlab: netns %s: %w", h.NS, err)
	}
	defer ns.Close()
	hd, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlab: netlink in %s: %w", h.NS, err)
	}
	defer hd.Close()
	link, err := hd.LinkByName(h.Iface)
	if err != nil {
		return nil, fmt.Errorf("netlab: %s in %s: %w", h.Iface, h.NS, err)
	}
	addrs, err := hd.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("netlab: addresses of %s in %s: %w", h.Iface, h.NS, err)
	}
	res := make([]string, 0, len(addrs))
	for _, a := range addrs {
		res = append(res, a.IP.String())
	}
	return res, nil
}

// ip runs "ip args..." and returns an error with its output.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func randomByte() byte {
	b := make([]byte, 1)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b[0]
}
