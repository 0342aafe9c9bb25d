package haproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// haproxyBin returns the haproxy binary, or skips the test (fails it with
// VIGIL_REQUIRE_TOOLS set).
func haproxyBin(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("VIGIL_REQUIRE_TOOLS") != "" {
			t.Fatalf("haproxy not found (VIGIL_REQUIRE_TOOLS is set): %v", err)
		}
		t.Skip("haproxy not found; install it (apt-get install -y haproxy) or set VIGIL_REQUIRE_TOOLS=1 to make this a failure")
	}
	return p
}

// lockedBuffer collects a child's output for failure messages.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// haproxyProc is a haproxy running in the foreground as a child of the test.
type haproxyProc struct {
	cfgPath string
	out     *lockedBuffer
	done    chan struct{}
}

// startHAProxy writes cfg to a temp dir, checks it with "haproxy -c", runs
// "haproxy -db -f" as a child (killed in t.Cleanup) and waits until the
// Runtime API answers on sock.
func startHAProxy(t *testing.T, cfg, sock string) *haproxyProc {
	t.Helper()
	bin := haproxyBin(t)
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c -f: %v\n%s\nconfig:\n%s", err, out, cfg)
	}
	p := &haproxyProc{cfgPath: path, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start haproxy: %v", err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("haproxy output:\n%s", p.out.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := Command(ctx, Config{Socket: sock}, "show info")
		cancel()
		if err == nil {
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("haproxy exited before its socket answered:\n%s", p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy socket %s did not answer: %v\n%s", sock, err, p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nameServer accepts TCP connections on 127.0.0.1 and answers each with its
// name, then closes it; it counts the connections it accepted.
type nameServer struct {
	name     string
	addr     string
	accepted atomic.Int64
}

func startNameServer(t *testing.T, name string) *nameServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &nameServer{name: name, addr: ln.Addr().String()}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			_, _ = io.WriteString(c, name)
			_ = c.Close()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	return s
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// ask connects to addr and returns what the server behind it says.
func ask(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return string(b), err
	}
	if len(b) == 0 {
		return "", errors.New("connection closed without an answer (no server available?)")
	}
	return string(b), nil
}

// waitAnswer polls addr until it answers want.
func waitAnswer(t *testing.T, addr, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	var lastErr error
	for time.Now().Before(deadline) {
		last, lastErr = ask(addr)
		if lastErr == nil && last == want {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("%s never answered %q within %v; last answer %q, err %v", addr, want, within, last, lastErr)
}

// allAnswer connects n times and fails unless every answer is want.
func allAnswer(t *testing.T, addr, want string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		got, err := ask(addr)
		if err != nil || got != want {
			t.Fatalf("connection %d/%d through %s: got %q, err %v; want %q", i+1, n, addr, got, err, want)
		}
	}
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

func mustf(t *testing.T, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}
