package enroll

import (
	"fmt"
	"net/netip"
)

// netnsIndex maps each address found in a scan to the namespace files
// holding it. One scan answers for every pod looked up after it.
type netnsIndex map[netip.Addr][]string

// find returns the one namespace that holds the pod's addresses. Addresses
// found nowhere are skipped (a dual-stack pod's second family may be added
// later); two namespaces for one pod are an error.
func (idx netnsIndex) find(ips []netip.Addr) (string, error) {
	found := ""
	for _, ip := range ips {
		paths := idx[ip.Unmap()]
		switch {
		case len(paths) == 0:
			continue
		case len(paths) > 1:
			return "", fmt.Errorf("%w: %v in %v", ErrNetNSAmbiguous, ip, paths)
		case found != "" && found != paths[0]:
			return "", fmt.Errorf("%w: %v in %s and %s", ErrNetNSAmbiguous, ips, found, paths[0])
		}
		found = paths[0]
	}
	if found == "" {
		return "", fmt.Errorf("%w: %v", ErrNetNSNotFound, ips)
	}
	return found, nil
}
