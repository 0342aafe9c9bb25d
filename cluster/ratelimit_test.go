package cluster

import (
	"fmt"
	"testing"
	"time"
)

func TestRateLimiterPerCallerAndRefill(t *testing.T) {
	now := time.Unix(0, 0)
	r := newRateLimiter(2, 3, func() time.Time { return now })
	for i := 0; i < 3; i++ {
		if !r.allow("operator/alice") {
			t.Fatalf("call %d within the burst refused", i)
		}
	}
	if r.allow("operator/alice") {
		t.Fatal("call beyond the burst allowed")
	}
	if !r.allow("operator/bob") {
		t.Fatal("another caller is limited by alice's bucket")
	}
	now = now.Add(500 * time.Millisecond) // one token back at 2/s
	if !r.allow("operator/alice") || r.allow("operator/alice") {
		t.Fatal("refill did not give back exactly one token")
	}
}

func TestRateLimiterIsBounded(t *testing.T) {
	now := time.Unix(0, 0)
	r := newRateLimiter(1, 1, func() time.Time { return now })
	for i := 0; i < 3*maxBuckets; i++ {
		r.allow(fmt.Sprint("caller-", i))
		now = now.Add(time.Second)
	}
	if n := len(r.buckets); n > maxBuckets {
		t.Fatalf("%d buckets kept, bound is %d", n, maxBuckets)
	}
}
