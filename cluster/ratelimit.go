package cluster

import (
	"sync"
	"time"
)

// rateLimiter is a token bucket per caller for state-changing admin
// calls: a script gone wrong (or a stolen operator certificate) cannot
// flood the Raft log. The buckets map is bounded: idle callers are
// forgotten.
type rateLimiter struct {
	rate  float64 // tokens per second
	burst float64
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// maxBuckets bounds the limiter's memory; beyond it, full (idle) buckets
// are dropped first.
const maxBuckets = 1024

func newRateLimiter(perSecond float64, burst int, now func() time.Time) *rateLimiter {
	return &rateLimiter{rate: perSecond, burst: float64(burst), now: now, buckets: map[string]*bucket{}}
}

// allow takes one token from who's bucket.
func (r *rateLimiter) allow(who string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	b, ok := r.buckets[who]
	if !ok {
		if len(r.buckets) >= maxBuckets {
			r.evictLocked(now)
		}
		b = &bucket{tokens: r.burst, last: now}
		r.buckets[who] = b
	}
	b.tokens = min(r.burst, b.tokens+now.Sub(b.last).Seconds()*r.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// evictLocked forgets callers whose buckets have refilled completely.
func (r *rateLimiter) evictLocked(now time.Time) {
	for who, b := range r.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*r.rate >= r.burst {
			delete(r.buckets, who)
		}
	}
}
