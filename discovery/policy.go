package discovery

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warren-mesh/warren/authz"
	"github.com/warren-mesh/warren/state"
)

// filePolicy is a policy in the form istiod sends ztunnel
// (istio.security.Authorization), in camelCase.
type filePolicy struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// Scope is Global, Namespace or WorkloadSelector (or Istio's GLOBAL,
	// NAMESPACE, WORKLOAD_SELECTOR).
	Scope string `json:"scope"`
	// Action is Allow (the default) or Deny (or ALLOW, DENY).
	Action string      `json:"action"`
	DryRun bool        `json:"dryRun"`
	Groups []fileGroup `json:"groups"`
}

type fileGroup struct {
	Rules []fileRule `json:"rules"`
}

type fileRule struct {
	Matches []fileMatch `json:"matches"`
}

type fileMatch struct {
	Namespaces          []fileStringMatch    `json:"namespaces"`
	NotNamespaces       []fileStringMatch    `json:"notNamespaces"`
	ServiceAccounts     []fileServiceAccount `json:"serviceAccounts"`
	NotServiceAccounts  []fileServiceAccount `json:"notServiceAccounts"`
	Principals          []fileStringMatch    `json:"principals"`
	NotPrincipals       []fileStringMatch    `json:"notPrincipals"`
	SourceIPs           []string             `json:"sourceIps"`
	NotSourceIPs        []string             `json:"notSourceIps"`
	DestinationIPs      []string             `json:"destinationIps"`
	NotDestinationIPs   []string             `json:"notDestinationIps"`
	DestinationPorts    []json.Number        `json:"destinationPorts"`
	NotDestinationPorts []json.Number        `json:"notDestinationPorts"`
}

// fileStringMatch sets exactly one field. Pointers tell `exact: ""` from
// an absent exact.
type fileStringMatch struct {
	Exact  *string `json:"exact"`
	Prefix *string `json:"prefix"`
	Suffix *string `json:"suffix"`
	// Presence is `{}` (protobuf's Empty, as in Istio's JSON) or `true`.
	Presence json.RawMessage `json:"presence"`
}

type fileServiceAccount struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
}

// fileObject is a Kubernetes object as `kubectl get -o yaml` prints it. The
// spec is decoded strictly by its own protobuf JSON rules; metadata and
// status are read leniently, so that server-filled fields paste as they are.
type fileObject struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   json.RawMessage `json:"metadata"`
	Spec       json.RawMessage `json:"spec"`
	Status     json.RawMessage `json:"status"`
}

func (b *builder) policy(i int, fp filePolicy) *state.Policy {
	p := fmt.Sprintf("policies[%d]", i)
	pol := &state.Policy{Name: fp.Name, Namespace: fp.Namespace, DryRun: fp.DryRun}
	switch {
	case fp.Name == "":
		b.add(p+".name", "required")
	case strings.Contains(fp.Name, "/"):
		b.add(p+".name", "%q contains '/', which separates namespace and name in policy keys", fp.Name)
	}
	b.namespace(p+".namespace", fp.Namespace)
	switch fp.Scope {
	case "Global", "GLOBAL":
		pol.Scope = state.ScopeGlobal
	case "Namespace", "NAMESPACE":
		pol.Scope = state.ScopeNamespace
	case "WorkloadSelector", "WORKLOAD_SELECTOR":
		pol.Scope = state.ScopeWorkloadSelector
	case "":
		// Istio's default is GLOBAL; a forgotten scope applying mesh-wide is
		// too likely a surprise to default here.
		b.add(p+".scope", "required: Global, Namespace or WorkloadSelector")
	default:
		b.add(p+".scope", "%q is not one of Global, Namespace, WorkloadSelector", fp.Scope)
	}
	switch fp.Action {
	case "", "Allow", "ALLOW":
		pol.Action = state.ActionAllow
	case "Deny", "DENY":
		pol.Action = state.ActionDeny
	default:
		b.add(p+".action", "%q is not one of Allow, Deny", fp.Action)
	}
	for gi, fg := range fp.Groups {
		var g state.Group
		for ri, fr := range fg.Rules {
			var r state.Rule
			for mi, fm := range fr.Matches {
				r.Matches = append(r.Matches, b.match(fmt.Sprintf("%s.groups[%d].rules[%d].matches[%d]", p, gi, ri, mi), fm))
			}
			g.Rules = append(g.Rules, r)
		}
		pol.Groups = append(pol.Groups, g)
	}
	return pol
}

func (b *builder) match(p string, fm fileMatch) state.Match {
	m := state.Match{
		Namespaces:          b.stringMatches(p+".namespaces", fm.Namespaces),
		NotNamespaces:       b.stringMatches(p+".notNamespaces", fm.NotNamespaces),
		ServiceAccounts:     b.serviceAccounts(p+".serviceAccounts", fm.ServiceAccounts),
		NotServiceAccounts:  b.serviceAccounts(p+".notServiceAccounts", fm.NotServiceAccounts),
		Principals:          b.stringMatches(p+".principals", fm.Principals),
		NotPrincipals:       b.stringMatches(p+".notPrincipals", fm.NotPrincipals),
		SourceIPs:           b.prefixes(p+".sourceIps", fm.SourceIPs),
		NotSourceIPs:        b.prefixes(p+".notSourceIps", fm.NotSourceIPs),
		DestinationIPs:      b.prefixes(p+".destinationIps", fm.DestinationIPs),
		NotDestinationIPs:   b.prefixes(p+".notDestinationIps", fm.NotDestinationIPs),
		DestinationPorts:    b.policyPorts(p+".destinationPorts", fm.DestinationPorts),
		NotDestinationPorts: b.policyPorts(p+".notDestinationPorts", fm.NotDestinationPorts),
	}
	if len(fm.Namespaces)+len(fm.NotNamespaces)+len(fm.ServiceAccounts)+len(fm.NotServiceAccounts)+
		len(fm.Principals)+len(fm.NotPrincipals)+len(fm.SourceIPs)+len(fm.NotSourceIPs)+
		len(fm.DestinationIPs)+len(fm.NotDestinationIPs)+len(fm.DestinationPorts)+len(fm.NotDestinationPorts) == 0 {
		// ztunnel skips an empty match rather than reading it as "any",
		// which is never what someone writing one means.
		b.add(p, "empty: a match without fields never matches; to match everything, leave the rule without matches")
	}
	return m
}

func (b *builder) stringMatches(p string, in []fileStringMatch) []state.StringMatch {
	var out []state.StringMatch
	for k, fs := range in {
		kp := fmt.Sprintf("%s[%d]", p, k)
		var sm state.StringMatch
		set := 0
		if fs.Exact != nil {
			set++
			sm.Exact = *fs.Exact
		}
		if fs.Prefix != nil {
			set++
			sm.Prefix = *fs.Prefix
			if sm.Prefix == "" {
				b.add(kp+".prefix", "empty: use presence to match any value")
			}
		}
		if fs.Suffix != nil {
			set++
			sm.Suffix = *fs.Suffix
			if sm.Suffix == "" {
				b.add(kp+".suffix", "empty: use presence to match any value")
			}
		}
		if fs.Presence != nil {
			set++
			sm.Presence = true
			if v := string(bytes.TrimSpace(fs.Presence)); v != "{}" && v != "true" {
				b.add(kp+".presence", "expected {} or true, got %s", v)
			}
		}
		if set != 1 {
			b.add(kp, "set exactly one of exact, prefix, suffix, presence")
			continue
		}
		out = append(out, sm)
	}
	return out
}

func (b *builder) serviceAccounts(p string, in []fileServiceAccount) []state.ServiceAccountMatch {
	var out []state.ServiceAccountMatch
	for k, fs := range in {
		kp := fmt.Sprintf("%s[%d]", p, k)
		if fs.Namespace == "" {
			b.add(kp+".namespace", "required")
		}
		if fs.ServiceAccount == "" {
			b.add(kp+".serviceAccount", "required")
		}
		out = append(out, state.ServiceAccountMatch{Namespace: fs.Namespace, ServiceAccount: fs.ServiceAccount})
	}
	return out
}

func (b *builder) prefixes(p string, in []string) []netip.Prefix {
	var out []netip.Prefix
	for k, s := range in {
		pfx, err := authz.ParsePrefix(s)
		if err != nil {
			b.add(fmt.Sprintf("%s[%d]", p, k), "%v", err)
			continue
		}
		out = append(out, pfx)
	}
	return out
}

func (b *builder) policyPorts(p string, in []json.Number) []uint16 {
	var out []uint16
	for k, n := range in {
		port, err := strconv.ParseUint(string(n), 10, 16)
		if err != nil || port == 0 {
			b.add(fmt.Sprintf("%s[%d]", p, k), "%s is not a port in 1-65535", n)
			continue
		}
		out = append(out, uint16(port))
	}
	return out
}

// addPolicy records a converted policy under its key, refusing duplicates
// across all policy sections.
func (b *builder) addPolicy(p string, pol *state.Policy) {
	if pol.Name == "" || pol.Namespace == "" {
		return // already reported
	}
	k := pol.Key()
	if other, dup := b.byPolicy[k]; dup {
		b.add(p, "policy %q is already defined by %s", k, other)
		return
	}
	b.byPolicy[k] = p
	b.policies = append(b.policies, pol)
}

// object decodes an Istio security object's envelope and checks its type.
// It reports whether decoding went well; spec is decoded into by the caller.
func (b *builder) object(p string, obj fileObject, kind string, meta *metav1.ObjectMeta) bool {
	start := len(b.errs)
	switch obj.APIVersion {
	case "security.istio.io/v1", "security.istio.io/v1beta1":
	case "":
		b.add(p+".apiVersion", "required: security.istio.io/v1")
	default:
		b.add(p+".apiVersion", "%q is not security.istio.io/v1 or v1beta1", obj.APIVersion)
	}
	if obj.Kind != kind {
		b.add(p+".kind", "%q is not %s", obj.Kind, kind)
	}
	if obj.Metadata == nil {
		b.add(p+".metadata", "required")
	} else if err := json.Unmarshal(obj.Metadata, meta); err != nil {
		b.add(p+".metadata", "%v", err)
	} else {
		if meta.Name == "" {
			b.add(p+".metadata.name", "required")
		}
		b.namespace(p+".metadata.namespace", meta.Namespace)
	}
	return len(b.errs) == start
}

// decodeSpec decodes an Istio spec strictly: an unknown (say misspelt) field
// must not silently widen or drop a policy.
func (b *builder) decodeSpec(p string, raw json.RawMessage, into proto.Message) bool {
	if raw == nil {
		return true
	}
	if err := protojson.Unmarshal(raw, into); err != nil {
		b.add(p+".spec", "%v", err)
		return false
	}
	return true
}

func (b *builder) authorizationPolicy(p string, obj fileObject, root string, workloads []*state.Workload) {
	ap := &securityv1.AuthorizationPolicy{}
	if !b.object(p, obj, "AuthorizationPolicy", &ap.ObjectMeta) || !b.decodeSpec(p, obj.Spec, &ap.Spec) {
		return
	}
	pol, warnings, err := authz.FromAuthorizationPolicy(ap, root)
	if err != nil {
		b.add(p+".spec", "%v", err)
		return
	}
	for _, w := range warnings {
		b.warnings = append(b.warnings, p+" ("+ap.Namespace+"/"+ap.Name+"): "+w)
	}
	if pol == nil {
		return
	}
	b.addPolicy(p, pol)
	b.selectWorkloads(pol, ap.Spec.GetSelector().GetMatchLabels(), root, workloads)
}

func (b *builder) peerAuthentication(p string, obj fileObject, root string, workloads []*state.Workload) {
	pa := &securityv1.PeerAuthentication{}
	if !b.object(p, obj, "PeerAuthentication", &pa.ObjectMeta) || !b.decodeSpec(p, obj.Spec, &pa.Spec) {
		return
	}
	pol, err := authz.FromPeerAuthentication(pa, root)
	if err != nil {
		b.add(p+".spec", "%v", err)
		return
	}
	if pol == nil {
		return
	}
	b.addPolicy(p, pol)
	b.selectWorkloads(pol, pa.Spec.GetSelector().GetMatchLabels(), root, workloads)
}

// selectWorkloads does the controller's part for a workload-selector
// policy: it lists the policy on every workload whose labels include the
// selector's, in the policy's namespace, or in all namespaces for a policy
// in the root namespace.
func (b *builder) selectWorkloads(pol *state.Policy, selector map[string]string, root string, workloads []*state.Workload) {
	if pol.Scope != state.ScopeWorkloadSelector {
		return
	}
	for i, w := range workloads {
		if pol.Namespace != root && w.Namespace != pol.Namespace {
			continue
		}
		labels := b.workloads[i].Labels
		matches := true
		for _, k := range slices.Sorted(maps.Keys(selector)) {
			if v, ok := labels[k]; !ok || v != selector[k] {
				matches = false
				break
			}
		}
		if matches && !slices.Contains(w.AuthorizationPolicies, pol.Key()) {
			w.AuthorizationPolicies = append(w.AuthorizationPolicies, pol.Key())
		}
	}
}

// policyRefs checks that every policy a workload names is defined. It runs
// after all policy sections are read, so these errors come last.
func (b *builder) policyRefs(fws []fileWorkload) {
	for i, fw := range fws {
		for k, key := range fw.AuthorizationPolicies {
			if _, ok := b.byPolicy[key]; !ok {
				b.add(fmt.Sprintf("workloads[%d].authorizationPolicies[%d]", i, k), "no policy %q (want \"<namespace>/<name>\" of a policy in this file)", key)
			}
		}
	}
}
