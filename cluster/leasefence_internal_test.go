package cluster

import (
	"testing"
	"time"
)

// The age a LeasesStopped answer carries dates the end of the answering
// observer's support calls; rounding must only ever make it later.
func TestMsAgoRoundsTowardsLater(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want int64
	}{
		{0, 0}, {1500 * time.Microsecond, 1}, {999 * time.Microsecond, 0},
		{-1500 * time.Microsecond, -2}, {-time.Millisecond, -1}, {-1, -1},
	} {
		if got := msAgo(c.d); got != c.want {
			t.Errorf("msAgo(%v) = %d, want %d", c.d, got, c.want)
		}
	}
}
