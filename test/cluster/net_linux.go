package cluster

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"

	"github.com/warren-mesh/warren/netns"
	"github.com/warren-mesh/warren/test/testbed"
)

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

// createNetns creates the network namespace pinned at path, which must be
// in testbed.NetnsDir (the node namespaces are named there, so `ip netns`
// lists them).
func createNetns(path string) error {
	if filepath.Dir(path) != testbed.NetnsDir {
		return fmt.Errorf("netns %s: not in %s", path, testbed.NetnsDir)
	}
	_, err := testbed.CreateNamedNS(filepath.Base(path))
	return err
}
