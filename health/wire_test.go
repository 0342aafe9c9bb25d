package health

import (
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
			ObservedAt: wireNow.Add(-1500 * time.Millisecond), Sequence: uint64(1000 + i)})
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
		b := &vigilv1.VoteBatch{Observer: "obs1", Votes: []*vigilv1.WireVote{proto.Clone(good).(*vigilv1.WireVote)}}
		mut(b)
		out, _ := proto.Marshal(b)
		return out
	}
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
		"one bad of many": {mk(func(b *vigilv1.VoteBatch) { b.Votes = append(b.Votes, &vigilv1.WireVote{Group: "g"}) }), ErrMalformed},
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

func FuzzDecodeVotes(f *testing.F) {
	packets, _ := EncodeVotes("obs1", []Vote{{Observer: "obs1", Group: "g", Member: "m", Verdict: VerdictDown, Sequence: 5, ObservedAt: wireNow}}, wireNow)
	for _, p := range packets {
		f.Add(p)
	}
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		obs, votes, err := DecodeVotes(b, wireNow)
		if err != nil {
			return
		}
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
