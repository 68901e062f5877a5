// Package proxy acts on decisions: it accepts captured connections, asks
// classify for a plan, opens the tunnel or passthrough connection the plan
// names, serves inbound HBONE and plaintext for local pods, and forwards
// bytes in both directions with half-close and one access-log record at close.
package proxy
