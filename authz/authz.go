package authz

import (
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/state"
)

// Conn is what L4 authorization knows about a connection.
type Conn struct {
	// Identity is the peer's verified SPIFFE ID; zero for plaintext.
	Identity spiffeid.ID
	SrcIP    netip.Addr
	DstIP    netip.Addr
	// DstPort is the real target port on the workload (after service port
	// translation), which is what policies' ports name.
	DstPort uint16
}

// Decision is the outcome of Evaluate.
type Decision struct {
	Allowed bool
	// Reason is flow.ReasonNone when allowed, flow.ReasonPolicy when a DENY
	// policy matched, flow.ReasonPolicyNotAllowed when ALLOW policies apply
	// and none matched.
	Reason flow.Reason
	// Policy decided: the matching DENY or the matching ALLOW. nil when no
	// policy applies (default allow) and when no ALLOW policy matched.
	Policy *state.Policy
	// DryRun is a dry-run policy that would have changed Allowed had it been
	// enforced, for the access log and metrics; nil if none would.
	DryRun *state.Policy
}

// Evaluate applies the policies that select dest — dest's namespace's, the
// global ones and the workload-selector ones dest lists in
// AuthorizationPolicies, in that order (ztunnel's) — to c, in Istio's order:
//
//  1. any matching DENY policy denies;
//  2. with no ALLOW policy, the connection is allowed;
//  3. any matching ALLOW policy allows;
//  4. otherwise the connection is denied.
//
// Dry-run policies are evaluated as if enforced, only to fill Decision.DryRun.
// Keys in dest.AuthorizationPolicies that snap lacks are skipped, as ztunnel
// does: they are a policy in transit from the control plane. dest must not
// be nil (an unknown destination is refused before authorization). Evaluate
// does not allocate.
func Evaluate(snap *state.Snapshot, dest *state.Workload, c Conn) Decision {
	p := newPeer(&c)
	ns := snap.NamespacePolicies(dest.Namespace)
	global := snap.GlobalPolicies()

	// DENY first. The first matching enforced DENY decides; a matching
	// dry-run DENY only matters when nothing enforced denies.
	var e evaluation
	selected, indexed := snap.SelectedPolicies(dest)
	e.denies(ns.Deny, &p)
	e.denies(global.Deny, &p)
	if indexed {
		e.denies(selected.Deny, &p)
	} else {
		for _, k := range dest.AuthorizationPolicies {
			if pol, ok := snap.Policy(k); ok && pol.Action == state.ActionDeny {
				e.deny(pol, &p)
			}
		}
	}
	if e.denied != nil {
		// Enforced deny; dry-run policies can only add denies, which would
		// not change the outcome.
		return Decision{Reason: flow.ReasonPolicy, Policy: e.denied}
	}

	e.allows(ns.Allow, &p)
	e.allows(global.Allow, &p)
	if indexed {
		e.allows(selected.Allow, &p)
	} else {
		for _, k := range dest.AuthorizationPolicies {
			if pol, ok := snap.Policy(k); ok && pol.Action == state.ActionAllow {
				e.allow(pol, &p)
			}
		}
	}
	return e.decide()
}

// evaluation accumulates what the policies said, enforced and dry-run apart,
// so that one pass yields both the decision and the dry-run outcome.
type evaluation struct {
	denied, dryDenied *state.Policy // first matching DENY

	hasAllow      bool          // an enforced ALLOW policy applies
	allowed       *state.Policy // first matching enforced ALLOW
	firstDryAllow *state.Policy // first dry-run ALLOW that applies
	dryAllowed    *state.Policy // first matching dry-run ALLOW
}

func (e *evaluation) denies(pols []*state.Policy, p *peer) {
	for _, pol := range pols {
		if e.denied != nil {
			return
		}
		e.deny(pol, p)
	}
}

func (e *evaluation) deny(pol *state.Policy, p *peer) {
	switch {
	case e.denied != nil:
	case pol.DryRun:
		if e.dryDenied == nil && matchPolicy(pol, p) {
			e.dryDenied = pol
		}
	case matchPolicy(pol, p):
		e.denied = pol
	}
}

func (e *evaluation) allows(pols []*state.Policy, p *peer) {
	for _, pol := range pols {
		e.allow(pol, p)
	}
}

func (e *evaluation) allow(pol *state.Policy, p *peer) {
	if pol.DryRun {
		if e.firstDryAllow == nil {
			e.firstDryAllow = pol
		}
		if e.dryAllowed == nil && matchPolicy(pol, p) {
			e.dryAllowed = pol
		}
		return
	}
	e.hasAllow = true
	if e.allowed == nil && matchPolicy(pol, p) {
		e.allowed = pol
	}
}

// decide finishes an evaluation in which no enforced DENY matched.
func (e *evaluation) decide() Decision {
	var d Decision
	switch {
	case !e.hasAllow:
		d = Decision{Allowed: true}
	case e.allowed != nil:
		d = Decision{Allowed: true, Policy: e.allowed}
	default:
		d = Decision{Reason: flow.ReasonPolicyNotAllowed}
	}

	// The outcome had dry-run policies been enforced too.
	var dryAllowed bool
	var dryCause *state.Policy
	switch {
	case e.dryDenied != nil:
		dryCause = e.dryDenied
	case !e.hasAllow && e.firstDryAllow == nil:
		dryAllowed = true
	case e.allowed != nil:
		dryAllowed = true
	case e.dryAllowed != nil:
		dryAllowed, dryCause = true, e.dryAllowed
	default:
		// Denied for want of a matching ALLOW; if only dry-run ALLOW
		// policies exist, the first of them is what would deny.
		dryCause = e.firstDryAllow
	}
	if dryAllowed != d.Allowed {
		d.DryRun = dryCause
	}
	return d
}

// peer is the connection's identity taken apart once, without allocating:
// policies compare principals ("<trust domain>/<path>", Istio's form
// without "spiffe://"), namespaces and service accounts.
type peer struct {
	c *Conn
	// principal is empty for plaintext.
	principal string
	// ns and sa are empty unless the ID has Kubernetes' form
	// spiffe://<td>/ns/<namespace>/sa/<service account>.
	ns, sa string
	src    netip.Addr
	dst    netip.Addr
}

// spiffeScheme is the prefix Istio strips before comparing principals.
const spiffeScheme = "spiffe://"

func newPeer(c *Conn) peer {
	// Policies store addresses unmapped; an IPv4 peer seen on a dual-stack
	// socket arrives v4-mapped and would otherwise match no IPv4 block.
	p := peer{c: c, src: c.SrcIP.Unmap(), dst: c.DstIP.Unmap()}
	if c.Identity.IsZero() {
		return p
	}
	// String returns the ID's stored string: no allocation.
	p.principal = strings.TrimPrefix(c.Identity.String(), spiffeScheme)
	rest, ok := strings.CutPrefix(c.Identity.Path(), "/ns/")
	if !ok {
		return p
	}
	ns, rest, ok := strings.Cut(rest, "/")
	if !ok {
		return p
	}
	sa, ok := strings.CutPrefix(rest, "sa/")
	if !ok || sa == "" || strings.Contains(sa, "/") {
		return p
	}
	p.ns, p.sa = ns, sa
	return p
}
