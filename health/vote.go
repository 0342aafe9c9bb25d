package health

import (
	"sort"
	"sync"
	"time"
)

// Vote is one observer's latest verdict about one member, as gossiped.
type Vote struct {
	Observer, Group, Member string
	Verdict                 Verdict
	Role                    Role
	// ReadOnly: a primary that starts new sessions read-only (fenced).
	ReadOnly bool
	// ReplayLSN is a standby's replay position, or a primary's current
	// WAL position.
	ReplayLSN uint64
	LagBytes  int64
	// ObservedAt is when the observer's probe began (its own clock).
	ObservedAt time.Time
	// DownFor, on a down vote, is how long before ObservedAt the
	// observer's own evidence already said down: a primary whose writes
	// stall (health.KindWriteStalled) is down for writes since its first
	// failed heartbeat. Zero for every other verdict: the down streak then
	// starts when the votes are counted.
	DownFor time.Duration
	// Sequence orders one observer's votes about one member; it must
	// grow across the observer's restarts too (e.g. derive it from the
	// wall clock), or the restarted observer's votes are ignored until it
	// is forgotten.
	Sequence uint64
}

// VoteFromResult turns a local probe Result into this observer's Vote.
func VoteFromResult(observer, group, member string, r Result, seq uint64) Vote {
	lsn := r.ReplayLSN
	if r.Role == RolePrimary {
		lsn = r.CurrentLSN
	}
	return Vote{
		Observer:   observer,
		Group:      group,
		Member:     member,
		Verdict:    r.Verdict,
		Role:       r.Role,
		ReadOnly:   r.ReadOnly,
		ReplayLSN:  lsn,
		LagBytes:   r.LagBytes,
		ObservedAt: r.At,
		DownFor:    downFor(r),
		Sequence:   seq,
	}
}

// downFor is Vote.DownFor for a Result.
func downFor(r Result) time.Duration {
	if r.Verdict != VerdictDown || r.ErrKind != KindWriteStalled {
		return 0
	}
	return min(r.Heartbeat.FailingFor, maxAge)
}

type memberKey struct{ group, member string }

// VoteBook keeps the latest vote per (observer, group, member). It is
// safe for concurrent use.
type VoteBook struct {
	mu sync.RWMutex
	// Indexed by member first: aggregation asks per member, often.
	votes map[memberKey]map[string]Vote
}

// NewVoteBook returns an empty VoteBook.
func NewVoteBook() *VoteBook {
	return &VoteBook{votes: map[memberKey]map[string]Vote{}}
}

// Put stores v unless it is malformed (empty observer, group or member)
// or not newer than what is stored: a vote whose Sequence is not greater
// than the stored one from the same observer for the same member is a
// replay or arrived late, and is ignored. It reports whether v was stored.
func (b *VoteBook) Put(v Vote) bool {
	stored, _, _ := b.swap(v)
	return stored
}

// swap is Put that also returns the vote v replaced (had: there was one),
// read under the same lock, so that whether v changes anything is judged
// against exactly what it replaced.
func (b *VoteBook) swap(v Vote) (stored bool, prev Vote, had bool) {
	if v.Observer == "" || v.Group == "" || v.Member == "" {
		return false, Vote{}, false
	}
	k := memberKey{v.Group, v.Member}
	b.mu.Lock()
	defer b.mu.Unlock()
	byObserver := b.votes[k]
	if byObserver == nil {
		byObserver = map[string]Vote{}
		b.votes[k] = byObserver
	}
	prev, had = byObserver[v.Observer]
	if had && prev.Sequence >= v.Sequence {
		return false, prev, had
	}
	byObserver[v.Observer] = v
	return true, prev, had
}

// Votes returns the stored votes about one member, sorted by observer.
func (b *VoteBook) Votes(group, member string) []Vote {
	b.mu.RLock()
	byObserver := b.votes[memberKey{group, member}]
	out := make([]Vote, 0, len(byObserver))
	for _, v := range byObserver {
		out = append(out, v)
	}
	b.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Observer < out[j].Observer })
	return out
}

// Forget drops every vote of an observer that left the cluster (and lets
// it start its sequences afresh should it come back).
func (b *VoteBook) Forget(observer string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, byObserver := range b.votes {
		delete(byObserver, observer)
		if len(byObserver) == 0 {
			delete(b.votes, k)
		}
	}
}

// ForgetMember drops every vote about a member removed from its group.
func (b *VoteBook) ForgetMember(group, member string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.votes, memberKey{group, member})
}
