// Package classify makes the outbound decision: from the source workload and
// the original destination it returns a Plan — HBONE to a pod, plain TCP
// passthrough, or deny — without any I/O, so that only the proxy dials.
package classify
