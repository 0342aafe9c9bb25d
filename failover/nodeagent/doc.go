// Package nodeagent is the node agent daemon (`vigil node`): a small
// process on each managed host that holds a group's virtual IP only while
// the observers say its host is the primary, and fences the host locally.
//
// # Requests and the epoch
//
// Every request (AddVIP, RemoveVIP, Fence, Lease) carries the group's
// epoch, the fencing token of the failover it belongs to. A request whose
// epoch is below the highest the agent has seen for the group is refused
// with FailedPrecondition, naming both epochs, and changes nothing. A
// higher epoch is raised and persisted (data_dir/epochs.json: temp file,
// fsync, rename, fsync of the directory) before the agent acts on it, so
// a restarted agent still refuses a deposed leader's late request.
//
// # Transport security
//
// With the tls section (ca, cert, key; the certificate of kind "agent")
// the agent serves mutual TLS 1.3 and only observer certificates signed by
// the CA complete the handshake. Each Lease, AddVIP, RemoveVIP and Fence
// must carry the caller's own certificate name as its observer field
// (PermissionDenied otherwise): one observer cannot speak for another,
// which matters for the lease quorum. Status needs any observer
// certificate. SIGHUP reloads the files; a failed reload keeps the
// current ones. Without the tls section the agent serves plaintext and
// trusts every caller.
//
// # The holding rule (self-fencing)
//
// The agent holds the VIP iff at least `quorum` distinct configured
// observers sent it, less than lease_timeout ago (receive time, monotonic
// clock), a lease for the highest epoch naming this host's member as
// primary — or the leader's AddVIP grant is still valid: AddVIP counts as
// a lease from a quorum for lease_timeout, because the leader calls it
// only after committing the epoch through Raft. The rule is evaluated on
// every lease, every lease_timeout/4 and at the moment support expires.
// When the host holds the VIP and the rule fails, the agent removes the
// VIP and runs the group's fence_command (VIGIL_STEP=self_fence), retried
// with back-off until it succeeds or support comes back. A lease of a
// higher epoch (or any lease that leaves fewer than `quorum` supporters)
// drops the VIP at once. Leases never add the VIP (see reconcileLocked).
//
// # Timing argument
//
// Let L = lease_timeout. The agent counts a lease from the moment it
// receives it, which is after the observer sent it. So once an observer
// has stopped leasing a host — because the host is cut off, or because
// the group's failover has started — that observer's support ends, on the
// agent, at most L after the end of its last lease call (its answer or its
// deadline), measured on the observer's clock up to clock-rate drift. The
// host holds the VIP only with a quorum's support, so it drops the VIP by
// the time the quorum-th supporting lease expires: within L of the last
// lease call of the observers, plus the time to remove an address (a
// netlink call, well under a millisecond) and the agent's own scheduling.
// Hence an observer leader that could not fence the old primary directly
// (its agent unreachable) must wait at least L (plus a small margin for
// drift and scheduling, e.g. 10% + 50ms) after the last lease call any
// observer made to that host before it promotes another member; with
// L=1s, below down_after, that wait is normally already over when ODOWN
// is declared, provided the observers stopped leasing the host when they
// stopped seeing it. Two consequences for the observer side:
//
//   - Observers must stop leasing the old primary as soon as a failover
//     away from it is committed (an active failover whose old member is
//     the leased one), not only at the promotion step: otherwise a
//     quorum of observers that can still reach the old host would keep
//     its VIP alive while the leader, cut off from it, promotes another.
//   - A host that fenced itself is not given its VIP back by leases; the
//     leader has to call AddVIP again (a new route step) if the host is
//     still meant to be primary, e.g. after an aborted failover.
//
// An agent restarted while its VIP is on the interface keeps the VIP for
// one lease_timeout (startup grace) waiting for leases, then follows the
// rule; a stopped agent leaves the VIP in place (as a crash would), so a
// host whose agent is down does not self-fence: fence it by other means.
package nodeagent
