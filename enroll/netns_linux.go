package enroll

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/warren-mesh/warren/netns"
)

// FindNetNS returns the network namespace file in dir that holds the pod's
// addresses ips. containerd and CRI-O pin each pod's namespace there (as
// /var/run/netns/cni-<uuid>), so this finds the namespaces of pods that
// started before the agent, which the CNI plugin could not report. Each
// file is opened and its addresses listed over netlink from inside it.
// Errors wrap ErrNetNSNotFound or ErrNetNSAmbiguous when the scan worked.
func FindNetNS(dir string, ips []netip.Addr) (string, error) {
	idx, err := scanNetNS(dir)
	if err != nil {
		return "", err
	}
	path, err := idx.find(ips)
	if err != nil {
		return "", fmt.Errorf("finding netns in %s: %w", dir, err)
	}
	return path, nil
}

// scanNetNS indexes the addresses of every network namespace file in dir.
// Files that are not namespaces, or vanish meanwhile, are skipped; a
// missing dir is an empty index.
func scanNetNS(dir string) (netnsIndex, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return netnsIndex{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing netns dir: %w", err)
	}
	idx := netnsIndex{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		path := filepath.Join(dir, e.Name())
		addrs, err := namespaceAddrs(path)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			idx[a] = append(idx[a], path)
		}
	}
	return idx, nil
}

// namespaceAddrs lists the addresses in the namespace at path that can be
// a pod's: loopback and link-local ones are in every namespace.
func namespaceAddrs(path string) ([]netip.Addr, error) {
	ns, err := netns.Open(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	var h *netlink.Handle
	// A netlink socket belongs to the namespace it was created in; the
	// handle is then used from any thread.
	err = ns.Do(func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening netlink in netns %s: %w", path, err)
	}
	defer h.Close()
	list, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing addresses in netns %s: %w", path, err)
	}
	var out []netip.Addr
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() {
			continue
		}
		out = append(out, ip)
	}
	return out, nil
}
