package haproxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const shippedConfig = "../../deploy/haproxy/haproxy.cfg"

// TestShippedConfigValid checks deploy/haproxy/haproxy.cfg as shipped with
// "haproxy -c": valid, and without warnings.
func TestShippedConfigValid(t *testing.T) {
	bin := haproxyBin(t)
	src, err := os.ReadFile(shippedConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(src)
	if _, err := exec.LookPath("getent"); err == nil {
		if exec.Command("getent", "passwd", "haproxy").Run() != nil {
			// haproxy -c resolves "user haproxy"; the Debian package creates it.
			cfg = strings.NewReplacer("    user haproxy\n", "", "    group haproxy\n", "").Replace(cfg)
		}
	}
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c -f %s: %v\n%s", shippedConfig, err, out)
	}
	if strings.Contains(string(out), "WARNING") || strings.Contains(string(out), "ALERT") {
		t.Fatalf("haproxy -c -f %s: warnings:\n%s", shippedConfig, out)
	}
	for _, want := range []string{
		"uri-lf /primary/pg-main/%[srv_name]",
		"uri-lf /replica/pg-main/%[srv_name]",
		"fall 1 rise 1 on-marked-down shutdown-sessions",
		"level admin",
		"prometheus-exporter",
		"bind :8405",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("shipped config lacks %q", want)
		}
	}
}

// observer is a fake vigil observer's role API: one primary, the others
// replicas.
type observer struct {
	primary *atomic.Value // string
	mu      sync.Mutex
	seen    map[string]int // path -> requests
}

func (o *observer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	o.seen[r.URL.Path]++
	o.mu.Unlock()
	// primary is a comma-separated list, to play observers gone wrong.
	primaries := map[string]bool{}
	for _, p := range strings.Split(o.primary.Load().(string), ",") {
		primaries[p] = true
	}
	member := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
	switch {
	case r.URL.Path == "/health":
		w.WriteHeader(http.StatusOK)
	case strings.HasPrefix(r.URL.Path, "/primary/pg-main/") && primaries[member]:
		w.WriteHeader(http.StatusOK)
	case strings.HasPrefix(r.URL.Path, "/replica/pg-main/") && !primaries[member]:
		w.WriteHeader(http.StatusOK)
	default:
		w.WriteHeader(http.StatusServiceUnavailable)
	}
}

func (o *observer) count(path string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.seen[path]
}

// TestShippedConfigRoutesByRoleEndpoints runs the shipped configuration
// (addresses substituted) against fake observers and name servers standing
// in for PostgreSQL: traffic on the primary frontend follows whichever
// member the observers name, first through the Router (maint/ready at
// once), then through the health checks alone; one of the three observers
// is down throughout.
func TestShippedConfigRoutesByRoleEndpoints(t *testing.T) {
	haproxyBin(t)
	src, err := os.ReadFile(shippedConfig)
	if err != nil {
		t.Fatal(err)
	}
	var primary atomic.Value
	primary.Store("db1")
	obs := &observer{primary: &primary, seen: map[string]int{}}

	// obs1 is down (nothing listens there); obs2 and obs3 answer.
	obsAddr := []string{hostPort(freePort(t))}
	for i := 0; i < 2; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: obs, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
		obsAddr = append(obsAddr, ln.Addr().String())
	}
	dbs := map[string]*nameServer{}
	for _, n := range []string{"db1", "db2", "db3"} {
		dbs[n] = startNameServer(t, n)
	}
	sock := filepath.Join(t.TempDir(), "admin.sock")
	primaryFE, standbyFE, promFE := hostPort(freePort(t)), hostPort(freePort(t)), hostPort(freePort(t))
	relayPort := freePort(t)

	cfg := string(src)
	for _, sub := range [][2]string{
		{"log /dev/log local0", "log stderr format raw local0 notice"},
		{"    user haproxy\n", ""},
		{"    group haproxy\n", ""},
		{"/run/haproxy/admin.sock", sock},
		{"bind 127.0.0.1:7401", "bind 127.0.0.1:" + strconv.Itoa(relayPort)},
		{"addr 127.0.0.1 port 7401", "addr 127.0.0.1 port " + strconv.Itoa(relayPort)},
		{"10.0.0.1:7401", obsAddr[0]},
		{"10.0.0.2:7401", obsAddr[1]},
		{"10.0.0.3:7401", obsAddr[2]},
		{"10.0.0.11:5432", dbs["db1"].addr},
		{"10.0.0.12:5432", dbs["db2"].addr},
		{"10.0.0.13:5432", dbs["db3"].addr},
		{"bind :5000", "bind " + primaryFE},
		{"bind :5001", "bind " + standbyFE},
		{"bind :8405", "bind " + promFE},
	} {
		if !strings.Contains(cfg, sub[0]) {
			t.Fatalf("shipped config no longer contains %q: update this test", sub[0])
		}
		cfg = strings.ReplaceAll(cfg, sub[0], sub[1])
	}
	startHAProxy(t, cfg, sock)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// db1 is the primary: only it behind :5000; standbys behind :5001
	// once the first checks ran (at start HAProxy counts every server UP).
	waitAnswer(t, primaryFE, "db1", 15*time.Second)
	allAnswer(t, primaryFE, "db1", 20)
	replicas := New(Config{Socket: sock, Backend: "pg-main-replicas"}, nil)
	waitFor(t, 10*time.Second, "db1 down in pg-main-replicas", func() bool {
		st, err := replicas.State(ctx)
		return err == nil && !st["db1"].Up() && st["db2"].Up() && st["db3"].Up()
	})
	for i := 0; i < 10; i++ {
		got, err := ask(standbyFE)
		if err != nil || (got != "db2" && got != "db3") {
			t.Fatalf("standby frontend answered %q, %v; want db2 or db3", got, err)
		}
	}
	for _, p := range []string{"/primary/pg-main/db1", "/primary/pg-main/db2", "/primary/pg-main/db3", "/replica/pg-main/db2", "/health"} {
		waitFor(t, 5*time.Second, "an observer to see a check of "+p+" (per-server URIs)", func() bool { return obs.count(p) > 0 })
	}

	// Failover to db2 at epoch 7: the observers say so, and the Router moves
	// HAProxy at once without waiting for the checks.
	r := New(Config{Socket: sock, Backend: "pg-main"}, nil)
	primary.Store("db2")
	mustf(t, r.Route(ctx, action(7, "db1", "db2")), "Route db1->db2")
	wantAdmin(t, r, []string{"db2"}, []string{"db1"})
	waitAnswer(t, primaryFE, "db2", 5*time.Second)
	before := dbs["db1"].accepted.Load()
	allAnswer(t, primaryFE, "db2", 30)
	if n := dbs["db1"].accepted.Load() - before; n != 0 {
		t.Fatalf("old primary db1 got %d connections after the route", n)
	}

	// Health checks alone: the observers name db3; db2 is marked down at
	// its next check (fall 1), db3 up (rise 1).
	primary.Store("db3")
	waitAnswer(t, primaryFE, "db3", 5*time.Second)
	before2 := dbs["db2"].accepted.Load()
	allAnswer(t, primaryFE, "db3", 20)
	if n := dbs["db2"].accepted.Load() - before2; n != 0 {
		t.Fatalf("db2 got %d connections after the observers named db3", n)
	}

	// Observers gone wrong name two primaries: the frontend refuses
	// connections rather than send them to either.
	primary.Store("db1,db3")
	pgMain := New(Config{Socket: sock, Backend: "pg-main"}, nil)
	waitFor(t, 5*time.Second, "db1 and db3 both up in pg-main", func() bool {
		mustf(t, r.Route(ctx, action(8, "db2", "db1")), "Route db2->db1 (db3 stays ready)")
		st, err := pgMain.State(ctx)
		return err == nil && st["db1"].Up() && st["db3"].Up()
	})
	for i := 0; i < 10; i++ {
		if got, err := ask(primaryFE); err == nil {
			t.Fatalf("with two usable servers in pg-main the frontend answered %q", got)
		}
	}
	primary.Store("db1")
	waitAnswer(t, primaryFE, "db1", 5*time.Second)
	allAnswer(t, primaryFE, "db1", 10)

	// The Prometheus exporter answers.
	resp, err := http.Get("http://" + promFE + "/metrics")
	mustf(t, err, "GET /metrics")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `haproxy_server_status{proxy="pg-main",server="db1"`) {
		t.Fatalf("/metrics: status %d, body without pg-main/db1 server status:\n%.2000s", resp.StatusCode, body)
	}
}
