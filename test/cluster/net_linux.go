package cluster

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/warren-mesh/warren/netns"
)

// prepareNetnsDir makes netnsDir a mount point with shared propagation, as
// `ip netns add` does, so that a namespace removed here also disappears
// from mount namespaces copied later (the nodes' among them), which then
// cannot keep it alive. The flock serialises this with other test packages
// doing the same (test/testbed), which could otherwise both stack a bind
// mount on the directory.
func prepareNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", netnsDir, err)
	}
	d, err := os.Open(netnsDir)
	if err != nil {
		return fmt.Errorf("opening %s: %w", netnsDir, err)
	}
	defer d.Close()
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("locking %s: %w", netnsDir, err)
	}
	defer unix.Flock(int(d.Fd()), unix.LOCK_UN)
	for bound := false; ; bound = true {
		err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		// EINVAL: not a mount point yet. Bind it onto itself once and retry.
		if !errors.Is(err, unix.EINVAL) || bound {
			return fmt.Errorf("making %s a shared mount: %w", netnsDir, err)
		}
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mounting %s onto itself: %w", netnsDir, err)
		}
	}
}

// createNetns creates a network namespace pinned at path. It fails with
// fs.ErrExist when the name is taken, so a cluster never adopts (and later
// deletes) a namespace it did not create.
func createNetns(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("creating netns file: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: after unshare this thread is in the new
		// namespace, and the runtime ends a locked thread when its
		// goroutine returns.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unsharing netns: %w", err)
			return
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("pinning netns at %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// removeNetns unpins the namespace at path and removes the file; the kernel
// frees it, with every interface and iptables rule inside, once no process
// is left in it. A missing namespace is not an error.
func removeNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing netns file %s: %w", path, err)
	}
	return nil
}

// wireNodes connects the node namespaces: a veth between them (or, for one
// node, a veth with both ends in it, so its address sits on an up link),
// then inside each node lo up, the address, a default route to the other
// node (kube-proxy's ClusterIP rules only see packets that have a route),
// the route to the other node's pod CIDR, and IP forwarding.
func wireNodes(nodes []node) error {
	files := make([]*os.File, len(nodes))
	for i, n := range nodes {
		f, err := os.Open(n.netns)
		if err != nil {
			return fmt.Errorf("opening netns %s: %w", n.netns, err)
		}
		defer f.Close()
		files[i] = f
	}
	peerNS, peerName := files[0], "eth1"
	if len(nodes) > 1 {
		peerNS, peerName = files[1], linkName
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: linkName, Namespace: netlink.NsFd(files[0].Fd())},
		PeerName:      peerName,
		PeerNamespace: netlink.NsFd(peerNS.Fd()),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating node link: %w", err)
	}
	for _, n := range nodes {
		if err := netns.Do(n.netns, func() error { return configureNode(n, nodes) }); err != nil {
			return fmt.Errorf("configuring %s: %w", n.netns, err)
		}
	}
	return nil
}

// configureNode runs inside n's network namespace.
func configureNode(n node, nodes []node) error {
	up := []string{"lo", linkName}
	if len(nodes) == 1 {
		up = append(up, "eth1")
	}
	for _, name := range up {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return fmt.Errorf("finding %s: %w", name, err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("setting %s up: %w", name, err)
		}
	}
	link, err := netlink.LinkByName(linkName)
	if err != nil {
		return fmt.Errorf("finding %s: %w", linkName, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: n.addr.AsSlice(), Mask: net.CIDRMask(linkNet.Bits(), 32)}}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("adding %s: %w", n.addr, err)
	}
	def := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: n.peer.AsSlice(), Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}
	if err := netlink.RouteAdd(def); err != nil {
		return fmt.Errorf("adding default route: %w", err)
	}
	for _, other := range nodes {
		if other.index == n.index {
			continue
		}
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: other.addr.AsSlice(),
			Dst: &net.IPNet{IP: other.podCIDR.Addr().AsSlice(), Mask: net.CIDRMask(other.podCIDR.Bits(), 32)}}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("adding route to %s: %w", other.podCIDR, err)
		}
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enabling forwarding: %w", err)
	}
	return nil
}
