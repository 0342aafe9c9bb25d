package nodeagenttest

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// DatabaseFence is a fake nodeagent.DatabaseFencer: it keeps whether the
// network fence is "installed" and the database "read-only", counts the
// calls, and can be told to fail or to stall a method. Safe for
// concurrent use.
type DatabaseFence struct {
	// OnInstall, if set, is called at the start of every Install (before
	// the fake fails or installs), e.g. to check what the agent did before.
	OnInstall func()

	mu         sync.Mutex
	desc       string
	installed  bool
	readOnly   bool
	inRecovery bool
	sessions   int
	fail       map[string]error
	stall      map[string]bool
	calls      map[string]int
	installAt  []time.Time
	log        []string
}

// NewDatabaseFence returns a fake fence described as desc (e.g. "postgres
// port 5432"), not installed, with a primary (not in recovery) database.
func NewDatabaseFence(desc string) *DatabaseFence {
	return &DatabaseFence{desc: desc, fail: map[string]error{}, stall: map[string]bool{}, calls: map[string]int{}}
}

// Fail makes method ("Install", "Installed", "Remove", "TerminateSessions",
// "SetReadOnly", "ResetReadOnly", "InRecovery") return err from now on;
// nil clears it.
func (f *DatabaseFence) Fail(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, method)
	} else {
		f.fail[method] = err
	}
}

// Stall makes a SQL method (TerminateSessions, SetReadOnly,
// ResetReadOnly, InRecovery) block until its context ends, then fail with
// the context's error, like a database on a stalled disk; false undoes it.
func (f *DatabaseFence) Stall(method string, on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stall[method] = on
}

// SetInstalled sets the network fence's state behind the agent's back
// (e.g. a fence left by a previous run).
func (f *DatabaseFence) SetInstalled(v bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.installed = v
}

// SetInRecovery sets what InRecovery answers.
func (f *DatabaseFence) SetInRecovery(v bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inRecovery = v
}

// SetSessions sets how many sessions TerminateSessions reports.
func (f *DatabaseFence) SetSessions(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sessions = n
}

// IsInstalled reports whether the network fence is in place.
func (f *DatabaseFence) IsInstalled() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.installed
}

// IsReadOnly reports whether the database was last switched read-only.
func (f *DatabaseFence) IsReadOnly() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.readOnly
}

// Calls returns how many times method was called.
func (f *DatabaseFence) Calls(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

// InstallTimes returns when each successful Install happened.
func (f *DatabaseFence) InstallTimes() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.installAt...)
}

// Log returns the methods called, in order, with their outcome
// ("Install ok", "SetReadOnly error", …).
func (f *DatabaseFence) Log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.log...)
}

// enter counts a call and returns its injected error.
func (f *DatabaseFence) enter(method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[method]++
	return f.fail[method]
}

func (f *DatabaseFence) record(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	f.log = append(f.log, method+" "+outcome)
}

// sql runs a fake SQL method: stalls if told to, fails if told to, else
// applies do under the lock.
func (f *DatabaseFence) sql(ctx context.Context, method string, do func()) error {
	err := f.enter(method)
	f.mu.Lock()
	stall := f.stall[method]
	f.mu.Unlock()
	if stall {
		<-ctx.Done()
		err = fmt.Errorf("fake %s: %w", method, ctx.Err())
	}
	if err == nil {
		if err = ctx.Err(); err == nil {
			f.mu.Lock()
			do()
			f.mu.Unlock()
		}
	}
	f.record(method, err)
	return err
}

func (f *DatabaseFence) Describe() string { return f.desc }

func (f *DatabaseFence) Install() error {
	if f.OnInstall != nil {
		f.OnInstall()
	}
	err := f.enter("Install")
	if err == nil {
		f.mu.Lock()
		f.installed = true
		f.installAt = append(f.installAt, time.Now())
		f.mu.Unlock()
	}
	f.record("Install", err)
	return err
}

func (f *DatabaseFence) Installed() (bool, error) {
	if err := f.enter("Installed"); err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.installed, nil
}

func (f *DatabaseFence) Remove() (bool, error) {
	err := f.enter("Remove")
	var was bool
	if err == nil {
		f.mu.Lock()
		was, f.installed = f.installed, false
		f.mu.Unlock()
	}
	f.record("Remove", err)
	return was, err
}

func (f *DatabaseFence) TerminateSessions(ctx context.Context) (int, error) {
	var n int
	err := f.sql(ctx, "TerminateSessions", func() { n = f.sessions })
	return n, err
}

func (f *DatabaseFence) SetReadOnly(ctx context.Context) error {
	return f.sql(ctx, "SetReadOnly", func() { f.readOnly = true })
}

func (f *DatabaseFence) ResetReadOnly(ctx context.Context) error {
	return f.sql(ctx, "ResetReadOnly", func() { f.readOnly = false })
}

func (f *DatabaseFence) InRecovery(ctx context.Context) (bool, error) {
	var in bool
	err := f.sql(ctx, "InRecovery", func() { in = f.inRecovery })
	return in, err
}
