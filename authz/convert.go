package authz

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/warren-mesh/warren/state"
)

// DefaultRootNamespace is Istio's default root namespace
// (meshConfig.rootNamespace): policies there without a selector apply to
// the whole mesh.
const DefaultRootNamespace = "istio-system"

// DryRunAnnotation marks an AuthorizationPolicy as dry-run: evaluated and
// reported, never enforced. Istio sets it with an annotation because the
// CRD's spec has no such field.
const DryRunAnnotation = "istio.io/dry-run"

// PeerAuthenticationPrefix starts the name of the policy converted from a
// PeerAuthentication, as in istiod. '_' cannot appear in Kubernetes names,
// so the name never clashes with an AuthorizationPolicy's.
const PeerAuthenticationPrefix = "converted_peer_authentication_"

// FromAuthorizationPolicy converts an Istio AuthorizationPolicy into the L4
// policy Warren enforces, following istiod's conversion for ztunnel:
//
//   - Scope: no selector (or one without labels) in rootNamespace is Global,
//     elsewhere Namespace; with a selector it is WorkloadSelector, and the
//     caller must list the policy's key in the AuthorizationPolicies of the
//     workloads the selector picks (in every namespace when the policy is
//     in rootNamespace).
//   - Each rule becomes one Group: one Rule for its `to` list, one for its
//     `from` list, one per `when` condition (AND), the entries of a list
//     becoming the Rule's Matches (OR). A rule `{}` matches everything; a
//     policy without rules matches nothing, so an ALLOW one allows nothing.
//   - Attributes L4 cannot check (methods, paths, hosts, requestPrincipals,
//     remoteIpBlocks, trustDomains, their not* forms, `when` keys other than
//     source.ip, source.namespace, source.principal, destination.ip and
//     destination.port): an ALLOW rule using any is dropped (fail closed); in
//     a DENY rule they are ignored and the rest of the rule enforced, which
//     is stricter. A `from`/`to` entry left with nothing checkable, or such a
//     `when` condition, matches anything, so its clause is dropped; a rule
//     left empty denies every connection. Here Warren follows Istio's
//     documented intent rather than istiod's output, which turns such an
//     entry into an empty match that ztunnel never matches, so that the DENY
//     silently does nothing (istio/istio#61126).
//   - AUDIT and CUSTOM actions are not enforced at L4, and policies with
//     targetRef(s) belong to waypoints: both yield no policy, with a warning.
//   - The istio.io/dry-run annotation "true" sets DryRun.
//
// Warnings say what was dropped or narrowed, for the policy's status or the
// log. Errors are for content Istio's validation rejects (unparsable
// addresses or ports, empty sources); they wrap ErrInvalid.
func FromAuthorizationPolicy(ap *securityv1.AuthorizationPolicy, rootNamespace string) (*state.Policy, []string, error) {
	if ap == nil {
		return nil, nil, fmt.Errorf("nil AuthorizationPolicy")
	}
	c := converter{ns: ap.Namespace}
	if ap.Name == "" || ap.Namespace == "" {
		return nil, nil, fmt.Errorf("AuthorizationPolicy %q in namespace %q: metadata.name and metadata.namespace are required: %w", ap.Name, ap.Namespace, ErrInvalid)
	}
	spec := &ap.Spec
	if spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0 {
		return nil, []string{"targetRefs: the policy applies to waypoints, not to L4 enforcement; ignored"}, nil
	}
	p := &state.Policy{
		Name:      ap.Name,
		Namespace: ap.Namespace,
		Scope:     selectorScope(spec.GetSelector(), ap.Namespace, rootNamespace),
		DryRun:    ap.Annotations[DryRunAnnotation] == "true",
	}
	switch spec.GetAction() {
	case v1beta1.AuthorizationPolicy_ALLOW:
		p.Action = state.ActionAllow
	case v1beta1.AuthorizationPolicy_DENY:
		p.Action = state.ActionDeny
	default:
		return nil, []string{fmt.Sprintf("action: %s is not enforced at L4; ignored", spec.GetAction())}, nil
	}
	for i, r := range spec.GetRules() {
		g, keep := c.rule(fmt.Sprintf("rules[%d]", i), p.Action, r)
		if keep {
			p.Groups = append(p.Groups, g)
		}
	}
	if c.err != nil {
		return nil, nil, fmt.Errorf("AuthorizationPolicy %s/%s: %w", ap.Namespace, ap.Name, c.err)
	}
	if p.Action == state.ActionAllow && len(spec.GetRules()) > 0 && len(p.Groups) == 0 {
		c.warn("", "no rule can be checked at L4: the policy allows nothing")
	}
	return p, c.warnings, nil
}

// selectorScope is where a policy applies. A selector without labels
// selects every workload of the namespace, which is what Namespace scope
// says without the caller having to resolve it.
func selectorScope(sel *typev1beta1.WorkloadSelector, ns, rootNamespace string) state.Scope {
	switch {
	case len(sel.GetMatchLabels()) > 0:
		return state.ScopeWorkloadSelector
	case ns == rootNamespace:
		return state.ScopeGlobal
	default:
		return state.ScopeNamespace
	}
}

// converter collects the warnings and first error of one conversion.
type converter struct {
	ns       string // the policy's namespace, for bare service account names
	warnings []string
	err      error
}

func (c *converter) warn(path, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	c.warnings = append(c.warnings, msg)
}

func (c *converter) fail(path, format string, args ...any) {
	if c.err == nil {
		c.err = fmt.Errorf("%s: %s: %w", path, fmt.Sprintf(format, args...), ErrInvalid)
	}
}

// clause is one AND-ed part of a rule (its `to`, its `from`, or one `when`)
// as OR-ed matches. anything is set when some entry was left with no
// checkable attribute: the clause then matches every connection.
type clause struct {
	matches  []state.Match
	anything bool
}

// rule converts one rule; keep is false when an ALLOW rule is dropped.
func (c *converter) rule(path string, action state.Action, r *v1beta1.Rule) (state.Group, bool) {
	var unsupported []string
	var clauses []clause

	if len(r.GetTo()) > 0 {
		var cl clause
		for j, to := range r.GetTo() {
			p := fmt.Sprintf("%s.to[%d].operation", path, j)
			op := to.GetOperation()
			l7 := fields(op.GetHosts(), "hosts", op.GetNotHosts(), "notHosts",
				op.GetMethods(), "methods", op.GetNotMethods(), "notMethods",
				op.GetPaths(), "paths", op.GetNotPaths(), "notPaths")
			unsupported = append(unsupported, l7...)
			m := state.Match{
				DestinationPorts:    c.ports(p+".ports", op.GetPorts()),
				NotDestinationPorts: c.ports(p+".notPorts", op.GetNotPorts()),
			}
			c.entry(p, &cl, m, len(l7) > 0)
		}
		clauses = append(clauses, cl)
	}
	if len(r.GetFrom()) > 0 {
		var cl clause
		for j, from := range r.GetFrom() {
			p := fmt.Sprintf("%s.from[%d].source", path, j)
			src := from.GetSource()
			l7 := fields(src.GetRequestPrincipals(), "requestPrincipals", src.GetNotRequestPrincipals(), "notRequestPrincipals",
				src.GetRemoteIpBlocks(), "remoteIpBlocks", src.GetNotRemoteIpBlocks(), "notRemoteIpBlocks",
				src.GetTrustDomains(), "trustDomains", src.GetNotTrustDomains(), "notTrustDomains")
			unsupported = append(unsupported, l7...)
			m := state.Match{
				Principals:         stringMatches(src.GetPrincipals()),
				NotPrincipals:      stringMatches(src.GetNotPrincipals()),
				Namespaces:         stringMatches(src.GetNamespaces()),
				NotNamespaces:      stringMatches(src.GetNotNamespaces()),
				ServiceAccounts:    c.serviceAccounts(src.GetServiceAccounts()),
				NotServiceAccounts: c.serviceAccounts(src.GetNotServiceAccounts()),
				SourceIPs:          c.prefixes(p+".ipBlocks", src.GetIpBlocks()),
				NotSourceIPs:       c.prefixes(p+".notIpBlocks", src.GetNotIpBlocks()),
			}
			c.entry(p, &cl, m, len(l7) > 0)
		}
		clauses = append(clauses, cl)
	}
	for j, w := range r.GetWhen() {
		p := fmt.Sprintf("%s.when[%d]", path, j)
		if w.GetKey() == "" {
			c.fail(p+".key", "required")
			continue
		}
		if len(w.GetValues()) == 0 && len(w.GetNotValues()) == 0 {
			c.fail(p, "values or notValues is required")
			continue
		}
		var m state.Match
		switch w.GetKey() {
		case "source.ip":
			m.SourceIPs = c.prefixes(p+".values", w.GetValues())
			m.NotSourceIPs = c.prefixes(p+".notValues", w.GetNotValues())
		case "source.namespace":
			m.Namespaces = stringMatches(w.GetValues())
			m.NotNamespaces = stringMatches(w.GetNotValues())
		case "source.principal":
			m.Principals = stringMatches(w.GetValues())
			m.NotPrincipals = stringMatches(w.GetNotValues())
		case "destination.ip":
			m.DestinationIPs = c.prefixes(p+".values", w.GetValues())
			m.NotDestinationIPs = c.prefixes(p+".notValues", w.GetNotValues())
		case "destination.port":
			m.DestinationPorts = c.ports(p+".values", w.GetValues())
			m.NotDestinationPorts = c.ports(p+".notValues", w.GetNotValues())
		default:
			unsupported = append(unsupported, "when "+w.GetKey())
			clauses = append(clauses, clause{anything: true})
			continue
		}
		clauses = append(clauses, clause{matches: []state.Match{m}})
	}

	slices.Sort(unsupported)
	unsupported = slices.Compact(unsupported)
	if len(unsupported) > 0 && action == state.ActionAllow {
		c.warn(path, "dropped: %s cannot be checked at L4, and an ALLOW rule that cannot be checked fully never matches (use a waypoint for HTTP rules)", strings.Join(unsupported, ", "))
		return state.Group{}, false
	}
	var g state.Group
	for _, cl := range clauses {
		if !cl.anything {
			g.Rules = append(g.Rules, state.Rule{Matches: cl.matches})
		}
	}
	if len(unsupported) > 0 {
		msg := "the DENY rule is enforced on its remaining L4 conditions, which is stricter than written"
		if len(g.Rules) == 0 {
			msg = "with no L4 condition left, the DENY rule denies every connection"
		}
		c.warn(path, "%s ignored: cannot be checked at L4; %s", strings.Join(unsupported, ", "), msg)
	}
	return g, true
}

// entry adds one `from` or `to` entry's match to its clause. An entry with
// nothing checkable left (hasL7) matches anything; one that had nothing to
// begin with is what Istio's validation rejects.
func (c *converter) entry(path string, cl *clause, m state.Match, hasL7 bool) {
	switch {
	case !emptyMatch(&m):
		cl.matches = append(cl.matches, m)
	case hasL7:
		cl.anything = true
	default:
		c.fail(path, "must not be empty")
	}
}

// fields names the non-empty lists among (list, name) pairs.
func fields(pairs ...any) []string {
	var out []string
	for i := 0; i+1 < len(pairs); i += 2 {
		if l, _ := pairs[i].([]string); len(l) > 0 {
			out = append(out, pairs[i+1].(string))
		}
	}
	return out
}

// stringMatches converts Istio's wildcard strings: "*" is presence (any
// non-empty value), "*x" a suffix, "x*" a prefix, anything else exact.
func stringMatches(vals []string) []state.StringMatch {
	if len(vals) == 0 {
		return nil
	}
	out := make([]state.StringMatch, 0, len(vals))
	for _, v := range vals {
		out = append(out, StringMatchOf(v))
	}
	return out
}

// StringMatchOf converts one of Istio's wildcard strings (see
// FromAuthorizationPolicy) into a StringMatch.
func StringMatchOf(v string) state.StringMatch {
	switch {
	case v == "*":
		return state.StringMatch{Presence: true}
	case strings.HasPrefix(v, "*"):
		return state.StringMatch{Suffix: v[1:]}
	case strings.HasSuffix(v, "*"):
		return state.StringMatch{Prefix: v[:len(v)-1]}
	default:
		return state.StringMatch{Exact: v}
	}
}

// serviceAccounts converts "namespace/name" or "name" (in the policy's
// namespace) service account references.
func (c *converter) serviceAccounts(vals []string) []state.ServiceAccountMatch {
	var out []state.ServiceAccountMatch
	for _, v := range vals {
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = c.ns, v
		}
		out = append(out, state.ServiceAccountMatch{Namespace: ns, ServiceAccount: sa})
	}
	return out
}

func (c *converter) prefixes(path string, vals []string) []netip.Prefix {
	var out []netip.Prefix
	for i, v := range vals {
		p, err := ParsePrefix(v)
		if err != nil {
			c.fail(fmt.Sprintf("%s[%d]", path, i), "%v", err)
			continue
		}
		out = append(out, p)
	}
	return out
}

// ParsePrefix parses an address block as Istio writes them: a CIDR
// ("10.0.0.0/8") or a single address ("10.1.2.3", a /32 or /128).
// IPv4-mapped IPv6 forms are stored as IPv4.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address block", s)
		}
		return unmapPrefix(p), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or address block", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (c *converter) ports(path string, vals []string) []uint16 {
	var out []uint16
	for i, v := range vals {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			c.fail(fmt.Sprintf("%s[%d]", path, i), "%q is not a port in 1-65535", v)
			continue
		}
		out = append(out, uint16(n))
	}
	return out
}

// FromPeerAuthentication converts a PeerAuthentication into the DENY policy
// that enforces it at L4, as istiod does for ztunnel: STRICT denies
// connections without a principal (plaintext). Scope follows the selector
// as for AuthorizationPolicy. With a selector, port-level modes refine it:
// under STRICT, PERMISSIVE or DISABLE ports are exempt; under another mode,
// STRICT ports alone deny plaintext. A policy that requires nothing yields
// nil.
//
// Each PeerAuthentication converts alone: Istio's inheritance (a workload's
// UNSET mode takes its namespace's, which takes the mesh's; a namespace
// PERMISSIVE overrides a mesh STRICT) is for the caller to resolve by
// choosing which converted policies apply. Selector policies in the root
// namespace are ignored, as in Istio.
func FromPeerAuthentication(pa *securityv1.PeerAuthentication, rootNamespace string) (*state.Policy, error) {
	if pa == nil {
		return nil, fmt.Errorf("nil PeerAuthentication")
	}
	if pa.Name == "" || pa.Namespace == "" {
		return nil, fmt.Errorf("PeerAuthentication %q in namespace %q: metadata.name and metadata.namespace are required: %w", pa.Name, pa.Namespace, ErrInvalid)
	}
	spec := &pa.Spec
	scope := selectorScope(spec.GetSelector(), pa.Namespace, rootNamespace)
	if scope == state.ScopeWorkloadSelector && pa.Namespace == rootNamespace {
		return nil, nil
	}
	noPrincipal := state.Match{NotPrincipals: []state.StringMatch{{Presence: true}}}
	var groups []state.Group
	var ports []uint32
	if scope == state.ScopeWorkloadSelector {
		ports = slices.Sorted(maps.Keys(spec.GetPortLevelMtls()))
	}
	for _, port := range ports {
		if port == 0 || port > 65535 {
			return nil, fmt.Errorf("PeerAuthentication %s/%s: portLevelMtls: %d is not a port in 1-65535: %w", pa.Namespace, pa.Name, port, ErrInvalid)
		}
	}
	switch spec.GetMtls().GetMode() {
	case v1beta1.PeerAuthentication_MutualTLS_STRICT:
		// Deny without a principal, unless the port is exempt: the rules
		// of one group are AND-ed.
		g := state.Group{Rules: []state.Rule{{Matches: []state.Match{noPrincipal}}}}
		for _, port := range ports {
			switch spec.GetPortLevelMtls()[port].GetMode() {
			case v1beta1.PeerAuthentication_MutualTLS_PERMISSIVE, v1beta1.PeerAuthentication_MutualTLS_DISABLE:
				g.Rules = append(g.Rules, state.Rule{Matches: []state.Match{{NotDestinationPorts: []uint16{uint16(port)}}}})
			}
		}
		groups = append(groups, g)
	default:
		// Only STRICT ports deny; groups are OR-ed, one per port.
		for _, port := range ports {
			if spec.GetPortLevelMtls()[port].GetMode() == v1beta1.PeerAuthentication_MutualTLS_STRICT {
				m := noPrincipal
				m.DestinationPorts = []uint16{uint16(port)}
				groups = append(groups, state.Group{Rules: []state.Rule{{Matches: []state.Match{m}}}})
			}
		}
	}
	if len(groups) == 0 {
		return nil, nil
	}
	return &state.Policy{
		Name:      PeerAuthenticationPrefix + pa.Name,
		Namespace: pa.Namespace,
		Scope:     scope,
		Action:    state.ActionDeny,
		Groups:    groups,
	}, nil
}
