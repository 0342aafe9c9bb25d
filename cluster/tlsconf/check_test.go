package tlsconf

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
)

// refusal is a typed error a PeerCheck returns, to show it comes back
// from the handshake unchanged.
type refusal struct{ name string }

func (r *refusal) Error() string { return "not a peer we know: " + r.name }

// TestPeerCheck: the server-side check sees the client's identity and
// address and can refuse it; the client-side check sees the server's
// identity and can refuse it; both errors come back from the local
// handshake unchanged.
func TestPeerCheck(t *testing.T) {
	p := newPKI(t, "vigil test CA")
	srvStore := mustLoad(t, p.node(t, "obs1", observerID("obs1")))
	obs2 := mustLoad(t, p.node(t, "obs2", observerID("obs2")))
	obs9 := mustLoad(t, p.node(t, "obs9", observerID("obs9")))

	var mu sync.Mutex
	var seen []string
	srvErrs := make(chan error, 10)
	cfg := srvStore.ServerConfigWithCheck(func(kind, name string, remote net.Addr) error {
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%s/%s from %v", kind, name, remote))
		mu.Unlock()
		if remote == nil {
			return errors.New("no remote address")
		}
		if name != "obs2" {
			err := &refusal{name: name}
			srvErrs <- err
			return err
		}
		return nil
	}, KindObserver)
	srv := startServer(t, cfg)

	if _, err := dial(srv.addr, obs2.ClientConfig("", KindObserver)); err != nil {
		t.Fatalf("obs2 refused: %v", err)
	}
	if r := srv.next(t); r.err != nil || r.name != "obs2" {
		t.Fatalf("server saw %+v", r)
	}
	if _, err := dial(srv.addr, obs9.ClientConfig("", KindObserver)); err == nil {
		t.Fatal("obs9 accepted")
	}
	r := srv.next(t)
	var ref *refusal
	if !errors.As(r.err, &ref) || ref.name != "obs9" {
		t.Fatalf("server handshake error = %v, want the check's own error", r.err)
	}
	<-srvErrs
	mu.Lock()
	if len(seen) != 2 || !strings.Contains(seen[0], "observer/obs2 from 127.0.0.1:") {
		t.Fatalf("check saw %q", seen)
	}
	mu.Unlock()

	// Client side: obs2 wants to reach obs3, obs1 answers.
	plain := startServer(t, srvStore.ServerConfig(KindObserver))
	var want *refusal
	_, err := dial(plain.addr, obs2.ClientConfigWithCheck("", func(kind, name string, remote net.Addr) error {
		if remote != nil {
			return errors.New("client side got a remote address")
		}
		if name != "obs3" {
			return &refusal{name: name}
		}
		return nil
	}, KindObserver))
	if !errors.As(err, &want) || want.name != "obs1" {
		t.Fatalf("client dial error = %v, want the check's refusal of obs1", err)
	}
	if r := plain.next(t); r.err == nil {
		t.Fatalf("server completed a handshake the client refused: %+v", r)
	}
	// And the check accepts the right one.
	if _, err := dial(plain.addr, obs2.ClientConfigWithCheck("", func(_, name string, _ net.Addr) error {
		if name != "obs1" {
			return &refusal{name: name}
		}
		return nil
	}, KindObserver)); err != nil {
		t.Fatalf("right server refused: %v", err)
	}
}
