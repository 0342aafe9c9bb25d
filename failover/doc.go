// Package failover will hold the leader-only failover controller and the
// actuators (fence, promote, move VIP / re-point HAProxy, re-point
// standbys, notify). It is the only package that acts on the outside
// world. Nothing is implemented here yet: see issue 4 and README.md.
package failover
