// Package testbed builds a small cluster of nodes and pods out of Linux
// network namespaces, so end-to-end tests, benchmarks and the demo can run the
// agent against real sockets and routes on one machine.
package testbed
