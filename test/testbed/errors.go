package testbed

import "errors"

var (
	// ErrNotRoot is returned by New when the process cannot create network
	// namespaces because it is not running as root.
	ErrNotRoot = errors.New("testbed needs root to create network namespaces")
	// ErrMissingTool is returned by Start when the program to run is not
	// installed, so a test can skip instead of fail.
	ErrMissingTool = errors.New("required program not installed")
	// ErrClosed is returned when the testbed has already been closed.
	ErrClosed = errors.New("testbed closed")
)
