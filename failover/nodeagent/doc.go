// Package nodeagent is the node agent daemon (`vigil node`): a small
// process on each managed host that holds a group's virtual IP only while
// the observers say its host is the primary, and fences the host locally:
// the VIP, the database itself (database_fence) and an optional
// fence_command.
//
// # Requests and the epoch
//
// Every request (AddVIP, RemoveVIP, Fence, Lease) carries the group's
// epoch, the fencing token of the failover it belongs to. The agent keeps
// two epochs per group:
//
//   - the confirmed epoch (vigil_agent_highest_epoch), persisted in
//     data_dir/epochs.json (temp file, fsync, rename, fsync of the
//     directory). It is raised only when a quorum (the agent's `quorum`)
//     of distinct configured observers have sent, less than lease_timeout
//     ago (receive time), leases whose epoch is ≥ E: it becomes the
//     quorum-th highest epoch of those observers' latest leases. A lease
//     counts there even when it is refused as stale, so one observer
//     holding a high tentative epoch (below) cannot keep the others'
//     real epoch from being confirmed;
//   - a tentative epoch (vigil_agent_tentative_epoch): any single
//     observer's request (the leader's AddVIP after a promotion, a
//     RemoveVIP, a Fence, one observer's lease) above the confirmed epoch
//     is acted on, and makes its epoch the tentative one for lease_timeout
//     from that request (a later request of the same epoch restarts it).
//     Unless a quorum of leases confirms it first, it lapses; it is never
//     persisted.
//
// The epoch enforced (Status' highest_epoch, the answers' highest_epoch)
// is the confirmed one, or a valid tentative one above it. AddVIP and
// Lease below it are refused with FailedPrecondition, naming both epochs,
// and change nothing (a refused lease is still its observer's word for
// the quorum rule). RemoveVIP and Fence act whatever the epoch — removing
// the VIP and fencing are safe — but one below the enforced epoch changes
// no epoch, lifts nothing (a self-fence episode in progress runs on) and
// says "stale epoch" in its answer (vigil_agent_requests_total
// result="stale_epoch_acted"). A request whose epoch is more than
// MaxEpochJump (1,000,000) above the confirmed epoch is refused outright
// with InvalidArgument (vigil_agent_epoch_jumps_refused_total, a warning
// naming the observer), Fence included: a failover raises the epoch by
// one.
//
// So one observer's word — a stolen observer certificate — never changes
// what the agent enforces for longer than lease_timeout after its last
// request, and never survives a restart: it can take the VIP away (as it
// always could, with Fence or RemoveVIP) and, with AddVIP, hold it for
// one lease_timeout, but it cannot lock the real epoch out. A restarted
// agent enforces the confirmed epoch, so a deposed leader's late request
// is refused once a quorum of observers leased the new epoch: the
// observers lease every member's agent of the group every
// lease_timeout/3, the old primary's included during a failover (naming
// the candidate), so that is within about lease_timeout/3 of a quorum of
// observers applying the failover's intent. Nothing waits for the disk
// but the answer to the lease that raised the confirmed epoch, persisted
// after the holding rule was applied and without the action lock held:
// a stalled disk never holds up a fence or the self-fencing loop.
//
// # Transport security
//
// With the tls section (ca, cert, key; the certificate of kind "agent")
// the agent serves mutual TLS 1.3 and only observer certificates signed by
// the CA complete the handshake. Every RPC, Status included, must come
// from a certificate whose name is one of the configured observers
// (PermissionDenied otherwise), and each Lease, AddVIP, RemoveVIP and
// Fence must carry the caller's own certificate name as its observer
// field: one observer cannot speak for another, which matters for the
// lease quorum. SIGHUP reloads the files; a failed reload keeps the
// current ones. Without the tls section the agent serves plaintext and
// trusts every caller; it says so, loudly, when it starts.
//
// # Connections and metrics
//
// The gRPC port holds at most max_connections (default 64) connections
// at once: one beyond is closed at once and counted
// (vigil_agent_connections_refused_total{reason="limit"}). A new
// connection must complete its TLS handshake and HTTP/2 preface within
// 5s (grpc.ConnectionTimeout, set on the raw connection before the
// handshake; failed handshakes are counted with reason="handshake"), and
// one without RPCs for 5 minutes is closed (keepalive MaxConnectionIdle;
// a peer that stops answering pings is dropped, one pinging more often
// than every 10s disconnected). Warnings about refused connections and
// requests name the remote address or observer and are rate-limited to
// one line per kind every 10s. With metrics_listen the agent serves GET
// /metrics (its registry: `vigil node` adds the Go and process
// collectors), over mutual TLS to any certificate of the CA when the tls
// section is set, plaintext otherwise.
//
// # The holding rule (self-fencing)
//
// The host is supported as the primary iff at least `quorum` distinct
// configured observers sent it, less than lease_timeout ago (receive
// time, monotonic clock), a lease for the enforced epoch naming this
// host's member as primary — or the leader's AddVIP grant for that epoch
// is still valid: AddVIP counts as a lease from a quorum for
// lease_timeout, because the leader calls it only after committing the
// epoch through Raft (a grant of a tentative epoch ends when that epoch
// lapses, at the latest). A lease naming another member means "do not
// hold the VIP" for this agent. The agent
// holds the VIP only while it is supported. The rule is evaluated on
// every lease, every lease_timeout/4 and at the moment support expires.
//
// A self-fence episode starts when the support ends and the host either
// holds the VIP or was supported as the primary at some point since its
// last fence (the last Fence or self-fence episode) or AddVIP — with or
// without a VIP (a deployment that routes through HAProxy never adds
// one). The episode removes the VIP if held, puts the database fence in
// force (first, before anything slow: a netlink transaction), starts
// terminating the database's client sessions and switching it read-only
// in the background and runs the group's fence_command
// (VIGIL_STEP=self_fence); the VIP removal
// and the database fence are retried on every evaluation, the command
// with back-off, until they succeed or support comes back. A lease of a
// higher epoch (even one observer's, which makes it the tentative epoch),
// or any lease that leaves fewer than `quorum` supporters, fences at
// once. A host never supported as the primary — a standby —
// never fences. Leases never add the VIP nor lift the database fence (see
// reconcileLocked).
//
// # The database fence
//
// With a group's database_fence section (kind postgres, the port,
// allow_from), the agent fences the database itself, with no script and
// no disk write:
//
//   - Traffic: an nftables table "inet vigil_fence_<group>" (one per group,
//     in the agent's network namespace; no other table is touched) with an
//     input chain dropping TCP packets to the port and an output chain
//     dropping TCP packets from it, at priority filter-10, except from/to
//     allow_from (the group's standbys for replication, the observers for
//     probes and their SQL fence) and loopback. Both directions: a
//     client's established session gets no acknowledgement of a commit
//     from the moment the table is in place. The match is on addresses,
//     so a client on the host that connects to the host's own non-loopback
//     address (its packets arrive on lo with that source) is cut too. The
//     table is installed in one netlink transaction (replacing any earlier
//     version: idempotent) and read back; the fence counts as in force
//     (Fence's database_fenced, Status) only once the rules are verifiably
//     there.
//   - Sessions: then every client backend but the agent's own is
//     terminated over the local connection (host: a unix socket directory
//     or 127.0.0.1/::1), on its own goroutine bounded by timeout;
//     walsenders are kept, so standbys may still catch up. A failure is
//     logged and counted, but the network fence alone confirms.
//   - Read-only, when it can: ALTER SYSTEM SET default_transaction_read_only
//     = on and pg_reload_conf(), on its own goroutine bounded by timeout
//     (ALTER SYSTEM writes a file).
//
// Fence does not wait for these two SQL steps unless the request sets
// wait_sql (a switchover, which reads the old primary's final WAL
// position next): a hung database (SIGSTOP, stalled disk) could only make
// every failover wait out their timeout, while the verified network
// fence already cut every outside client off. Its detail gives their
// outcome when they finished before the answer, and says they go on in
// the background otherwise.
//
// Fence confirms only when the VIP is gone, the database fence (if
// configured) is in force and the fence command (if any) exited 0. The
// fence lifts on AddVIP (the leader made this host the primary of the
// current epoch again, e.g. after an aborted failover: table removed,
// read-only reset, before the VIP is added) and, checked every
// lease_timeout while it is in force and the host does not hold the VIP,
// when the local database answers pg_is_in_recovery() = true (a standby
// takes no writes; a rejoined old primary may serve as a standby). A
// database that cannot be reached keeps the fence. The fence is kernel
// state: it survives an agent restart, and a restarted agent that finds
// the table reports it as in force and keeps it.
//
// What it cannot do: clients on the host itself over 127.0.0.1, ::1 or
// the unix socket are not fenced (read-only, if it got through, is only a
// default a session can override), nor are clients at allow_from
// addresses; a
// database reachable on another port or through another network
// namespace is not covered. The agent needs CAP_NET_ADMIN (New fails when
// it cannot read the nftables state). password_file is read once, at
// start.
//
// # Timing argument
//
// Let L = lease_timeout. The agent counts a lease from the moment it
// receives it, which is after the observer sent it. So once an observer
// has stopped leasing a host — because the host is cut off, or because
// the group's failover has started — that observer's support ends, on the
// agent, at most L after the end of its last lease call (its answer or its
// deadline), measured on the observer's clock up to clock-rate drift. The
// host holds the VIP only with a quorum's support, so it drops the VIP,
// and puts its database fence in force, by the time the quorum-th
// supporting lease expires: within L of the last lease call of the
// observers, plus the time to remove an address and to commit the
// fence's nftables transaction (netlink calls, about a millisecond each)
// and the agent's own scheduling (the loop wakes at the exact moment the
// support expires).
// The epoch rules do not lengthen this: a tentative epoch only ever
// takes support away (leases of the confirmed epoch no longer count
// while it is valid), and the grant of a tentative epoch lasts no longer
// than that epoch. What a lapsing tentative epoch adds is a window of
// lease_timeout in which one observer's newer epoch is enforced and then
// no longer is; the observers close it for real failovers by leasing the
// new epoch to the old primary's agent from the moment they apply the
// intent, so a quorum confirms it (and the agent persists it) well before
// the leader's own Fence's tentative epoch lapses.
//
// Hence an observer leader that could not fence the old primary directly
// (its agent unreachable) must wait at least L (plus a small margin for
// drift and scheduling, e.g. 10% + 50ms) after the last lease call any
// observer made to that host before it promotes another member; with
// L=1s, below down_after, that wait is normally already over when ODOWN
// is declared, provided the observers stopped leasing the host when they
// stopped seeing it. Two consequences for the observer side:
//
//   - Observers must stop naming the old primary as the primary as soon
//     as a failover away from it is committed (an active failover whose
//     old member is the leased one), not only at the promotion step:
//     otherwise a quorum of observers that can still reach the old host
//     would keep its VIP alive while the leader, cut off from it,
//     promotes another. They lease its agent the new epoch naming the
//     candidate instead (which fences it at once and confirms the new
//     epoch there), and lease the candidate's agent nothing until the
//     promotion is committed.
//   - A host that fenced itself is not given its VIP back by leases; the
//     leader has to call AddVIP again (a new route step) if the host is
//     still meant to be primary, e.g. after an aborted failover.
//
// An agent restarted while its VIP is on the interface keeps the VIP for
// one lease_timeout (startup grace) waiting for leases, then follows the
// rule; a stopped agent leaves the VIP in place (as a crash would), so a
// host whose agent is down does not self-fence: fence it by other means.
package nodeagent
