package health

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

var wireNow = time.Date(2026, 11, 22, 2, 0, 0, 0, time.UTC)

func TestEncodeDecodeRoundTripAndPacketSize(t *testing.T) {
	var votes []Vote
	for i := 0; i < 200; i++ {
		votes = append(votes, Vote{Observer: "obs1", Group: fmt.Sprintf("group-%03d", i), Member: "db1",
			Verdict: VerdictDown, Role: RoleStandby, ReplayLSN: 1 << 40, LagBytes: 12345,
			ObservedAt: wireNow.Add(-1500 * time.Millisecond), Sequence: uint64(1000 + i), DownFor: time.Duration(i) * time.Millisecond})
	}
	packets, err := EncodeVotes("obs1", votes, wireNow)
	if err != nil {
		t.Fatal(err)
	}
	if len(packets) < 2 {
		t.Fatalf("200 votes fit in %d packet(s); expected several", len(packets))
	}
	var got []Vote
	later := wireNow.Add(time.Hour) // receiver's clock is far off: ages still hold
	for _, p := range packets {
		if len(p) > MaxPacketBytes {
			t.Fatalf("packet of %d bytes exceeds %d", len(p), MaxPacketBytes)
		}
		obs, vs, err := DecodeVotes(p, later)
		if err != nil || obs != "obs1" {
			t.Fatalf("decode: %q %v", obs, err)
		}
		got = append(got, vs...)
	}
	if len(got) != len(votes) {
		t.Fatalf("decoded %d votes, want %d", len(got), len(votes))
	}
	for i, v := range got {
		want := votes[i]
		want.ObservedAt = later.Add(-1500 * time.Millisecond)
		if v != want {
			t.Fatalf("vote %d: got %+v want %+v", i, v, want)
		}
	}
}

func TestDecodeRejectsBadPackets(t *testing.T) {
	good := &vigilv1.WireVote{Group: "g", Member: "m", Verdict: vigilv1.Verdict_VERDICT_UP, Sequence: 1}
	mk := func(mut func(b *vigilv1.VoteBatch)) []byte {
		b := &vigilv1.VoteBatch{Observer: "obs1", Sequence: 7, Votes: []*vigilv1.WireVote{proto.Clone(good).(*vigilv1.WireVote)}}
		mut(b)
		return wrapBatch(b, nil)
	}
	wrap := func(batch []byte, sig []byte) []byte {
		out, _ := proto.Marshal(&vigilv1.VotePacket{Batch: batch, Signature: sig})
		return out
	}
	if _, _, err := DecodeVotes(mk(func(*vigilv1.VoteBatch) {}), wireNow); err != nil {
		t.Fatalf("the unmutated packet does not decode: %v", err)
	}
	oldFormat, _ := proto.Marshal(&vigilv1.VoteBatch{Observer: "obs1", Sequence: 7, Votes: []*vigilv1.WireVote{good}})
	cases := map[string]struct {
		pkt  []byte
		want error
	}{
		"garbage":         {[]byte{0xff, 0xff, 0x01}, ErrMalformed},
		"oversized":       {make([]byte, maxAcceptedBytes+1), ErrOversized},
		"no observer":     {mk(func(b *vigilv1.VoteBatch) { b.Observer = "" }), ErrMalformed},
		"bad observer":    {mk(func(b *vigilv1.VoteBatch) { b.Observer = "OBS 1\x00" }), ErrMalformed},
		"long member":     {mk(func(b *vigilv1.VoteBatch) { b.Votes[0].Member = string(make([]byte, 64)) }), ErrMalformed},
		"unknown verdict": {mk(func(b *vigilv1.VoteBatch) { b.Votes[0].Verdict = 7 }), ErrMalformed},
		"unknown role":    {mk(func(b *vigilv1.VoteBatch) { b.Votes[0].Role = 9 }), ErrMalformed},
		"zero sequence":   {mk(func(b *vigilv1.VoteBatch) { b.Votes[0].Sequence = 0 }), ErrMalformed},
		"negative lag":    {mk(func(b *vigilv1.VoteBatch) { b.Votes[0].LagBytes = -1 }), ErrMalformed},
		"absurd age":      {mk(func(b *vigilv1.VoteBatch) { b.Votes[0].AgeMs = 1 << 31 }), ErrMalformed},
		"absurd down_for": {mk(func(b *vigilv1.VoteBatch) {
			b.Votes[0].Verdict = vigilv1.Verdict_VERDICT_DOWN
			b.Votes[0].DownForMs = 1 << 31
		}), ErrMalformed},
		"down_for on up":  {mk(func(b *vigilv1.VoteBatch) { b.Votes[0].DownForMs = 1000 }), ErrMalformed},
		"one bad of many": {mk(func(b *vigilv1.VoteBatch) { b.Votes = append(b.Votes, &vigilv1.WireVote{Group: "g"}) }), ErrMalformed},
		"zero batch seq":  {mk(func(b *vigilv1.VoteBatch) { b.Sequence = 0 }), ErrMalformed},
		"no batch":        {wrap(nil, []byte{1, 2, 3}), ErrMalformed},
		"garbage batch":   {wrap([]byte{0xff, 0xff, 0x01}, nil), ErrMalformed},
		"huge signature":  {wrap(oldFormat, make([]byte, maxSignatureBytes+1)), ErrMalformed},
		"old format":      {oldFormat, ErrMalformed},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, votes, err := DecodeVotes(c.pkt, wireNow)
			if !errors.Is(err, c.want) || votes != nil {
				t.Fatalf("err = %v (votes %v), want %v", err, votes, c.want)
			}
		})
	}
}

// wrapBatch marshals b into a VotePacket, signed with key unless nil.
func wrapBatch(b *vigilv1.VoteBatch, key crypto.Signer) []byte {
	batch, err := proto.Marshal(b)
	if err != nil {
		panic(err)
	}
	pkt := &vigilv1.VotePacket{Batch: batch}
	if key != nil {
		if pkt.Signature, err = SignBatchWith(key, batch); err != nil {
			panic(err)
		}
	}
	out, err := proto.Marshal(pkt)
	if err != nil {
		panic(err)
	}
	return out
}

func FuzzDecodeVotes(f *testing.F) {
	vote := []Vote{{Observer: "obs1", Group: "g", Member: "m", Verdict: VerdictDown, Sequence: 5, ObservedAt: wireNow}}
	packets, _ := EncodeVotes("obs1", vote, wireNow)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	seq := uint64(9)
	signed, _ := EncodeVotePackets("obs1", vote, wireNow, func() uint64 { seq++; return seq }, KeySigner{Key: key})
	for _, p := range append(packets, signed...) {
		f.Add(p)
	}
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x80})
	verifier := KeyVerifier{"obs1": key.Public()}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodePacket(b, wireNow)
		if err != nil {
			return
		}
		obs, votes := p.Observer, p.Votes
		if p.Sequence == 0 || len(p.Batch) == 0 || len(p.Signature) > maxSignatureBytes {
			t.Fatalf("accepted malformed packet %+v", p)
		}
		// Verifying whatever decodes never panics.
		_ = verifier.VerifyBatch(obs, p.Batch, p.Signature)
		// Whatever is accepted is well-formed and storable.
		book := NewVoteBook()
		for _, v := range votes {
			if v.Observer != obs || v.Sequence == 0 || v.ObservedAt.After(wireNow) {
				t.Fatalf("accepted malformed vote %+v", v)
			}
			book.Put(v)
		}
	})
}
