package discovery

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/warren-mesh/warren/state"
)

var policyCmpOpts = []cmp.Option{
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmpopts.EquateEmpty(),
}

// twoWorkloads are a db pod in namespace "data" and a web pod in "web".
const twoWorkloads = `
workloads:
- uid: db
  name: db
  namespace: data
  workloadIps: [10.0.0.1]
  labels: {app: db, tier: backend}
- uid: web
  name: web
  namespace: web
  workloadIps: [10.0.0.2]
  labels: {app: web, tier: backend}
`

func TestParsePolicies(t *testing.T) {
	pfx := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	tests := []struct {
		name     string
		in       string
		policies []*state.Policy
		// selected are the workloads' AuthorizationPolicies by UID.
		selected map[string][]string
		warnings []string
		// wantErr is the full error text.
		wantErr string
	}{
		{
			name: "authorization form, every field",
			in: twoWorkloads + `
policies:
- name: every-field
  namespace: data
  scope: Namespace
  action: Deny
  dryRun: true
  groups:
  - rules:
    - matches:
      - namespaces: [{exact: web}, {prefix: "team-"}, {suffix: "-prod"}, {presence: {}}]
        notNamespaces: [{exact: kube-system}]
        serviceAccounts: [{namespace: web, serviceAccount: web}]
        notServiceAccounts: [{namespace: web, serviceAccount: admin}]
        principals: [{exact: cluster.local/ns/web/sa/web}, {presence: true}]
        notPrincipals: [{suffix: /sa/admin}]
        sourceIps: ["10.0.0.0/8", 10.1.2.3, "fd00::/64"]
        notSourceIps: [10.9.0.0/16]
        destinationIps: [10.0.0.1]
        notDestinationIps: ["fd00::1"]
        destinationPorts: [5432, 8080]
        notDestinationPorts: [22]
    - {}
  - {}
`,
			policies: []*state.Policy{{
				Name: "every-field", Namespace: "data", Scope: state.ScopeNamespace, Action: state.ActionDeny, DryRun: true,
				Groups: []state.Group{
					{Rules: []state.Rule{
						{Matches: []state.Match{{
							Namespaces:          []state.StringMatch{{Exact: "web"}, {Prefix: "team-"}, {Suffix: "-prod"}, {Presence: true}},
							NotNamespaces:       []state.StringMatch{{Exact: "kube-system"}},
							ServiceAccounts:     []state.ServiceAccountMatch{{Namespace: "web", ServiceAccount: "web"}},
							NotServiceAccounts:  []state.ServiceAccountMatch{{Namespace: "web", ServiceAccount: "admin"}},
							Principals:          []state.StringMatch{{Exact: "cluster.local/ns/web/sa/web"}, {Presence: true}},
							NotPrincipals:       []state.StringMatch{{Suffix: "/sa/admin"}},
							SourceIPs:           []netip.Prefix{pfx("10.0.0.0/8"), pfx("10.1.2.3/32"), pfx("fd00::/64")},
							NotSourceIPs:        []netip.Prefix{pfx("10.9.0.0/16")},
							DestinationIPs:      []netip.Prefix{pfx("10.0.0.1/32")},
							NotDestinationIPs:   []netip.Prefix{pfx("fd00::1/128")},
							DestinationPorts:    []uint16{5432, 8080},
							NotDestinationPorts: []uint16{22},
						}}},
						{},
					}},
					{},
				},
			}},
		},
		{
			name: "Istio enum spellings, and workload references",
			in: `
workloads:
- uid: db
  name: db
  namespace: data
  workloadIps: [10.0.0.1]
  authorizationPolicies: [data/only-db]
policies:
- {name: mesh, namespace: istio-system, scope: GLOBAL, action: ALLOW}
- {name: ns, namespace: data, scope: NAMESPACE, action: DENY}
- {name: only-db, namespace: data, scope: WORKLOAD_SELECTOR}
`,
			policies: []*state.Policy{
				{Name: "ns", Namespace: "data", Scope: state.ScopeNamespace, Action: state.ActionDeny},
				{Name: "only-db", Namespace: "data", Scope: state.ScopeWorkloadSelector},
				{Name: "mesh", Namespace: "istio-system", Scope: state.ScopeGlobal},
			},
			selected: map[string][]string{"db": {"data/only-db"}},
		},
		{
			name: "policy errors name their fields",
			in: `
policies:
- name: a/b
  namespace: Data
  scope: Cluster
  action: Audit
  dryRun: "yes"
`,
			wantErr: `policies[0].dryRun: expected a boolean, got a string`,
		},
		{
			name: "policy value errors",
			in: `
policies:
- name: a/b
  namespace: Data
  scope: Cluster
  action: Audit
  groups:
  - rules:
    - matches:
      - namespaces: [{}, {exact: a, prefix: b}, {prefix: ""}, {presence: false}]
        serviceAccounts: [{namespace: a}]
        sourceIps: [10.0.0.0/33, "fe80::1%eth0"]
        destinationPorts: [0, 65536, 1.5]
      - {}
`,
			wantErr: `policies[0].name: "a/b" contains '/', which separates namespace and name in policy keys` + "\n" +
				`policies[0].namespace: "Data" is not a DNS label (lowercase letters, digits and '-', at most 63)` + "\n" +
				`policies[0].scope: "Cluster" is not one of Global, Namespace, WorkloadSelector` + "\n" +
				`policies[0].action: "Audit" is not one of Allow, Deny` + "\n" +
				`policies[0].groups[0].rules[0].matches[0].namespaces[0]: set exactly one of exact, prefix, suffix, presence` + "\n" +
				`policies[0].groups[0].rules[0].matches[0].namespaces[1]: set exactly one of exact, prefix, suffix, presence` + "\n" +
				`policies[0].groups[0].rules[0].matches[0].namespaces[2].prefix: empty: use presence to match any value` + "\n" +
				`policies[0].groups[0].rules[0].matches[0].namespaces[3].presence: expected {} or true, got false` + "\n" +
				`policies[0].groups[0].rules[0].matches[0].serviceAccounts[0].serviceAccount: required` + "\n" +
				`policies[0].groups[0].rules[0].matches[0].sourceIps[0]: "10.0.0.0/33" is not an address block` + "\n" +
				`policies[0].groups[0].rules[0].matches[0].sourceIps[1]: "fe80::1%eth0" is not an address or address block` + "\n" +
				`policies[0].groups[0].rules[0].matches[0].destinationPorts[0]: 0 is not a port in 1-65535` + "\n" +
				`policies[0].groups[0].rules[0].matches[0].destinationPorts[1]: 65536 is not a port in 1-65535` + "\n" +
				`policies[0].groups[0].rules[0].matches[0].destinationPorts[2]: 1.5 is not a port in 1-65535` + "\n" +
				`policies[0].groups[0].rules[0].matches[1]: empty: a match without fields never matches; to match everything, leave the rule without matches`,
		},
		{
			name:    "unknown field in a match",
			in:      "policies:\n- {name: p, namespace: a, scope: Global, groups: [{rules: [{matches: [{sourceIP: [10.0.0.1]}]}]}]}\n",
			wantErr: `policies[0].groups[0].rules[0].matches[0].sourceIP: unknown field`,
		},
		{
			name: "duplicate policy and unknown reference",
			in: `
workloads:
- {uid: w, name: w, namespace: a, workloadIps: [10.0.0.1], authorizationPolicies: [a/p, a/nope]}
policies:
- {name: p, namespace: a, scope: Namespace}
authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: p, namespace: a}
`,
			wantErr: `authorizationPolicies[0]: policy "a/p" is already defined by policies[0]` + "\n" +
				`workloads[0].authorizationPolicies[1]: no policy "a/nope" (want "<namespace>/<name>" of a policy in this file)`,
		},
		{
			name: "AuthorizationPolicy objects, selectors resolved by labels",
			in: twoWorkloads + `
authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata:
    name: db-from-web
    namespace: data
    uid: 0b1c          # server-filled fields paste as they are
    resourceVersion: "7"
  spec:
    selector: {matchLabels: {app: db}}
    action: ALLOW
    rules:
    - from: [{source: {namespaces: [web]}}]
      to: [{operation: {ports: ["5432"]}}]
  status: {}
- apiVersion: security.istio.io/v1beta1
  kind: AuthorizationPolicy
  metadata: {name: backends, namespace: istio-system}
  spec:
    selector: {matchLabels: {tier: backend}}
    action: DENY
    rules: [{from: [{source: {ipBlocks: [192.168.0.0/16]}}]}]
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: nobody, namespace: web}
  spec:
    selector: {matchLabels: {app: db}}
`,
			policies: []*state.Policy{
				{Name: "db-from-web", Namespace: "data", Scope: state.ScopeWorkloadSelector, Groups: []state.Group{{Rules: []state.Rule{
					{Matches: []state.Match{{DestinationPorts: []uint16{5432}}}},
					{Matches: []state.Match{{Namespaces: []state.StringMatch{{Exact: "web"}}}}},
				}}}},
				{Name: "backends", Namespace: "istio-system", Scope: state.ScopeWorkloadSelector, Action: state.ActionDeny, Groups: []state.Group{{Rules: []state.Rule{
					{Matches: []state.Match{{SourceIPs: []netip.Prefix{pfx("192.168.0.0/16")}}}},
				}}}},
				{Name: "nobody", Namespace: "web", Scope: state.ScopeWorkloadSelector},
			},
			selected: map[string][]string{"db": {"data/db-from-web", "istio-system/backends"}, "web": {"istio-system/backends"}},
		},
		{
			name: "custom root namespace, namespace and global objects, warnings",
			in: `
rootNamespace: mesh
authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: all, namespace: mesh}
  spec: {rules: [{to: [{operation: {methods: [GET]}}]}]}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: audit, namespace: data}
  spec: {action: AUDIT}
`,
			policies: []*state.Policy{{Name: "all", Namespace: "mesh", Scope: state.ScopeGlobal}},
			warnings: []string{
				"authorizationPolicies[0] (mesh/all): rules[0]: dropped: methods cannot be checked at L4, and an ALLOW rule that cannot be checked fully never matches (use a waypoint for HTTP rules)",
				"authorizationPolicies[0] (mesh/all): no rule can be checked at L4: the policy allows nothing",
				"authorizationPolicies[1] (data/audit): action: AUDIT is not enforced at L4; ignored",
			},
		},
		{
			name: "object errors",
			in: `
authorizationPolicies:
- apiVersion: networking.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a, namespace: x}
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {namespace: x}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: c, namespace: x}
  spec: {rule: []}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: d, namespace: x}
  spec: {rules: [{to: [{operation: {ports: [http]}}]}]}
- kind: AuthorizationPolicy
`,
			wantErr: `authorizationPolicies[0].apiVersion: "networking.istio.io/v1" is not security.istio.io/v1 or v1beta1` + "\n" +
				`authorizationPolicies[1].kind: "PeerAuthentication" is not AuthorizationPolicy` + "\n" +
				`authorizationPolicies[1].metadata.name: required` + "\n" +
				`authorizationPolicies[2].spec: proto: (line 1:2): unknown field "rule"` + "\n" +
				`authorizationPolicies[3].spec: AuthorizationPolicy x/d: rules[0].to[0].operation.ports[0]: "http" is not a port in 1-65535: invalid policy` + "\n" +
				`authorizationPolicies[4].apiVersion: required: security.istio.io/v1` + "\n" +
				`authorizationPolicies[4].metadata: required`,
		},
		{
			name: "PeerAuthentication STRICT, namespace-wide and by selector",
			in: twoWorkloads + `
peerAuthentications:
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: strict, namespace: web}
  spec: {mtls: {mode: STRICT}}
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: db, namespace: data}
  spec:
    selector: {matchLabels: {app: db}}
    mtls: {mode: PERMISSIVE}
    portLevelMtls: {"5432": {mode: STRICT}}
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: loose, namespace: data}
  spec: {mtls: {mode: PERMISSIVE}}
`,
			policies: []*state.Policy{
				{Name: "converted_peer_authentication_db", Namespace: "data", Scope: state.ScopeWorkloadSelector, Action: state.ActionDeny,
					Groups: []state.Group{{Rules: []state.Rule{{Matches: []state.Match{{NotPrincipals: []state.StringMatch{{Presence: true}}, DestinationPorts: []uint16{5432}}}}}}}},
				{Name: "converted_peer_authentication_strict", Namespace: "web", Scope: state.ScopeNamespace, Action: state.ActionDeny,
					Groups: []state.Group{{Rules: []state.Rule{{Matches: []state.Match{{NotPrincipals: []state.StringMatch{{Presence: true}}}}}}}}},
			},
			selected: map[string][]string{"db": {"data/converted_peer_authentication_db"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, warnings, err := ParseWithWarnings([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("Parse succeeded, want error %q", tt.wantErr)
				}
				// protojson randomly puts a non-breaking space after "proto:"
				// so that nobody depends on its messages' exact text.
				got := strings.ReplaceAll(err.Error(), "\u00a0", " ")
				if prefix, ok := strings.CutSuffix(tt.wantErr, "..."); ok {
					if !strings.HasPrefix(got, prefix) {
						t.Fatalf("error %q, want prefix %q", got, prefix)
					}
				} else if diff := cmp.Diff(tt.wantErr, got); diff != "" {
					t.Fatalf("error (-want +got):\n%s", diff)
				}
				var fe *FieldError
				if !errors.As(err, &fe) {
					t.Errorf("error %v is not a *FieldError", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(tt.policies, snap.Policies(), policyCmpOpts...); diff != "" {
				t.Errorf("policies (-want +got):\n%s", diff)
			}
			selected := make(map[string][]string)
			for _, w := range snap.Workloads() {
				if len(w.AuthorizationPolicies) > 0 {
					selected[w.UID] = w.AuthorizationPolicies
				}
			}
			if diff := cmp.Diff(tt.selected, selected, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("workloads' policies (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.warnings, warnings, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}
