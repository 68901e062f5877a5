package authz

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"sigs.k8s.io/yaml"

	"github.com/warren-mesh/warren/state"
)

var cmpOpts = []cmp.Option{
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmpopts.EquateEmpty(),
}

func authzPolicy(t *testing.T, y string) *securityv1.AuthorizationPolicy {
	t.Helper()
	ap := &securityv1.AuthorizationPolicy{}
	if err := yaml.Unmarshal([]byte(y), ap); err != nil {
		t.Fatalf("decoding test policy: %v", err)
	}
	return ap
}

func peerAuth(t *testing.T, y string) *securityv1.PeerAuthentication {
	t.Helper()
	pa := &securityv1.PeerAuthentication{}
	if err := yaml.Unmarshal([]byte(y), pa); err != nil {
		t.Fatalf("decoding test policy: %v", err)
	}
	return pa
}

const meta = "metadata: {name: p, namespace: ns}\n"

func TestFromAuthorizationPolicy(t *testing.T) {
	allowNS := func(groups ...state.Group) *state.Policy {
		return &state.Policy{Name: "p", Namespace: "ns", Scope: state.ScopeNamespace, Action: state.ActionAllow, Groups: groups}
	}
	denyNS := func(groups ...state.Group) *state.Policy {
		p := allowNS(groups...)
		p.Action = state.ActionDeny
		return p
	}
	rules := func(ms ...state.Match) state.Group {
		var g state.Group
		for _, m := range ms {
			g.Rules = append(g.Rules, state.Rule{Matches: []state.Match{m}})
		}
		return g
	}
	tests := []struct {
		name     string
		in       string
		root     string // default DefaultRootNamespace
		want     *state.Policy
		warnings []string
		wantErr  bool
	}{
		{
			name: "allow nothing: no rules",
			in:   meta + "spec: {}",
			want: allowNS(),
		},
		{
			name: "allow all: one empty rule",
			in:   meta + "spec: {rules: [{}]}",
			want: allowNS(state.Group{}),
		},
		{
			name: "global scope in the root namespace",
			in:   "metadata: {name: p, namespace: istio-system}\nspec: {rules: [{}]}",
			want: &state.Policy{Name: "p", Namespace: "istio-system", Scope: state.ScopeGlobal, Groups: []state.Group{{}}},
		},
		{
			name: "custom root namespace",
			in:   "metadata: {name: p, namespace: mesh-root}\nspec: {}",
			root: "mesh-root",
			want: &state.Policy{Name: "p", Namespace: "mesh-root", Scope: state.ScopeGlobal},
		},
		{
			name: "selector scope",
			in:   meta + "spec: {selector: {matchLabels: {app: db}}, action: DENY, rules: [{}]}",
			want: &state.Policy{Name: "p", Namespace: "ns", Scope: state.ScopeWorkloadSelector, Action: state.ActionDeny, Groups: []state.Group{{}}},
		},
		{
			name: "selector without labels is the namespace",
			in:   meta + "spec: {selector: {}}",
			want: allowNS(),
		},
		{
			name: "dry-run annotation",
			in:   "metadata: {name: p, namespace: ns, annotations: {istio.io/dry-run: \"true\"}}\nspec: {}",
			want: &state.Policy{Name: "p", Namespace: "ns", Scope: state.ScopeNamespace, DryRun: true},
		},
		{
			name: "principals and notPrincipals with wildcards",
			in: meta + `spec:
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/a/sa/b", "cluster.local/ns/c/*", "*/sa/d", "*"]
        notPrincipals: ["cluster.local/ns/a/sa/x"]`,
			want: allowNS(rules(state.Match{
				Principals:    []state.StringMatch{{Exact: "cluster.local/ns/a/sa/b"}, {Prefix: "cluster.local/ns/c/"}, {Suffix: "/sa/d"}, {Presence: true}},
				NotPrincipals: exact("cluster.local/ns/a/sa/x"),
			})),
		},
		{
			name: "namespaces and notNamespaces",
			in:   meta + "spec: {rules: [{from: [{source: {namespaces: [\"prod-*\"], notNamespaces: [prod-test]}}]}]}",
			want: allowNS(rules(state.Match{Namespaces: prefix("prod-"), NotNamespaces: exact("prod-test")})),
		},
		{
			name: "serviceAccounts and notServiceAccounts, bare names in the policy's namespace",
			in:   meta + "spec: {rules: [{from: [{source: {serviceAccounts: [other/client, local]}}, {source: {notServiceAccounts: [bad]}}]}]}",
			want: allowNS(state.Group{Rules: []state.Rule{{Matches: []state.Match{
				{ServiceAccounts: []state.ServiceAccountMatch{{Namespace: "other", ServiceAccount: "client"}, {Namespace: "ns", ServiceAccount: "local"}}},
				{NotServiceAccounts: []state.ServiceAccountMatch{{Namespace: "ns", ServiceAccount: "bad"}}},
			}}}}),
		},
		{
			name: "ipBlocks and notIpBlocks, v4 and v6",
			in:   meta + "spec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/8, 10.1.2.3, \"fd00::/64\", \"::ffff:10.9.0.0/112\"], notIpBlocks: [\"fd00::1\"]}}]}]}",
			want: allowNS(rules(state.Match{
				SourceIPs:    prefixes("10.0.0.0/8", "10.1.2.3/32", "fd00::/64", "10.9.0.0/16"),
				NotSourceIPs: prefixes("fd00::1/128"),
			})),
		},
		{
			name: "ports and notPorts",
			in:   meta + "spec: {rules: [{to: [{operation: {ports: [\"80\", \"8080\"]}}, {operation: {notPorts: [\"9090\"]}}]}]}",
			want: allowNS(state.Group{Rules: []state.Rule{{Matches: []state.Match{
				{DestinationPorts: []uint16{80, 8080}},
				{NotDestinationPorts: []uint16{9090}},
			}}}}),
		},
		{
			name: "to, from and when become AND-ed rules",
			in: meta + `spec:
  rules:
  - from: [{source: {namespaces: [a]}}]
    to: [{operation: {ports: ["80"]}}]
    when:
    - {key: source.ip, values: [10.0.0.0/8], notValues: [10.0.0.1]}
    - {key: source.namespace, values: [a], notValues: [b]}
    - {key: source.principal, values: ["*"], notValues: [td/ns/a/sa/x]}
    - {key: destination.ip, values: [10.2.0.0/16], notValues: [10.2.0.1]}
    - {key: destination.port, values: ["80"], notValues: ["81"]}`,
			want: allowNS(rules(
				state.Match{DestinationPorts: []uint16{80}},
				state.Match{Namespaces: exact("a")},
				state.Match{SourceIPs: prefixes("10.0.0.0/8"), NotSourceIPs: prefixes("10.0.0.1")},
				state.Match{Namespaces: exact("a"), NotNamespaces: exact("b")},
				state.Match{Principals: presence, NotPrincipals: exact("td/ns/a/sa/x")},
				state.Match{DestinationIPs: prefixes("10.2.0.0/16"), NotDestinationIPs: prefixes("10.2.0.1")},
				state.Match{DestinationPorts: []uint16{80}, NotDestinationPorts: []uint16{81}},
			)),
		},
		{
			name: "ALLOW rule with HTTP attributes is dropped, others kept",
			in: meta + `spec:
  rules:
  - to: [{operation: {methods: [GET], ports: ["80"]}}]
  - from: [{source: {namespaces: [a]}}]`,
			want:     allowNS(rules(state.Match{Namespaces: exact("a")})),
			warnings: []string{"rules[0]: dropped: methods cannot be checked at L4, and an ALLOW rule that cannot be checked fully never matches (use a waypoint for HTTP rules)"},
		},
		{
			name: "ALLOW with only HTTP rules fails closed",
			in:   meta + "spec: {rules: [{to: [{operation: {paths: [/admin]}}], from: [{source: {requestPrincipals: [\"*\"]}}]}]}",
			want: allowNS(),
			warnings: []string{
				"rules[0]: dropped: paths, requestPrincipals cannot be checked at L4, and an ALLOW rule that cannot be checked fully never matches (use a waypoint for HTTP rules)",
				"no rule can be checked at L4: the policy allows nothing",
			},
		},
		{
			name: "ALLOW with an L7 when key is dropped",
			in:   meta + "spec: {rules: [{when: [{key: \"request.headers[x-user]\", values: [a]}]}]}",
			want: allowNS(),
			warnings: []string{
				"rules[0]: dropped: when request.headers[x-user] cannot be checked at L4, and an ALLOW rule that cannot be checked fully never matches (use a waypoint for HTTP rules)",
				"no rule can be checked at L4: the policy allows nothing",
			},
		},
		{
			name: "DENY with a mixed entry keeps its L4 part",
			in:   meta + "spec: {action: DENY, rules: [{to: [{operation: {methods: [POST], ports: [\"8080\"]}}], from: [{source: {notPrincipals: [\"*\"], remoteIpBlocks: [1.2.3.4]}}]}]}",
			want: denyNS(rules(state.Match{DestinationPorts: []uint16{8080}}, state.Match{NotPrincipals: presence})),
			warnings: []string{
				"rules[0]: methods, remoteIpBlocks ignored: cannot be checked at L4; the DENY rule is enforced on its remaining L4 conditions, which is stricter than written",
			},
		},
		{
			name: "DENY with an HTTP-only entry drops that clause",
			in:   meta + "spec: {action: DENY, rules: [{from: [{source: {namespaces: [evil]}}], to: [{operation: {hosts: [x.com]}}, {operation: {ports: [\"80\"]}}]}]}",
			want: denyNS(rules(state.Match{Namespaces: exact("evil")})),
			warnings: []string{
				"rules[0]: hosts ignored: cannot be checked at L4; the DENY rule is enforced on its remaining L4 conditions, which is stricter than written",
			},
		},
		{
			name: "DENY with nothing checkable denies everything",
			in:   meta + "spec: {action: DENY, rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}], when: [{key: \"request.auth.claims[iss]\", values: [x]}]}]}",
			want: denyNS(state.Group{}),
			warnings: []string{
				"rules[0]: notRequestPrincipals, when request.auth.claims[iss] ignored: cannot be checked at L4; with no L4 condition left, the DENY rule denies every connection",
			},
		},
		{
			name: "trustDomains are not checked at L4",
			in:   meta + "spec: {rules: [{from: [{source: {trustDomains: [td]}}]}]}",
			want: allowNS(),
			warnings: []string{
				"rules[0]: dropped: trustDomains cannot be checked at L4, and an ALLOW rule that cannot be checked fully never matches (use a waypoint for HTTP rules)",
				"no rule can be checked at L4: the policy allows nothing",
			},
		},
		{
			name:     "AUDIT is not enforced",
			in:       meta + "spec: {action: AUDIT, rules: [{}]}",
			warnings: []string{"action: AUDIT is not enforced at L4; ignored"},
		},
		{
			name:     "CUSTOM is not enforced",
			in:       meta + "spec: {action: CUSTOM, provider: {name: ext}, rules: [{}]}",
			warnings: []string{"action: CUSTOM is not enforced at L4; ignored"},
		},
		{
			name:     "targetRefs belong to waypoints",
			in:       meta + "spec: {targetRefs: [{kind: Service, group: \"\", name: echo}], rules: [{}]}",
			warnings: []string{"targetRefs: the policy applies to waypoints, not to L4 enforcement; ignored"},
		},
		{name: "bad ip block", in: meta + "spec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]}", wantErr: true},
		{name: "bad port", in: meta + "spec: {rules: [{to: [{operation: {ports: [http]}}]}]}", wantErr: true},
		{name: "bad when value", in: meta + "spec: {rules: [{when: [{key: destination.port, values: [\"70000\"]}]}]}", wantErr: true},
		{name: "when without values", in: meta + "spec: {rules: [{when: [{key: source.ip}]}]}", wantErr: true},
		{name: "empty source", in: meta + "spec: {rules: [{from: [{source: {}}]}]}", wantErr: true},
		{name: "missing namespace", in: "metadata: {name: p}\nspec: {}", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := tt.root
			if root == "" {
				root = DefaultRootNamespace
			}
			got, warnings, err := FromAuthorizationPolicy(authzPolicy(t, tt.in), root)
			if tt.wantErr {
				if err == nil || !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v, want one wrapping ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmpOpts...); diff != "" {
				t.Errorf("policy (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.warnings, warnings, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFromPeerAuthentication(t *testing.T) {
	noPrincipal := state.Match{NotPrincipals: presence}
	tests := []struct {
		name string
		in   string
		want *state.Policy
	}{
		{
			name: "strict namespace",
			in:   "metadata: {name: pa, namespace: ns}\nspec: {mtls: {mode: STRICT}}",
			want: &state.Policy{Name: "converted_peer_authentication_pa", Namespace: "ns", Scope: state.ScopeNamespace, Action: state.ActionDeny,
				Groups: []state.Group{one(noPrincipal)}},
		},
		{
			name: "strict mesh-wide",
			in:   "metadata: {name: pa, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}",
			want: &state.Policy{Name: "converted_peer_authentication_pa", Namespace: "istio-system", Scope: state.ScopeGlobal, Action: state.ActionDeny,
				Groups: []state.Group{one(noPrincipal)}},
		},
		{
			name: "strict workload with exempt ports",
			in:   "metadata: {name: pa, namespace: ns}\nspec: {selector: {matchLabels: {app: db}}, mtls: {mode: STRICT}, portLevelMtls: {\"9090\": {mode: PERMISSIVE}, \"9091\": {mode: DISABLE}, \"9092\": {mode: STRICT}}}",
			want: &state.Policy{Name: "converted_peer_authentication_pa", Namespace: "ns", Scope: state.ScopeWorkloadSelector, Action: state.ActionDeny,
				Groups: []state.Group{{Rules: []state.Rule{
					{Matches: []state.Match{noPrincipal}},
					{Matches: []state.Match{{NotDestinationPorts: []uint16{9090}}}},
					{Matches: []state.Match{{NotDestinationPorts: []uint16{9091}}}},
				}}}},
		},
		{
			name: "permissive workload with strict ports",
			in:   "metadata: {name: pa, namespace: ns}\nspec: {selector: {matchLabels: {app: db}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {\"5432\": {mode: STRICT}, \"80\": {mode: PERMISSIVE}}}",
			want: &state.Policy{Name: "converted_peer_authentication_pa", Namespace: "ns", Scope: state.ScopeWorkloadSelector, Action: state.ActionDeny,
				Groups: []state.Group{one(state.Match{NotPrincipals: presence, DestinationPorts: []uint16{5432}})}},
		},
		{name: "permissive", in: "metadata: {name: pa, namespace: ns}\nspec: {mtls: {mode: PERMISSIVE}}"},
		{name: "disable", in: "metadata: {name: pa, namespace: ns}\nspec: {mtls: {mode: DISABLE}}"},
		{name: "unset", in: "metadata: {name: pa, namespace: ns}\nspec: {}"},
		{name: "selector in the root namespace is ignored", in: "metadata: {name: pa, namespace: istio-system}\nspec: {selector: {matchLabels: {a: b}}, mtls: {mode: STRICT}}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromPeerAuthentication(peerAuth(t, tt.in), DefaultRootNamespace)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmpOpts...); diff != "" {
				t.Errorf("policy (-want +got):\n%s", diff)
			}
		})
	}
}
