package redirect

import (
	"context"
	"errors"
	"net/netip"
)

// Pod is what the backends need to know about an enrolled pod.
type Pod struct {
	// NetNS is the path of the pod's network namespace, e.g.
	// /var/run/netns/cni-1234 or /proc/<pid>/ns/net.
	NetNS string
	// IPs are the pod's addresses. They decide which families get rules:
	// a family without a pod address is left (or made) free of Warren state.
	IPs []netip.Addr
}

// Redirector installs and removes traffic capture in a pod's netns.
type Redirector interface {
	// Apply makes the pod netns hold exactly Warren's capture rules and
	// routes for the pod's families (and none for the others). It is
	// idempotent: applying the same pod again changes nothing. A failed
	// Apply may be retried.
	Apply(ctx context.Context, pod Pod) error
	// Remove deletes all of Warren's rules and routes from the pod netns,
	// for both families whatever pod.IPs say, leaving it as it was before
	// Apply. Removing when nothing is there, or when the netns no longer
	// exists, is not an error. A failed Remove may be retried.
	Remove(ctx context.Context, pod Pod) error
}

// ErrNotSupported is returned when the kernel or the host lacks what a
// backend needs (nf_tables, the iptables binaries); the caller may pick the
// other backend.
var ErrNotSupported = errors.New("redirection backend not supported")

// ErrNoPodIPs is returned by Apply for a pod without addresses: with no
// family known there is nothing sensible to capture.
var ErrNoPodIPs = errors.New("pod has no IP addresses")
