package netlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// echoIn starts, inside host's namespace, a TCP server on host's address
// that answers every line with "<host>: <line>".
func echoIn(t *testing.T, l *Lab, host string) string {
	t.Helper()
	var ln net.Listener
	err := l.InNS(host, func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(l.IP(host), "0"))
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", host, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := io.WriteString(c, host+": "+sc.Text()+"\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// dialFrom dials addr from inside host's namespace ("" = root namespace).
func dialFrom(l *Lab, host, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	dial := func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	}
	if host == "" {
		return c, dial()
	}
	return c, l.InNS(host, dial)
}

// roundTrip sends one line over c and reads the answer.
func roundTrip(c net.Conn, line string, timeout time.Duration) (string, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	s, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(s), err
}

func mustReach(t *testing.T, l *Lab, from, to, addr string) {
	t.Helper()
	c, err := dialFrom(l, from, addr, 2*time.Second)
	if err != nil {
		t.Fatalf("%s -> %s (%s): %v", orRoot(from), to, addr, err)
	}
	defer c.Close()
	got, err := roundTrip(c, "hello", 2*time.Second)
	if err != nil || got != to+": hello" {
		t.Fatalf("%s -> %s: answer %q, %v", orRoot(from), to, got, err)
	}
}

// mustNotReach: the dial must time out (a partition), not be refused.
func mustNotReach(t *testing.T, l *Lab, from, to, addr string) {
	t.Helper()
	start := time.Now()
	c, err := dialFrom(l, from, addr, 300*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatalf("%s -> %s (%s): connected across a cut", orRoot(from), to, addr)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("%s -> %s: want a timeout across a cut, got %v after %v", orRoot(from), to, err, time.Since(start))
	}
}

func orRoot(h string) string {
	if h == "" {
		return "root"
	}
	return h
}

func TestAvailable(t *testing.T) {
	err := Available()
	t.Logf("Available: %v; cut methods here: %v", err, AvailableCutMethods())
	Require(t)
}

// TestLab builds a lab per cut method available here (in parallel, which
// also checks that labs do not collide), checks reachability, Cut/Heal,
// CutAll/HealAll, Exec, Addrs, and that teardown leaves nothing behind.
func TestLab(t *testing.T) {
	Require(t)
	for _, method := range AvailableCutMethods() {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			var names []string // namespaces and links the lab made
			var leftRunning <-chan struct{}
			t.Run("lab", func(t *testing.T) {
				l := New(t, "vt", []string{"a", "b", "c"})
				l.CutMethod = method
				names = append(names, l.Bridge)
				for _, h := range l.Hosts {
					names = append(names, h.NS, h.Veth)
				}
				leftRunning = exerciseLab(t, l)
			})
			if leftRunning != nil {
				select {
				case <-leftRunning:
				case <-time.After(5 * time.Second):
					t.Error("a process left running in the lab survived its teardown")
				}
			}
			// The subtest's cleanup has run: nothing may be left.
			out, err := exec.Command("ip", "netns", "list").CombinedOutput()
			if err != nil {
				t.Fatalf("ip netns list: %v %s", err, out)
			}
			links, err := exec.Command("ip", "-o", "link", "show").CombinedOutput()
			if err != nil {
				t.Fatalf("ip link: %v %s", err, links)
			}
			for _, n := range names {
				if slices.Contains(strings.Fields(string(out)), n) {
					t.Errorf("namespace %s left behind:\n%s", n, out)
				}
				if strings.Contains(string(links), " "+n+":") || strings.Contains(string(links), " "+n+"@") {
					t.Errorf("link %s left behind", n)
				}
			}
		})
	}
}

// exerciseLab returns a channel closed when a process it left running in
// the lab has exited.
func exerciseLab(t *testing.T, l *Lab) <-chan struct{} {
	if len(l.Bridge) > 15 || !strings.HasPrefix(l.Subnet, "10.213.") || l.Gateway == "" {
		t.Fatalf("lab: %+v", l)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, b, c := echoIn(t, l, "a"), echoIn(t, l, "b"), echoIn(t, l, "c")

	// Everyone reaches everyone, the root namespace included.
	mustReach(t, l, "a", "b", b)
	mustReach(t, l, "b", "a", a)
	mustReach(t, l, "c", "b", b)
	mustReach(t, l, "", "a", a)

	// An established connection from a to b, to see it stall.
	est, err := dialFrom(l, "a", b, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer est.Close()
	if got, err := roundTrip(est, "before", 2*time.Second); err != nil || got != "b: before" {
		t.Fatalf("established: %q %v", got, err)
	}

	// Cut a|b: both directions time out, c still reaches both.
	l.Cut("a", "b")
	l.Cut("a", "b") // idempotent
	mustNotReach(t, l, "a", "b", b)
	mustNotReach(t, l, "b", "a", a)
	if got, err := roundTrip(est, "during", 300*time.Millisecond); err == nil {
		t.Fatalf("established connection across the cut still answered %q", got)
	}
	mustReach(t, l, "c", "b", b)
	mustReach(t, l, "c", "a", a)
	mustReach(t, l, "a", "c", c)
	mustReach(t, l, "", "b", b)
	if cuts := l.Cuts(); !slices.Equal(cuts["a"], []string{l.IP("b")}) || !slices.Equal(cuts["b"], []string{l.IP("a")}) {
		t.Fatalf("Cuts: %v", cuts)
	}

	// Heal restores new connections.
	l.Heal("a", "b")
	l.Heal("a", "b") // idempotent
	mustReach(t, l, "a", "b", b)
	mustReach(t, l, "b", "a", a)

	// CutAll(b): nobody, not even the root namespace, reaches b; a and c
	// still reach each other.
	l.CutAll("b")
	mustNotReach(t, l, "a", "b", b)
	mustNotReach(t, l, "c", "b", b)
	mustNotReach(t, l, "b", "a", a)
	mustNotReach(t, l, "", "b", b)
	mustReach(t, l, "a", "c", c)
	l.HealAll("b")
	mustReach(t, l, "a", "b", b)
	mustReach(t, l, "c", "b", b)
	mustReach(t, l, "", "b", b)
	mustReach(t, l, "b", "c", c)

	// Exec runs inside the namespace; Addrs sees a VIP added there.
	vip := strings.TrimSuffix(l.Gateway, ".1") + ".200"
	if out, err := l.Exec(ctx, "c", "ip", "addr", "add", vip+"/32", "dev", Iface).CombinedOutput(); err != nil {
		t.Fatalf("add VIP in c: %v %s", err, out)
	}
	out, err := l.Exec(ctx, "c", "ip", "-4", "-o", "addr", "show", "dev", Iface).CombinedOutput()
	if err != nil || !strings.Contains(string(out), l.IP("c")+"/24") || !strings.Contains(string(out), vip+"/32") {
		t.Fatalf("ip addr in c: %v %s", err, out)
	}
	addrs, err := l.Addrs("c")
	if err != nil || !slices.Equal(addrs, []string{l.IP("c"), vip}) {
		t.Fatalf("Addrs(c) = %v, %v; want [%s %s]", addrs, err, l.IP("c"), vip)
	}
	if addrs, err := l.Addrs("a"); err != nil || !slices.Equal(addrs, []string{l.IP("a")}) {
		t.Fatalf("Addrs(a) = %v, %v", addrs, err)
	}
	// The VIP is reachable from a through c's interface.
	var vipLn net.Listener
	if err := l.InNS("c", func() (err error) { vipLn, err = net.Listen("tcp", net.JoinHostPort(vip, "0")); return }); err != nil {
		t.Fatalf("listen on the VIP in c: %v", err)
	}
	defer vipLn.Close()
	// ...but not bindable where it is not held.
	if err := l.InNS("a", func() error {
		ln, err := net.Listen("tcp", net.JoinHostPort(vip, "0"))
		if err == nil {
			ln.Close()
		}
		return err
	}); err == nil {
		t.Fatal("a could bind the VIP that c holds")
	}
	go func() {
		if c, err := vipLn.Accept(); err == nil {
			_, _ = io.WriteString(c, "vip\n")
			c.Close()
		}
	}()
	conn, err := dialFrom(l, "a", vipLn.Addr().String(), 2*time.Second)
	if err != nil {
		t.Fatalf("a -> VIP: %v", err)
	}
	line, _ := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if line != "vip\n" {
		t.Fatalf("a -> VIP: %q", line)
	}

	// Unknown hosts are errors, not panics.
	if err := l.Exec(ctx, "nope", "true").Run(); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("Exec on an unknown host: %v", err)
	}
	if _, err := l.Addrs("nope"); err == nil {
		t.Fatal("Addrs(nope) succeeded")
	}
	if err := l.InNS("nope", func() error { return nil }); err == nil {
		t.Fatal("InNS(nope) succeeded")
	}

	// A process left running inside a namespace is killed by the teardown.
	sleeper := l.Exec(context.Background(), "a", "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = sleeper.Wait(); close(exited) }()
	return exited
}

// TestConflicts checks the subnet choice against routes.
func TestConflicts(t *testing.T) {
	parse := func(s string) *net.IPNet {
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	cand := parse("10.213.7.0/24")
	for route, want := range map[string]bool{
		"10.0.0.0/8":      false,
		"10.213.0.0/16":   true,
		"10.213.7.0/24":   true,
		"10.213.7.5/32":   true,
		"10.213.8.0/24":   false,
		"192.0.2.0/24":    false,
		"10.213.6.0/23":   true,
		"10.213.0.0/17":   true,
		"10.213.128.0/17": false,
	} {
		if got := conflicts(cand, []*net.IPNet{parse(route)}); got != want {
			t.Errorf("conflicts(10.213.7.0/24, %s) = %v, want %v", route, got, want)
		}
	}
}

// fakeTB records Fatal and Cleanup, to watch New fail half-way.
type fakeTB struct {
	testing.TB
	mu       sync.Mutex
	fatal    string
	cleanups []func()
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatal = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeTB) Fatal(args ...any)                 { f.Fatalf("%s", fmt.Sprint(args...)) }
func (f *fakeTB) Cleanup(fn func())                 { f.mu.Lock(); f.cleanups = append(f.cleanups, fn); f.mu.Unlock() }
func (f *fakeTB) Logf(format string, args ...any)   { f.TB.Logf(format, args...) }
func (f *fakeTB) Errorf(format string, args ...any) { f.TB.Errorf(format, args...) }

// TestTeardownAfterFailedNew: building fails on the third host (a
// namespace name too long for a file name); the bridge, the first two
// hosts' veths and namespaces must be gone when Create returns, and New
// fails its test.
func TestTeardownAfterFailedNew(t *testing.T) {
	Require(t)
	l, err := Create("vt", []string{"x", "y", strings.Repeat("z", 300)})
	if err == nil || l != nil {
		t.Fatalf("Create with a 300-character host name did not fail (err %v)", err)
	}
	t.Logf("Create failed as expected: %.200s", err)
	// Other labs may run in parallel (other packages): look for this one's
	// names only, taken from the failure message.
	msg := err.Error()
	id := ""
	if i := strings.Index(msg, "netns add vt-"); i >= 0 && len(msg) >= i+19 {
		id = msg[i+13 : i+19]
	}
	if id == "" {
		t.Fatalf("no lab id in %q", msg)
	}
	links, _ := exec.Command("ip", "-o", "link", "show").CombinedOutput()
	nss, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	if strings.Contains(string(links), "vlb"+id) || strings.Contains(string(links), "vl"+id+"-") {
		t.Errorf("links of lab %s left behind:\n%s", id, links)
	}
	if strings.Contains(string(nss), "vt-"+id) {
		t.Errorf("namespaces of lab %s left behind:\n%s", id, nss)
	}

	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		l = New(f, "vt", []string{"x", strings.Repeat("z", 300)})
	}()
	<-done
	if f.fatal == "" || l != nil {
		t.Fatalf("New with a bad host did not fail its test (fatal %q)", f.fatal)
	}
}
