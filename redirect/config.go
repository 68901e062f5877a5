package redirect

import (
	"errors"
	"fmt"
	"net/netip"
)

// Config holds every number the capture rules use. The defaults are Istio's
// in-pod (ztunnel) values; the agent must use the same ones for its listeners
// and socket marks, or captured traffic loops or is lost.
type Config struct {
	// OutboundPort is where the pod's outbound TCP is redirected (ztunnel's
	// outbound listener, 15001).
	OutboundPort uint16
	// InboundPlaintextPort is where inbound TCP that is not HBONE is redirected
	// (ztunnel's inbound passthrough listener, 15006).
	InboundPlaintextPort uint16
	// InboundTunnelPort is the HBONE port (15008). Inbound traffic to it is
	// left alone so it reaches the agent's HBONE listener directly.
	InboundTunnelPort uint16

	// AgentMark is the SO_MARK the agent puts on its own sockets in the pod
	// netns (0x539 = 1337, Istio's "proxy" mark). Packets with it are never
	// redirected, so the agent's upstream connections do not loop back to it.
	AgentMark uint32
	// ReplyMark is the mark (0x111) given to connections the agent opened with
	// a spoofed (pod peer's) source. It is saved in the connmark on the way in
	// and restored on the pod's replies, which policy routing then sends to
	// the local table so they reach the agent's transparent socket.
	ReplyMark uint32
	// MarkMask is the part of the 32-bit mark Warren owns (0xfff, as Istio),
	// leaving the upper bits to CNIs and other users of the mark.
	MarkMask uint32

	// RouteTable is the policy-routing table holding "local default dev lo"
	// (100, Istio's in-pod table).
	RouteTable int
	// RulePriority is the priority of the "fwmark ReplyMark lookup RouteTable"
	// rule. 32764 sits just before the kernel's main (32766) and default
	// (32767) rules and after anything a CNI installs with lower numbers.
	RulePriority int

	// ProbeSNATv4 and ProbeSNATv6 are the source addresses the node agent
	// SNATs kubelet health probes to on the host (Istio's 169.254.7.127 and
	// fd16:9254:7127:1337:ffff:ffff:ffff:ffff). Connections from them are not
	// captured, so probes keep working even when policy would deny them.
	ProbeSNATv4 netip.Addr
	ProbeSNATv6 netip.Addr
}

// DefaultConfig returns Istio's in-pod values, so Warren can replace ztunnel
// on a node without touching pods' expectations.
func DefaultConfig() Config {
	return Config{
		OutboundPort:         15001,
		InboundPlaintextPort: 15006,
		InboundTunnelPort:    15008,
		AgentMark:            0x539,
		ReplyMark:            0x111,
		MarkMask:             0xfff,
		RouteTable:           100,
		RulePriority:         32764,
		ProbeSNATv4:          netip.MustParseAddr("169.254.7.127"),
		ProbeSNATv6:          netip.MustParseAddr("fd16:9254:7127:1337:ffff:ffff:ffff:ffff"),
	}
}

// Validate reports the first inconsistency in c.
func (c Config) Validate() error {
	ports := []struct {
		name string
		v    uint16
	}{{"outbound port", c.OutboundPort}, {"inbound plaintext port", c.InboundPlaintextPort}, {"inbound tunnel port", c.InboundTunnelPort}}
	for i, p := range ports {
		if p.v == 0 {
			return fmt.Errorf("%s must not be 0", p.name)
		}
		for _, q := range ports[:i] {
			if p.v == q.v {
				return fmt.Errorf("%s and %s are both %d", q.name, p.name, p.v)
			}
		}
	}
	if c.MarkMask == 0 {
		return errors.New("mark mask must not be 0")
	}
	for _, m := range []struct {
		name string
		v    uint32
	}{{"agent mark", c.AgentMark}, {"reply mark", c.ReplyMark}} {
		if m.v == 0 {
			return fmt.Errorf("%s must not be 0", m.name)
		}
		if m.v&^c.MarkMask != 0 {
			return fmt.Errorf("%s %#x has bits outside mask %#x", m.name, m.v, c.MarkMask)
		}
	}
	if c.AgentMark == c.ReplyMark {
		return fmt.Errorf("agent mark and reply mark are both %#x", c.AgentMark)
	}
	// 0 is "unspecified" and 253-255 are the kernel's default, main and local
	// tables; sharing one would mix Warren's catch-all local route with them.
	switch {
	case c.RouteTable <= 0:
		return fmt.Errorf("route table %d must be positive", c.RouteTable)
	case c.RouteTable >= 253 && c.RouteTable <= 255:
		return fmt.Errorf("route table %d is reserved by the kernel", c.RouteTable)
	}
	// Priority 0 is the local-table rule; 32766 and 32767 are main and
	// default. Warren's rule must come before main to take effect.
	if c.RulePriority <= 0 || c.RulePriority >= 32766 {
		return fmt.Errorf("rule priority %d must be in 1..32765", c.RulePriority)
	}
	if !c.ProbeSNATv4.Is4() {
		return fmt.Errorf("probe SNAT v4 address %v is not IPv4", c.ProbeSNATv4)
	}
	if !c.ProbeSNATv6.Is6() || c.ProbeSNATv6.Is4In6() {
		return fmt.Errorf("probe SNAT v6 address %v is not IPv6", c.ProbeSNATv6)
	}
	return nil
}
