package pgactuator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vigilha/vigil/failover"
)

func TestParseLSN(t *testing.T) {
	for s, want := range map[string]uint64{
		"0/0":               0,
		"16/B374D848":       0x16_B374D848,
		"FFFFFFFF/FFFFFFFF": ^uint64(0),
		"0/1":               1,
	} {
		got, err := ParseLSN(s)
		if err != nil || got != want {
			t.Errorf("ParseLSN(%q) = %#x, %v; want %#x", s, got, err, want)
		}
		if back, _ := ParseLSN(FormatLSN(got)); back != got {
			t.Errorf("FormatLSN round trip of %q: %#x", s, back)
		}
	}
	for _, s := range []string{"", "/", "0/", "/0", "1", "G/0", "123456789/0", "0/-1", "0/0/0"} {
		if _, err := ParseLSN(s); err == nil {
			t.Errorf("ParseLSN(%q) accepted", s)
		}
	}
}

func TestQuoting(t *testing.T) {
	if got, want := quoteConnValue(`a'b\c d`), `'a\'b\\c d'`; got != want {
		t.Errorf("quoteConnValue = %s, want %s", got, want)
	}
	got, err := quoteLiteral(`host='x' password='p\'q'`)
	if want := `E'host=''x'' password=''p\\''q'''`; err != nil || got != want {
		t.Errorf("quoteLiteral = %s, %v; want %s", got, err, want)
	}
	if _, err := quoteLiteral("a\x00b"); err == nil {
		t.Error("quoteLiteral accepted a NUL byte")
	}
}

func TestPrimaryConninfo(t *testing.T) {
	a := New(Config{Password: `se'cr\et`}, nil)
	got := a.primaryConninfo("10.0.0.2", "5432", "db2")
	want := `host='10.0.0.2' port='5432' user='postgres' application_name='db2' password='se\'cr\\et'`
	if got != want {
		t.Errorf("primaryConninfo = %s\nwant %s", got, want)
	}
	a = New(Config{User: "vigil", ReplicationUser: "repl", SSLMode: "require"}, nil)
	got = a.primaryConninfo("db1.example", "6432", "db2")
	want = `host='db1.example' port='6432' user='repl' application_name='db2' sslmode='require'`
	if got != want {
		t.Errorf("primaryConninfo = %s\nwant %s", got, want)
	}
}

func TestHostMatches(t *testing.T) {
	for _, c := range []struct {
		sender, want string
		ok           bool
	}{
		{"127.0.0.1", "127.0.0.1", true},
		{"", "127.0.0.1", true},
		{"/var/run/postgresql", "127.0.0.1", true},
		{"DB1", "db1", true},
		{"::1", "0:0::1", true},
		{"10.0.0.1", "10.0.0.2", false},
		{"db1", "db2", false},
		{"db1", "10.0.0.2", true}, // not comparable
	} {
		if got := hostMatches(c.sender, c.want); got != c.ok {
			t.Errorf("hostMatches(%q, %q) = %v, want %v", c.sender, c.want, got, c.ok)
		}
	}
}

func TestAllRefused(t *testing.T) {
	refused := &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	timeout := &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ETIMEDOUT)}
	for _, c := range []struct {
		err error
		ok  bool
	}{
		{refused, true},
		{fmt.Errorf("dial error: %w", refused), true},
		{errors.Join(refused, fmt.Errorf("x: %w", refused)), true},
		{errors.Join(refused, timeout), false},
		{errors.Join(refused, context.DeadlineExceeded), false},
		{errors.Join(), false},
		{timeout, false},
		{nil, false},
	} {
		if got := allRefused(c.err); got != c.ok {
			t.Errorf("allRefused(%v) = %v, want %v", c.err, got, c.ok)
		}
	}
}

// TestConnectRefusedNoServer needs no PostgreSQL: a closed port on
// loopback refuses, so Fence confirms and the other operations fail with
// an error naming the member.
func TestConnectRefusedNoServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	a := New(Config{}, nil)
	m := failover.Member{Name: "db9", Address: addr}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := a.Fence(ctx, failover.Action{Old: m, New: failover.Member{Name: "db1", Address: "127.0.0.1:1"}})
	if err != nil || !res.Confirmed {
		t.Fatalf("Fence of a closed port = %+v, %v; want confirmed", res, err)
	}
	err = a.Promote(ctx, failover.Action{New: m})
	if err == nil || !errContains(err, "promote db9 ("+addr+")") || !errContains(err, "refused") {
		t.Errorf("Promote error %v does not name the member and the cause", err)
	}
	if _, _, err := a.CurrentLSN(ctx, m); err == nil {
		t.Error("CurrentLSN of a closed port succeeded")
	}
	// Bad address: a clear error, no panic.
	if _, err := a.Fence(ctx, failover.Action{Old: failover.Member{Name: "x", Address: "nonsense"}}); err == nil {
		t.Error("Fence accepted an address without a port")
	}
	// Refusing to fence the member being promoted.
	if _, err := a.Fence(ctx, failover.Action{Old: m, New: m}); err == nil {
		t.Error("Fence accepted Old == New")
	}
}

// TestConnectTimeoutNoServer: a listener that never answers the startup
// message (a hung postmaster looks like this) is not fenced, and the
// call returns after ConnectTimeout even without a ctx deadline.
func TestConnectTimeoutNoServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	a := New(Config{ConnectTimeout: 300 * time.Millisecond}, nil)
	start := time.Now()
	res, err := a.Fence(context.Background(), failover.Action{Old: failover.Member{Name: "db1", Address: ln.Addr().String()}})
	if res.Confirmed || err == nil {
		t.Fatalf("Fence of a silent server = %+v, %v; want not confirmed with an error", res, err)
	}
	if !errContains(err, "timed out") {
		t.Errorf("error %q does not say it timed out", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Fence took %v with ConnectTimeout 300ms", d)
	}
}

func errContains(err error, s string) bool {
	return err != nil && strings.Contains(err.Error(), s)
}
