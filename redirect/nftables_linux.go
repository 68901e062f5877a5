package redirect

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// NFTables is the default backend: one table named "warren" per family (ip
// and ip6) programmed over netlink, so no binaries are needed in the agent
// image. The tables are Warren's alone; other tables in the pod netns are
// never touched.
type NFTables struct {
	cfg Config
	log *slog.Logger
}

var _ Redirector = (*NFTables)(nil)

// NewNFTables returns the nftables backend. It checks only cfg; kernel
// support shows on first use as an error wrapping ErrNotSupported.
func NewNFTables(cfg Config, log *slog.Logger) (*NFTables, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid redirect config: %w", err)
	}
	return &NFTables{cfg: cfg, log: log.With("component", "redirect", "backend", "nftables")}, nil
}

// Apply enters pod.NetNS and, per family the pod has, (1) installs the
// fwmark rule and the local route in table RouteTable, (2) replaces Warren's
// table in one netlink transaction unless it already is exactly the desired
// one. Families the pod lacks are cleaned up. Safe to retry.
func (n *NFTables) Apply(ctx context.Context, pod Pod) error {
	return applyPod(ctx, n.cfg, n.log, pod, nftFamilies{n.cfg})
}

// Remove enters pod.NetNS and, per family, deletes Warren's table and then
// the fwmark rule and the routes of table RouteTable. Safe to retry.
func (n *NFTables) Remove(ctx context.Context, pod Pod) error {
	return removePod(ctx, n.cfg, n.log, pod, nftFamilies{n.cfg})
}

// nftFamilies is the per-family half of NFTables; its methods run inside the
// pod netns. The connections it opens are not lasting: each operation dials
// a fresh netlink socket on the current thread, so it lands in the netns.
type nftFamilies struct{ cfg Config }

func nftTableFamily(f Family) nftables.TableFamily {
	if f == IPv6 {
		return nftables.TableFamilyIPv6
	}
	return nftables.TableFamilyIPv4
}

func nftErr(what string, f Family, err error) error {
	if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EAFNOSUPPORT) {
		return fmt.Errorf("%s %s: %w: %w", what, f, ErrNotSupported, err)
	}
	return fmt.Errorf("%s %s: %w", what, f, err)
}

// liveTable reports whether Warren's table of family f exists.
func liveTable(c *nftables.Conn, f Family) (*nftables.Table, error) {
	tables, err := c.ListTablesOfFamily(nftTableFamily(f))
	if err != nil {
		return nil, nftErr("listing nftables tables", f, err)
	}
	for _, t := range tables {
		if t.Name == nftTableName {
			return t, nil
		}
	}
	return nil, nil
}

func (b nftFamilies) applyFamily(ctx context.Context, f Family) (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, nftErr("opening nftables", f, err)
	}
	want := desiredRules(b.cfg, f)
	same, err := b.isCurrent(c, f, want)
	if err != nil {
		return false, err
	}
	if same {
		return false, nil
	}
	t := &nftables.Table{Name: nftTableName, Family: nftTableFamily(f)}
	// Add-delete-add in one batch replaces the table atomically whether or
	// not it existed: packets see either the old rules or the new ones.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	for _, cr := range want {
		ch := c.AddChain(nftChain(t, cr.chain))
		for _, r := range cr.rules {
			c.AddRule(&nftables.Rule{
				Table:    t,
				Chain:    ch,
				Exprs:    nftExprs(f, r),
				UserData: userdata.AppendString(nil, userdata.TypeComment, nftComment(f, r)),
			})
		}
	}
	if err := c.Flush(); err != nil {
		return false, nftErr("programming nftables table", f, err)
	}
	return true, nil
}

func (b nftFamilies) removeFamily(ctx context.Context, f Family) (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, nftErr("opening nftables", f, err)
	}
	t, err := liveTable(c, f)
	if err != nil || t == nil {
		return false, err
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return false, nftErr("deleting nftables table", f, err)
	}
	return true, nil
}

// isCurrent reports whether Warren's live table of family f has exactly the
// desired chains (type, hook, priority, policy) and, in each, rules whose
// comments (which carry a hash of the rule) match the desired ones in order.
func (b nftFamilies) isCurrent(c *nftables.Conn, f Family, want []chainRules) (bool, error) {
	t, err := liveTable(c, f)
	if err != nil || t == nil {
		return false, err
	}
	chains, err := c.ListChainsOfTableFamily(nftTableFamily(f))
	if err != nil {
		return false, nftErr("listing nftables chains", f, err)
	}
	var live []*nftables.Chain
	for _, ch := range chains {
		if ch.Table.Name == nftTableName {
			live = append(live, ch)
		}
	}
	if len(live) != len(want) {
		return false, nil
	}
	for _, cr := range want {
		wc := nftChain(t, cr.chain)
		i := slices.IndexFunc(live, func(ch *nftables.Chain) bool { return ch.Name == wc.Name })
		if i < 0 {
			return false, nil
		}
		lc := live[i]
		if lc.Type != wc.Type || lc.Hooknum == nil || *lc.Hooknum != *wc.Hooknum ||
			lc.Priority == nil || *lc.Priority != *wc.Priority ||
			lc.Policy == nil || *lc.Policy != *wc.Policy {
			return false, nil
		}
		rules, err := c.GetRules(t, lc)
		if err != nil {
			return false, nftErr("listing nftables rules", f, err)
		}
		if len(rules) != len(cr.rules) {
			return false, nil
		}
		for j, r := range rules {
			got, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			if got != nftComment(f, cr.rules[j]) {
				return false, nil
			}
		}
	}
	return true, nil
}

var nftHooks = map[string]*nftables.ChainHook{
	"prerouting": nftables.ChainHookPrerouting,
	"output":     nftables.ChainHookOutput,
}

func nftChain(t *nftables.Table, c chainSpec) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name:     c.nftName,
		Table:    t,
		Type:     nftables.ChainType(c.nftType),
		Hooknum:  nftHooks[c.nftHook],
		Priority: nftables.ChainPriorityRef(nftables.ChainPriority(c.priority)),
		Policy:   &accept,
	}
}

// Register 1 is the only data register the rules need; each match loads,
// optionally masks, and compares in it before the next match reuses it.
const reg = 1

func native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
func be16(v uint16) []byte     { return binary.BigEndian.AppendUint16(nil, v) }

// nftExprs translates r into nf_tables expressions, in the same order
// nftRuleBody prints them (which is how nft lists them back).
func nftExprs(f Family, r rule) []expr.Any {
	var out []expr.Any
	cmpOp := func(neg bool) expr.CmpOp {
		if neg {
			return expr.CmpOpNeq
		}
		return expr.CmpOpEq
	}
	tcp := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{unix.IPPROTO_TCP}},
	}
	for _, m := range r.matches {
		switch m.kind {
		case matchSrc, matchDst:
			// Offsets into the IPv4 (saddr 12, daddr 16) and IPv6 (saddr
			// 8, daddr 24) headers.
			off := map[bool][2]uint32{false: {12, 16}, true: {8, 24}}[f == IPv6]
			o := off[0]
			if m.kind == matchDst {
				o = off[1]
			}
			a := m.addr.AsSlice()
			out = append(out,
				&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: o, Len: uint32(len(a))},
				&expr.Cmp{Op: cmpOp(m.neg), Register: reg, Data: a})
		case matchTCP:
			out = append(out, tcp...)
		case matchDport:
			out = append(out, tcp...)
			out = append(out,
				// TCP destination port: bytes 2-3 of the transport header.
				&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: cmpOp(m.neg), Register: reg, Data: be16(m.port)})
		case matchMark, matchCtMark:
			var load expr.Any = &expr.Meta{Key: expr.MetaKeyMARK, Register: reg}
			if m.kind == matchCtMark {
				load = &expr.Ct{Key: expr.CtKeyMARK, Register: reg}
			}
			out = append(out, load,
				&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: native32(m.mask), Xor: native32(0)},
				&expr.Cmp{Op: cmpOp(m.neg), Register: reg, Data: native32(m.mark)})
		case matchOifname:
			name := make([]byte, unix.IFNAMSIZ)
			copy(name, m.name)
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg},
				&expr.Cmp{Op: cmpOp(m.neg), Register: reg, Data: name})
		}
	}
	switch a := r.action; a.kind {
	case actAccept:
		out = append(out, &expr.Verdict{Kind: expr.VerdictAccept})
	case actRedirect:
		out = append(out,
			&expr.Immediate{Register: reg, Data: be16(a.port)},
			&expr.Redir{RegisterProtoMin: reg, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED})
	case actSetCtMark:
		// ct mark = (ct mark & ^mask) ^ mark, like CONNMARK --set-xmark.
		out = append(out,
			&expr.Ct{Key: expr.CtKeyMARK, Register: reg},
			&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: native32(^a.mask), Xor: native32(a.mark)},
			&expr.Ct{Key: expr.CtKeyMARK, Register: reg, SourceRegister: true})
	case actRestoreMark:
		out = append(out,
			&expr.Ct{Key: expr.CtKeyMARK, Register: reg},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg, SourceRegister: true})
	}
	return out
}
