package cluster_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilha/vigil/cluster"
	"github.com/vigilha/vigil/cluster/clustertest"
	"github.com/vigilha/vigil/cluster/tlsconf"
	"github.com/vigilha/vigil/fsm"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// Each observer speaks only for itself (issue 11): a certificate of the
// right CA and kind is not enough on Raft or the admin API, forwarding
// headers do not make anyone someone else, and the Raft port does not keep
// connections nobody uses.

// idLogs collects each observer's log lines (info and up).
type idLogs struct {
	mu  sync.Mutex
	buf map[int]*bytes.Buffer
}

type idLogWriter struct {
	l *idLogs
	i int
}

func (w idLogWriter) Write(p []byte) (int, error) {
	w.l.mu.Lock()
	defer w.l.mu.Unlock()
	return w.l.buf[w.i].Write(p)
}

func (l *idLogs) of(i int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf[i].String()
}

// startTLSWithLogs starts a TLS cluster whose observers log into logs.
func startTLSWithLogs(t *testing.T) (*clustertest.Cluster, *idLogs) {
	t.Helper()
	logs := &idLogs{buf: map[int]*bytes.Buffer{}}
	c := clustertest.Start(t, clustertest.Options{
		ConfigOptions: clustertest.ConfigOptions{TLS: true},
		Customize: func(i int, o *cluster.Options) {
			logs.mu.Lock()
			if logs.buf[i] == nil {
				logs.buf[i] = &bytes.Buffer{}
			}
			logs.mu.Unlock()
			o.Logger = slog.New(slog.NewTextHandler(idLogWriter{logs, i}, &slog.HandlerOptions{Level: slog.LevelInfo}))
		},
	})
	return c, logs
}

// issueInto issues a certificate of the cluster's CA into dir as
// <name>.pem / <name>-key.pem.
func issueInto(t *testing.T, c *clustertest.Cluster, dir string, id tlsconf.Identity) {
	t.Helper()
	pki := c.Set.PKIDir
	cert, key, err := tlsconf.Issue(readFile(t, filepath.Join(pki, "ca.pem")), readFile(t, filepath.Join(pki, "ca-key.pem")), id)
	if err != nil {
		t.Fatal(err)
	}
	if err := tlsconf.WriteFiles(dir, map[string][]byte{"ca.pem": readFile(t, filepath.Join(pki, "ca.pem")), id.Name + ".pem": cert, id.Name + "-key.pem": key}); err != nil {
		t.Fatal(err)
	}
}

func storeOf(t *testing.T, dir, name string) *tlsconf.Store {
	t.Helper()
	st, err := tlsconf.Load(tlsconf.Files{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+"-key.pem")})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// metricValue sums a metric family's samples whose labels include match.
func metricValue(t *testing.T, o *cluster.Observer, name string, match map[string]string) float64 {
	t.Helper()
	fams, err := o.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			for k, v := range match {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// waitIdentical waits until every running observer has applied the same
// index and holds byte-identical state, and returns that state.
func waitIdentical(t *testing.T, c *clustertest.Cluster) []byte {
	t.Helper()
	var state []byte
	clustertest.WaitFor(t, waitLong, "every observer's state identical at the same index", func() (bool, string) {
		var ref []byte
		var refIdx uint64
		for n, i := range c.Running() {
			o := c.Nodes[i].Obs
			idx := o.FSM().AppliedIndex()
			b, err := o.FSM().Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				ref, refIdx = b, idx
				continue
			}
			if idx != refIdx {
				return false, fmt.Sprintf("%s applied %d, %s %d", c.Nodes[i].ID, idx, c.Nodes[c.Running()[0]].ID, refIdx)
			}
			if !bytes.Equal(b, ref) {
				return false, fmt.Sprintf("%s's state differs at index %d", c.Nodes[i].ID, idx)
			}
		}
		state = ref
		return true, ""
	})
	return state
}

func epochs(c *clustertest.Cluster) map[string]uint64 {
	out := map[string]uint64{}
	for _, i := range c.Running() {
		g, _ := c.Nodes[i].Obs.FSM().Group("pg-main")
		out[c.Nodes[i].ID] = g.GetEpoch()
	}
	return out
}

func raftStat(o *cluster.Observer, key string) uint64 {
	n, _ := strconv.ParseUint(o.RaftStats()[key], 10, 64)
	return n
}

// appendEntriesFrame is what a leader sends on the Raft port: the RPC type
// byte and a msgpack AppendEntriesRequest, here at a higher term, with one
// entry that pauses pg-main.
func appendEntriesFrame(t *testing.T, from, addr string, term, lastIndex, lastTerm uint64) []byte {
	t.Helper()
	data, err := fsm.Encode(&vigilv1.Command{Actor: "observer/" + from, At: timestamppb.Now(),
		Cmd: &vigilv1.Command_SetPaused{SetPaused: &vigilv1.SetPaused{Group: "pg-main", Paused: true, Reason: "rogue"}}})
	if err != nil {
		t.Fatal(err)
	}
	req := raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(from), Addr: []byte(addr)},
		Term:      term, PrevLogEntry: lastIndex, PrevLogTerm: lastTerm,
		Entries:           []*raft.Log{{Index: lastIndex + 1, Term: term, Type: raft.LogCommand, Data: data}},
		LeaderCommitIndex: lastIndex + 1,
	}
	var buf bytes.Buffer
	buf.WriteByte(0) // rpcAppendEntries
	if err := codec.NewEncoder(&buf, &codec.MsgpackHandle{}).Encode(&req); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestIdentityRogueObserver: a certificate of the right CA and of kind
// observer, named obs9 (not configured), gets nothing: its AppendEntries
// on every observer's Raft port is refused at the handshake and counted,
// every observer's state stays identical, no term or epoch moves, pg-main
// is not paused; on the admin API it can neither write (with or without
// forwarding headers) nor read.
func TestIdentityRogueObserver(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, clustertest.Options{ConfigOptions: clustertest.ConfigOptions{TLS: true}})
	leader := c.WaitForLeader(waitLong)
	waitGroupsSynced(t, c)
	rogue := t.TempDir()
	issueInto(t, c, rogue, tlsconf.Identity{Name: "obs9", Kind: "observer", IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	st := storeOf(t, rogue, "obs9")

	before := waitIdentical(t, c)
	terms := map[string]uint64{}
	for _, i := range c.Running() {
		terms[c.Nodes[i].ID] = raftStat(c.Nodes[i].Obs, "term")
	}
	ep := epochs(c)

	for _, i := range c.Running() {
		o := c.Nodes[i].Obs
		addr := c.Nodes[i].Cfg.Raft.Advertise
		frame := appendEntriesFrame(t, "obs9", "127.0.0.1:1", terms[o.ID()]+1, raftStat(o, "last_log_index"), raftStat(o, "last_log_term"))
		conn, err := tls.Dial("tcp", addr, st.ClientConfig("", "observer"))
		if err == nil {
			// TLS 1.3: our side of the handshake completes; the verdict
			// on our certificate comes with the first read.
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, werr := conn.Write(frame); werr != nil {
				err = werr
			} else {
				_, err = conn.Read(make([]byte, 1))
			}
			conn.Close()
		}
		if err == nil {
			t.Fatalf("%s answered obs9's AppendEntries", o.ID())
		}
		clustertest.WaitFor(t, waitLong, o.ID()+" counting obs9 as an unknown peer", func() (bool, string) {
			n := metricValue(t, o, "vigil_raft_connections_refused_total", map[string]string{"reason": "unknown_peer"})
			return n >= 1, fmt.Sprintf("unknown_peer refusals: %v", n)
		})
	}

	// The admin API: no writes, with or without forwarding headers, no reads.
	admin := adminAs(t, c, leader, credsOf(t, rogue, "obs9"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fwd := metadata.AppendToOutgoingContext(ctx, "vigil-forwarded-by", "obs9", "vigil-actor", "operator/alice")
	for name, call := range map[string]func() error{
		"pause": func() error {
			_, err := admin.PauseGroup(ctx, &vigilv1.PauseGroupRequest{Group: "pg-main", Reason: "rogue"})
			return err
		},
		"forwarded pause": func() error {
			_, err := admin.PauseGroup(fwd, &vigilv1.PauseGroupRequest{Group: "pg-main", Reason: "rogue"})
			return err
		},
		"get group": func() error { _, err := admin.GetGroup(ctx, &vigilv1.GetGroupRequest{Name: "pg-main"}); return err },
		"leases stopped": func() error {
			_, err := admin.LeasesStopped(ctx, &vigilv1.LeasesStoppedRequest{Group: "pg-main", Epoch: 1, Member: "db1"})
			return err
		},
	} {
		err := call()
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "observer/obs9 is not a configured observer") {
			t.Fatalf("obs9 %s: %v", name, err)
		}
	}

	after := waitIdentical(t, c)
	if !bytes.Equal(before, after) {
		t.Fatal("the replicated state changed")
	}
	for _, i := range c.Running() {
		o := c.Nodes[i].Obs
		if got := raftStat(o, "term"); got != terms[o.ID()] {
			t.Fatalf("%s's term moved from %d to %d", o.ID(), terms[o.ID()], got)
		}
		if g, _ := o.FSM().Group("pg-main"); g.GetPaused() {
			t.Fatalf("pg-main paused on %s", o.ID())
		}
	}
	if got := epochs(c); fmt.Sprint(got) != fmt.Sprint(ep) {
		t.Fatalf("epochs moved: %v → %v", ep, got)
	}
	if l := c.WaitForLeader(waitLong); l != leader {
		t.Fatalf("leader changed from %s to %s", c.Nodes[leader].ID, c.Nodes[l].ID)
	}
}

// TestIdentityForgedForwarding: forwarding headers make nobody someone
// else. An operator's call is recorded as the operator whatever actor it
// claims; a viewer's is refused, and audited as the viewer; an observer
// certificate writes only by forwarding, in its own name, for an actor
// with the operator role here.
func TestIdentityForgedForwarding(t *testing.T) {
	t.Parallel()
	c, logs := startTLSWithLogs(t)
	leader := c.WaitForLeader(waitLong)
	waitGroupsSynced(t, c)
	pki := c.Set.PKIDir
	lo := c.Nodes[leader].Obs
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	forged := func(by, actor string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "vigil-forwarded-by", by, "vigil-actor", actor)
	}
	lastActor := func() string {
		g, _ := lo.FSM().Group("pg-main")
		h := g.GetHistory()
		return h[len(h)-1].GetActor()
	}
	paused := func() bool { g, _ := lo.FSM().Group("pg-main"); return g.GetPaused() }

	// An operator claiming to be carol, forwarded by obs2: it is alice's.
	alice := adminAs(t, c, leader, credsOf(t, pki, "alice"))
	if _, err := alice.PauseGroup(forged("obs2", "operator/carol"), &vigilv1.PauseGroupRequest{Group: "pg-main", Reason: "alice"}); err != nil {
		t.Fatalf("alice's pause: %v", err)
	}
	if got := lastActor(); got != "operator/alice" || !paused() {
		t.Fatalf("pause recorded as %q (paused %v), want operator/alice", got, paused())
	}

	// A viewer claiming to be alice: refused, state unchanged, audited as bob.
	before := waitIdentical(t, c)
	bob := adminAs(t, c, leader, credsOf(t, pki, "bob"))
	_, err := bob.ResumeGroup(forged("obs2", "operator/alice"), &vigilv1.ResumeGroupRequest{Group: "pg-main"})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "viewer/bob") {
		t.Fatalf("bob's forged resume: %v", err)
	}
	_, err = bob.Switchover(ctx, &vigilv1.SwitchoverRequest{Group: "pg-main"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("bob's switchover: %v", err)
	}

	// A configured observer's certificate (obs2's, wherever it is used
	// from): no write of its own, none in the name of a viewer or of an
	// observer, none forwarded in another observer's name.
	obsCert := adminAs(t, c, leader, credsOf(t, pki, "obs2"))
	for name, cctx := range map[string]context.Context{
		"own write":              ctx,
		"forwarded for a viewer": forged("obs2", "viewer/bob"),
		"forwarded for itself":   forged("obs2", "observer/obs2"),
		"in obs3's name":         forged("obs3", "operator/alice"),
		"forwarded, no actor":    metadata.AppendToOutgoingContext(ctx, "vigil-forwarded-by", "obs2"),
	} {
		_, err := obsCert.ResumeGroup(cctx, &vigilv1.ResumeGroupRequest{Group: "pg-main"})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("observer certificate, %s: %v", name, err)
		}
	}
	if after := waitIdentical(t, c); !bytes.Equal(before, after) {
		t.Fatal("refused calls changed the replicated state")
	}

	// What forwarding is for: obs2 forwards alice's write; it is alice's.
	if _, err := obsCert.ResumeGroup(forged("obs2", "operator/alice"), &vigilv1.ResumeGroupRequest{Group: "pg-main"}); err != nil {
		t.Fatalf("obs2 forwarding alice's resume: %v", err)
	}
	if got := lastActor(); got != "operator/alice" || paused() {
		t.Fatalf("resume recorded as %q (paused %v)", got, paused())
	}

	// The audit lines name the real callers.
	clustertest.WaitFor(t, waitLong, "audit lines on the leader", func() (bool, string) {
		var missing []string
		lines := strings.Split(logs.of(leader), "\n")
		for _, want := range [][]string{
			{"msg=audit", "identity=operator/alice", "PauseGroup", "outcome=OK", "claimed_actor=operator/carol"},
			{"msg=audit", "identity=viewer/bob", "ResumeGroup", "outcome=PermissionDenied", "claimed_actor=operator/alice"},
			{"msg=audit", "identity=viewer/bob", "Switchover", "outcome=PermissionDenied"},
			{"msg=audit", "identity=observer/obs2", "ResumeGroup", "outcome=PermissionDenied"},
			{"msg=audit", "identity=operator/alice", "ResumeGroup", "outcome=OK", "via=observer/obs2"},
		} {
			if !anyLineHasAll(lines, want) {
				missing = append(missing, strings.Join(want, " "))
			}
		}
		return len(missing) == 0, fmt.Sprintf("no audit line with %q", missing)
	})
	for _, l := range strings.Split(logs.of(leader), "\n") {
		if strings.Contains(l, "msg=audit") && strings.Contains(l, "identity=admin-api") {
			t.Fatalf("an audit line without the caller: %s", l)
		}
	}
}

func anyLineHasAll(lines, parts []string) bool {
	for _, l := range lines {
		all := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// TestListenerIdleConnections: 500 TCP connections to a follower's Raft
// port that never say anything are all closed by the handshake (TLS) or
// first-byte (plaintext) deadline, the goroutines and descriptors they
// took are given back, and the cluster commits, during and after. Not
// parallel: it counts the process's goroutines and descriptors.
func TestListenerIdleConnections(t *testing.T) {
	for _, mode := range []struct {
		name    string
		tls     bool
		timeout time.Duration // the deadline the connections die of
	}{
		{"tls", true, 5 * time.Second},
		{"plaintext", false, 10 * time.Second},
	} {
		t.Run(mode.name, func(t *testing.T) {
			c := clustertest.Start(t, clustertest.Options{ConfigOptions: clustertest.ConfigOptions{TLS: mode.tls}})
			leader := c.WaitForLeader(waitLong)
			waitGroupsSynced(t, c)
			target := (leader + 1) % 3
			to := c.Nodes[target].Obs
			commit := func(reason string) {
				t.Helper()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				res, err := c.Nodes[leader].Obs.Propose(ctx, pauseCmd("pg-main", reason))
				if err != nil {
					t.Fatalf("commit (%s): %v", reason, err)
				}
				c.WaitForApplied(waitLong, res.Index)
			}
			commit("baseline")
			goroutines, fds := runtime.NumGoroutine(), openFDs(t)

			const n = 500
			conns := make([]net.Conn, 0, n)
			defer func() {
				for _, cn := range conns {
					cn.Close()
				}
			}()
			start := time.Now()
			for i := 0; i < n; i++ {
				cn, err := net.Dial("tcp", c.Nodes[target].Cfg.Raft.Advertise)
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				conns = append(conns, cn)
			}
			commit("during the flood")

			// Every connection is closed by the observer, within its deadline.
			deadline := start.Add(mode.timeout + 10*time.Second)
			for i, cn := range conns {
				_ = cn.SetReadDeadline(deadline)
				_, err := cn.Read(make([]byte, 1))
				if ne, ok := err.(net.Error); err == nil || (ok && ne.Timeout()) {
					t.Fatalf("connection %d still open %s after the flood began (err %v)", i, time.Since(start).Round(time.Millisecond), err)
				}
			}
			t.Logf("all %d connections closed by the observer within %s", n, time.Since(start).Round(time.Millisecond))
			for _, cn := range conns {
				cn.Close()
			}
			conns = nil

			limit := metricValue(t, to, "vigil_raft_connections_refused_total", map[string]string{"reason": "limit"})
			timeout := metricValue(t, to, "vigil_raft_connections_refused_total", map[string]string{"reason": "timeout"})
			if limit+timeout < n || timeout < 1 || limit < 1 {
				t.Fatalf("refusals counted: limit %v, timeout %v; want %d in all", limit, timeout, n)
			}
			clustertest.WaitFor(t, waitLong, "goroutines and descriptors back to the baseline", func() (bool, string) {
				g, f := runtime.NumGoroutine(), openFDs(t)
				return g <= goroutines+30 && f <= fds+10, fmt.Sprintf("goroutines %d (baseline %d), descriptors %d (baseline %d)", g, goroutines, f, fds)
			})
			if open := metricValue(t, to, "vigil_raft_connections_inbound", nil); open > 10 {
				t.Fatalf("%v inbound raft connections still open", open)
			}
			commit("after the flood")
			waitIdentical(t, c)
		})
	}
}

// TestIdentityPlaintextActor: without TLS nothing is authenticated, but a
// forwarded actor is honoured only from a configured observer's IP; from
// anywhere else the write is recorded as what it is, admin-api.
func TestIdentityPlaintextActor(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, clustertest.Options{})
	leader := c.WaitForLeader(waitLong)
	waitGroupsSynced(t, c)
	lo := c.Nodes[leader].Obs
	from := func(ip string) vigilv1.AdminClient {
		cc, err := grpc.NewClient(lo.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
				return d.DialContext(ctx, "tcp", addr)
			}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return vigilv1.NewAdminClient(cc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	forged := metadata.AppendToOutgoingContext(ctx, "vigil-forwarded-by", "obs2", "vigil-actor", "operator/alice")
	lastActor := func() string {
		g, _ := lo.FSM().Group("pg-main")
		h := g.GetHistory()
		return h[len(h)-1].GetActor()
	}
	if _, err := from("127.0.0.2").PauseGroup(forged, &vigilv1.PauseGroupRequest{Group: "pg-main", Reason: "stranger"}); err != nil {
		t.Fatalf("pause from 127.0.0.2: %v", err)
	}
	if got := lastActor(); got != "admin-api" {
		t.Fatalf("a stranger's forged actor recorded as %q, want admin-api", got)
	}
	// The observers' own address (all of them are on 127.0.0.1 here).
	if _, err := from("127.0.0.1").ResumeGroup(forged, &vigilv1.ResumeGroupRequest{Group: "pg-main"}); err != nil {
		t.Fatalf("resume from 127.0.0.1: %v", err)
	}
	if got := lastActor(); got != "operator/alice" {
		t.Fatalf("an observer host's forwarded actor recorded as %q, want operator/alice", got)
	}
}
