package ratelog

import (
	"testing"
	"time"
)

func TestLimiterOnePerKeyPerIntervalAndBounded(t *testing.T) {
	l := New(10*time.Second, 2)
	t0 := time.Unix(1000, 0)
	if ok, n := l.Allow("a", t0); !ok || n != 0 {
		t.Fatalf("first line: %v %d", ok, n)
	}
	for i := 0; i < 3; i++ {
		if ok, _ := l.Allow("a", t0.Add(time.Second)); ok {
			t.Fatal("a second line within the interval got through")
		}
	}
	if ok, n := l.Allow("a", t0.Add(11*time.Second)); !ok || n != 3 {
		t.Fatalf("after the interval: %v, suppressed %d; want true, 3", ok, n)
	}
	if ok, _ := l.Allow("b", t0.Add(11*time.Second)); !ok {
		t.Fatal("another key is limited on its own")
	}
	if ok, _ := l.Allow("c", t0.Add(12*time.Second)); ok {
		t.Fatal("a third key got in while both tracked keys are busy")
	}
	if ok, _ := l.Allow("c", t0.Add(30*time.Second)); !ok {
		t.Fatal("idle keys must be forgotten to make room")
	}
}
