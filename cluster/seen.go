package cluster

import (
	"sync"
	"time"

	"github.com/vigilha/vigil/failover"
	"github.com/vigilha/vigil/fsm"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// seenClock records when this observer applied the commands that start a
// cooldown or a back-off, on its own monotonic clock (time.Now carries a
// monotonic reading), so that the controller can count those waits from
// an event this observer saw itself rather than from another leader's
// wall-clock timestamp (failover/DESIGN.md, "Clocks").
//
// Commands replayed at start-up long after they were written are not
// recorded as seen now: a failover of last week must not start a new
// cooldown at every restart. "Long after" is judged with the command's
// own time, generously (the wait plus a minute), so a clock offset of a
// few seconds does not matter; a restarted observer falls back to the
// state's wall-clock deadline alone.
type seenClock struct {
	mu      sync.Mutex
	at      map[string]time.Time // group + "/" + what
	intents map[string]intentSeen
}

type intentSeen struct {
	epoch uint64
	at    time.Time
}

// intent returns when this observer applied the intent of the group's
// failover of epoch (monotonic), false if it did not see it live.
func (s *seenClock) intent(group string, epoch uint64) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.intents[group]
	return i.at, ok && i.epoch == epoch
}

var _ failover.Seen = (*seenClock)(nil)

func newSeenClock() *seenClock {
	return &seenClock{at: map[string]time.Time{}, intents: map[string]intentSeen{}}
}

// Since implements failover.Seen.
func (s *seenClock) Since(group, what string) (time.Duration, bool) {
	s.mu.Lock()
	t, ok := s.at[group+"/"+what]
	s.mu.Unlock()
	if !ok {
		return 0, false
	}
	return time.Since(t), true
}

// observe is called after every applied command with the group's state
// after it.
func (s *seenClock) observe(res fsm.Result, g *vigilv1.Group, now time.Time) {
	if res.Err != nil || g == nil {
		return
	}
	switch res.Kind {
	case "start_failover":
		if a := g.GetActiveFailover(); a != nil {
			s.mu.Lock()
			s.intents[res.Group] = intentSeen{epoch: a.GetEpoch(), at: time.Now()}
			s.mu.Unlock()
		}
	case "finish_failover":
		if g.GetLastFailoverAt() != nil {
			s.note(res.Group, "last_failover", g.GetLastFailoverAt().AsTime(), time.Duration(g.GetSpec().GetCooldownMs())*time.Millisecond, now)
		}
		if g.GetBackoffSetAt() != nil {
			s.note(res.Group, "backoff", g.GetBackoffSetAt().AsTime(), time.Duration(g.GetBackoffMs())*time.Millisecond, now)
		}
	case "set_backoff":
		if g.GetBackoffSetAt() != nil {
			s.note(res.Group, "backoff", g.GetBackoffSetAt().AsTime(), time.Duration(g.GetBackoffMs())*time.Millisecond, now)
		} else {
			s.mu.Lock()
			delete(s.at, res.Group+"/backoff")
			s.mu.Unlock()
		}
	}
}

// note records now for group/what if the event, written at `at`, may
// still be within its wait d by this observer's wall clock (with a
// minute of slack for clock offsets).
func (s *seenClock) note(group, what string, at time.Time, d time.Duration, now time.Time) {
	if now.After(at.Add(d + time.Minute)) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The same event seen again (a finish whose last failover did not
	// change) keeps its first sighting.
	key := group + "/" + what
	if prev, ok := s.at[key+"@"]; ok && prev.Equal(at) {
		return
	}
	s.at[key] = time.Now()
	s.at[key+"@"] = at
}
