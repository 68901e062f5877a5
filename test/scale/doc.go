// Package scale benchmarks Warren's control plane at the size of a large
// cluster (10,000 pods, 2,000 services): the memory the controller and each
// agent hold, the agents' initial sync, and the delay from a pod change to
// every agent's state.
package scale
