// Package harness runs Warren on a network-namespace testbed: it writes the
// agents' state file and CA, starts one warren-agent process per node, and
// reads back their access logs. The end-to-end tests, `warrenctl demo` and the
// benchmarks share it.
package harness
