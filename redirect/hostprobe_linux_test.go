package redirect

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/warren-mesh/warren/netns"
)

// probeTopo is a node netns with a pod and a client netns behind it, each on
// its own veth and subnet; the node routes between them, as a node routes
// between its pods and the rest of the cluster.
type probeTopo struct {
	node, pod, client       string // netns names
	nodePath, podPath       string
	nodeNS, podNS, clientNS *netns.NS
	// Per family: the node's address on the pod link, the pod's address
	// (put in the probe set), a second pod address (not in the set at
	// first) and the client's address.
	node4, pod4, pod4b, client4 netip.Addr
	node6, pod6, pod6b, client6 netip.Addr
}

func newProbeTopo(t *testing.T) *probeTopo {
	t.Helper()
	p := runPrefix(t)
	tp := &probeTopo{node: p + "n", pod: p + "p", client: p + "c"}
	tp.nodePath, tp.podPath = newNetNS(t, tp.node), newNetNS(t, tp.pod)
	clientPath := newNetNS(t, tp.client)
	var x [1]byte
	rand.Read(x[:])
	v4 := func(net, host byte) netip.Addr { return netip.AddrFrom4([4]byte{10, x[0], net, host}) }
	v6 := func(net, host byte) netip.Addr {
		return netip.AddrFrom16([16]byte{0xfd, 0, 0, x[0], 0, net, 15: host})
	}
	tp.node4, tp.pod4, tp.pod4b, tp.client4 = v4(1, 1), v4(1, 2), v4(1, 3), v4(2, 2)
	tp.node6, tp.pod6, tp.pod6b, tp.client6 = v6(1, 1), v6(1, 2), v6(1, 3), v6(2, 2)

	// nodad: IPv6 addresses are usable at once instead of after duplicate
	// address detection.
	addr := func(ns, dev string, a netip.Addr, bits int) {
		args := []string{"ip", "-n", ns, "addr", "add", netip.PrefixFrom(a, bits).String(), "dev", dev}
		if a.Is6() {
			args = append(args, "nodad")
		}
		sh(t, args...)
	}
	for _, link := range []struct {
		far             string
		nodeDev, farDev string
		net             byte
		farAddrs        []netip.Addr
	}{
		{tp.pod, p + "pn", p + "pp", 1, []netip.Addr{tp.pod4, tp.pod4b, tp.pod6, tp.pod6b}},
		{tp.client, p + "cn", p + "cc", 2, []netip.Addr{tp.client4, tp.client6}},
	} {
		sh(t, "ip", "link", "add", link.nodeDev, "netns", tp.node, "type", "veth", "peer", "name", link.farDev, "netns", link.far)
		addr(tp.node, link.nodeDev, v4(link.net, 1), 24)
		addr(tp.node, link.nodeDev, v6(link.net, 1), 64)
		for _, a := range link.farAddrs {
			bits := 24
			if a.Is6() {
				bits = 64
			}
			addr(link.far, link.farDev, a, bits)
		}
		// No duplicate address detection for the link-local addresses
		// either: while it runs, neighbour discovery stalls and the first
		// IPv6 connection waits for SYN retransmissions (2s).
		inNS(t, tp.node, "sysctl", "-q", "-w", "net.ipv6.conf."+link.nodeDev+".accept_dad=0")
		inNS(t, link.far, "sysctl", "-q", "-w", "net.ipv6.conf."+link.farDev+".accept_dad=0")
		sh(t, "ip", "-n", tp.node, "link", "set", link.nodeDev, "up")
		sh(t, "ip", "-n", link.far, "link", "set", link.farDev, "up")
		// The far side routes everything via the node, replies to the
		// probe address included.
		sh(t, "ip", "-n", link.far, "route", "add", "default", "via", v4(link.net, 1).String())
		sh(t, "ip", "-n", link.far, "-6", "route", "add", "default", "via", v6(link.net, 1).String())
	}
	inNS(t, tp.node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	// The kernel activates a device's queue only when it processes the
	// carrier change, shortly after "link set up"; packets sent before are
	// dropped and the first connection waits a SYN retransmission (1s).
	for _, d := range [][2]string{{tp.node, p + "pn"}, {tp.pod, p + "pp"}, {tp.node, p + "cn"}, {tp.client, p + "cc"}} {
		waitLinkUp(t, d[0], d[1])
	}
	tp.nodeNS, tp.podNS, tp.clientNS = openNS(t, tp.nodePath), openNS(t, tp.podPath), openNS(t, clientPath)
	return tp
}

// waitLinkUp waits until dev in netns ns is operationally up.
func waitLinkUp(t *testing.T, ns, dev string) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for !strings.Contains(sh(t, "ip", "-n", ns, "-o", "link", "show", "dev", dev), " state UP ") {
		if time.Now().After(deadline) {
			t.Fatalf("%s in netns %s not up after %v", dev, ns, ioTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// source connects from netns from to dst and returns the source address
// the listener saw.
func source(t *testing.T, from *netns.NS, ln *net.TCPListener, dst netip.AddrPort) netip.Addr {
	t.Helper()
	dial(t, from, &net.Dialer{}, dst)
	return acceptOne(t, ln).RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
}

var nftElements = regexp.MustCompile(`elements = \{([^}]*)\}`)

// checkHostProbesLive compares `nft list table inet warren-probes` with
// RenderHostProbes, which ties the golden files to the programmed table. nft
// prints set elements in hash order, wrapped; they are sorted onto one line.
func checkHostProbesLive(t *testing.T, cfg Config, ns string, ips []netip.Addr) {
	t.Helper()
	got := inNS(t, ns, "nft", "list", "table", "inet", hostProbeTable)
	got = strings.ReplaceAll(got, "priority srcnat;", fmt.Sprintf("priority %d;", hostProbePriority))
	got = nftElements.ReplaceAllStringFunc(got, func(m string) string {
		var as []netip.Addr
		for _, f := range strings.Split(nftElements.FindStringSubmatch(m)[1], ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(f))
			if err != nil {
				t.Errorf("nft printed set element %q: %v", f, err)
				return m
			}
			as = append(as, a)
		}
		slices.SortFunc(as, netip.Addr.Compare)
		ss := make([]string, len(as))
		for i, a := range as {
			ss[i] = a.String()
		}
		return "elements = { " + strings.Join(ss, ", ") + " }"
	})
	want, err := RenderHostProbes(cfg, ips)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("nft list table inet %s differs from RenderHostProbes (-want +got):\n%s", hostProbeTable, diff)
	}
}

// TestHostProbesNamespaced applies the host side in a node netns and checks
// what reaches a pod behind it: connections the node opens are SNATed to
// the probe address, forwarded ones are not, and with the in-pod capture in
// place the probes still reach the app while forwarded traffic is captured.
func TestHostProbesNamespaced(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	cfg := DefaultConfig()
	tp := newProbeTopo(t)
	// Foreign state in the node netns, including a nat postrouting chain of
	// its own: it must survive Apply and Remove untouched.
	inNS(t, tp.node, "nft", "add table inet foreign; add chain inet foreign post { type nat hook postrouting priority 50; }; add rule inet foreign post udp dport 9 accept")
	before := inNS(t, tp.node, "nft", "list", "ruleset")

	var sink logSink
	h, err := NewHostProbes(cfg, sink.logger(), HostProbesInNetNS(tp.nodePath))
	if err != nil {
		t.Fatal(err)
	}
	apply := func(t *testing.T, ips ...netip.Addr) {
		t.Helper()
		if err := h.Apply(ctx, ips); err != nil {
			t.Fatalf("Apply(%v): %v", ips, err)
		}
		checkHostProbesLive(t, cfg, tp.node, ips)
	}
	app := map[Family]*net.TCPListener{
		IPv4: listen(t, tp.podNS, "tcp4", ":8080"),
		IPv6: listen(t, tp.podNS, "tcp6", "[::]:8080"),
	}
	port := func(a netip.Addr) netip.AddrPort { return netip.AddrPortFrom(a, 8080) }
	fam := func(a netip.Addr) Family { return FamiliesOf([]netip.Addr{a})[0] }
	expect := func(t *testing.T, from *netns.NS, dst, want netip.Addr) {
		t.Helper()
		if got := source(t, from, app[fam(dst)], port(dst)); got != want {
			t.Errorf("connection to %v arrived from %v, want %v", dst, got, want)
		}
	}

	apply(t, tp.pod4, tp.pod6)
	t.Run("node to pod is SNATed", func(t *testing.T) {
		expect(t, tp.nodeNS, tp.pod4, cfg.ProbeSNATv4)
		expect(t, tp.nodeNS, tp.pod6, cfg.ProbeSNATv6)
	})
	t.Run("node to address not in set is not SNATed", func(t *testing.T) {
		expect(t, tp.nodeNS, tp.pod4b, tp.node4)
		expect(t, tp.nodeNS, tp.pod6b, tp.node6)
	})
	t.Run("forwarded is not SNATed", func(t *testing.T) {
		expect(t, tp.clientNS, tp.pod4, tp.client4)
		expect(t, tp.clientNS, tp.pod6, tp.client6)
	})

	t.Run("apply twice is a no-op", func(t *testing.T) {
		// -a prints handles, which any rewrite of the table would change.
		first := inNS(t, tp.node, "nft", "-a", "list", "ruleset")
		sink.Reset()
		apply(t, tp.pod6, tp.pod4, tp.pod4)
		if diff := cmp.Diff(first, inNS(t, tp.node, "nft", "-a", "list", "ruleset")); diff != "" {
			t.Errorf("second Apply changed the ruleset (-first +second):\n%s", diff)
		}
		if sink.Len() != 0 {
			t.Errorf("second Apply reported changes:\n%s", sink.String())
		}
	})

	t.Run("apply updates the sets only", func(t *testing.T) {
		chain := []string{"nft", "-a", "list", "chain", "inet", hostProbeTable, hostProbeChain}
		rules := inNS(t, tp.node, chain...)
		apply(t, tp.pod4b, tp.pod6b)
		if diff := cmp.Diff(rules, inNS(t, tp.node, chain...)); diff != "" {
			t.Errorf("changing the sets rewrote the chain (-before +after):\n%s", diff)
		}
		expect(t, tp.nodeNS, tp.pod4b, cfg.ProbeSNATv4)
		expect(t, tp.nodeNS, tp.pod6b, cfg.ProbeSNATv6)
		expect(t, tp.nodeNS, tp.pod4, tp.node4)
		expect(t, tp.nodeNS, tp.pod6, tp.node6)
	})

	t.Run("empty keeps the table", func(t *testing.T) {
		apply(t)
		expect(t, tp.nodeNS, tp.pod4b, tp.node4)
	})

	t.Run("repairs tampering", func(t *testing.T) {
		apply(t, tp.pod4, tp.pod6)
		want := inNS(t, tp.node, "nft", "list", "ruleset")
		for _, tamper := range []string{
			"flush chain inet warren-probes postrouting",
			"add element inet warren-probes pods4 { 10.255.255.1 }",
			"add set inet warren-probes extra { type ipv4_addr; }",
		} {
			inNS(t, tp.node, "nft", tamper)
		}
		apply(t, tp.pod4, tp.pod6)
		if diff := cmp.Diff(want, inNS(t, tp.node, "nft", "list", "ruleset")); diff != "" {
			t.Errorf("Apply did not repair the table (-want +got):\n%s", diff)
		}
		expect(t, tp.nodeNS, tp.pod4, cfg.ProbeSNATv4)
	})

	t.Run("probes pass the in-pod capture", func(t *testing.T) {
		capture, err := NewNFTables(cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		pod := Pod{NetNS: tp.podPath, IPs: []netip.Addr{tp.pod4, tp.pod6}}
		if err := capture.Apply(ctx, pod); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := capture.Remove(ctx, pod); err != nil {
				t.Error(err)
			}
		})
		inbound := map[Family]*net.TCPListener{
			IPv4: listen(t, tp.podNS, "tcp4", fmt.Sprintf(":%d", cfg.InboundPlaintextPort)),
			IPv6: listen(t, tp.podNS, "tcp6", fmt.Sprintf("[::]:%d", cfg.InboundPlaintextPort)),
		}
		for _, dst := range []netip.Addr{tp.pod4, tp.pod6} {
			expect(t, tp.nodeNS, dst, probeAddr(cfg, fam(dst)))
			dial(t, tp.clientNS, &net.Dialer{}, port(dst))
			checkOrigDst(t, acceptOne(t, inbound[fam(dst)]), port(dst))
		}
	})

	t.Run("remove restores the ruleset", func(t *testing.T) {
		if err := h.Remove(ctx); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		if diff := cmp.Diff(before, inNS(t, tp.node, "nft", "list", "ruleset")); diff != "" {
			t.Errorf("Remove did not restore the ruleset (-before +after):\n%s", diff)
		}
		sink.Reset()
		if err := h.Remove(ctx); err != nil {
			t.Fatalf("second Remove: %v", err)
		}
		if sink.Len() != 0 {
			t.Errorf("second Remove reported changes:\n%s", sink.String())
		}
		expect(t, tp.nodeNS, tp.pod4, tp.node4)
	})
}

func TestHostProbesErrors(t *testing.T) {
	ctx := context.Background()
	h, err := NewHostProbes(DefaultConfig(), slog.New(slog.DiscardHandler), HostProbesInNetNS("/nonexistent/netns"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Apply(ctx, []netip.Addr{{}}); !errors.Is(err, ErrInvalidAddr) {
		t.Errorf("Apply with an invalid address = %v, want ErrInvalidAddr", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := h.Apply(cancelled, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Apply with a cancelled context = %v, want context.Canceled", err)
	}
	if err := h.Apply(ctx, nil); err == nil {
		t.Error("Apply in a missing netns succeeded")
	}
	if err := h.Remove(ctx); err != nil {
		t.Errorf("Remove in a missing netns = %v, want nil", err)
	}
}
