package controller

import (
	"fmt"
	"strings"

	"istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi/security"
	"k8s.io/apimachinery/pkg/types"

	"github.com/warren-mesh/warren/authz"
	"github.com/warren-mesh/warren/state"
)

// staticStrictName is the DENY-plaintext policy, in the root namespace,
// that every workload under an effective STRICT PeerAuthentication lists.
// istiod's name, so that config dumps read the same; '_' cannot appear in
// a Kubernetes name, so it never clashes with an AuthorizationPolicy's.
const staticStrictName = "istio_converted_static_strict"

// convertAuthorizationPolicies adds an Authorization per AuthorizationPolicy
// and files the workload-selector ones for the pods.
//
// Policies with targetRefs belong to waypoints and are skipped silently,
// as in istiod. A policy that cannot be converted is reported; what
// happens to it depends on its action, because leaving a policy out widens
// access exactly when it is an ALLOW:
//
//   - DENY: left out (istiod instead drops the bad values and keeps the
//     rest, which may deny less or more than written).
//   - ALLOW: replaced by an ALLOW policy without rules under the same name,
//     which allows nothing, so a workload it selects stays closed to all
//     but what its other ALLOW policies allow. This is the fail-closed
//     reading Istio applies to ALLOW rules it cannot check.
func (b *builder) convertAuthorizationPolicies(aps []*securityv1.AuthorizationPolicy) {
	for _, ap := range aps {
		if ap.Spec.GetTargetRef() != nil || len(ap.Spec.GetTargetRefs()) > 0 {
			continue
		}
		// Workloads read the selectors.
		b.next.deps.add(ap)
		name := types.NamespacedName{Namespace: ap.Namespace, Name: ap.Name}
		m, ok := b.prev.authorization(name)
		if !ok || m.ap != ap {
			m = b.convertAuthorizationPolicy(ap)
		}
		b.next.authz[name] = m
		b.out.Problems = append(b.out.Problems, m.problems...)
		if m.resource == nil {
			continue
		}
		key := ap.Namespace + "/" + ap.Name
		b.out.Authorizations[key] = m.resource
		if m.resource.GetScope() == security.Scope_WORKLOAD_SELECTOR {
			b.authzBySelector.add(ap.Namespace, ap.Spec.GetSelector().GetMatchLabels(), key)
		}
	}
}

// convertAuthorizationPolicy converts one policy (see
// convertAuthorizationPolicies).
func (b *builder) convertAuthorizationPolicy(ap *securityv1.AuthorizationPolicy) authzMemo {
	root := b.cfg.RootNamespace
	m := authzMemo{ap: ap}
	problem := func(reason, msg string) {
		m.problems = append(m.problems, Problem{Object: refTo(kindAuthz, ap.Namespace, ap.Name, ap.UID), Reason: reason, Message: msg})
	}
	pol, warnings, err := authz.FromAuthorizationPolicy(ap, root)
	switch {
	case err != nil && ap.Spec.GetAction() == v1beta1.AuthorizationPolicy_ALLOW:
		problem(ReasonInvalidPolicy, fmt.Sprintf("%v; enforced as allowing nothing until fixed", err))
		pol = &state.Policy{
			Name:      ap.Name,
			Namespace: ap.Namespace,
			Scope:     policyScope(ap.Spec.GetSelector().GetMatchLabels(), ap.Namespace, root),
			Action:    state.ActionAllow,
			DryRun:    ap.Annotations[authz.DryRunAnnotation] == "true",
		}
	case err != nil:
		problem(ReasonInvalidPolicy, fmt.Sprintf("%v; not enforced until fixed", err))
		return m
	case pol == nil:
		problem(ReasonPolicyNotEnforced, strings.Join(warnings, "; "))
		return m
	case len(warnings) > 0:
		problem(ReasonPolicyNarrowed, strings.Join(warnings, "; "))
	}
	m.resource = authz.ToProto(pol)
	return m
}

// policyScope is authz's scope rule, for policies it could not convert.
func policyScope(selector map[string]string, ns, root string) state.Scope {
	switch {
	case len(selector) > 0:
		return state.ScopeWorkloadSelector
	case ns == root:
		return state.ScopeGlobal
	}
	return state.ScopeNamespace
}

// peerAuthnIndex resolves which PeerAuthentication governs a workload, with
// Istio's inheritance: a workload policy (selector, not in the root
// namespace) over the namespace's (no selector) over the mesh's (no
// selector, root namespace), an UNSET mode taking the parent's; the oldest
// policy wins a tie at one level.
//
// Namespace and mesh policies are never sent as namespace or global DENY
// policies: a namespace PERMISSIVE must be able to override a mesh STRICT,
// and any matching DENY denies. As istiod does, each workload instead
// lists either the static strict policy or, when its workload policy sets
// port-level modes, that policy converted with the inherited mode filled
// in.
type peerAuthnIndex struct {
	mesh       *securityv1.PeerAuthentication
	namespaces map[string]*securityv1.PeerAuthentication
	selectors  selectorIndex[*workloadPeerAuthn]
	staticKey  string // "" when there is no PeerAuthentication at all
}

type workloadPeerAuthn struct {
	pa *securityv1.PeerAuthentication
	// key names its converted policy, "" when it has none (no port-level
	// modes, or nothing to deny).
	key string
}

func (b *builder) convertPeerAuthentications(pas []*securityv1.PeerAuthentication) {
	root := b.cfg.RootNamespace
	ix := &b.peerAuthn
	ix.namespaces = make(map[string]*securityv1.PeerAuthentication)
	var workload []*securityv1.PeerAuthentication
	for _, pa := range pas {
		// Each may change any workload's inherited mode.
		b.next.deps.add(pa)
		switch {
		case len(pa.Spec.GetSelector().GetMatchLabels()) > 0 && pa.Namespace == root:
			// Istio ignores selector policies in the root namespace.
		case len(pa.Spec.GetSelector().GetMatchLabels()) > 0:
			workload = append(workload, pa)
		case pa.Namespace == root:
			if older(pa, ix.mesh) {
				ix.mesh = pa
			}
		default:
			if older(pa, ix.namespaces[pa.Namespace]) {
				ix.namespaces[pa.Namespace] = pa
			}
		}
	}
	for _, pa := range workload {
		wp := &workloadPeerAuthn{pa: pa}
		if len(pa.Spec.GetPortLevelMtls()) > 0 {
			mode := pa.Spec.GetMtls().GetMode()
			if mode == v1beta1.PeerAuthentication_MutualTLS_UNSET {
				mode = v1beta1.PeerAuthentication_MutualTLS_PERMISSIVE
				if ix.parentStrict(pa.Namespace) {
					mode = v1beta1.PeerAuthentication_MutualTLS_STRICT
				}
			}
			// The inherited mode is written into a copy, so that the
			// converted policy alone says everything about the workload.
			eff := &securityv1.PeerAuthentication{
				ObjectMeta: pa.ObjectMeta,
				Spec: v1beta1.PeerAuthentication{
					Selector:      pa.Spec.GetSelector(),
					Mtls:          &v1beta1.PeerAuthentication_MutualTLS{Mode: mode},
					PortLevelMtls: pa.Spec.GetPortLevelMtls(),
				},
			}
			pol, err := authz.FromPeerAuthentication(eff, root)
			if err != nil {
				// Left out: its workloads fall back to the namespace's
				// or mesh's mode.
				b.problem(refTo(kindPeerAuthn, pa.Namespace, pa.Name, pa.UID), ReasonInvalidPolicy, fmt.Sprintf("%v; not enforced until fixed", err))
				continue
			}
			if pol != nil {
				wp.key = pol.Key()
				b.out.Authorizations[wp.key] = authz.ToProto(pol)
			}
		}
		ix.selectors.add(pa.Namespace, pa.Spec.GetSelector().GetMatchLabels(), wp)
	}
	if len(pas) > 0 {
		// Sent whenever any PeerAuthentication exists, as istiod does, so
		// that a workload may list it before anything else changes.
		static := &state.Policy{
			Name:      staticStrictName,
			Namespace: root,
			Scope:     state.ScopeWorkloadSelector,
			Action:    state.ActionDeny,
			Groups: []state.Group{{Rules: []state.Rule{{Matches: []state.Match{{
				NotPrincipals: []state.StringMatch{{Presence: true}},
			}}}}}},
		}
		ix.staticKey = static.Key()
		b.out.Authorizations[ix.staticKey] = authz.ToProto(static)
	}
}

// older reports whether a should win over the current choice b: created
// earlier, by name on a tie.
func older(a, b *securityv1.PeerAuthentication) bool {
	if b == nil {
		return true
	}
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Name < b.Name
}

// parentStrict reports whether the mesh and namespace policies make ns
// STRICT.
func (ix *peerAuthnIndex) parentStrict(ns string) bool {
	strict := ix.mesh != nil && ix.mesh.Spec.GetMtls().GetMode() == v1beta1.PeerAuthentication_MutualTLS_STRICT
	if nsp := ix.namespaces[ns]; nsp != nil {
		if mode := nsp.Spec.GetMtls().GetMode(); mode != v1beta1.PeerAuthentication_MutualTLS_UNSET {
			strict = mode == v1beta1.PeerAuthentication_MutualTLS_STRICT
		}
	}
	return strict
}

// appendKeys appends the names of the PeerAuthentication-derived policies a
// workload in ns with labels lists. scratch is reused between calls.
func (ix *peerAuthnIndex) appendKeys(dst []string, scratch *[]*workloadPeerAuthn, ns string, labels map[string]string) []string {
	if ix.staticKey == "" {
		return dst
	}
	strict := ix.parentStrict(ns)
	*scratch = ix.selectors.appendSelecting((*scratch)[:0], ns, labels)
	var chosen *workloadPeerAuthn
	for _, c := range *scratch {
		if chosen == nil || older(c.pa, chosen.pa) {
			chosen = c
		}
	}
	if chosen != nil {
		switch chosen.pa.Spec.GetMtls().GetMode() {
		case v1beta1.PeerAuthentication_MutualTLS_STRICT:
			strict = true
		case v1beta1.PeerAuthentication_MutualTLS_PERMISSIVE, v1beta1.PeerAuthentication_MutualTLS_DISABLE:
			strict = false
		}
		if chosen.key != "" {
			return append(dst, chosen.key)
		}
	}
	if strict {
		dst = append(dst, ix.staticKey)
	}
	return dst
}
