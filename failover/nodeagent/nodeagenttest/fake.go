// Package nodeagenttest provides an in-memory nodeagent.Addrs for tests
// of the node agent and its clients.
package nodeagenttest

import (
	"fmt"
	"sync"
	"time"
)

// Announcement is one Announce call.
type Announcement struct {
	Iface, IP string
	Count     int
	Interval  time.Duration
	At        time.Time
}

// Addrs is a fake nodeagent.Addrs: a set of (interface, cidr) pairs and a
// log of announcements. Safe for concurrent use.
type Addrs struct {
	mu        sync.Mutex
	have      map[string]bool
	announced []Announcement
	fail      map[string]error
	calls     map[string]int
}

// New returns an empty fake.
func New() *Addrs {
	return &Addrs{have: map[string]bool{}, fail: map[string]error{}, calls: map[string]int{}}
}

func key(iface, cidr string) string { return iface + " " + cidr }

// Fail makes op ("Add", "Del", "Has", "Announce") return err from now on;
// nil clears it.
func (f *Addrs) Fail(op string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, op)
	} else {
		f.fail[op] = err
	}
}

func (f *Addrs) Add(iface, cidr string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["Add"]++
	if err := f.fail["Add"]; err != nil {
		return false, err
	}
	k := key(iface, cidr)
	if f.have[k] {
		return false, nil
	}
	f.have[k] = true
	return true, nil
}

func (f *Addrs) Del(iface, cidr string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["Del"]++
	if err := f.fail["Del"]; err != nil {
		return false, err
	}
	k := key(iface, cidr)
	if !f.have[k] {
		return false, nil
	}
	delete(f.have, k)
	return true, nil
}

func (f *Addrs) Has(iface, cidr string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["Has"]++
	if err := f.fail["Has"]; err != nil {
		return false, err
	}
	return f.have[key(iface, cidr)], nil
}

func (f *Addrs) Announce(iface, ip string, count int, interval time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["Announce"]++
	if err := f.fail["Announce"]; err != nil {
		return err
	}
	if count < 1 {
		return fmt.Errorf("fake: announce count %d", count)
	}
	f.announced = append(f.announced, Announcement{Iface: iface, IP: ip, Count: count, Interval: interval, At: time.Now()})
	return nil
}

// Set puts cidr on iface (or removes it) behind the agent's back, e.g. to
// simulate a VIP left from a previous run.
func (f *Addrs) Set(iface, cidr string, present bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if present {
		f.have[key(iface, cidr)] = true
	} else {
		delete(f.have, key(iface, cidr))
	}
}

// Holds reports whether cidr is on iface.
func (f *Addrs) Holds(iface, cidr string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.have[key(iface, cidr)]
}

// Packets returns how many gratuitous ARP packets were announced for ip
// (the sum of the counts of its Announce calls).
func (f *Addrs) Packets(ip string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, a := range f.announced {
		if a.IP == ip {
			n += a.Count
		}
	}
	return n
}

// Announcements returns a copy of the Announce calls so far.
func (f *Addrs) Announcements() []Announcement {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Announcement(nil), f.announced...)
}

// Calls returns how many times op was called.
func (f *Addrs) Calls(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}
