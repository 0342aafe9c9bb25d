//go:build vigil_unsafe_nofence

package nodeagent

// unsafeNoFence is true in the deliberately broken build (build tag
// vigil_unsafe_nofence) that nemesis tests use to prove their checker
// catches split-brain: fencing is skipped while reporting success. Never
// ship it.
const unsafeNoFence = true
