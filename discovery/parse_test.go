package discovery

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/authz"
	"github.com/warren-mesh/warren/state"
)

// cmpOpts compares the value types whose fields are unexported. Workload's
// cached identity is checked through Identity instead.
var cmpOpts = []cmp.Option{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b spiffeid.ID) bool { return a == b }),
	cmpopts.IgnoreUnexported(state.Workload{}),
	cmpopts.EquateEmpty(),
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(s))
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// minimalWorkload is the smallest valid workload entry, for error cases that
// need one to point at.
const minimalWorkload = `
- uid: w1
  name: w1
  namespace: default
  workloadIps: [10.0.0.1]
`

func TestParse(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		workloads []*state.Workload
		services  []*state.Service
		// ids are the workloads' SPIFFE IDs by UID, when the case checks them.
		ids map[string]string
		// wantErr is the full error text; a trailing "..." matches a prefix.
		wantErr string
	}{
		{
			name: "minimal workload gets defaults",
			in:   "workloads:" + minimalWorkload,
			workloads: []*state.Workload{{
				UID: "w1", Name: "w1", Namespace: "default",
				ServiceAccount: "default", TrustDomain: "cluster.local",
				IPs: addrs("10.0.0.1"), Protocol: state.ProtocolTCP,
			}},
			ids: map[string]string{"w1": "spiffe://cluster.local/ns/default/sa/default"},
		},
		{
			name: "empty lists and explicit nulls are an empty mesh",
			in:   "workloads: []\nservices: ~\npolicies: []\n",
		},
		{
			name: "full",
			in: `
trustDomain: example.org
workloads:
- uid: Kubernetes//Pod/default/client-1
  name: client-1
  namespace: default
  serviceAccount: client
  workloadIps: [10.77.1.11, "fd00::11"]
  node: node1
  protocol: HBONE
  netns: /run/netns/x
  workloadName: client
  workloadType: deployment
  canonicalName: client
  canonicalRevision: v1
  clusterId: Kubernetes
- uid: Kubernetes//Pod/other/server-1
  name: server-1
  namespace: other
  serviceAccount: server
  trustDomain: td2.example
  workloadIps: [10.77.2.11]
  node: ~
  protocol: TCP
services:
- name: echo
  namespace: other
  hostname: echo.example.com
  vips: ["10.96.0.20", "/10.96.0.21", "net1/10.96.0.22", "fd00::20"]
  ports: {80: 8080, "443": 0}
  subjectAltNames: [spiffe://example.org/ns/other/sa/server]
  endpoints:
  - workloadUid: Kubernetes//Pod/other/server-1
    ports: {"80": 9090}
  - workloadUid: Kubernetes//Pod/default/client-1
policies: []
`,
			workloads: []*state.Workload{
				{
					UID: "Kubernetes//Pod/default/client-1", Name: "client-1", Namespace: "default",
					ServiceAccount: "client", TrustDomain: "example.org",
					IPs: addrs("10.77.1.11", "fd00::11"), Node: "node1", Protocol: state.ProtocolHBONE,
					NetNS: "/run/netns/x", WorkloadName: "client", WorkloadType: "deployment",
					CanonicalName: "client", CanonicalRevision: "v1", ClusterID: "Kubernetes",
				},
				{
					UID: "Kubernetes//Pod/other/server-1", Name: "server-1", Namespace: "other",
					ServiceAccount: "server", TrustDomain: "td2.example",
					IPs: addrs("10.77.2.11"), Protocol: state.ProtocolTCP,
				},
			},
			services: []*state.Service{{
				Name: "echo", Namespace: "other", Hostname: "echo.example.com",
				VIPs:            addrs("10.96.0.20", "10.96.0.21", "10.96.0.22", "fd00::20"),
				Ports:           map[uint16]uint16{80: 8080, 443: 0},
				SubjectAltNames: []spiffeid.ID{spiffeid.RequireFromString("spiffe://example.org/ns/other/sa/server")},
				Endpoints: []state.Endpoint{
					{WorkloadUID: "Kubernetes//Pod/other/server-1", Ports: map[uint16]uint16{80: 9090}},
					{WorkloadUID: "Kubernetes//Pod/default/client-1"},
				},
			}},
			ids: map[string]string{
				"Kubernetes//Pod/default/client-1": "spiffe://example.org/ns/default/sa/client",
				"Kubernetes//Pod/other/server-1":   "spiffe://td2.example/ns/other/sa/server",
			},
		},
		{
			name: "default hostname and no vips",
			in: `
services:
- name: echo
  namespace: default
  ports: {"80": 8080}
`,
			services: []*state.Service{{
				Name: "echo", Namespace: "default", Hostname: "echo.default.svc.cluster.local",
				Ports: map[uint16]uint16{80: 8080},
			}},
		},
		{
			name: "ipv4-mapped address is stored unmapped",
			in: `
workloads:
- uid: w1
  name: w1
  namespace: default
  workloadIps: ["::ffff:10.0.0.1"]
`,
			workloads: []*state.Workload{{
				UID: "w1", Name: "w1", Namespace: "default",
				ServiceAccount: "default", TrustDomain: "cluster.local",
				IPs: addrs("10.0.0.1"), Protocol: state.ProtocolTCP,
			}},
		},
		{
			name:    "empty file",
			in:      "",
			wantErr: "config is empty",
		},
		{
			name:    "top level is a list",
			in:      "- a\n- b\n",
			wantErr: "expected a map at the top level, got a list",
		},
		{
			name:    "yaml syntax error",
			in:      "workloads: [\n",
			wantErr: "parsing YAML: ...",
		},
		{
			name:    "duplicate yaml key",
			in:      "trustDomain: a\ntrustDomain: b\n",
			wantErr: "parsing YAML: ...",
		},
		{
			name:    "unknown fields everywhere, all reported",
			in:      "trustdomain: x\nworkloads:\n- uid: w1\n  ip: 10.0.0.1\n  extra: 1\nservices:\n- name: s\n  endpoints:\n  - workloadUID: w1\n",
			wantErr: "trustdomain: unknown field\nworkloads[0].extra: unknown field\nworkloads[0].ip: unknown field\nservices[0].endpoints[0].workloadUID: unknown field",
		},
		{
			name:    "wrong kinds",
			in:      "workloads:\n- uid: w1\n  name: 7\n  workloadIps: 10.0.0.1\n  node: yes\nservices:\n- name: s\n  ports: {\"80\": \"8080\"}\n  vips: {a: b}\n",
			wantErr: "workloads[0].name: expected a string, got a number\nworkloads[0].workloadIps: expected a list, got a string\nworkloads[0].node: expected a string, got a boolean\nservices[0].vips: expected a list, got a map\nservices[0].ports[\"80\"]: expected a number, got a string",
		},
		{
			name:    "missing required workload fields",
			in:      "workloads:\n- node: n1\n",
			wantErr: "workloads[0].uid: required\nworkloads[0].name: required\nworkloads[0].namespace: required\nworkloads[0].workloadIps: at least one address is required",
		},
		{
			name: "bad workload IP",
			in: "workloads:" + minimalWorkload + `
- uid: w2
  name: w2
  namespace: default
  workloadIps: [10.0.0.2]
- uid: w3
  name: w3
  namespace: default
  workloadIps: ["10.0.0.x", "fe80::1%eth0", 0.0.0.0, 224.0.0.1]
`,
			wantErr: `workloads[2].workloadIps[0]: "10.0.0.x" is not an IP address` + "\n" +
				`workloads[2].workloadIps[1]: "fe80::1%eth0" has a zone; mesh addresses cannot be link-local scoped` + "\n" +
				`workloads[2].workloadIps[2]: 0.0.0.0 is not a unicast address` + "\n" +
				`workloads[2].workloadIps[3]: 224.0.0.1 is not a unicast address`,
		},
		{
			name:    "duplicate uid",
			in:      "workloads:" + minimalWorkload + "- uid: w1\n  name: w2\n  namespace: default\n  workloadIps: [10.0.0.2]\n",
			wantErr: `workloads[1].uid: duplicate "w1", also workloads[0]`,
		},
		{
			name:    "duplicate workload IP",
			in:      "workloads:" + minimalWorkload + "- uid: w2\n  name: w2\n  namespace: default\n  workloadIps: [10.0.0.2, \"::ffff:10.0.0.1\"]\n",
			wantErr: `workloads[1].workloadIps[1]: 10.0.0.1 is already an address of workloads[0] ("w1")`,
		},
		{
			name: "duplicate VIP and VIP on a workload",
			in: "workloads:" + minimalWorkload + `
services:
- name: a
  namespace: default
  vips: [10.96.0.1]
- name: b
  namespace: default
  vips: ["/10.96.0.1", "net/10.0.0.1", "10.96.0.x"]
`,
			wantErr: `services[1].vips[0]: 10.96.0.1 is already a VIP of services[0] ("default/a.default.svc.cluster.local")` + "\n" +
				`services[1].vips[1]: 10.0.0.1 is the address of workloads[0] ("w1")` + "\n" +
				`services[1].vips[2]: "10.96.0.x" is not an IP address`,
		},
		{
			name:    "duplicate service",
			in:      "services:\n- name: a\n  namespace: default\n- name: b\n  namespace: default\n  hostname: a.default.svc.cluster.local\n",
			wantErr: `services[1].hostname: service "default/a.default.svc.cluster.local" is already defined by services[0]`,
		},
		{
			name:    "bad service names",
			in:      "services:\n- name: Echo\n  namespace: default\n  hostname: echo..x\n- namespace: default\n",
			wantErr: `services[0].name: "Echo" is not a DNS label (lowercase letters, digits and '-', at most 63)` + "\n" + `services[0].hostname: "echo..x" is not a DNS name (lowercase letters, digits, '-' and '.')` + "\n" + `services[1].name: required`,
		},
		{
			name:    "bad protocol",
			in:      "workloads:\n- uid: w1\n  name: w1\n  namespace: default\n  workloadIps: [10.0.0.1]\n  protocol: hbone\n",
			wantErr: `workloads[0].protocol: "hbone" is not one of HBONE, TCP`,
		},
		{
			name:    "netns relative, and on a TCP workload",
			in:      "workloads:\n- uid: w1\n  name: w1\n  namespace: default\n  workloadIps: [10.0.0.1]\n  protocol: HBONE\n  netns: run/netns/x\n- uid: w2\n  name: w2\n  namespace: default\n  workloadIps: [10.0.0.2]\n  netns: /run/netns/y\n",
			wantErr: `workloads[0].netns: "run/netns/x" is not an absolute path` + "\n" + `workloads[1].netns: set, but protocol is TCP: only HBONE workloads are captured`,
		},
		{
			name: "endpoint errors",
			in: "workloads:" + minimalWorkload + `
services:
- name: echo
  namespace: default
  endpoints:
  - workloadUid: w1
  - workloadUid: x
  - workloadUid: w1
  - ports: {"80": 1}
`,
			wantErr: `services[0].endpoints[1].workloadUid: no workload "x"` + "\n" +
				`services[0].endpoints[2].workloadUid: "w1" is already endpoints[0] of this service` + "\n" +
				`services[0].endpoints[3].workloadUid: required` + "\n" +
				`services[0].endpoints[3].ports["80"]: 80 is not a port of the service`,
		},
		{
			name: "port map errors",
			in: "workloads:" + minimalWorkload + `
services:
- name: echo
  namespace: default
  ports: {"http": 80, "0": 1, "70000": 1, "81": 70000, "82": -1, "83": 1.5, "84": 84}
  endpoints:
  - workloadUid: w1
    ports: {"84": 65536, "85": 1}
`,
			wantErr: `services[0].ports["0"]: service port "0" is not a number in 1-65535` + "\n" +
				`services[0].ports["70000"]: service port "70000" is not a number in 1-65535` + "\n" +
				`services[0].ports["81"]: target port 70000 is not a number in 0-65535` + "\n" +
				`services[0].ports["82"]: target port -1 is not a number in 0-65535` + "\n" +
				`services[0].ports["83"]: target port 1.5 is not a number in 0-65535` + "\n" +
				`services[0].ports["http"]: service port "http" is not a number in 1-65535` + "\n" +
				`services[0].endpoints[0].ports["84"]: target port 65536 is not a number in 0-65535` + "\n" +
				`services[0].endpoints[0].ports["85"]: 85 is not a port of the service`,
		},
		{
			name:    "namespace not a DNS label",
			in:      "workloads:\n- uid: w1\n  name: W1\n  namespace: Default\n  workloadIps: [10.0.0.1]\n",
			wantErr: `workloads[0].name: "W1" is not a DNS subdomain name (lowercase letters, digits, '-' and '.')` + "\n" + `workloads[0].namespace: "Default" is not a DNS label (lowercase letters, digits and '-', at most 63)`,
		},
		{
			name:    "service accounts that cannot form a SPIFFE ID",
			in:      "workloads:\n- uid: w1\n  name: w1\n  namespace: default\n  serviceAccount: a b\n  workloadIps: [10.0.0.1]\n- uid: w2\n  name: w2\n  namespace: default\n  serviceAccount: ..\n  workloadIps: [10.0.0.2]\n",
			wantErr: `workloads[0].serviceAccount: "a b" cannot be part of a SPIFFE ID: path segment characters are limited to letters, numbers, dots, dashes, and underscores` + "\n" + `workloads[1].serviceAccount: ".." cannot be part of a SPIFFE ID: path cannot contain dot segments`,
		},
		{
			name:    "trust domains that cannot form a SPIFFE ID",
			in:      "trustDomain: Cluster.Local\nworkloads:\n- uid: w1\n  name: w1\n  namespace: default\n  trustDomain: spiffe://td/x\n  workloadIps: [10.0.0.1]\n",
			wantErr: `trustDomain: "Cluster.Local" is not a SPIFFE trust domain: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores` + "\n" + `workloads[0].trustDomain: "spiffe://td/x" is not a bare trust domain name (want e.g. "td")`,
		},
		{
			name:    "bad subjectAltNames",
			in:      "services:\n- name: echo\n  namespace: default\n  subjectAltNames: [cluster.local/ns/default/sa/echo]\n",
			wantErr: `services[0].subjectAltNames[0]: "cluster.local/ns/default/sa/echo" is not a SPIFFE ID: scheme is missing or invalid`,
		},
		{
			name:    "policy without namespace and scope",
			in:      "workloads:" + minimalWorkload + "policies:\n- name: allow-all\n",
			wantErr: "policies[0].namespace: required\npolicies[0].scope: required: Global, Namespace or WorkloadSelector",
		},
		{
			name:    "errors across sections come in file order",
			in:      "trustDomain: A\nworkloads:\n- uid: w1\n  name: w1\n  namespace: default\n  workloadIps: [x]\nservices:\n- name: s\n  namespace: default\n  endpoints: [{workloadUid: nope}]\npolicies: [{}]\n",
			wantErr: `trustDomain: "A" is not a SPIFFE trust domain: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores` + "\n" + `workloads[0].workloadIps[0]: "x" is not an IP address` + "\n" + `services[0].endpoints[0].workloadUid: no workload "nope"` + "\n" + `policies[0].name: required` + "\n" + `policies[0].namespace: required` + "\n" + `policies[0].scope: required: Global, Namespace or WorkloadSelector`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, err := Parse([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("Parse succeeded, want error %q", tt.wantErr)
				}
				got := err.Error()
				if prefix, ok := strings.CutSuffix(tt.wantErr, "..."); ok {
					if !strings.HasPrefix(got, prefix) {
						t.Fatalf("error %q, want prefix %q", got, prefix)
					}
					return
				}
				if diff := cmp.Diff(tt.wantErr, got); diff != "" {
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
			if want := Version([]byte(tt.in)); snap.Version != want || len(want) != 12 {
				t.Errorf("Version = %q, want %q (12 hex digits)", snap.Version, want)
			}
			if diff := cmp.Diff(tt.workloads, snap.Workloads(), cmpOpts...); diff != "" {
				t.Errorf("workloads (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.services, snap.Services(), cmpOpts...); diff != "" {
				t.Errorf("services (-want +got):\n%s", diff)
			}
			// Every workload must have an identity (Identity panics otherwise).
			ids := make(map[string]string)
			for _, w := range snap.Workloads() {
				ids[w.UID] = w.Identity().String()
			}
			if tt.ids != nil {
				if diff := cmp.Diff(tt.ids, ids); diff != "" {
					t.Errorf("identities (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// TestParseExample checks the documented example, which the demo uses.
func TestParseExample(t *testing.T) {
	data, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	snap, err := Parse(data)
	if err != nil {
		t.Fatalf("Parse(example.yaml): %v", err)
	}
	type pod struct {
		UID, IP, NetNS, Identity string
	}
	var got []pod
	for _, node := range []string{"node1", "node2"} {
		for _, w := range snap.LocalWorkloads(node) {
			got = append(got, pod{w.UID, w.IPs[0].String(), w.NetNS, w.Identity().String()})
		}
	}
	want := []pod{
		{"Kubernetes//Pod/default/client-n1", "10.77.1.11", "/run/netns/demo-n1p1", "spiffe://cluster.local/ns/default/sa/client"},
		{"Kubernetes//Pod/default/echo-n1", "10.77.1.12", "/run/netns/demo-n1p2", "spiffe://cluster.local/ns/default/sa/echo"},
		{"Kubernetes//Pod/default/client-n2", "10.77.2.11", "/run/netns/demo-n2p1", "spiffe://cluster.local/ns/default/sa/client"},
		{"Kubernetes//Pod/default/echo-n2", "10.77.2.12", "/run/netns/demo-n2p2", "spiffe://cluster.local/ns/default/sa/echo"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("local workloads (-want +got):\n%s", diff)
	}

	var keys []string
	for _, p := range snap.Policies() {
		keys = append(keys, p.Key()+" "+p.Scope.String()+" "+p.Action.String())
	}
	wantKeys := []string{
		"default/echo-from-clients WorkloadSelector Allow",
		"default/echo-no-debug WorkloadSelector Deny",
		"istio-system/deny-legacy-net Global Deny",
	}
	if diff := cmp.Diff(wantKeys, keys); diff != "" {
		t.Errorf("policies (-want +got):\n%s", diff)
	}
	for _, uid := range []string{"Kubernetes//Pod/default/echo-n1", "Kubernetes//Pod/default/echo-n2"} {
		w, _ := snap.Workload(uid)
		if diff := cmp.Diff([]string{"default/echo-from-clients", "default/echo-no-debug"}, w.AuthorizationPolicies); diff != "" {
			t.Errorf("%s policies (-want +got):\n%s", uid, diff)
		}
	}
	if w, _ := snap.Workload("Kubernetes//Pod/default/client-n1"); len(w.AuthorizationPolicies) != 0 {
		t.Errorf("client-n1 is selected by %v, want none", w.AuthorizationPolicies)
	}
	// The demo's traffic passes its policies; others' does not.
	echo, _ := snap.Workload("Kubernetes//Pod/default/echo-n2")
	client, _ := snap.Workload("Kubernetes//Pod/default/client-n1")
	for _, tc := range []struct {
		name    string
		conn    authz.Conn
		allowed bool
	}{
		{"client to echo", authz.Conn{Identity: client.Identity(), SrcIP: client.IPs[0], DstIP: echo.IPs[0], DstPort: 8080}, true},
		{"client to echo's debug port", authz.Conn{Identity: client.Identity(), SrcIP: client.IPs[0], DstIP: echo.IPs[0], DstPort: 6060}, false},
		{"echo to echo", authz.Conn{Identity: echo.Identity(), SrcIP: echo.IPs[0], DstIP: echo.IPs[0], DstPort: 8080}, false},
		{"plaintext to echo", authz.Conn{SrcIP: client.IPs[0], DstIP: echo.IPs[0], DstPort: 8080}, false},
		{"echo to client", authz.Conn{Identity: echo.Identity(), SrcIP: echo.IPs[0], DstIP: client.IPs[0], DstPort: 8080}, true},
		{"legacy network to client", authz.Conn{SrcIP: netip.MustParseAddr("192.168.1.1"), DstIP: client.IPs[0], DstPort: 8080}, false},
	} {
		dest, _ := snap.WorkloadByIP(tc.conn.DstIP)
		if d := authz.Evaluate(snap, dest, tc.conn); d.Allowed != tc.allowed {
			t.Errorf("%s: allowed = %v, want %v (%+v)", tc.name, d.Allowed, tc.allowed, d)
		}
	}

	svc, ok := snap.ServiceByVIP(netip.MustParseAddr("10.96.0.20"))
	if !ok {
		t.Fatal("no service at 10.96.0.20")
	}
	if svc.Key() != "default/echo.default.svc.cluster.local" || len(svc.Endpoints) != 2 {
		t.Errorf("service %s with %d endpoints, want default/echo.default.svc.cluster.local with 2", svc.Key(), len(svc.Endpoints))
	}
	for _, e := range svc.Endpoints {
		if port, ok := svc.TargetPort(e, 80); !ok || port != 8080 {
			t.Errorf("TargetPort(%s, 80) = %d, %v; want 8080", e.WorkloadUID, port, ok)
		}
	}
}

func TestFieldError(t *testing.T) {
	_, err := Parse([]byte("workloads:\n- uid: w1\n  name: w1\n  namespace: default\n  workloadIps: [x]\n"))
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v is not a *FieldError", err)
	}
	if diff := cmp.Diff(&FieldError{Path: "workloads[0].workloadIps[0]", Msg: `"x" is not an IP address`}, fe); diff != "" {
		t.Errorf("FieldError (-want +got):\n%s", diff)
	}
}
