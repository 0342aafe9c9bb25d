package health

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

func ecKey(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestVoteSignaturesOfEveryKeyType(t *testing.T) {
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]crypto.Signer{
		"ecdsa-p256": ecKey(t, elliptic.P256()), "ecdsa-p384": ecKey(t, elliptic.P384()), "ecdsa-p521": ecKey(t, elliptic.P521()),
		"ed25519": ed, "rsa-2048": rsaKey,
	}
	other := ecKey(t, elliptic.P256())
	batch := []byte("a marshalled vote batch")
	for name, key := range keys {
		t.Run(name, func(t *testing.T) {
			max := MaxSignatureLen(key.Public())
			for i := 0; i < 50; i++ {
				sig, err := SignBatchWith(key, batch)
				if err != nil {
					t.Fatal(err)
				}
				if len(sig) > max {
					t.Fatalf("signature of %d bytes, MaxSignatureLen says %d", len(sig), max)
				}
				if err := VerifyBatchWith(key.Public(), batch, sig); err != nil {
					t.Fatalf("own signature: %v", err)
				}
				tampered := append([]byte(nil), batch...)
				tampered[0] ^= 1
				if err := VerifyBatchWith(key.Public(), tampered, sig); !errors.Is(err, ErrBadSignature) {
					t.Fatalf("tampered batch: %v", err)
				}
				if err := VerifyBatchWith(other.Public(), batch, sig); !errors.Is(err, ErrBadSignature) {
					t.Fatalf("another key: %v", err)
				}
			}
		})
	}
}

func TestVoteSignedPacketsFitOnePacket(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 4096)
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]crypto.Signer{"ecdsa-p256": ecKey(t, elliptic.P256()), "rsa-4096": rsaKey} {
		t.Run(name, func(t *testing.T) {
			var votes []Vote
			for i := 0; i < 200; i++ {
				votes = append(votes, Vote{Observer: "obs1", Group: fmt.Sprintf("group-%03d", i), Member: "db1",
					Verdict: VerdictDown, Role: RoleStandby, ReplayLSN: 1 << 40, LagBytes: 12345,
					ObservedAt: wireNow, Sequence: uint64(1000 + i)})
			}
			seq := uint64(math.MaxUint64 - 1000) // the longest varint
			packets, err := EncodeVotePackets("obs1", votes, wireNow, func() uint64 { seq++; return seq }, KeySigner{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			n, last := 0, uint64(0)
			for _, b := range packets {
				if len(b) > MaxPacketBytes {
					t.Fatalf("packet of %d bytes exceeds %d", len(b), MaxPacketBytes)
				}
				p, err := DecodePacket(b, wireNow)
				if err != nil {
					t.Fatal(err)
				}
				if err := VerifyBatchWith(key.Public(), p.Batch, p.Signature); err != nil {
					t.Fatal(err)
				}
				if p.Sequence <= last {
					t.Fatalf("batch sequences not increasing: %d after %d", p.Sequence, last)
				}
				last = p.Sequence
				n += len(p.Votes)
			}
			if n != len(votes) {
				t.Fatalf("decoded %d votes, want %d", n, len(votes))
			}
			t.Logf("%d votes in %d signed packets", n, len(packets))
		})
	}
}

// signedMonitor is observer a's monitor of a, b and c (quorum 2) that
// accepts only batches signed with b's and c's keys.
type signedMonitor struct {
	*routingMonitor
	keys map[string]*ecdsa.PrivateKey
}

func newSignedMonitor(t *testing.T, verifier func(KeyVerifier) BatchVerifier) *signedMonitor {
	t.Helper()
	keys := map[string]*ecdsa.PrivateKey{"a": ecKey(t, elliptic.P256()), "b": ecKey(t, elliptic.P256()), "c": ecKey(t, elliptic.P256())}
	kv := KeyVerifier{"b": keys["b"].Public(), "c": keys["c"].Public()}
	var v BatchVerifier = kv
	if verifier != nil {
		v = verifier(kv)
	}
	clock := &fakeClock{t: time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)}
	reg := prometheus.NewRegistry()
	m, err := NewMonitor(MonitorConfig{Self: "a", Observers: []string{"a", "b", "c"}, Quorum: 2,
		Send: func([]byte) {}, Registerer: reg, Now: clock.Now, Signer: KeySigner{Key: keys["a"]}, Verifier: v})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SetGroups(routingPlan("db1")); err != nil {
		t.Fatal(err)
	}
	return &signedMonitor{routingMonitor: &routingMonitor{Monitor: m, t: t, clock: clock, reg: reg}, keys: keys}
}

// vote is a wire vote about member of pg-main with sequence seq.
func wireVote(member string, v vigilv1.Verdict, seq uint64) *vigilv1.WireVote {
	return &vigilv1.WireVote{Group: "pg-main", Member: member, Verdict: v, Role: vigilv1.Role_ROLE_PRIMARY, Sequence: seq}
}

// now is the fake clock's sequence.
func (r *routingMonitor) nowSeq() uint64 { return clockSequence(r.clock.Now()) }

// dropped is vigil_gossip_votes_dropped_total{reason}.
func (r *routingMonitor) dropped(reason string) float64 {
	return metricValue(r.t, r.reg, "vigil_gossip_votes_dropped_total", map[string]string{"reason": reason})
}

// assertNoDownVotes evaluates and checks that nothing about db1 is down.
func (r *routingMonitor) assertNoDownVotes(when string) {
	r.t.Helper()
	h := r.health("db1")
	if h.GetOdown() || h.GetDownVotes() != 0 {
		r.t.Fatalf("%s: %s", when, h.GetSummary())
	}
	for _, v := range r.Votes("pg-main", "db1") {
		if v.Verdict != VerdictUp {
			r.t.Fatalf("%s: vote book holds %+v", when, v)
		}
	}
}

func TestVoteForgedBatchesNeverReachTheVoteBook(t *testing.T) {
	r := newSignedMonitor(t, nil)
	if got := metricValue(t, r.reg, "vigil_gossip_votes_authenticated", nil); got != 1 {
		t.Fatalf("vigil_gossip_votes_authenticated = %v, want 1", got)
	}
	mallory := ecKey(t, elliptic.P256())
	real := func(obs string) {
		t.Helper()
		r.Receive(wrapBatch(&vigilv1.VoteBatch{Observer: obs, Sequence: r.nowSeq(), Votes: []*vigilv1.WireVote{wireVote("db1", vigilv1.Verdict_VERDICT_UP, r.nowSeq())}}, r.keys[obs]))
	}
	forged := func(obs string, key crypto.Signer) []byte {
		// Later sequences than the real votes, so only the signature
		// stands between them and the vote book.
		seq := r.nowSeq() + uint64(time.Second)
		return wrapBatch(&vigilv1.VoteBatch{Observer: obs, Sequence: seq, Votes: []*vigilv1.WireVote{wireVote("db1", vigilv1.Verdict_VERDICT_DOWN, seq)}}, key)
	}
	r.saw("a", "db1", VerdictUp, RolePrimary)
	real("b")
	real("c")
	if h := r.health("db1"); h.GetUpVotes() != 3 {
		t.Fatalf("signed real votes not counted: %s", h.GetSummary())
	}
	// Three seconds of forging (down_after is 1 s) while the observers'
	// real votes keep coming every 500 ms.
	for step := 0; step < 12; step++ {
		for _, obs := range []string{"b", "c"} {
			other := map[string]string{"b": "c", "c": "b"}[obs]
			r.Receive(forged(obs, nil))                       // no signature
			r.Receive(forged(obs, mallory))                   // a key of nobody's
			r.Receive(forged(obs, r.keys[other]))             // another observer's real key
			r.Receive(forged(obs, r.keys["a"]))               // the receiver's own key
			r.Receive(forged("a", r.keys[obs]))               // in the receiver's name
			r.Receive(forged("mallory", mallory))             // an observer nobody configured
			r.Receive(append(forged(obs, r.keys[obs]), 0xff)) // a real signature, trailing garbage
		}
		r.assertNoDownVotes(fmt.Sprintf("step %d", step))
		r.clock.Advance(250 * time.Millisecond)
		if step%2 == 1 {
			r.saw("a", "db1", VerdictUp, RolePrimary)
			real("b")
			real("c")
		}
	}
	r.assertNoDownVotes("after forging")
	for reason, want := range map[string]float64{"unsigned": 24, "bad_signature": 72, "self": 24, "unknown_observer": 24, "malformed": 24} {
		if got := r.dropped(reason); got != want {
			t.Errorf("dropped{reason=%q} = %v, want %v", reason, got, want)
		}
	}
	if h := r.health("db1"); h.GetUpVotes() != 3 {
		t.Fatalf("real votes no longer counted: %s", h.GetSummary())
	}

	// A real signed batch replayed (say by a holder of the gossip key)
	// after the observer left: its votes do not come back.
	r.clock.Advance(time.Millisecond)
	seq := r.nowSeq()
	replay := wrapBatch(&vigilv1.VoteBatch{Observer: "b", Sequence: seq, Votes: []*vigilv1.WireVote{wireVote("db1", vigilv1.Verdict_VERDICT_DOWN, seq)}}, r.keys["b"])
	r.Receive(replay)
	if h := r.health("db1"); h.GetDownVotes() != 1 {
		t.Fatalf("real signed down vote of b not counted: %s", h.GetSummary())
	}
	r.Forget("b")
	r.Receive(replay)
	if got := r.Votes("pg-main", "db1"); len(got) != 2 || r.dropped("replayed") != 1 {
		t.Fatalf("replayed batch after Forget: votes %+v, replayed %v", got, r.dropped("replayed"))
	}
}

func TestVoteUnknownSignerIsUnverified(t *testing.T) {
	// c's certificate is not known yet: its votes wait, counted.
	r := newSignedMonitor(t, func(kv KeyVerifier) BatchVerifier { delete(kv, "c"); return kv })
	seq := r.nowSeq()
	r.Receive(wrapBatch(&vigilv1.VoteBatch{Observer: "c", Sequence: seq, Votes: []*vigilv1.WireVote{wireVote("db1", vigilv1.Verdict_VERDICT_DOWN, seq)}}, r.keys["c"]))
	if got := r.dropped("unverified"); got != 1 || len(r.Votes("pg-main", "db1")) != 0 {
		t.Fatalf("unverified = %v, votes %+v", got, r.Votes("pg-main", "db1"))
	}
}

func TestVoteUnauthenticatedModeSaysSo(t *testing.T) {
	r := newRoutingMonitor(t)
	if got := metricValue(t, r.reg, "vigil_gossip_votes_authenticated", nil); got != 0 {
		t.Fatalf("vigil_gossip_votes_authenticated = %v, want 0", got)
	}
}

func TestVoteFarFutureSequenceCannotPoison(t *testing.T) {
	r := newRoutingMonitor(t) // no signatures: anyone with the gossip key may send
	send := func(obs string, batchSeq, voteSeq uint64, v vigilv1.Verdict) {
		t.Helper()
		r.Receive(wrapBatch(&vigilv1.VoteBatch{Observer: obs, Sequence: batchSeq, Votes: []*vigilv1.WireVote{wireVote("db1", v, voteSeq)}}, nil))
	}
	lead := uint64(MaxSequenceLead)
	for _, seq := range []struct{ batch, vote uint64 }{
		{r.nowSeq(), math.MaxUint64},
		{math.MaxUint64, r.nowSeq()},
		{r.nowSeq(), r.nowSeq() + lead + uint64(time.Second)},
	} {
		for _, obs := range []string{"b", "c"} {
			send(obs, seq.batch, seq.vote, vigilv1.Verdict_VERDICT_UP)
		}
	}
	if got := r.dropped("sequence_ahead"); got != 6 || len(r.Votes("pg-main", "db1")) != 0 {
		t.Fatalf("sequence_ahead = %v, votes %+v", got, r.Votes("pg-main", "db1"))
	}
	// The real votes that follow count.
	r.saw("a", "db1", VerdictDown, RoleUnknown)
	for _, obs := range []string{"b", "c"} {
		send(obs, r.nowSeq(), r.nowSeq(), vigilv1.Verdict_VERDICT_DOWN)
	}
	if h := r.health("db1"); h.GetDownVotes() != 3 {
		t.Fatalf("real votes after far-future ones: %s", h.GetSummary())
	}
	r.clock.Advance(1500 * time.Millisecond)
	r.saw("a", "db1", VerdictDown, RoleUnknown)
	for _, obs := range []string{"b", "c"} {
		send(obs, r.nowSeq(), r.nowSeq(), vigilv1.Verdict_VERDICT_DOWN)
	}
	if h := r.health("db1"); !h.GetOdown() {
		t.Fatalf("real down votes do not make ODOWN: %s", h.GetSummary())
	}
}

func TestVoteSequenceJumpOverObserversOwnClock(t *testing.T) {
	r := newRoutingMonitor(t) // no signatures
	send := func(obs string, seq uint64, v vigilv1.Verdict) {
		t.Helper()
		r.Receive(wrapBatch(&vigilv1.VoteBatch{Observer: obs, Sequence: seq, Votes: []*vigilv1.WireVote{wireVote("db1", v, seq)}}, nil))
	}
	// b's clock runs 8 minutes behind ours: a sequence 9 minutes ahead of
	// ours is within the clock bound but 17 minutes ahead of b's, a jump.
	behind := r.nowSeq() - uint64(8*time.Minute)
	send("b", behind, vigilv1.Verdict_VERDICT_DOWN)
	if got := r.dropped("sequence_ahead"); got != 0 {
		t.Fatalf("b's clock behind ours: its vote dropped (sequence_ahead %v)", got)
	}
	jump := r.nowSeq() + uint64(9*time.Minute)
	send("b", jump, vigilv1.Verdict_VERDICT_UP)
	if got := r.dropped("sequence_ahead"); got != 1 {
		t.Fatalf("jump over b's own sequences not dropped (sequence_ahead %v)", got)
	}
	// b's clock advances with ours: its next votes are not a jump.
	r.clock.Advance(5 * time.Minute)
	next := behind + uint64(5*time.Minute)
	send("b", next, vigilv1.Verdict_VERDICT_UP)
	if got := r.dropped("sequence_ahead"); got != 1 {
		t.Fatalf("b's clock-paced sequence dropped (sequence_ahead %v)", got)
	}
	// Once nothing was accepted from b for longer than the lead, a clock
	// set right is believed again (within the bound of our own clock).
	r.clock.Advance(MaxSequenceLead + time.Second)
	fixed := r.nowSeq()
	send("b", fixed, vigilv1.Verdict_VERDICT_UP)
	if got := r.dropped("sequence_ahead"); got != 1 {
		t.Fatalf("b's corrected clock dropped (sequence_ahead %v)", got)
	}
	if v := r.Votes("pg-main", "db1"); len(v) != 1 || v[0].Observer != "b" || v[0].Sequence != fixed {
		t.Fatalf("b's vote after its clock was set right: %+v", v)
	}
}

func TestVoteSignedFarFutureSequenceDropped(t *testing.T) {
	// A signature does not make an absurd sequence plausible (a bug).
	r := newSignedMonitor(t, nil)
	seq := uint64(math.MaxUint64)
	r.Receive(wrapBatch(&vigilv1.VoteBatch{Observer: "b", Sequence: r.nowSeq(), Votes: []*vigilv1.WireVote{wireVote("db1", vigilv1.Verdict_VERDICT_UP, seq)}}, r.keys["b"]))
	if got := r.dropped("sequence_ahead"); got != 1 || len(r.Votes("pg-main", "db1")) != 0 {
		t.Fatalf("sequence_ahead = %v, votes %+v", got, r.Votes("pg-main", "db1"))
	}
	now := r.nowSeq() + 1
	r.Receive(wrapBatch(&vigilv1.VoteBatch{Observer: "b", Sequence: now, Votes: []*vigilv1.WireVote{wireVote("db1", vigilv1.Verdict_VERDICT_UP, now)}}, r.keys["b"]))
	if got := r.Votes("pg-main", "db1"); len(got) != 1 || got[0].Sequence != now {
		t.Fatalf("real vote after a far-future one: %+v", got)
	}
}

func TestVoteOwnBatchesAreSigned(t *testing.T) {
	var sent [][]byte
	r := newSignedMonitor(t, nil)
	r.cfg.Send = func(p []byte) { sent = append(sent, p) }
	r.saw("a", "db1", VerdictUp, RolePrimary)
	r.flush()
	if len(sent) != 1 {
		t.Fatalf("%d packets sent", len(sent))
	}
	p, err := DecodePacket(sent[0], r.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyBatchWith(r.keys["a"].Public(), p.Batch, p.Signature); err != nil || p.Observer != "a" || len(p.Votes) != 1 {
		t.Fatalf("own packet: %+v, verify: %v", p, err)
	}
	if p.Sequence <= p.Votes[0].Sequence {
		t.Fatalf("batch sequence %d not after its vote's %d", p.Sequence, p.Votes[0].Sequence)
	}
}

// metricValue is the value of the counter or gauge name{labels} in reg,
// 0 when absent.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			if mf.GetType() == dto.MetricType_GAUGE {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}
