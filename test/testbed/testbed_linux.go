package testbed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/warren-mesh/warren/netns"
)

// Testbed is a built cluster. Nodes and Pods are in creation order (node 1's
// pods first). Close it when done.
type Testbed struct {
	Nodes []*Node
	Pods  []*Pod

	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	closed  bool
	spaces  []*space       // every namespace created, in creation order
	sw      *space         // the switch namespace, if any
	procs   []*Process     // every process started
	closers map[int]func() // servers and captures still open, by id
	nextID  int
}

// Node is one node namespace.
type Node struct {
	Name     string       // "node1"
	NetNS    string       // /run/netns/<prefix>-node1
	Underlay netip.Addr   // address on the underlay segment
	Link     string       // underlay interface, inside the node namespace
	PodCIDR  netip.Prefix // routed to this node by every other node
	Gateway  netip.Addr   // pods' default gateway, on every pod veth of this node
	Pods     []*Pod

	ep endpoint
}

// Pod is one pod namespace, wired to its node like the CNI ptp plugin does.
type Pod struct {
	Name     string // "n1p1": pod 1 of node 1
	NetNS    string // /run/netns/<prefix>-n1p1
	Node     *Node
	IP       netip.Addr // the pod's /32
	Link     string     // "eth0", inside the pod namespace
	HostLink string     // the node-side end of the pod's veth, inside the node namespace

	ep endpoint
}

// space is one namespace the testbed created.
type space struct {
	path string
	f    *os.File  // for IFLA_NET_NS_FD while building; nil once closed
	ns   *netns.NS // for running code inside
}

// Per-namespace sysctls, as strings written to /proc/sys.
var (
	// Benchmarks open many short connections: reuse TIME_WAIT ports and
	// widen the ephemeral range (the kernel default is 32768-60999) so they
	// do not run out of 4-tuples. It starts at 20000 so that the ports tests
	// listen on (below 20000) are never taken by an ephemeral socket, such as
	// the agent's transparent connections inside a pod.
	sysctlsAll = map[string]string{
		"net/ipv4/tcp_tw_reuse":        "1",
		"net/ipv4/ip_local_port_range": "20000 65000",
		// Keep the mesh's own ports (Istio uses 15000-15090) out of the
		// ephemeral range: a client socket that happened to hold 15008 would
		// make the agent's listener fail with EADDRINUSE.
		"net/ipv4/ip_local_reserved_ports": "15000-15100",
	}
	// Nodes route between pods and the underlay.
	sysctlsNode = map[string]string{"net/ipv4/ip_forward": "1"}
)

// New builds the cluster cfg describes. In order it creates the namespaces
// (nodes, pods, and a switch namespace with a bridge unless there are exactly
// two nodes), the underlay veths, one veth per pod, and then configures each
// namespace: sysctls, lo up, addresses, routes. Nothing is created in the
// caller's namespace. On failure it removes everything it created and may be
// retried. It returns ErrNotRoot when not running as root.
func New(ctx context.Context, cfg Config, log *slog.Logger) (_ *Testbed, err error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("validating testbed config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	tb := &Testbed{
		cfg:     cfg,
		log:     log.With("component", "testbed", "prefix", cfg.Prefix),
		closers: map[int]func(){},
	}
	defer func() {
		if err != nil {
			if cerr := tb.Close(); cerr != nil {
				tb.log.Error("cleaning up after failed build", "err", cerr)
			}
		}
	}()
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"namespaces", tb.createNamespaces},
		{"underlay", tb.createUnderlay},
		{"pods", tb.createPodLinks},
		{"configure", tb.configure},
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("building testbed %s: %w", cfg.Prefix, err)
		}
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("building testbed %s: %s: %w", cfg.Prefix, s.name, err)
		}
		if cfg.hook != nil {
			if err := cfg.hook(s.name); err != nil {
				return nil, fmt.Errorf("building testbed %s: after %s: %w", cfg.Prefix, s.name, err)
			}
		}
	}
	// The files were only needed to place links; the netns handles stay
	// open for Dial and Listen.
	for _, s := range tb.spaces {
		s.f.Close()
		s.f = nil
	}
	tb.log.Info("testbed up", "nodes", len(tb.Nodes), "pods", len(tb.Pods), "subnet", cfg.Subnet, "took", time.Since(start))
	return tb, nil
}

// newSpace creates and records one namespace.
func (tb *Testbed) newSpace(name string) (*space, error) {
	path, err := CreateNamedNS(name)
	if err != nil {
		return nil, fmt.Errorf("creating netns %s: %w", name, err)
	}
	s := &space{path: path}
	tb.spaces = append(tb.spaces, s) // recorded first so Close removes it whatever fails next
	if s.f, err = os.Open(path); err != nil {
		return nil, fmt.Errorf("opening netns %s: %w", path, err)
	}
	if s.ns, err = netns.Open(path); err != nil {
		return nil, err
	}
	return s, nil
}

func (tb *Testbed) createNamespaces(context.Context) error {
	if err := PrepareNetnsDir(); err != nil {
		return err
	}
	c := tb.cfg
	for n := 1; n <= c.Nodes; n++ {
		s, err := tb.newSpace(c.nsName(nodeName(n)))
		if err != nil {
			return err
		}
		node := &Node{
			Name:     nodeName(n),
			NetNS:    s.path,
			ep:       endpoint{tb: tb, space: s},
			Underlay: c.underlayAddr(n),
			Link:     c.underlayLink(n),
			PodCIDR:  c.podCIDR(n),
			Gateway:  c.gateway(n),
		}
		tb.Nodes = append(tb.Nodes, node)
	}
	for _, node := range tb.Nodes {
		n := nodeNum(node)
		for p := 1; p <= c.PodsPerNode; p++ {
			s, err := tb.newSpace(c.nsName(podName(n, p)))
			if err != nil {
				return err
			}
			pod := &Pod{
				Name:     podName(n, p),
				NetNS:    s.path,
				ep:       endpoint{tb: tb, space: s},
				Node:     node,
				IP:       c.podIP(n, p),
				Link:     podLink,
				HostLink: c.hostVeth(n, p),
			}
			node.Pods = append(node.Pods, pod)
			tb.Pods = append(tb.Pods, pod)
		}
	}
	return nil
}

// nodeNum is the 1-based node number, which is also the last octet of its
// underlay address.
func nodeNum(n *Node) int { return int(n.Underlay.As4()[3]) }

// createUnderlay wires the nodes together: one veth between the two nodes
// when there are exactly two (the fastest path, for benchmarks), otherwise a
// bridge in a switch namespace with one veth per node (a lone node too, so
// its Link and Underlay work like everywhere else).
func (tb *Testbed) createUnderlay(ctx context.Context) error {
	c := tb.cfg
	if len(tb.Nodes) == 2 {
		a, b := tb.Nodes[0], tb.Nodes[1]
		return addVeth(a.Link, a.ep.space, underlayIndex(1), b.Link, b.ep.space)
	}
	sw, err := tb.newSpace(c.switchNS())
	if err != nil {
		return err
	}
	tb.sw = sw
	for _, node := range tb.Nodes {
		if err := addVeth(c.switchPort(nodeNum(node)), sw, underlayIndex(nodeNum(node)), node.Link, node.ep.space); err != nil {
			return err
		}
	}
	return sw.ns.Do(func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: c.bridgeName()}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("adding bridge %s: %w", br.Name, err)
		}
		for _, node := range tb.Nodes {
			port, err := netlink.LinkByName(c.switchPort(nodeNum(node)))
			if err != nil {
				return fmt.Errorf("finding switch port: %w", err)
			}
			if err := netlink.LinkSetMaster(port, br); err != nil {
				return fmt.Errorf("attaching %s to bridge: %w", port.Attrs().Name, err)
			}
			if err := netlink.LinkSetUp(port); err != nil {
				return fmt.Errorf("setting %s up: %w", port.Attrs().Name, err)
			}
		}
		if err := netlink.LinkSetUp(br); err != nil {
			return fmt.Errorf("setting bridge up: %w", err)
		}
		return setLoUp()
	})
}

// Interface indexes for the first end of each veth. The kernel numbers each
// namespace's interfaces from 1 (lo), so in fresh namespaces both ends of a
// veth tend to get the same index, say 2. The link watcher takes equal
// indexes to mean the link is not stacked on another and handles its carrier
// change as non-urgent, up to a second later; until then the link drops
// every packet. Explicit indexes far above the automatic ones keep the two
// ends different and make links usable at once.
const (
	underlayIndexBase = 1000 // + node number (at most 250)
	hostVethIndexBase = 2000 // + pod number (at most 240), unique within a node
)

func underlayIndex(n int) int { return underlayIndexBase + n }

func hostVethIndex(p *Pod) int {
	for i, q := range p.Node.Pods {
		if q == p {
			return hostVethIndexBase + i + 1
		}
	}
	panic("pod not on its node")
}

// addVeth creates a veth pair with each end directly in its namespace; the
// request goes out from the caller's namespace but no interface ever exists
// there. The first end gets the given interface index.
func addVeth(name string, ns *space, index int, peer string, peerNS *space) error {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name, Namespace: netlink.NsFd(ns.f.Fd()), Index: index},
		PeerName:      peer,
		PeerNamespace: netlink.NsFd(peerNS.f.Fd()),
	}
	if err := netlink.LinkAdd(v); err != nil {
		return fmt.Errorf("adding veth %s (in %s) <-> %s (in %s): %w", name, ns.path, peer, peerNS.path, err)
	}
	return nil
}

func (tb *Testbed) createPodLinks(context.Context) error {
	for _, pod := range tb.Pods {
		if err := addVeth(pod.HostLink, pod.Node.ep.space, hostVethIndex(pod), pod.Link, pod.ep.space); err != nil {
			return err
		}
	}
	return nil
}

// configure sets up every namespace from inside it. Namespaces are
// independent now that the links exist, so they are configured in parallel.
func (tb *Testbed) configure(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(tb.Nodes)+len(tb.Pods))
	for i, node := range tb.Nodes {
		wg.Go(func() { errs[i] = node.ep.space.ns.Do(func() error { return tb.configureNode(ctx, node) }) })
	}
	for i, pod := range tb.Pods {
		wg.Go(func() { errs[len(tb.Nodes)+i] = pod.ep.space.ns.Do(func() error { return configurePod(ctx, pod) }) })
	}
	var swErr error
	if tb.sw != nil {
		// The switch needs no configuration, but its ports must be ready too.
		wg.Go(func() { swErr = tb.sw.ns.Do(func() error { return waitLinksReady(ctx) }) })
	}
	wg.Wait()
	return errors.Join(append(errs, swErr)...)
}

// configureNode runs inside node's namespace.
func (tb *Testbed) configureNode(ctx context.Context, node *Node) error {
	if err := writeSysctls(sysctlsAll, sysctlsNode); err != nil {
		return fmt.Errorf("node %s: %w", node.Name, err)
	}
	if err := setLoUp(); err != nil {
		return fmt.Errorf("node %s: %w", node.Name, err)
	}
	ul, err := linkUpWithAddr(node.Link, netip.PrefixFrom(node.Underlay, underlayBits))
	if err != nil {
		return fmt.Errorf("node %s: %w", node.Name, err)
	}
	for _, pod := range node.Pods {
		hv, err := linkUpWithAddr(pod.HostLink, netip.PrefixFrom(node.Gateway, 32))
		if err != nil {
			return fmt.Errorf("node %s: %w", node.Name, err)
		}
		// Host route to the pod, sourced from the gateway so replies to the
		// pod's ARP for the gateway and the node's own packets agree.
		r := &netlink.Route{
			LinkIndex: hv.Attrs().Index,
			Dst:       ipNet(netip.PrefixFrom(pod.IP, 32)),
			Scope:     netlink.SCOPE_LINK,
			Src:       node.Gateway.AsSlice(),
		}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("node %s: adding route to pod %s: %w", node.Name, pod.Name, err)
		}
	}
	for _, peer := range tb.Nodes {
		if peer == node {
			continue
		}
		// host-gw style: the peer's podCIDR via the peer's underlay address.
		r := &netlink.Route{
			LinkIndex: ul.Attrs().Index,
			Dst:       ipNet(peer.PodCIDR),
			Gw:        peer.Underlay.AsSlice(),
		}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("node %s: adding route to %s podCIDR: %w", node.Name, peer.Name, err)
		}
	}
	if err := waitLinksReady(ctx); err != nil {
		return fmt.Errorf("node %s: %w", node.Name, err)
	}
	return nil
}

// configurePod runs inside pod's namespace.
func configurePod(ctx context.Context, pod *Pod) error {
	if err := writeSysctls(sysctlsAll); err != nil {
		return fmt.Errorf("pod %s: %w", pod.Name, err)
	}
	if err := setLoUp(); err != nil {
		return fmt.Errorf("pod %s: %w", pod.Name, err)
	}
	eth, err := linkUpWithAddr(pod.Link, netip.PrefixFrom(pod.IP, 32))
	if err != nil {
		return fmt.Errorf("pod %s: %w", pod.Name, err)
	}
	gw := pod.Node.Gateway
	// With a /32 the gateway is not on any subnet: first a link-scope route
	// to it, then the default route through it.
	routes := []*netlink.Route{
		{LinkIndex: eth.Attrs().Index, Dst: ipNet(netip.PrefixFrom(gw, 32)), Scope: netlink.SCOPE_LINK},
		{LinkIndex: eth.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: gw.AsSlice(), Src: pod.IP.AsSlice()},
	}
	for _, r := range routes {
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("pod %s: adding route %v: %w", pod.Name, r.Dst, err)
		}
	}
	if err := waitLinksReady(ctx); err != nil {
		return fmt.Errorf("pod %s: %w", pod.Name, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// linkUpWithAddr, run inside a namespace, adds addr to the named link and
// sets it up.
func linkUpWithAddr(name string, addr netip.Prefix) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("finding link %s: %w", name, err)
	}
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return nil, fmt.Errorf("adding %v to %s: %w", addr, name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("setting %s up: %w", name, err)
	}
	return l, nil
}

// linkReadyPoll is how often waitLinksReady looks; links are usually ready
// within a millisecond. linkReadyTimeout bounds the wait even when ctx does
// not: the link watcher's slowest path is one second.
const (
	linkReadyPoll    = time.Millisecond
	linkReadyTimeout = 5 * time.Second
)

// waitLinksReady, run inside a namespace, waits until every link that is set
// up has also been activated by the kernel's link watcher, which happens
// asynchronously after "up": until then the link's qdisc is "noop" and drops
// every packet, so a test's first SYN would be lost and retried only after a
// second.
func waitLinksReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, linkReadyTimeout)
	defer cancel()
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("listing links: %w", err)
		}
		var pending []string
		for _, l := range links {
			a := l.Attrs()
			if a.Flags&net.FlagUp == 0 || a.Name == "lo" {
				continue
			}
			ready, err := linkActive(l)
			if err != nil {
				return err
			}
			if !ready {
				pending = append(pending, a.Name)
			}
		}
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for links %v to come up: %w", pending, ctx.Err())
		case <-time.After(linkReadyPoll):
		}
	}
}

// linkActive reports whether l is operationally up and has its real qdisc;
// "noop" is the placeholder a link has until the link watcher activates it.
func linkActive(l netlink.Link) (bool, error) {
	if l.Attrs().OperState != netlink.OperUp {
		return false, nil
	}
	qs, err := netlink.QdiscList(l)
	if err != nil {
		return false, fmt.Errorf("listing qdiscs of %s: %w", l.Attrs().Name, err)
	}
	for _, q := range qs {
		if q.Type() == "noop" {
			return false, nil
		}
	}
	return true, nil
}

// setLoUp, run inside a namespace, sets its loopback up (new namespaces
// start with it down, and 127.0.0.1 is unusable until then).
func setLoUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("setting lo up: %w", err)
	}
	return nil
}

// writeSysctls, run inside a namespace, writes the given sysctls; the
// /proc/sys/net tree belongs to the namespace of the thread that opens it.
func writeSysctls(sets ...map[string]string) error {
	for _, set := range sets {
		for k, v := range set {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0); err != nil {
				return fmt.Errorf("setting sysctl %s=%q: %w", k, v, err)
			}
		}
	}
	return nil
}

// Pod returns the pod with the given name ("n1p2"), or nil.
func (tb *Testbed) Pod(name string) *Pod {
	for _, p := range tb.Pods {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Node returns the node with the given name ("node1"), or nil.
func (tb *Testbed) Node(name string) *Node {
	for _, n := range tb.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Prefix is the prefix of every namespace and interface name.
func (tb *Testbed) Prefix() string { return tb.cfg.Prefix }

// track registers a closer for Close; the returned func unregisters it.
func (tb *Testbed) track(closeFn func()) (untrack func(), err error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if tb.closed {
		return nil, ErrClosed
	}
	id := tb.nextID
	tb.nextID++
	tb.closers[id] = closeFn
	return func() {
		tb.mu.Lock()
		delete(tb.closers, id)
		tb.mu.Unlock()
	}, nil
}

// Close, in order: closes servers and captures, stops every started process
// (SIGTERM to its process group, SIGKILL after the grace period, all in
// parallel), and removes every namespace, which takes every interface with
// it. It is idempotent and safe after a failed New; errors are joined and
// the remaining steps still run.
func (tb *Testbed) Close() error {
	tb.mu.Lock()
	if tb.closed {
		tb.mu.Unlock()
		return nil
	}
	tb.closed = true
	closers := tb.closers
	tb.closers = nil
	procs := tb.procs
	tb.mu.Unlock()

	for _, c := range closers {
		c()
	}
	var wg sync.WaitGroup
	errs := make([]error, len(procs))
	for i, p := range procs {
		wg.Go(func() { errs[i] = p.Stop() })
	}
	wg.Wait()
	for i := len(tb.spaces) - 1; i >= 0; i-- {
		s := tb.spaces[i]
		if s.f != nil {
			s.f.Close()
		}
		if s.ns != nil {
			s.ns.Close()
		}
		errs = append(errs, RemoveNamedNS(s.path))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("closing testbed %s: %w", tb.cfg.Prefix, err)
	}
	tb.log.Info("testbed down")
	return nil
}
