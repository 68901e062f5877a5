package redirect

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/warren-mesh/warren/netns"
)

// Apply makes the network namespace (the calling thread's, or the one given
// with HostProbesInNetNS) hold Warren's probe table with exactly ips in its
// sets, in order:
//  1. it reads the live table;
//  2. if the table is missing or its shape (chain, sets, rules) is not the
//     desired one, it replaces the whole table, set elements included, in
//     one netlink batch;
//  3. otherwise it adds the missing and deletes the extra set elements in one
//     batch, and writes nothing at all when there are none.
//
// An empty ips keeps the table, with empty sets: it is cheap, and pods come
// and go. An invalid address fails with ErrInvalidAddr before anything is
// read or written. A failed Apply may be retried.
func (h *HostProbes) Apply(ctx context.Context, ips []netip.Addr) error {
	want, err := probeSets(ips)
	if err != nil {
		return fmt.Errorf("applying host probe SNAT: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("applying host probe SNAT: %w", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	apply := func() error { return h.apply(want) }
	if h.netns != "" {
		err = netns.Do(h.netns, apply)
	} else {
		err = apply()
	}
	if err != nil {
		return fmt.Errorf("applying host probe SNAT%s: %w", h.where(), err)
	}
	return nil
}

// Remove deletes Warren's probe table, leaving the namespace as it was
// before Apply. A missing table, or a HostProbesInNetNS namespace that no
// longer exists, is not an error. A failed Remove may be retried.
func (h *HostProbes) Remove(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("removing host probe SNAT: %w", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var err error
	if h.netns != "" {
		ns, oerr := netns.Open(h.netns)
		if errors.Is(oerr, fs.ErrNotExist) {
			h.log.Debug("netns gone, nothing to remove", "netns", h.netns)
			return nil
		}
		if oerr != nil {
			return fmt.Errorf("removing host probe SNAT: %w", oerr)
		}
		defer ns.Close()
		err = ns.Do(h.remove)
	} else {
		err = h.remove()
	}
	if err != nil {
		return fmt.Errorf("removing host probe SNAT%s: %w", h.where(), err)
	}
	return nil
}

func (h *HostProbes) where() string {
	if h.netns == "" {
		return ""
	}
	return " in netns " + h.netns
}

func hostProbeErr(what string, err error) error {
	if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EAFNOSUPPORT) {
		return fmt.Errorf("%s: %w: %w", what, ErrNotSupported, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// liveProbes is what Apply found in the namespace.
type liveProbes struct {
	// current reports that the table exists with exactly the desired chain,
	// sets and rules, so only set elements may need changing.
	current bool
	sets    map[Family]*nftables.Set
	elems   map[Family][]netip.Addr
}

// The connections opened here are not lasting: each operation dials a fresh
// netlink socket on the current thread, so it lands in the namespace Apply
// or Remove switched to.
func (h *HostProbes) apply(want map[Family][]netip.Addr) error {
	c, err := nftables.New()
	if err != nil {
		return hostProbeErr("opening nftables", err)
	}
	live, err := h.readLive(c)
	if err != nil {
		return err
	}
	if !live.current {
		if err := h.rebuild(c, want); err != nil {
			return err
		}
		h.log.Debug("host probe table programmed", "netns", h.netns, "ipv4", len(want[IPv4]), "ipv6", len(want[IPv6]))
		return nil
	}
	var added, removed int
	for _, pf := range probeFamilies(h.cfg) {
		add, del := diffAddrs(live.elems[pf.f], want[pf.f])
		s := live.sets[pf.f]
		if len(add) > 0 {
			if err := c.SetAddElements(s, setElements(add)); err != nil {
				return hostProbeErr("adding set elements to "+pf.set, err)
			}
		}
		if len(del) > 0 {
			if err := c.SetDeleteElements(s, setElements(del)); err != nil {
				return hostProbeErr("deleting set elements from "+pf.set, err)
			}
		}
		added += len(add)
		removed += len(del)
	}
	if added+removed == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return hostProbeErr("updating host probe sets", err)
	}
	h.log.Debug("host probe sets updated", "netns", h.netns, "added", added, "removed", removed)
	return nil
}

func (h *HostProbes) remove() error {
	c, err := nftables.New()
	if err != nil {
		return hostProbeErr("opening nftables", err)
	}
	t, err := liveProbeTable(c)
	if err != nil || t == nil {
		return err
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return hostProbeErr("deleting host probe table", err)
	}
	h.log.Debug("host probe table removed", "netns", h.netns)
	return nil
}

func liveProbeTable(c *nftables.Conn) (*nftables.Table, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, hostProbeErr("listing nftables tables", err)
	}
	for _, t := range tables {
		if t.Name == hostProbeTable {
			return t, nil
		}
	}
	return nil, nil
}

// readLive reads Warren's probe table and decides whether its shape is the
// desired one; only then are the sets' elements read.
func (h *HostProbes) readLive(c *nftables.Conn) (liveProbes, error) {
	var live liveProbes
	t, err := liveProbeTable(c)
	if err != nil || t == nil {
		return live, err
	}

	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return live, hostProbeErr("listing nftables chains", err)
	}
	var ours []*nftables.Chain
	for _, ch := range chains {
		if ch.Table.Name == hostProbeTable {
			ours = append(ours, ch)
		}
	}
	want := hostProbeNFTChain(t)
	if len(ours) != 1 {
		return live, nil
	}
	lc := ours[0]
	if lc.Name != want.Name || lc.Type != want.Type || lc.Hooknum == nil || *lc.Hooknum != *want.Hooknum ||
		lc.Priority == nil || *lc.Priority != *want.Priority || lc.Policy == nil || *lc.Policy != *want.Policy {
		return live, nil
	}

	sets, err := c.GetSets(t)
	if err != nil {
		return live, hostProbeErr("listing nftables sets", err)
	}
	fams := probeFamilies(h.cfg)
	if len(sets) != len(fams) {
		return live, nil
	}
	live.sets = map[Family]*nftables.Set{}
	for _, pf := range fams {
		for _, s := range sets {
			if s.Name == pf.set && s.KeyType.Name == nftSetType(pf.f).Name && !s.Anonymous && !s.Constant &&
				!s.Interval && !s.IsMap && !s.HasTimeout && !s.Concatenation && !s.Dynamic {
				live.sets[pf.f] = s
			}
		}
		if live.sets[pf.f] == nil {
			return live, nil
		}
	}

	rules, err := c.GetRules(t, lc)
	if err != nil {
		return live, hostProbeErr("listing nftables rules", err)
	}
	if len(rules) != len(fams) {
		return live, nil
	}
	for i, r := range rules {
		got, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		if got != fams[i].ruleComment() {
			return live, nil
		}
	}

	live.elems = map[Family][]netip.Addr{}
	for _, pf := range fams {
		elems, err := c.GetSetElements(live.sets[pf.f])
		if err != nil {
			return live, hostProbeErr("listing elements of set "+pf.set, err)
		}
		for _, e := range elems {
			a, ok := netip.AddrFromSlice(e.Key)
			if !ok {
				return live, fmt.Errorf("set %s holds a %d-byte key", pf.set, len(e.Key))
			}
			live.elems[pf.f] = append(live.elems[pf.f], a)
		}
	}
	live.current = true
	return live, nil
}

// rebuild replaces the probe table in one netlink batch. Add-delete-add
// replaces it atomically whether or not it existed: packets see either the
// old rules or the new ones, and the sets never appear empty in between.
func (h *HostProbes) rebuild(c *nftables.Conn, want map[Family][]netip.Addr) error {
	t := &nftables.Table{Name: hostProbeTable, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	fams := probeFamilies(h.cfg)
	sets := map[Family]*nftables.Set{}
	for _, pf := range fams {
		s := &nftables.Set{Table: t, Name: pf.set, KeyType: nftSetType(pf.f)}
		if err := c.AddSet(s, setElements(want[pf.f])); err != nil {
			return hostProbeErr("adding set "+pf.set, err)
		}
		sets[pf.f] = s
	}
	ch := c.AddChain(hostProbeNFTChain(t))
	for _, pf := range fams {
		c.AddRule(&nftables.Rule{
			Table:    t,
			Chain:    ch,
			Exprs:    hostProbeExprs(pf, sets[pf.f]),
			UserData: userdata.AppendString(nil, userdata.TypeComment, pf.ruleComment()),
		})
	}
	if err := c.Flush(); err != nil {
		return hostProbeErr("programming host probe table", err)
	}
	return nil
}

func hostProbeNFTChain(t *nftables.Table) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name:     hostProbeChain,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityRef(hostProbePriority),
		Policy:   &accept,
	}
}

func nftSetType(f Family) nftables.SetDatatype {
	if f == IPv6 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

func setElements(addrs []netip.Addr) []nftables.SetElement {
	out := make([]nftables.SetElement, len(addrs))
	for i, a := range addrs {
		out[i] = nftables.SetElement{Key: a.AsSlice()}
	}
	return out
}

// diffAddrs returns what is in want but not in have, and the reverse.
func diffAddrs(have, want []netip.Addr) (add, del []netip.Addr) {
	in := func(s []netip.Addr) map[netip.Addr]bool {
		m := make(map[netip.Addr]bool, len(s))
		for _, a := range s {
			m[a] = true
		}
		return m
	}
	h, w := in(have), in(want)
	for _, a := range want {
		if !h[a] {
			add = append(add, a)
		}
	}
	for _, a := range have {
		if !w[a] {
			del = append(del, a)
		}
	}
	return add, del
}

// hostProbeExprs translates pf.ruleBody into nf_tables expressions, in the
// order nft prints them back. In an inet table the address match needs the
// "meta nfproto" check that nft adds implicitly; the uid is converted to
// network byte order before the comparison, as nft does.
func hostProbeExprs(pf probeFamily, set *nftables.Set) []expr.Any {
	nfproto := byte(unix.NFPROTO_IPV4)
	// Destination address: offset 16 in the IPv4 header, 24 in IPv6.
	daddr := uint32(16)
	if pf.f == IPv6 {
		nfproto, daddr = unix.NFPROTO_IPV6, 24
	}
	snat := pf.snat.AsSlice()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{nfproto}},
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: uint32(len(snat))},
		&expr.Lookup{SourceRegister: reg, SetName: set.Name, SetID: set.ID},
		&expr.Meta{Key: expr.MetaKeySKUID, Register: reg},
		&expr.Byteorder{SourceRegister: reg, DestRegister: reg, Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Cmp{Op: expr.CmpOpGte, Register: reg, Data: []byte{0, 0, 0, 0}},
		&expr.Immediate{Register: reg, Data: snat},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(nfproto), RegAddrMin: reg, RegAddrMax: reg},
	}
}
