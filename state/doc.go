// Package state holds Warren's view of the mesh: workloads, services and
// policies as one immutable Snapshot, swapped atomically when a source
// (the local config file or xDS) delivers an update.
package state
