package health

import (
	"errors"
	"fmt"
	"math"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// MaxPacketBytes is the largest vote packet we send, signature included:
// with memberlist's label, encryption and framing it still fits one UDP
// packet (~1400 B).
const MaxPacketBytes = 1200

// maxAcceptedBytes bounds what we even try to decode.
const maxAcceptedBytes = 64 << 10

// maxNameLen bounds group, member and observer names on the wire (the
// config allows 63).
const maxNameLen = 63

// maxAge is the largest age a vote may claim; older ones are stale anyway.
const maxAge = 10 * time.Minute

// Decode errors, for the dropped-packet metric's reason label.
var (
	ErrOversized = errors.New("packet too large")
	ErrMalformed = errors.New("malformed packet")
)

// Packet is one decoded vote packet.
type Packet struct {
	Observer string
	// Sequence is the batch's own sequence (see VoteBatch.sequence).
	Sequence uint64
	Votes    []Vote
	// Batch is the marshalled VoteBatch exactly as received: what
	// Signature covers.
	Batch     []byte
	Signature []byte
}

// EncodeVotes packs votes of one observer into unsigned packets, each at
// most MaxPacketBytes, with batch sequences taken from now. now turns
// ObservedAt into the age sent.
func EncodeVotes(observer string, votes []Vote, now time.Time) ([][]byte, error) {
	seq := clockSequence(now)
	return EncodeVotePackets(observer, votes, now, func() uint64 { seq++; return seq }, nil)
}

// EncodeVotePackets packs votes of one observer into as few packets as
// possible, each at most MaxPacketBytes with room for the signature; each
// batch gets the next of nextSeq's sequences and, with a signer, is
// signed. now turns ObservedAt into the age sent.
func EncodeVotePackets(observer string, votes []Vote, now time.Time, nextSeq func() uint64, signer BatchSigner) ([][]byte, error) {
	maxSig := 0
	if signer != nil {
		maxSig = signer.MaxSignatureLen()
		if maxSig <= 0 || maxSig > maxSignatureBytes {
			return nil, fmt.Errorf("encode votes: signatures of up to %d bytes are not supported (max %d)", maxSig, maxSignatureBytes)
		}
	}
	// What the VotePacket adds around the batch: its field tag and length
	// (the batch is below 16 KiB: 2 bytes), and the signature's.
	envelope := 1 + 2
	if maxSig > 0 {
		envelope += 1 + protowire.SizeVarint(uint64(maxSig)) + maxSig
	}
	limit := MaxPacketBytes - envelope
	var packets [][]byte
	// The largest sequence sizes the base: a batch's size never depends
	// on which sequence it gets.
	base := proto.Size(&vigilv1.VoteBatch{Observer: observer, Sequence: math.MaxUint64})
	batch := &vigilv1.VoteBatch{Observer: observer}
	size := base
	flush := func() error {
		if len(batch.Votes) == 0 {
			return nil
		}
		batch.Sequence = nextSeq()
		b, err := proto.Marshal(batch)
		if err != nil {
			return fmt.Errorf("encode votes: %w", err)
		}
		pkt := &vigilv1.VotePacket{Batch: b}
		if signer != nil {
			if pkt.Signature, err = signer.SignBatch(b); err != nil {
				return fmt.Errorf("encode votes: %w", err)
			}
			if len(pkt.Signature) > maxSig {
				// The key changed between sizing and signing (a reload).
				return fmt.Errorf("encode votes: signature of %d bytes, more than the %d announced", len(pkt.Signature), maxSig)
			}
		}
		out, err := proto.Marshal(pkt)
		if err != nil {
			return fmt.Errorf("encode votes: %w", err)
		}
		packets = append(packets, out)
		batch = &vigilv1.VoteBatch{Observer: observer}
		size = base
		return nil
	}
	for _, v := range votes {
		w := toWire(v, now)
		// Field tag + length prefix of the embedded message: at most 3 B here.
		n := proto.Size(w) + 3
		if base+n > limit {
			return nil, fmt.Errorf("encode votes: vote for %s/%s alone exceeds %d bytes", v.Group, v.Member, limit)
		}
		if size+n > limit {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		batch.Votes = append(batch.Votes, w)
		size += n
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return packets, nil
}

// clockSequence is the sequence the wall clock gives at t.
func clockSequence(t time.Time) uint64 {
	ns := t.UnixNano()
	if ns < 0 {
		return 0
	}
	return uint64(ns)
}

func toWire(v Vote, now time.Time) *vigilv1.WireVote {
	age := now.Sub(v.ObservedAt)
	if age < 0 {
		age = 0
	}
	if age > maxAge {
		age = maxAge
	}
	return &vigilv1.WireVote{
		Group: v.Group, Member: v.Member,
		Verdict: verdictToWire(v.Verdict), Role: roleToWire(v.Role),
		WalLsn: v.ReplayLSN, LagBytes: v.LagBytes,
		AgeMs: uint32(age / time.Millisecond), Sequence: v.Sequence, ReadOnly: v.ReadOnly,
		DownForMs: uint32(min(max(v.DownFor, 0), maxAge) / time.Millisecond),
	}
}

// DecodeVotes decodes one packet received at now and returns the observer
// it names and its votes, without looking at its signature (see
// DecodePacket).
func DecodeVotes(b []byte, now time.Time) (string, []Vote, error) {
	p, err := DecodePacket(b, now)
	if err != nil {
		return "", nil, err
	}
	return p.Observer, p.Votes, nil
}

// DecodePacket decodes one packet received at now. The sender's age of
// each vote is turned into an ObservedAt on our clock, so observers'
// clocks need not agree. Any malformed field rejects the whole packet.
// The signature is returned, not checked: that is the verifier's job.
func DecodePacket(b []byte, now time.Time) (Packet, error) {
	if len(b) > maxAcceptedBytes {
		return Packet{}, fmt.Errorf("%w: %d bytes", ErrOversized, len(b))
	}
	var pkt vigilv1.VotePacket
	if err := proto.Unmarshal(b, &pkt); err != nil {
		return Packet{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(pkt.GetBatch()) == 0 {
		return Packet{}, fmt.Errorf("%w: no batch", ErrMalformed)
	}
	if len(pkt.GetSignature()) > maxSignatureBytes {
		return Packet{}, fmt.Errorf("%w: signature of %d bytes", ErrMalformed, len(pkt.GetSignature()))
	}
	var batch vigilv1.VoteBatch
	if err := proto.Unmarshal(pkt.GetBatch(), &batch); err != nil {
		return Packet{}, fmt.Errorf("%w: batch: %v", ErrMalformed, err)
	}
	if err := checkName("observer", batch.GetObserver()); err != nil {
		return Packet{}, err
	}
	if batch.GetSequence() == 0 {
		return Packet{}, fmt.Errorf("%w: zero batch sequence", ErrMalformed)
	}
	votes := make([]Vote, 0, len(batch.GetVotes()))
	for i, w := range batch.GetVotes() {
		if err := checkName(fmt.Sprintf("votes[%d].group", i), w.GetGroup()); err != nil {
			return Packet{}, err
		}
		if err := checkName(fmt.Sprintf("votes[%d].member", i), w.GetMember()); err != nil {
			return Packet{}, err
		}
		verdict, ok := verdictFromWire(w.GetVerdict())
		if !ok {
			return Packet{}, fmt.Errorf("%w: votes[%d].verdict: %d", ErrMalformed, i, w.GetVerdict())
		}
		role, ok := roleFromWire(w.GetRole())
		if !ok {
			return Packet{}, fmt.Errorf("%w: votes[%d].role: %d", ErrMalformed, i, w.GetRole())
		}
		age := time.Duration(w.GetAgeMs()) * time.Millisecond
		if age > maxAge {
			return Packet{}, fmt.Errorf("%w: votes[%d].age_ms: %d", ErrMalformed, i, w.GetAgeMs())
		}
		downFor := time.Duration(w.GetDownForMs()) * time.Millisecond
		if downFor > maxAge || (downFor > 0 && verdict != VerdictDown) {
			return Packet{}, fmt.Errorf("%w: votes[%d].down_for_ms: %d on a %s vote", ErrMalformed, i, w.GetDownForMs(), verdict)
		}
		if w.GetSequence() == 0 || w.GetLagBytes() < 0 {
			return Packet{}, fmt.Errorf("%w: votes[%d]: zero sequence or negative lag", ErrMalformed, i)
		}
		votes = append(votes, Vote{
			Observer: batch.GetObserver(), Group: w.GetGroup(), Member: w.GetMember(),
			Verdict: verdict, Role: role, ReadOnly: w.GetReadOnly(), ReplayLSN: w.GetWalLsn(), LagBytes: w.GetLagBytes(),
			ObservedAt: now.Add(-age), DownFor: downFor, Sequence: w.GetSequence(),
		})
	}
	return Packet{
		Observer: batch.GetObserver(), Sequence: batch.GetSequence(), Votes: votes,
		Batch: pkt.GetBatch(), Signature: pkt.GetSignature(),
	}, nil
}

func checkName(field, s string) error {
	if s == "" || len(s) > maxNameLen {
		return fmt.Errorf("%w: %s: length %d", ErrMalformed, field, len(s))
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("%w: %s: %q has a character outside [a-z0-9_-]", ErrMalformed, field, s)
		}
	}
	return nil
}

func verdictToWire(v Verdict) vigilv1.Verdict {
	switch v {
	case VerdictUp:
		return vigilv1.Verdict_VERDICT_UP
	case VerdictDown:
		return vigilv1.Verdict_VERDICT_DOWN
	default:
		return vigilv1.Verdict_VERDICT_UNSPECIFIED
	}
}

func verdictFromWire(v vigilv1.Verdict) (Verdict, bool) {
	switch v {
	case vigilv1.Verdict_VERDICT_UNSPECIFIED:
		return VerdictUnknown, true
	case vigilv1.Verdict_VERDICT_UP:
		return VerdictUp, true
	case vigilv1.Verdict_VERDICT_DOWN:
		return VerdictDown, true
	default:
		return VerdictUnknown, false
	}
}

func roleToWire(r Role) vigilv1.Role {
	switch r {
	case RolePrimary:
		return vigilv1.Role_ROLE_PRIMARY
	case RoleStandby:
		return vigilv1.Role_ROLE_STANDBY
	default:
		return vigilv1.Role_ROLE_UNSPECIFIED
	}
}

func roleFromWire(r vigilv1.Role) (Role, bool) {
	switch r {
	case vigilv1.Role_ROLE_UNSPECIFIED:
		return RoleUnknown, true
	case vigilv1.Role_ROLE_PRIMARY:
		return RolePrimary, true
	case vigilv1.Role_ROLE_STANDBY:
		return RoleStandby, true
	default:
		return RoleUnknown, false
	}
}
