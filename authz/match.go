package authz

import (
	"net/netip"
	"strings"

	"github.com/warren-mesh/warren/state"
)

// The combination rules are ztunnel's (src/rbac.rs), which istiod's
// conversion of AuthorizationPolicy relies on:
//
//   - a policy matches when any of its groups matches; a policy without
//     groups matches nothing (an ALLOW policy with no rules allows nothing);
//   - a group matches when all of its rules match; a group without rules
//     matches everything (Istio's empty rule `{}`);
//   - a rule matches when any of its matches matches; a rule without
//     matches matches everything, but an empty Match (no field set) matches
//     nothing;
//   - a match matches when every field set matches: a positive field when
//     the connection has one of its values, a Not field when it has none.

func matchPolicy(pol *state.Policy, p *peer) bool {
	for i := range pol.Groups {
		if matchGroup(&pol.Groups[i], p) {
			return true
		}
	}
	return false
}

func matchGroup(g *state.Group, p *peer) bool {
	for i := range g.Rules {
		if !matchRule(&g.Rules[i], p) {
			return false
		}
	}
	return true
}

func matchRule(r *state.Rule, p *peer) bool {
	if len(r.Matches) == 0 {
		return true
	}
	for i := range r.Matches {
		m := &r.Matches[i]
		if !emptyMatch(m) && matchOne(m, p) {
			return true
		}
	}
	return false
}

// emptyMatch reports whether no field of m is set. ztunnel skips such a
// match rather than treating it as "anything", so that a clause istiod
// emptied (a `from` of only HTTP attributes) cannot widen a policy.
func emptyMatch(m *state.Match) bool {
	return len(m.Namespaces) == 0 && len(m.NotNamespaces) == 0 &&
		len(m.ServiceAccounts) == 0 && len(m.NotServiceAccounts) == 0 &&
		len(m.Principals) == 0 && len(m.NotPrincipals) == 0 &&
		len(m.SourceIPs) == 0 && len(m.NotSourceIPs) == 0 &&
		len(m.DestinationIPs) == 0 && len(m.NotDestinationIPs) == 0 &&
		len(m.DestinationPorts) == 0 && len(m.NotDestinationPorts) == 0
}

// matchOne checks the cheap fields (addresses, ports) before the string
// ones, since most policies are decided by them when they are set.
func matchOne(m *state.Match, p *peer) bool {
	return matchPorts(m.DestinationPorts, m.NotDestinationPorts, p.c.DstPort) &&
		matchPrefixes(m.DestinationIPs, m.NotDestinationIPs, p) &&
		matchSourcePrefixes(m.SourceIPs, m.NotSourceIPs, p) &&
		matchServiceAccounts(m.ServiceAccounts, m.NotServiceAccounts, p) &&
		matchPrincipals(m.Principals, m.NotPrincipals, p) &&
		matchNamespaces(m.Namespaces, m.NotNamespaces, p)
}

// Each matchX below is "(no positive values, or one matches) and (none of
// the negative values matches)".

func matchPorts(pos, neg []uint16, port uint16) bool {
	anyPort := func(list []uint16) bool {
		for _, v := range list {
			if v == port {
				return true
			}
		}
		return false
	}
	return (len(pos) == 0 || anyPort(pos)) && !anyPort(neg)
}

func matchPrefixes(pos, neg []netip.Prefix, p *peer) bool {
	return (len(pos) == 0 || containsAddr(pos, p.dst)) && !containsAddr(neg, p.dst)
}

func matchSourcePrefixes(pos, neg []netip.Prefix, p *peer) bool {
	return (len(pos) == 0 || containsAddr(pos, p.src)) && !containsAddr(neg, p.src)
}

func matchServiceAccounts(pos, neg []state.ServiceAccountMatch, p *peer) bool {
	has := func(list []state.ServiceAccountMatch) bool {
		if p.sa == "" {
			// Plaintext, or an identity without a service account:
			// matches no service account.
			return false
		}
		for _, sa := range list {
			if sa.Namespace == p.ns && sa.ServiceAccount == p.sa {
				return true
			}
		}
		return false
	}
	return (len(pos) == 0 || has(pos)) && !has(neg)
}

func matchPrincipals(pos, neg []state.StringMatch, p *peer) bool {
	has := func(list []state.StringMatch) bool {
		if p.principal == "" {
			// Plaintext has no principal: it matches no principal, not
			// even presence, so notPrincipals ["*"] catches it (STRICT).
			return false
		}
		return anyString(list, p.principal)
	}
	return (len(pos) == 0 || has(pos)) && !has(neg)
}

func matchNamespaces(pos, neg []state.StringMatch, p *peer) bool {
	// Plaintext has the empty namespace, compared as a string like any
	// other (ztunnel does the same): only presence tells it apart.
	return (len(pos) == 0 || anyString(pos, p.ns)) && !anyString(neg, p.ns)
}

func anyString(list []state.StringMatch, s string) bool {
	for i := range list {
		if matchString(&list[i], s) {
			return true
		}
	}
	return false
}

// matchString applies one StringMatch; exactly one of its forms is set
// (conversions guarantee it), checked in the order presence, exact,
// prefix, suffix.
func matchString(m *state.StringMatch, s string) bool {
	switch {
	case m.Presence:
		return s != ""
	case m.Prefix != "":
		return strings.HasPrefix(s, m.Prefix)
	case m.Suffix != "":
		return strings.HasSuffix(s, m.Suffix)
	default:
		return m.Exact == s
	}
}

func containsAddr(list []netip.Prefix, a netip.Addr) bool {
	for _, pfx := range list {
		if pfx.Contains(a) {
			return true
		}
	}
	return false
}
