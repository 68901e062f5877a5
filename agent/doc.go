// Package agent wires Warren's node agent together: state source, identities,
// per-pod capture and listeners, the tunnel pool and server, and readiness;
// it owns their start and stop order.
package agent
