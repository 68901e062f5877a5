package enroll

import "errors"

var (
	// ErrNetNSNotFound: no network namespace in the scanned directory holds
	// any of the pod's addresses.
	ErrNetNSNotFound = errors.New("no network namespace holds the pod's addresses")
	// ErrNetNSAmbiguous: the pod's addresses are in more than one network
	// namespace (a dead sandbox's namespace still pinned with the same
	// address, say), so none is trusted.
	ErrNetNSAmbiguous = errors.New("pod's addresses are in more than one network namespace")
)
