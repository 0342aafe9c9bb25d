// Package failover is the leader-only failover controller and the
// actuators it drives: fence the old primary, promote the best standby,
// re-route clients, re-point the other standbys, notify. It is the only
// package that acts on the outside world, and it does so only with intents
// already committed to Raft, each carrying the group's epoch.
package failover

import (
	"context"
	"time"
)

// Member is one server as an actuator sees it.
type Member struct {
	Name    string
	Address string // host:port
}

// Action identifies one failover step to an actuator: every call carries
// the group and the epoch (the fencing token) of the failover.
type Action struct {
	Group string
	Epoch uint64
	// Kind is "failover", "switchover" or "forced".
	Kind string
	Old  Member
	New  Member
	// Started is when the failover's intent was committed (zero if unknown).
	Started time.Time
}

// FenceResult says what a fence method made sure of. A failover's fence
// step needs the database fenced and, in a group with a VIP, the traffic
// fenced too; each method covers one or both.
type FenceResult struct {
	// Confirmed: the old primary's database takes no writes from clients:
	// it is read-only with its sessions terminated, stopped, verifiably
	// not accepting connections, or cut off from every client by its
	// host's node agent.
	Confirmed bool
	// Traffic: the group's VIP is verifiably off the old primary's host.
	Traffic bool
	Detail  string
}

// Fencer stops the old primary from accepting writes. It must be
// idempotent and bounded by ctx.
type Fencer interface {
	Fence(ctx context.Context, a Action) (FenceResult, error)
}

// Promoter makes a standby the primary and returns once it accepts
// writes. Promoting a member that already is primary succeeds.
type Promoter interface {
	Promote(ctx context.Context, a Action) error
}

// Repointer makes one standby follow the new primary.
type Repointer interface {
	Repoint(ctx context.Context, a Action, standby Member) error
}

// Router moves client traffic (VIP, load balancer) to the new primary.
type Router interface {
	Route(ctx context.Context, a Action) error
}

// Notifier is told about failover events; it must not block the failover.
type Notifier interface {
	Notify(ctx context.Context, e Event)
}

// Event is one notification.
type Event struct {
	Action
	Step    string
	Outcome string
	Detail  string
	At      time.Time
}
