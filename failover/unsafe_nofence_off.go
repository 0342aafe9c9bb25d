//go:build !vigil_unsafe_nofence

package failover

// unsafeNoFence is false in every normal build: fencing runs. The
// vigil_unsafe_nofence build tag (unsafe_nofence.go) turns it off for
// checker tests; the branches it guards are dead code here.
const unsafeNoFence = false
