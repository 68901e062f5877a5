package netns

import "errors"

// ErrNotNetNS is returned when a path exists but is not a network namespace.
var ErrNotNetNS = errors.New("not a network namespace file")
