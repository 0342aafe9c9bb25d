// Package ratelog bounds repetitive log lines (refused connections,
// refused requests): one line per key per interval, counting the lines it
// held back, with a bounded number of keys so a flood of distinct keys
// cannot grow it without limit.
package ratelog

import (
	"sync"
	"time"
)

// Limiter lets one log line per key through every Every. Safe for
// concurrent use.
type Limiter struct {
	every   time.Duration
	maxKeys int

	mu   sync.Mutex
	last map[string]*entry
}

type entry struct {
	at         time.Time
	suppressed int
}

// New returns a limiter of one line per key per every, tracking at most
// maxKeys keys at once (keys idle for longer than every are forgotten
// when the map is full; beyond that, lines for new keys are dropped).
func New(every time.Duration, maxKeys int) *Limiter {
	return &Limiter{every: every, maxKeys: maxKeys, last: map[string]*entry{}}
}

// Allow reports whether a line for key may be logged at now and, if so,
// how many were held back since the previous one.
func (l *Limiter) Allow(key string, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.last[key]
	if e != nil && now.Sub(e.at) < l.every {
		e.suppressed++
		return false, 0
	}
	if e == nil {
		if len(l.last) >= l.maxKeys {
			for k, v := range l.last {
				if now.Sub(v.at) >= l.every {
					delete(l.last, k)
				}
			}
			if len(l.last) >= l.maxKeys {
				return false, 0 // every key busy: drop the line
			}
		}
		e = &entry{}
		l.last[key] = e
	}
	n := e.suppressed
	e.at, e.suppressed = now, 0
	return true, n
}
