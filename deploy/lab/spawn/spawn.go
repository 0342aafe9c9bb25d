// Package spawn starts child processes for the lab and the tests from one
// dedicated OS thread that never exits.
//
// Why: the lab starts PostgreSQL, observers and agents with Pdeathsig, so
// that they die with the test process. But Linux sends that signal when
// the *thread* that forked the child exits, not the process, and Go ends a
// thread whenever a goroutine exits while locked to it (network-namespace
// code does exactly that). A child started from an ordinary goroutine can
// therefore be killed at random by unrelated code (golang/go#27505).
// Starting every child from a thread that lives as long as the process
// makes Pdeathsig mean "when the test process dies" again.
package spawn

import (
	"fmt"
	"os/exec"
	"runtime"
	"sync"

	"github.com/vishvananda/netns"
)

type request struct {
	cmd   *exec.Cmd
	netns string
	done  chan error
}

var (
	mu   sync.Mutex
	reqs chan request
)

// spawner serves requests on its own locked thread until it cannot return
// to its namespace; then it stays locked and parked forever (never exits,
// never reused) and a new spawner takes over.
func spawner(in chan request) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		orig = -1
	}
	for r := range in {
		if r.netns == "" {
			r.done <- r.cmd.Start()
			continue
		}
		target, err := netns.GetFromName(r.netns)
		if err != nil || orig == -1 {
			r.done <- fmt.Errorf("spawn: network namespace %q: %v", r.netns, err)
			continue
		}
		if err := netns.Set(target); err != nil {
			target.Close()
			r.done <- fmt.Errorf("spawn: enter network namespace %q: %w", r.netns, err)
			continue
		}
		startErr := r.cmd.Start()
		target.Close()
		if err := netns.Set(orig); err != nil {
			r.done <- startErr
			retire()
			select {} // park this thread forever in the wrong namespace
		}
		r.done <- startErr
	}
}

// retire makes the next request start a fresh spawner.
func retire() {
	mu.Lock()
	reqs = nil
	mu.Unlock()
}

func submit(cmd *exec.Cmd, ns string) error {
	mu.Lock()
	if reqs == nil {
		reqs = make(chan request)
		go spawner(reqs)
	}
	in := reqs
	mu.Unlock()
	done := make(chan error, 1)
	in <- request{cmd: cmd, netns: ns, done: done}
	return <-done
}

// Start starts cmd from the dedicated thread.
func Start(cmd *exec.Cmd) error { return submit(cmd, "") }

// StartInNetNS starts cmd inside the named network namespace ("" = ours),
// from the dedicated thread.
func StartInNetNS(ns string, cmd *exec.Cmd) error { return submit(cmd, ns) }
