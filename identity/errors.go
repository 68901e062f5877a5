package identity

import "errors"

var (
	// ErrNoCertificate is returned by a source that has no certificate yet,
	// whose certificate has expired, or whose identity has been released.
	ErrNoCertificate = errors.New("no valid certificate")
	// ErrNotStarted is returned by Acquire before Start has succeeded.
	ErrNotStarted = errors.New("identity manager not started")
	// ErrStopped is returned once Stop has been called.
	ErrStopped = errors.New("identity manager stopped")
)
