package redirect

import (
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// HostProbes keeps kubelet health probes working for captured pods. In the
// node's network namespace it SNATs TCP that host processes (the kubelet)
// open towards captured pods to the probe address (Config.ProbeSNATv4/v6),
// which the in-pod rules let through uncaptured; without it a probe looks
// like any other node traffic and is denied under STRICT mTLS or a DENY
// policy. It is Istio's ISTIO_POSTRT rule with its istio-inpod-probes ipsets,
// as one nftables table "inet warren-probes" holding a set of pod addresses
// per family and one nat postrouting chain. The table is Warren's alone;
// other tables in the netns are never touched.
//
// Apply and Remove are serialised, so the agent may call them from several
// goroutines.
type HostProbes struct {
	cfg   Config
	log   *slog.Logger
	netns string

	// mu serialises Apply and Remove: each reads the live table, decides,
	// then writes, and two interleaved runs could undo each other's writes.
	mu sync.Mutex
}

// HostProbesOption changes how NewHostProbes builds a HostProbes.
type HostProbesOption func(*HostProbes)

// HostProbesInNetNS makes Apply and Remove program the network namespace at
// path (e.g. /run/netns/node) instead of the calling thread's. The agent runs
// with hostNetwork and needs no option; tests use it to target a netns they
// made.
func HostProbesInNetNS(path string) HostProbesOption {
	return func(h *HostProbes) { h.netns = path }
}

// NewHostProbes returns the host-side probe SNAT. It checks only cfg; kernel
// support shows on first use as an error wrapping ErrNotSupported.
func NewHostProbes(cfg Config, log *slog.Logger, opts ...HostProbesOption) (*HostProbes, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid redirect config: %w", err)
	}
	h := &HostProbes{cfg: cfg}
	for _, o := range opts {
		o(h)
	}
	h.log = log.With("component", "redirect", "backend", "hostprobe")
	return h, nil
}

// The table, its two sets and its chain. The name differs from the in-pod
// tables ("warren") so that `nft list ruleset` tells node state from pod
// state.
const (
	hostProbeTable = "warren-probes"
	hostProbeChain = "postrouting"
	// hostProbePriority is srcnat (100), where iptables' nat POSTROUTING
	// runs, so the SNAT happens at the same point as Istio's ISTIO_POSTRT.
	// The first NAT chain at a hook that binds a mapping wins, so a CNI's
	// masquerade of host-to-pod traffic registered earlier at the same
	// priority would take precedence, as it does over Istio's appended jump.
	hostProbePriority = 100
)

// probeFamily is the per-family part of the host table: which set holds the
// pod addresses and which address probes are SNATed to.
type probeFamily struct {
	f    Family
	set  string
	snat netip.Addr
}

// probeFamilies are both families' parts, IPv4 first. Both are always
// programmed, whatever addresses the pods have: an empty set costs nothing
// and keeps the table's shape fixed, so Apply only ever edits set elements.
func probeFamilies(cfg Config) [2]probeFamily {
	return [2]probeFamily{
		{IPv4, "pods4", cfg.ProbeSNATv4},
		{IPv6, "pods6", cfg.ProbeSNATv6},
	}
}

// nftAddrType is the nft set key type for addresses of family f.
func nftAddrType(f Family) string {
	if f == IPv6 {
		return "ipv6_addr"
	}
	return "ipv4_addr"
}

// ruleBody is the SNAT rule of pf in nft syntax, as nft lists it back.
//
// "meta skuid >= 0" is how nftables says iptables' "-m owner
// --socket-exists": loading the socket's uid fails, and so the rule does not
// match, unless the packet belongs to a full local socket that a process
// holds (skb->sk with a file, in this netns); any uid compares >= 0. So it
// matches the kubelet's (and other host processes') connections, and not
// packets forwarded through the node from other pods or nodes, which have
// no local socket, nor kube-proxy's DNATed service traffic from elsewhere,
// which must stay captured. It is preferred over "fib saddr type local",
// which trusts the packet's source address: a pod could forge the node's
// address (IPv6 has no martian-source check, and IPv4 accepts local sources
// on links with accept_local set) and have its traffic SNATed past policy.
// The "socket" expression cannot be used: the kernel allows it only in
// prerouting, input and output, and SNAT can only happen in postrouting.
func (pf probeFamily) ruleBody() string {
	fam := nftFamily(pf.f)
	return fmt.Sprintf("meta l4proto tcp %s daddr @%s meta skuid >= 0 snat %s to %s", fam, pf.set, fam, pf.snat)
}

// ruleComment is the comment stored with the rule: its reason and a hash
// of its text. Apply compares comments to tell whether the live rule is the
// desired one, so a new probe address forces a rewrite.
func (pf probeFamily) ruleComment() string {
	h := fnv.New32a()
	h.Write([]byte(pf.ruleBody()))
	return fmt.Sprintf("warren: host-originated probe to captured pod, SNAT [%08x]", h.Sum32())
}

// ErrInvalidAddr is returned by Apply for a pod address that is the zero
// netip.Addr; nothing is changed.
var ErrInvalidAddr = errors.New("invalid pod address")

// probeSets splits ips into the sorted, duplicate-free contents of each
// family's set. IPv4-mapped IPv6 addresses count as IPv4 and zones are
// dropped (pod addresses never have one).
func probeSets(ips []netip.Addr) (map[Family][]netip.Addr, error) {
	sets := map[Family][]netip.Addr{}
	for _, ip := range ips {
		if !ip.IsValid() {
			return nil, fmt.Errorf("%w: %v", ErrInvalidAddr, ip)
		}
		ip = ip.Unmap().WithZone("")
		f := IPv4
		if ip.Is6() {
			f = IPv6
		}
		sets[f] = append(sets[f], ip)
	}
	for f, s := range sets {
		slices.SortFunc(s, netip.Addr.Compare)
		sets[f] = slices.Compact(s)
	}
	return sets, nil
}

// RenderHostProbes describes, in nft's own syntax, the table HostProbes
// programs for the given pod addresses. It is what `nft list table inet
// warren-probes` prints after Apply, with the priority as a number instead
// of "srcnat" and set elements sorted on one line.
func RenderHostProbes(cfg Config, ips []netip.Addr) (string, error) {
	sets, err := probeSets(ips)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", hostProbeTable)
	for _, pf := range probeFamilies(cfg) {
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n", pf.set, nftAddrType(pf.f))
		if s := sets[pf.f]; len(s) > 0 {
			elems := make([]string, len(s))
			for i, a := range s {
				elems[i] = a.String()
			}
			fmt.Fprintf(&b, "\t\telements = { %s }\n", strings.Join(elems, ", "))
		}
		b.WriteString("\t}\n\n")
	}
	fmt.Fprintf(&b, "\tchain %s {\n", hostProbeChain)
	fmt.Fprintf(&b, "\t\ttype nat hook postrouting priority %d; policy accept;\n", hostProbePriority)
	for _, pf := range probeFamilies(cfg) {
		fmt.Fprintf(&b, "\t\t%s comment %q\n", pf.ruleBody(), pf.ruleComment())
	}
	b.WriteString("\t}\n}\n")
	return b.String(), nil
}
