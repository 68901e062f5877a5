//go:build !linux

package redirect

import (
	"context"
	"fmt"
	"net/netip"
)

// Apply fails: host probe SNAT needs Linux nftables.
func (h *HostProbes) Apply(ctx context.Context, ips []netip.Addr) error {
	return fmt.Errorf("applying host probe SNAT: %w", ErrNotSupported)
}

// Remove fails: host probe SNAT needs Linux nftables.
func (h *HostProbes) Remove(ctx context.Context) error {
	return fmt.Errorf("removing host probe SNAT: %w", ErrNotSupported)
}
