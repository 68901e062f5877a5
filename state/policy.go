package state

import "net/netip"

// Scope says which workloads a Policy applies to (Istio's
// istio.security.Scope).
type Scope int

const (
	// ScopeGlobal: every workload in the mesh (a policy in the root
	// namespace without a selector).
	ScopeGlobal Scope = iota
	// ScopeNamespace: every workload in the policy's namespace.
	ScopeNamespace
	// ScopeWorkloadSelector: the workloads that list the policy in their
	// AuthorizationPolicies.
	ScopeWorkloadSelector
)

func (s Scope) String() string {
	switch s {
	case ScopeGlobal:
		return "Global"
	case ScopeNamespace:
		return "Namespace"
	case ScopeWorkloadSelector:
		return "WorkloadSelector"
	}
	return "Unknown"
}

// Action is what a matching Policy does.
type Action int

const (
	ActionAllow Action = iota
	ActionDeny
)

func (a Action) String() string {
	if a == ActionDeny {
		return "Deny"
	}
	return "Allow"
}

// Policy is an L4 authorization policy in the form of Istio's
// istio.security.Authorization (what istiod sends ztunnel): a policy
// matches a connection when any of its Groups matches.
type Policy struct {
	Name      string
	Namespace string
	Scope     Scope
	Action    Action
	Groups    []Group
	// DryRun policies are evaluated, logged and counted, never enforced.
	DryRun bool
}

// Key is the policy's resource name, "<namespace>/<name>", which workloads
// use to refer to it.
func (p *Policy) Key() string { return p.Namespace + "/" + p.Name }

// Group matches when all of its Rules match.
type Group struct {
	Rules []Rule
}

// Rule matches when any of its Matches matches.
type Rule struct {
	Matches []Match
}

// Match matches when every field that is set matches: a positive field
// when the connection has one of its values, a Not field when it has none of
// them.
type Match struct {
	Namespaces, NotNamespaces           []StringMatch
	ServiceAccounts, NotServiceAccounts []ServiceAccountMatch
	// Principals are SPIFFE IDs without the "spiffe://" scheme.
	Principals, NotPrincipals             []StringMatch
	SourceIPs, NotSourceIPs               []netip.Prefix
	DestinationIPs, NotDestinationIPs     []netip.Prefix
	DestinationPorts, NotDestinationPorts []uint16
}

// StringMatch is one of: an exact value, a prefix, a suffix, or presence
// (any non-empty value).
type StringMatch struct {
	Exact, Prefix, Suffix string
	Presence              bool
}

// ServiceAccountMatch names one service account.
type ServiceAccountMatch struct {
	Namespace, ServiceAccount string
}
