// Package health probes monitored members and turns the observers'
// verdicts into SDOWN/ODOWN.
//
// Probes (TCP, HTTP, PostgreSQL) each bound their own work by a timeout
// and report a Result: up or down, the role the member really has, and
// for PostgreSQL its WAL positions, lag, timeline and replication state.
// A member that answers in the unexpected role is Up with that Role; the
// caller compares roles. A Runner probes every Target on its own ticker,
// so a hung member never delays the others.
//
// Each observer turns its Results into Votes; gossip (elsewhere) spreads
// them; a VoteBook keeps the latest vote per observer and member; and
// Aggregate, a pure function of the votes, the parameters, the previous
// state and the current time, decides SDOWN and ODOWN: a member is ODOWN
// only when a quorum of the configured observers' fresh votes has said
// down continuously for DownAfter.
package health
