package health

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// MaxPacketBytes is the largest vote batch we send: with memberlist's
// label, encryption and framing it still fits one UDP packet (~1400 B).
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

// EncodeVotes packs votes of one observer into as few packets as possible,
// each at most MaxPacketBytes. now turns ObservedAt into the age sent.
func EncodeVotes(observer string, votes []Vote, now time.Time) ([][]byte, error) {
	var packets [][]byte
	batch := &vigilv1.VoteBatch{Observer: observer}
	base := proto.Size(batch)
	size := base
	flush := func() error {
		if len(batch.Votes) == 0 {
			return nil
		}
		b, err := proto.Marshal(batch)
		if err != nil {
			return fmt.Errorf("encode votes: %w", err)
		}
		packets = append(packets, b)
		batch = &vigilv1.VoteBatch{Observer: observer}
		size = base
		return nil
	}
	for _, v := range votes {
		w := toWire(v, now)
		// Field tag + length prefix of the embedded message: at most 3 B here.
		n := proto.Size(w) + 3
		if base+n > MaxPacketBytes {
			return nil, fmt.Errorf("encode votes: vote for %s/%s alone exceeds %d bytes", v.Group, v.Member, MaxPacketBytes)
		}
		if size+n > MaxPacketBytes {
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
	}
}

// DecodeVotes decodes one packet received at now. The sender's age of each
// vote is turned into an ObservedAt on our clock, so observers' clocks
// need not agree. Any malformed field rejects the whole packet.
func DecodeVotes(b []byte, now time.Time) (string, []Vote, error) {
	if len(b) > maxAcceptedBytes {
		return "", nil, fmt.Errorf("%w: %d bytes", ErrOversized, len(b))
	}
	var batch vigilv1.VoteBatch
	if err := proto.Unmarshal(b, &batch); err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := checkName("observer", batch.GetObserver()); err != nil {
		return "", nil, err
	}
	votes := make([]Vote, 0, len(batch.GetVotes()))
	for i, w := range batch.GetVotes() {
		if err := checkName(fmt.Sprintf("votes[%d].group", i), w.GetGroup()); err != nil {
			return "", nil, err
		}
		if err := checkName(fmt.Sprintf("votes[%d].member", i), w.GetMember()); err != nil {
			return "", nil, err
		}
		verdict, ok := verdictFromWire(w.GetVerdict())
		if !ok {
			return "", nil, fmt.Errorf("%w: votes[%d].verdict: %d", ErrMalformed, i, w.GetVerdict())
		}
		role, ok := roleFromWire(w.GetRole())
		if !ok {
			return "", nil, fmt.Errorf("%w: votes[%d].role: %d", ErrMalformed, i, w.GetRole())
		}
		age := time.Duration(w.GetAgeMs()) * time.Millisecond
		if age > maxAge {
			return "", nil, fmt.Errorf("%w: votes[%d].age_ms: %d", ErrMalformed, i, w.GetAgeMs())
		}
		if w.GetSequence() == 0 || w.GetLagBytes() < 0 {
			return "", nil, fmt.Errorf("%w: votes[%d]: zero sequence or negative lag", ErrMalformed, i)
		}
		votes = append(votes, Vote{
			Observer: batch.GetObserver(), Group: w.GetGroup(), Member: w.GetMember(),
			Verdict: verdict, Role: role, ReadOnly: w.GetReadOnly(), ReplayLSN: w.GetWalLsn(), LagBytes: w.GetLagBytes(),
			ObservedAt: now.Add(-age), Sequence: w.GetSequence(),
		})
	}
	return batch.GetObserver(), votes, nil
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
