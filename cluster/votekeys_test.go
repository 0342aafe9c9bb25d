package cluster_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/protobuf/proto"

	"github.com/vigilha/vigil/cluster"
	"github.com/vigilha/vigil/cluster/clustertest"
	"github.com/vigilha/vigil/cluster/tlsconf"
	"github.com/vigilha/vigil/deploy/lab/pglab"
	"github.com/vigilha/vigil/health"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// forgedLSN marks the votes a test forges, to find them in a vote book.
const forgedLSN = 0xdead_beef

// forger holds the gossip key and label, and no certificate: it sends
// vote packets through its own memberlist, without joining.
type forger struct {
	t  testing.TB
	ml *memberlist.Memberlist
}

func newForger(t testing.TB, c *clustertest.Cluster) *forger {
	t.Helper()
	key, err := c.Nodes[0].Cfg.GossipKey()
	if err != nil {
		t.Fatal(err)
	}
	port := clustertest.FreePorts(t, 1)[0]
	mc := memberlist.DefaultLANConfig()
	mc.Name = "forger"
	mc.BindAddr, mc.BindPort = "127.0.0.1", port
	mc.AdvertiseAddr, mc.AdvertisePort = "127.0.0.1", port
	mc.SecretKey, mc.Label = key, c.Set.Label
	mc.Logger = log.New(io.Discard, "", 0)
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ml.Shutdown() })
	return &forger{t: t, ml: ml}
}

// send sends pkt as a gossip user message to the observer at addr.
func (f *forger) send(addr string, pkt []byte) {
	f.t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		f.t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	if err := f.ml.SendBestEffort(&memberlist.Node{Name: "target", Addr: net.ParseIP(host), Port: uint16(p)}, pkt); err != nil {
		f.t.Fatal(err)
	}
}

// sendAll sends pkt to every running observer.
func (f *forger) sendAll(c *clustertest.Cluster, pkt []byte) {
	for _, i := range c.Running() {
		f.send(c.Nodes[i].Cfg.Gossip.Advertise, pkt)
	}
}

// forgedPacket is a vote packet in observer's name about db1 of pg-main,
// signed with key (unsigned when nil).
func forgedPacket(t testing.TB, observer string, batchSeq, voteSeq uint64, verdict vigilv1.Verdict, key crypto.Signer) []byte {
	t.Helper()
	batch, err := proto.Marshal(&vigilv1.VoteBatch{Observer: observer, Sequence: batchSeq, Votes: []*vigilv1.WireVote{{
		Group: "pg-main", Member: "db1", Verdict: verdict, Role: vigilv1.Role_ROLE_PRIMARY, WalLsn: forgedLSN, Sequence: voteSeq,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	pkt := &vigilv1.VotePacket{Batch: batch}
	if key != nil {
		if pkt.Signature, err = health.SignBatchWith(key, batch); err != nil {
			t.Fatal(err)
		}
	}
	b, err := proto.Marshal(pkt)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// noForgedVotes fails if observer i's vote book holds a forged vote.
func noForgedVotes(t testing.TB, c *clustertest.Cluster, i int, when string) {
	t.Helper()
	for _, v := range c.Nodes[i].Obs.Monitor().Votes("pg-main", "db1") {
		if v.ReplayLSN == forgedLSN {
			t.Fatalf("%s: %s stored a forged vote: %+v", when, c.Nodes[i].ID, v)
		}
	}
}

func keyOf(t testing.TB, pki, name string) crypto.Signer {
	t.Helper()
	st, err := tlsconf.Load(tlsconf.Files{CA: filepath.Join(pki, "ca.pem"), Cert: filepath.Join(pki, name+".pem"), Key: filepath.Join(pki, name+"-key.pem")})
	if err != nil {
		t.Fatal(err)
	}
	return st.Certificate().PrivateKey.(crypto.Signer)
}

// TestGossipForgedVotesCannotFailOver: a holder of the gossip key (and of
// certificates that are not the named observers') sends DOWN votes about
// a healthy primary in the names of every observer: none is stored, no
// observer sees ODOWN, no failover starts (epoch 0), and the real signed
// votes keep counting.
func TestGossipForgedVotesCannotFailOver(t *testing.T) {
	t.Parallel()
	pg := pglab.StartForTest(t, pglab.Options{Standbys: 1})
	c := clustertest.Start(t, clustertest.Options{ConfigOptions: clustertest.ConfigOptions{Groups: pgGroups(pg), TLS: true}})
	c.WaitForLeader(waitLong)
	waitGroupsSynced(t, c)
	upEverywhere := func(what string) {
		t.Helper()
		clustertest.WaitFor(t, waitLong, what, func() (bool, string) {
			for _, i := range c.Running() {
				if h := memberHealth(c, i, "db1"); h.GetUpVotes() != 3 {
					return false, fmt.Sprintf("%s: %s", c.Nodes[i].ID, h.GetSummary())
				}
			}
			return true, ""
		})
	}
	upEverywhere("db1 up on 3 of 3 everywhere: every observer's signed votes verified by the others")
	for _, n := range c.Nodes {
		if got := gaugeValue(t, n.Obs, "vigil_gossip_votes_authenticated", nil); got != 1 {
			t.Fatalf("%s: vigil_gossip_votes_authenticated = %v", n.ID, got)
		}
	}

	mallory, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pki := c.Set.PKIDir
	alice := keyOf(t, pki, "alice") // an operator certificate of the cluster's CA
	real := map[string]crypto.Signer{}
	for _, id := range c.Set.IDs {
		real[id] = keyOf(t, pki, id)
	}
	f := newForger(t, c)
	forgeRound := func() {
		// Sequences ahead of the real votes: only the signatures stand
		// between these and the vote books.
		seq := uint64(time.Now().Add(time.Second).UnixNano())
		for _, id := range c.Set.IDs {
			other := c.Set.IDs[(slices.Index(c.Set.IDs, id)+1)%len(c.Set.IDs)]
			for _, key := range []crypto.Signer{nil, mallory, alice, real[other]} {
				f.sendAll(c, forgedPacket(t, id, seq, seq, vigilv1.Verdict_VERDICT_DOWN, key))
			}
		}
	}
	// Forge for several down_after periods (1 s), sampling every observer.
	deadline := time.Now().Add(4 * time.Second)
	samples := 0
	for time.Now().Before(deadline) {
		forgeRound()
		for _, i := range c.Running() {
			if h := memberHealth(c, i, "db1"); h.GetOdown() {
				t.Fatalf("%s sees ODOWN under forged votes: %s", c.Nodes[i].ID, h.GetSummary())
			}
			noForgedVotes(t, c, i, "while forging")
			if g, _ := c.Nodes[i].Obs.FSM().Group("pg-main"); g.GetEpoch() != 0 || g.GetPrimary() != "db1" {
				t.Fatalf("%s: epoch %d, primary %s under forged votes", c.Nodes[i].ID, g.GetEpoch(), g.GetPrimary())
			}
		}
		samples++
		time.Sleep(50 * time.Millisecond) // sampling period of a hold check
	}
	t.Logf("%d samples while forging", samples)
	for _, n := range c.Nodes {
		unsigned := counterValue(t, n.Obs, "vigil_gossip_votes_dropped_total", map[string]string{"reason": "unsigned"})
		bad := counterValue(t, n.Obs, "vigil_gossip_votes_dropped_total", map[string]string{"reason": "bad_signature"})
		if unsigned < float64(samples) || bad < float64(samples) {
			t.Fatalf("%s dropped %v unsigned and %v badly signed batches in %d rounds", n.ID, unsigned, bad, samples)
		}
	}
	upEverywhere("real votes still counted after forging")
}

// TestGossipFarFutureSequenceCannotPoison: without TLS (votes are not
// authenticated), votes with a sequence near 2^64 in two observers' names
// are dropped, and the real votes of those observers that follow still
// count.
func TestGossipFarFutureSequenceCannotPoison(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, clustertest.Options{})
	c.WaitForLeader(waitLong)
	waitGroupsSynced(t, c)
	obs1 := c.Nodes[0].Obs
	if got := gaugeValue(t, obs1, "vigil_gossip_votes_authenticated", nil); got != 0 {
		t.Fatalf("vigil_gossip_votes_authenticated = %v without TLS", got)
	}
	seqOf := func(observer string) uint64 {
		for _, v := range obs1.Monitor().Votes("pg-main", "db1") {
			if v.Observer == observer {
				return v.Sequence
			}
		}
		return 0
	}
	clustertest.Eventually(t, waitLong, "obs1 to hold obs2's and obs3's votes", func() bool { return seqOf("obs2") > 0 && seqOf("obs3") > 0 })

	f := newForger(t, c)
	addr := c.Nodes[0].Cfg.Gossip.Advertise
	clustertest.WaitFor(t, waitLong, "obs1 to drop the far-future votes", func() (bool, string) {
		now := uint64(time.Now().UnixNano())
		for _, id := range []string{"obs2", "obs3"} {
			f.send(addr, forgedPacket(t, id, now, math.MaxUint64, vigilv1.Verdict_VERDICT_UP, nil))
			f.send(addr, forgedPacket(t, id, math.MaxUint64, now+uint64(time.Second), vigilv1.Verdict_VERDICT_UP, nil))
			f.send(addr, forgedPacket(t, id, now, now+uint64(health.MaxSequenceLead+time.Minute), vigilv1.Verdict_VERDICT_UP, nil))
		}
		got := counterValue(t, obs1, "vigil_gossip_votes_dropped_total", map[string]string{"reason": "sequence_ahead"})
		return got >= 6, fmt.Sprintf("sequence_ahead = %v", got)
	})
	noForgedVotes(t, c, 0, "after far-future votes")
	after := map[string]uint64{"obs2": seqOf("obs2"), "obs3": seqOf("obs3")}
	clustertest.WaitFor(t, waitLong, "later real votes of obs2 and obs3 to be stored", func() (bool, string) {
		for id, s := range after {
			if got := seqOf(id); got <= s || got > uint64(time.Now().Add(time.Minute).UnixNano()) {
				return false, fmt.Sprintf("%s: sequence %d (was %d)", id, got, s)
			}
		}
		return true, ""
	})
	noForgedVotes(t, c, 0, "after the real votes")
}

// lockedBuffer is a log sink safe for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) count(substr string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, l := range strings.Split(b.buf.String(), "\n") {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// TestGossipFloodKeepsObserverHealthyAndLogsBounded: 20,000 garbage UDP
// packets at an observer's gossip port are counted, not logged one line
// each; the observer stays a healthy member of the cluster.
func TestGossipFloodKeepsObserverHealthyAndLogsBounded(t *testing.T) {
	t.Parallel()
	var logs lockedBuffer
	c := clustertest.Start(t, clustertest.Options{Customize: func(i int, o *cluster.Options) {
		if i == 0 {
			o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
		}
	}})
	c.WaitForLeader(waitLong)
	clustertest.Eventually(t, waitLong, "gossip to see all three", func() bool { return c.Nodes[0].Obs.Gossip().AliveMembers() == 3 })
	obs1 := c.Nodes[0].Obs
	gossipLines := func() int { return logs.count("component=gossip") }
	before := gossipLines()

	conn, err := net.Dial("udp", c.Nodes[0].Cfg.Gossip.Advertise)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	packetErrors := func() float64 {
		return counterValue(t, obs1, "vigil_gossip_packet_errors_total", map[string]string{"kind": "label"})
	}
	const packets, chunk = 20000, 1000
	buf := make([]byte, 512)
	start := time.Now()
	for sent := 0; sent < packets; sent += chunk {
		was := packetErrors()
		for i := sent; i < sent+chunk; i++ {
			n := 16 + i%(len(buf)-16)
			if _, err := rand.Read(buf[:n]); err != nil {
				t.Fatal(err)
			}
			buf[0] = 0x01 // never memberlist's label magic: every packet fails the label check
			if _, err := conn.Write(buf[:n]); err != nil {
				t.Fatal(err)
			}
		}
		// The kernel drops what overflows the socket buffer: let most of
		// each chunk arrive before the next.
		clustertest.WaitFor(t, waitLong, "a flood chunk's packet errors counted", func() (bool, string) {
			got := packetErrors() - was
			return got >= chunk/2, fmt.Sprintf("%v of %d counted", got, chunk)
		})
	}
	counted := packetErrors()
	// The summary of what was suppressed comes within two summary periods.
	clustertest.WaitFor(t, waitLong, "a suppressed-lines summary", func() (bool, string) {
		return logs.count("suppressed similar log lines") > 0, fmt.Sprintf("%d gossip lines", gossipLines()-before)
	})
	lines := gossipLines() - before
	elapsed := time.Since(start)
	// A burst of 5 and 1 a second for the one kind of the flood, a summary
	// every 10 s, and a little room for the usual gossip lines.
	if bound := 5 + int(elapsed.Seconds()) + int(elapsed/(10*time.Second)) + 10; lines > bound {
		t.Fatalf("%d gossip log lines for %v packet errors in %v (bound %d):\n%s", lines, counted, elapsed, bound, lastLines(logs.String(), 40))
	}
	t.Logf("%v packet errors counted, %d gossip log lines in %v", counted, lines, elapsed.Round(time.Millisecond))

	// Healthy: still a gossip member, and the cluster commits.
	clustertest.Eventually(t, waitLong, "obs1 to see all three", func() bool { return obs1.Gossip().AliveMembers() == 3 })
	// The flood overflowed obs1's socket buffer, where the others' probe
	// acks wait too: they may have suspected it for a while.
	clustertest.WaitFor(t, waitLong, "the others to see obs1 alive", func() (bool, string) {
		for _, n := range c.Nodes[1:] {
			if st := n.Obs.Gossip().MemberStates()["obs1"]; st != "alive" {
				return false, fmt.Sprintf("%s sees obs1 %s", n.ID, st)
			}
		}
		return true, ""
	})
	leader := c.WaitForLeader(waitLong)
	if _, err := c.Nodes[leader].Obs.Propose(context.Background(), pauseCmd("pg-main", "after a flood")); err != nil {
		t.Fatal(err)
	}
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
