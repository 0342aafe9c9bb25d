package clustertest

import (
	"testing"
	"time"
)

// pollInterval is how often WaitFor re-checks a condition.
const pollInterval = 20 * time.Millisecond

// WaitFor polls cond until it reports true or the deadline passes, then
// fails the test with what was waited for and the last reason cond gave.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (ok bool, why string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var why string
	for {
		var ok bool
		ok, why = cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, why)
		}
		time.Sleep(pollInterval)
	}
}

// Eventually is WaitFor for conditions without a reason.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	WaitFor(t, timeout, what, func() (bool, string) { return cond(), "condition still false" })
}
