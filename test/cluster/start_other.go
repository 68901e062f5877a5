//go:build !linux

package cluster

import (
	"context"
	"errors"
	"fmt"
)

// Start needs Linux namespaces, mounts and cgroups.
func Start(context.Context, Options) (*Cluster, error) {
	return nil, fmt.Errorf("starting a cluster: %w", errors.ErrUnsupported)
}

// Stop has nothing to stop where Start cannot start.
func (c *Cluster) Stop() error { return nil }
