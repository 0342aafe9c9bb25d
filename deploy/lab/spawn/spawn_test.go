package spawn

import (
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// TestChildSurvivesThreadExits: a child started with Pdeathsig through
// Start keeps running while goroutines exit locked to their threads (which
// ends those threads) — the failure mode this package exists for.
func TestChildSurvivesThreadExits(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for i := 0; i < 50; i++ {
		done := make(chan struct{})
		go func() { runtime.LockOSThread(); close(done) }() // exits locked: thread ends
		<-done
	}
	exited := make(chan struct{})
	go func() { _, _ = cmd.Process.Wait(); close(exited) }()
	select {
	case <-exited:
		t.Fatal("the child died when unrelated threads exited")
	case <-time.After(300 * time.Millisecond): // a window to observe a death, not a wait for state
	}
}
