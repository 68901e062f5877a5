package redirect

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"strings"
)

// Family is an IP family that gets its own set of rules.
type Family int

// The two families. The values are the IP versions so logs read naturally.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return fmt.Sprintf("family(%d)", int(f))
}

// allFamilies is the order every backend walks families in.
var allFamilies = [...]Family{IPv4, IPv6}

// FamiliesOf returns the families present in ips, IPv4 first. IPv4-mapped
// IPv6 addresses count as IPv4.
func FamiliesOf(ips []netip.Addr) []Family {
	var v4, v6 bool
	for _, ip := range ips {
		ip = ip.Unmap()
		switch {
		case ip.Is4():
			v4 = true
		case ip.Is6():
			v6 = true
		}
	}
	var fams []Family
	if v4 {
		fams = append(fams, IPv4)
	}
	if v6 {
		fams = append(fams, IPv6)
	}
	return fams
}

// loopback is the address NAT REDIRECT rewrites locally generated packets
// to, and that the pod's own loopback traffic uses. Istio exempts exactly this
// address (not all of 127/8), and so do we.
func loopback(f Family) netip.Addr {
	if f == IPv6 {
		return netip.IPv6Loopback()
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

func probeAddr(cfg Config, f Family) netip.Addr {
	if f == IPv6 {
		return cfg.ProbeSNATv6
	}
	return cfg.ProbeSNATv4
}

// chainKind names one of the four hook points Warren uses.
type chainKind int

const (
	manglePrerouting chainKind = iota
	mangleOutput
	natPrerouting
	natOutput
)

// chainSpec says where a chain lives in each backend.
type chainSpec struct {
	kind chainKind
	// nftables: chain name in Warren's table, base-chain type, hook and
	// priority.
	nftName  string
	nftType  string
	nftHook  string
	priority int
	// iptables: table, built-in chain to jump from, and Warren's chain.
	iptTable   string
	iptBuiltin string
	iptChain   string
}

// chainSpecs lists the chains in the order they are created and printed.
// Priorities are the iptables ones so both backends see packets at the same
// point: mangle -150 (after conntrack at -200, so ct mark is available), and
// dstnat -100 for NAT. The mangle output chain is of type "route" so that
// restoring the mark from the connmark makes the kernel route the packet
// again and the fwmark rule takes effect.
var chainSpecs = [...]chainSpec{
	{manglePrerouting, "mangle_prerouting", "filter", "prerouting", -150, "mangle", "PREROUTING", "WARREN_PRERT"},
	{mangleOutput, "mangle_output", "route", "output", -150, "mangle", "OUTPUT", "WARREN_OUTPUT"},
	{natPrerouting, "nat_prerouting", "nat", "prerouting", -100, "nat", "PREROUTING", "WARREN_PRERT"},
	{natOutput, "nat_output", "nat", "output", -100, "nat", "OUTPUT", "WARREN_OUTPUT"},
}

// matchKind is one packet test. The set is deliberately tiny: just what the
// capture rules need, each with one nftables and one iptables spelling.
type matchKind int

const (
	matchSrc     matchKind = iota // source address equals addr
	matchDst                      // destination address equals addr
	matchTCP                      // layer-4 protocol is TCP
	matchDport                    // TCP destination port equals port (implies TCP)
	matchMark                     // packet mark & mask equals mark
	matchCtMark                   // conntrack mark & mask equals mark
	matchOifname                  // output interface name equals name
)

type match struct {
	kind matchKind
	neg  bool
	addr netip.Addr
	port uint16
	mark uint32
	mask uint32
	name string
}

type actionKind int

const (
	actAccept      actionKind = iota // stop here, leave the packet as it is
	actRedirect                      // NAT REDIRECT to port on the local host
	actSetCtMark                     // connmark = connmark &^ mask | mark
	actRestoreMark                   // packet mark = connmark
)

type action struct {
	kind actionKind
	port uint16
	mark uint32
	mask uint32
}

// rule is one capture rule in backend-neutral form.
type rule struct {
	comment string
	matches []match
	action  action
}

type chainRules struct {
	chain chainSpec
	rules []rule
}

// desiredRules is the single definition of Warren's in-pod rules for one
// family; both backends render from it.
func desiredRules(cfg Config, f Family) []chainRules {
	lo := loopback(f)
	probe := probeAddr(cfg, f)
	agent := match{kind: matchMark, mark: cfg.AgentMark, mask: cfg.MarkMask}
	notAgent := agent
	notAgent.neg = true
	notLo := match{kind: matchDst, neg: true, addr: lo}
	tcp := match{kind: matchTCP}
	return []chainRules{
		{chainSpecs[manglePrerouting], []rule{{
			// Packets of connections the agent opened (into the pod, with a
			// spoofed source) carry the agent mark; remember that on the
			// connection so the pod's replies can be found again.
			comment: "warren: agent connection, remember in connmark",
			matches: []match{agent},
			action:  action{kind: actSetCtMark, mark: cfg.ReplyMark, mask: cfg.MarkMask},
		}}},
		{chainSpecs[mangleOutput], []rule{{
			// The pod's replies on those connections get the reply mark, so
			// the fwmark rule routes them to the agent's transparent socket
			// instead of out of the pod.
			comment: "warren: reply to agent connection, restore mark",
			matches: []match{{kind: matchCtMark, mark: cfg.ReplyMark, mask: cfg.MarkMask}},
			action:  action{kind: actRestoreMark},
		}}},
		{chainSpecs[natPrerouting], []rule{{
			comment: "warren: kubelet probe, not captured",
			matches: []match{{kind: matchSrc, addr: probe}, tcp},
			action:  action{kind: actAccept},
		}, {
			// Everything inbound except HBONE (handled by the agent's 15008
			// listener directly) and the agent's own traffic.
			comment: "warren: inbound plaintext capture",
			matches: []match{notLo, {kind: matchDport, neg: true, port: cfg.InboundTunnelPort}, notAgent},
			action:  action{kind: actRedirect, port: cfg.InboundPlaintextPort},
		}}},
		{chainSpecs[natOutput], []rule{{
			comment: "warren: reply to kubelet probe, not captured",
			matches: []match{{kind: matchDst, addr: probe}, tcp},
			action:  action{kind: actAccept},
		}, {
			comment: "warren: reply to agent connection, not captured",
			matches: []match{tcp, {kind: matchMark, mark: cfg.ReplyMark, mask: cfg.MarkMask}},
			action:  action{kind: actAccept},
		}, {
			// Traffic to the pod's own non-loopback addresses leaves via lo;
			// it never leaves the pod, so it is not captured.
			comment: "warren: pod to itself, not captured",
			matches: []match{notLo, {kind: matchOifname, name: "lo"}},
			action:  action{kind: actAccept},
		}, {
			comment: "warren: outbound capture",
			matches: []match{notLo, tcp, notAgent},
			action:  action{kind: actRedirect, port: cfg.OutboundPort},
		}}},
	}
}

// nftFamily is the nftables table family keyword for f.
func nftFamily(f Family) string {
	if f == IPv6 {
		return "ip6"
	}
	return "ip"
}

// nftTableName is the name of Warren's table in both the ip and ip6 families.
const nftTableName = "warren"

// RenderNFTables describes, in nft's own syntax, the tables, chains and
// rules the NFTables backend programs for the given families. It is what
// `nft list table <family> warren` prints after Apply (with standard
// priority names replaced by their numbers).
func RenderNFTables(cfg Config, fams []Family) string {
	var b strings.Builder
	for _, f := range fams {
		b.WriteString(renderNFTTable(cfg, f))
	}
	return b.String()
}

func renderNFTTable(cfg Config, f Family) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s {\n", nftFamily(f), nftTableName)
	for i, cr := range desiredRules(cfg, f) {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "\tchain %s {\n", cr.chain.nftName)
		fmt.Fprintf(&b, "\t\ttype %s hook %s priority %d; policy accept;\n", cr.chain.nftType, cr.chain.nftHook, cr.chain.priority)
		for _, r := range cr.rules {
			fmt.Fprintf(&b, "\t\t%s\n", nftRuleText(f, r))
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

func nftRuleText(f Family, r rule) string {
	return fmt.Sprintf("%s comment %q", nftRuleBody(f, r), nftComment(f, r))
}

// nftComment is the comment stored with each nftables rule: the reason for
// the rule and a hash of its text. Apply compares comments to decide whether
// the live table already is the desired one, so a config change (a new port
// or mark) changes the hash and forces a rewrite.
func nftComment(f Family, r rule) string {
	h := fnv.New32a()
	h.Write([]byte(nftRuleBody(f, r)))
	return fmt.Sprintf("%s [%08x]", r.comment, h.Sum32())
}

// nftRuleBody is the rule in nft syntax, without its comment.
func nftRuleBody(f Family, r rule) string {
	var parts []string
	for _, m := range r.matches {
		op := ""
		if m.neg {
			op = "!= "
		}
		switch m.kind {
		case matchSrc:
			parts = append(parts, fmt.Sprintf("%s saddr %s%s", nftFamily(f), op, m.addr))
		case matchDst:
			parts = append(parts, fmt.Sprintf("%s daddr %s%s", nftFamily(f), op, m.addr))
		case matchTCP:
			parts = append(parts, "meta l4proto tcp")
		case matchDport:
			parts = append(parts, fmt.Sprintf("tcp dport %s%d", op, m.port))
		case matchMark, matchCtMark:
			key := "meta mark"
			if m.kind == matchCtMark {
				key = "ct mark"
			}
			cmp := "=="
			if m.neg {
				cmp = "!="
			}
			parts = append(parts, fmt.Sprintf("%s & 0x%08x %s 0x%08x", key, m.mask, cmp, m.mark))
		case matchOifname:
			parts = append(parts, fmt.Sprintf("oifname %s%q", op, m.name))
		}
	}
	a := r.action
	switch a.kind {
	case actAccept:
		parts = append(parts, "accept")
	case actRedirect:
		parts = append(parts, fmt.Sprintf("redirect to :%d", a.port))
	case actSetCtMark:
		// Programmed as (ct mark & ^mask) ^ mark, which nft prints in the
		// equivalent form (ct mark & (^mask | mark)) | mark.
		parts = append(parts, fmt.Sprintf("ct mark set ct mark & 0x%08x | 0x%08x", ^a.mask|a.mark, a.mark))
	case actRestoreMark:
		parts = append(parts, "meta mark set ct mark")
	}
	return strings.Join(parts, " ")
}

// iptRestoreCmd is the restore binary for f, named in rendered output.
func iptRestoreCmd(f Family) string {
	if f == IPv6 {
		return "ip6tables-restore"
	}
	return "iptables-restore"
}

// RenderIPTables returns the iptables-restore --noflush input that programs
// the rules for the given families into a namespace holding none of them,
// one section per family headed by a comment naming the binary. Rules are
// spelled exactly as iptables-save prints them, which lets Apply compare the
// live chains with the desired ones and skip unchanged families.
func RenderIPTables(cfg Config, fams []Family) string {
	var b strings.Builder
	for _, f := range fams {
		fmt.Fprintf(&b, "# %s --noflush\n", iptRestoreCmd(f))
		b.WriteString(renderIPTRestore(cfg, f, nil))
	}
	return b.String()
}

// renderIPTRestore renders the restore input for f. haveJump reports
// whether the jump from a built-in chain into Warren's chain already exists;
// nil means nothing exists yet. Declaring Warren's chains with ":CHAIN" in
// --noflush mode creates them or flushes them, so the input replaces their
// content atomically per table.
func renderIPTRestore(cfg Config, f Family, haveJump func(chainSpec) bool) string {
	var b strings.Builder
	byTable := map[string][]chainRules{}
	for _, cr := range desiredRules(cfg, f) {
		byTable[cr.chain.iptTable] = append(byTable[cr.chain.iptTable], cr)
	}
	for _, table := range []string{"mangle", "nat"} {
		fmt.Fprintf(&b, "*%s\n", table)
		for _, cr := range byTable[table] {
			fmt.Fprintf(&b, ":%s - [0:0]\n", cr.chain.iptChain)
		}
		for _, cr := range byTable[table] {
			if haveJump == nil || !haveJump(cr.chain) {
				fmt.Fprintf(&b, "-A %s\n", iptJumpSpec(cr.chain))
			}
		}
		for _, cr := range byTable[table] {
			for _, r := range cr.rules {
				fmt.Fprintf(&b, "-A %s %s\n", cr.chain.iptChain, iptRuleSpec(f, r))
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// iptJumpSpec is the jump rule, without "-A ", as iptables-save prints it.
// Jumps are appended, as Istio does, so rules already in the pod's built-in
// chains keep their place in front of Warren's.
func iptJumpSpec(c chainSpec) string {
	return fmt.Sprintf("%s -j %s", c.iptBuiltin, c.iptChain)
}

func prefix(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// iptRuleSpec spells r the way iptables-save prints it: addresses, output
// interface and protocol first, then match modules in rule order, then the
// target.
func iptRuleSpec(f Family, r rule) string {
	var addrs, oif, proto, mods []string
	not := func(neg bool) string {
		if neg {
			return "! "
		}
		return ""
	}
	for _, m := range r.matches {
		switch m.kind {
		case matchSrc:
			addrs = append(addrs, fmt.Sprintf("%s-s %s", not(m.neg), prefix(m.addr)))
		case matchDst:
			addrs = append(addrs, fmt.Sprintf("%s-d %s", not(m.neg), prefix(m.addr)))
		case matchTCP:
			proto = []string{"-p tcp"}
		case matchDport:
			proto = []string{"-p tcp"}
			mods = append(mods, fmt.Sprintf("-m tcp %s--dport %d", not(m.neg), m.port))
		case matchMark:
			mods = append(mods, fmt.Sprintf("-m mark %s--mark %#x/%#x", not(m.neg), m.mark, m.mask))
		case matchCtMark:
			mods = append(mods, fmt.Sprintf("-m connmark %s--mark %#x/%#x", not(m.neg), m.mark, m.mask))
		case matchOifname:
			oif = append(oif, fmt.Sprintf("%s-o %s", not(m.neg), m.name))
		}
	}
	var target string
	switch a := r.action; a.kind {
	case actAccept:
		target = "-j ACCEPT"
	case actRedirect:
		target = fmt.Sprintf("-j REDIRECT --to-ports %d", a.port)
	case actSetCtMark:
		target = fmt.Sprintf("-j CONNMARK --set-xmark %#x/%#x", a.mark, a.mask)
	case actRestoreMark:
		// Restore the whole mark, as Istio does: the connmark's upper bits
		// are only ever set together with Warren's.
		target = "-j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"
	}
	parts := append(append(append(append(addrs, oif...), proto...), mods...), target)
	return strings.Join(parts, " ")
}
