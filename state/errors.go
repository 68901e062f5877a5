package state

import "errors"

// ErrDuplicate is returned when two objects claim the same name or address.
var ErrDuplicate = errors.New("duplicate")
