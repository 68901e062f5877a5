package authz

import (
	"errors"
	"fmt"
	"net/netip"

	"google.golang.org/protobuf/types/known/emptypb"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/warren-mesh/warren/state"
)

// ErrInvalid is wrapped by every conversion error caused by the input
// policy's content (as opposed to a nil input), so that an xDS client can
// NACK the resource and a file loader can name the field.
var ErrInvalid = errors.New("invalid policy")

// FromProto converts an Authorization received over xDS (or read from a
// config dump) into a state.Policy. It rejects, rather than skips as
// ztunnel does, the malformed parts a control plane never sends (unknown
// enums, address lengths, string matches without a type, ports above
// 65535): skipping a value of a positive field would widen the policy.
// Extensions are ignored.
func FromProto(a *security.Authorization) (*state.Policy, error) {
	if a == nil {
		return nil, errors.New("nil authorization")
	}
	p := &state.Policy{Name: a.GetName(), Namespace: a.GetNamespace(), DryRun: a.GetDryRun()}
	fail := func(path, format string, args ...any) (*state.Policy, error) {
		return nil, fmt.Errorf("authorization %s/%s: %s: %s: %w", p.Namespace, p.Name, path, fmt.Sprintf(format, args...), ErrInvalid)
	}
	switch a.GetScope() {
	case security.Scope_GLOBAL:
		p.Scope = state.ScopeGlobal
	case security.Scope_NAMESPACE:
		p.Scope = state.ScopeNamespace
	case security.Scope_WORKLOAD_SELECTOR:
		p.Scope = state.ScopeWorkloadSelector
	default:
		return fail("scope", "unknown value %d", a.GetScope())
	}
	switch a.GetAction() {
	case security.Action_ALLOW:
		p.Action = state.ActionAllow
	case security.Action_DENY:
		p.Action = state.ActionDeny
	default:
		return fail("action", "unknown value %d", a.GetAction())
	}
	if p.Name == "" {
		return fail("name", "required")
	}
	for gi, g := range a.GetGroups() {
		var group state.Group
		for ri, r := range g.GetRules() {
			var rule state.Rule
			for mi, m := range r.GetMatches() {
				path := fmt.Sprintf("groups[%d].rules[%d].matches[%d]", gi, ri, mi)
				match, err := matchFromProto(m)
				if err != nil {
					return fail(path, "%v", err)
				}
				rule.Matches = append(rule.Matches, match)
			}
			group.Rules = append(group.Rules, rule)
		}
		p.Groups = append(p.Groups, group)
	}
	return p, nil
}

func matchFromProto(m *security.Match) (state.Match, error) {
	var out state.Match
	var err error
	strs := func(field string, in []*security.StringMatch) []state.StringMatch {
		if err != nil || len(in) == 0 {
			return nil
		}
		res := make([]state.StringMatch, 0, len(in))
		for i, s := range in {
			var sm state.StringMatch
			switch t := s.GetMatchType().(type) {
			case *security.StringMatch_Exact:
				sm.Exact = t.Exact
			case *security.StringMatch_Prefix:
				sm.Prefix = t.Prefix
			case *security.StringMatch_Suffix:
				sm.Suffix = t.Suffix
			case *security.StringMatch_Presence:
				sm.Presence = true
			default:
				err = fmt.Errorf("%s[%d]: no match type", field, i)
				return nil
			}
			if (sm.Prefix == "" && isPrefix(s)) || (sm.Suffix == "" && isSuffix(s)) {
				// An empty prefix or suffix matches everything, the empty
				// string included, which no StringMatch form here
				// expresses; istiod never sends one ("*" is presence).
				err = fmt.Errorf("%s[%d]: empty prefix or suffix", field, i)
				return nil
			}
			res = append(res, sm)
		}
		return res
	}
	sas := func(in []*security.ServiceAccountMatch) []state.ServiceAccountMatch {
		if len(in) == 0 {
			return nil
		}
		res := make([]state.ServiceAccountMatch, 0, len(in))
		for _, s := range in {
			res = append(res, state.ServiceAccountMatch{Namespace: s.GetNamespace(), ServiceAccount: s.GetServiceAccount()})
		}
		return res
	}
	ips := func(field string, in []*security.Address) []netip.Prefix {
		if err != nil || len(in) == 0 {
			return nil
		}
		res := make([]netip.Prefix, 0, len(in))
		for i, a := range in {
			ip, ok := netip.AddrFromSlice(a.GetAddress())
			if !ok || a.GetLength() > uint32(ip.BitLen()) {
				err = fmt.Errorf("%s[%d]: %d address bytes with prefix length %d", field, i, len(a.GetAddress()), a.GetLength())
				return nil
			}
			res = append(res, unmapPrefix(netip.PrefixFrom(ip, int(a.GetLength()))))
		}
		return res
	}
	ports := func(field string, in []uint32) []uint16 {
		if err != nil || len(in) == 0 {
			return nil
		}
		res := make([]uint16, 0, len(in))
		for i, p := range in {
			if p > 65535 {
				err = fmt.Errorf("%s[%d]: port %d out of range", field, i, p)
				return nil
			}
			res = append(res, uint16(p))
		}
		return res
	}
	out.Namespaces = strs("namespaces", m.GetNamespaces())
	out.NotNamespaces = strs("notNamespaces", m.GetNotNamespaces())
	out.ServiceAccounts = sas(m.GetServiceAccounts())
	out.NotServiceAccounts = sas(m.GetNotServiceAccounts())
	out.Principals = strs("principals", m.GetPrincipals())
	out.NotPrincipals = strs("notPrincipals", m.GetNotPrincipals())
	out.SourceIPs = ips("sourceIps", m.GetSourceIps())
	out.NotSourceIPs = ips("notSourceIps", m.GetNotSourceIps())
	out.DestinationIPs = ips("destinationIps", m.GetDestinationIps())
	out.NotDestinationIPs = ips("notDestinationIps", m.GetNotDestinationIps())
	out.DestinationPorts = ports("destinationPorts", m.GetDestinationPorts())
	out.NotDestinationPorts = ports("notDestinationPorts", m.GetNotDestinationPorts())
	return out, err
}

func isPrefix(s *security.StringMatch) bool {
	_, ok := s.GetMatchType().(*security.StringMatch_Prefix)
	return ok
}

func isSuffix(s *security.StringMatch) bool {
	_, ok := s.GetMatchType().(*security.StringMatch_Suffix)
	return ok
}

// unmapPrefix stores an IPv4 block written in IPv6's v4-mapped form
// (::ffff:10.0.0.0/104) as the IPv4 block it means, since connections'
// addresses are unmapped before matching.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}

// ToProto converts p into the Authorization form istiod sends ztunnel, for
// config dumps and for serving xDS.
func ToProto(p *state.Policy) *security.Authorization {
	a := &security.Authorization{Name: p.Name, Namespace: p.Namespace, DryRun: p.DryRun}
	switch p.Scope {
	case state.ScopeNamespace:
		a.Scope = security.Scope_NAMESPACE
	case state.ScopeWorkloadSelector:
		a.Scope = security.Scope_WORKLOAD_SELECTOR
	default:
		a.Scope = security.Scope_GLOBAL
	}
	if p.Action == state.ActionDeny {
		a.Action = security.Action_DENY
	}
	for _, g := range p.Groups {
		pg := &security.Group{}
		for _, r := range g.Rules {
			pr := &security.Rules{}
			for i := range r.Matches {
				pr.Matches = append(pr.Matches, matchToProto(&r.Matches[i]))
			}
			pg.Rules = append(pg.Rules, pr)
		}
		a.Groups = append(a.Groups, pg)
	}
	return a
}

func matchToProto(m *state.Match) *security.Match {
	strs := func(in []state.StringMatch) []*security.StringMatch {
		var res []*security.StringMatch
		for _, s := range in {
			sm := &security.StringMatch{}
			switch {
			case s.Presence:
				sm.MatchType = &security.StringMatch_Presence{Presence: &emptypb.Empty{}}
			case s.Prefix != "":
				sm.MatchType = &security.StringMatch_Prefix{Prefix: s.Prefix}
			case s.Suffix != "":
				sm.MatchType = &security.StringMatch_Suffix{Suffix: s.Suffix}
			default:
				sm.MatchType = &security.StringMatch_Exact{Exact: s.Exact}
			}
			res = append(res, sm)
		}
		return res
	}
	sas := func(in []state.ServiceAccountMatch) []*security.ServiceAccountMatch {
		var res []*security.ServiceAccountMatch
		for _, s := range in {
			res = append(res, &security.ServiceAccountMatch{Namespace: s.Namespace, ServiceAccount: s.ServiceAccount})
		}
		return res
	}
	ips := func(in []netip.Prefix) []*security.Address {
		var res []*security.Address
		for _, p := range in {
			res = append(res, &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())})
		}
		return res
	}
	ports := func(in []uint16) []uint32 {
		var res []uint32
		for _, p := range in {
			res = append(res, uint32(p))
		}
		return res
	}
	return &security.Match{
		Namespaces:          strs(m.Namespaces),
		NotNamespaces:       strs(m.NotNamespaces),
		ServiceAccounts:     sas(m.ServiceAccounts),
		NotServiceAccounts:  sas(m.NotServiceAccounts),
		Principals:          strs(m.Principals),
		NotPrincipals:       strs(m.NotPrincipals),
		SourceIps:           ips(m.SourceIPs),
		NotSourceIps:        ips(m.NotSourceIPs),
		DestinationIps:      ips(m.DestinationIPs),
		NotDestinationIps:   ips(m.NotDestinationIPs),
		DestinationPorts:    ports(m.DestinationPorts),
		NotDestinationPorts: ports(m.NotDestinationPorts),
	}
}
