package discovery

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/warren-mesh/warren/authz"
	"github.com/warren-mesh/warren/state"
	"github.com/warren-mesh/warren/xds"
)

// stateOpts compare state values: the workload's cached identity is left
// out, addresses and IDs compare by value.
var stateOpts = cmp.Options{
	cmpopts.IgnoreUnexported(state.Workload{}),
	cmpopts.EquateComparable(netip.Addr{}, spiffeid.ID{}),
}

func ip4(s string) []byte { a := netip.MustParseAddr(s).As4(); return a[:] }
func ip16(s string) []byte {
	a := netip.MustParseAddr(s).As16()
	return a[:]
}

const wuid = "Kubernetes//Pod/shop/api-7d4b9c-abcde"

// protoWorkload is a workload with every converted field set.
func protoWorkload() *workloadapi.Workload {
	return &workloadapi.Workload{
		Uid:               wuid,
		Name:              "api-7d4b9c-abcde",
		Namespace:         "shop",
		Addresses:         [][]byte{ip4("10.0.0.10"), ip16("fd00::10")},
		TunnelProtocol:    workloadapi.TunnelProtocol_HBONE,
		TrustDomain:       "example.org",
		ServiceAccount:    "api",
		Node:              "node-1",
		CanonicalName:     "api",
		CanonicalRevision: "v1",
		WorkloadType:      workloadapi.WorkloadType_DEPLOYMENT,
		WorkloadName:      "api",
		ClusterId:         "Kubernetes",
		Services: map[string]*workloadapi.PortList{
			"shop/api.shop.svc.cluster.local": {Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}},
			"shop/all.shop.svc.cluster.local": {},
		},
		AuthorizationPolicies: []string{"shop/allow-web"},
	}
}

func TestWorkloadFromProto(t *testing.T) {
	full := &state.Workload{
		UID: wuid, Name: "api-7d4b9c-abcde", Namespace: "shop", ServiceAccount: "api", TrustDomain: "example.org",
		IPs: addrs("10.0.0.10", "fd00::10"), Node: "node-1", Protocol: state.ProtocolHBONE,
		WorkloadName: "api", WorkloadType: "deployment", CanonicalName: "api", CanonicalRevision: "v1",
		ClusterID: "Kubernetes", AuthorizationPolicies: []string{"shop/allow-web"},
	}
	fullEndpoints := map[string]state.Endpoint{
		"shop/api.shop.svc.cluster.local": {WorkloadUID: wuid, Ports: map[uint16]uint16{80: 8080}},
		"shop/all.shop.svc.cluster.local": {WorkloadUID: wuid},
	}
	edit := func(f func(*workloadapi.Workload)) *workloadapi.Workload {
		w := protoWorkload()
		f(w)
		return w
	}
	want := func(f func(*state.Workload)) *state.Workload {
		w := *full
		f(&w)
		return &w
	}
	cases := []struct {
		name          string
		in            *workloadapi.Workload
		want          *state.Workload
		wantEndpoints map[string]state.Endpoint
		unhealthy     bool
		err           string // substring; the resource and field
	}{
		{name: "every field", in: protoWorkload(), want: full, wantEndpoints: fullEndpoints},
		{
			name: "no tunnel is plain TCP",
			in:   edit(func(w *workloadapi.Workload) { w.TunnelProtocol = workloadapi.TunnelProtocol_NONE }),
			want: want(func(w *state.Workload) { w.Protocol = state.ProtocolTCP }), wantEndpoints: fullEndpoints,
		},
		{
			name: "sidecar mTLS is sent plain TCP",
			in:   edit(func(w *workloadapi.Workload) { w.TunnelProtocol = workloadapi.TunnelProtocol_LEGACY_ISTIO_MTLS }),
			want: want(func(w *state.Workload) { w.Protocol = state.ProtocolTCP }), wantEndpoints: fullEndpoints,
		},
		{
			name: "mapped and repeated addresses fold",
			in: edit(func(w *workloadapi.Workload) {
				w.Addresses = [][]byte{ip4("10.0.0.10"), ip16("::ffff:10.0.0.10"), ip16("fd00::10")}
			}),
			want: full, wantEndpoints: fullEndpoints,
		},
		{
			name: "no addresses",
			in:   edit(func(w *workloadapi.Workload) { w.Addresses = nil }),
			want: want(func(w *state.Workload) { w.IPs = nil }), wantEndpoints: fullEndpoints,
		},
		{
			name: "unhealthy",
			in:   edit(func(w *workloadapi.Workload) { w.Status = workloadapi.WorkloadStatus_UNHEALTHY }),
			want: full, wantEndpoints: fullEndpoints, unhealthy: true,
		},
		{
			name: "workload types",
			in:   edit(func(w *workloadapi.Workload) { w.WorkloadType = workloadapi.WorkloadType_CRONJOB }),
			want: want(func(w *state.Workload) { w.WorkloadType = "cronjob" }), wantEndpoints: fullEndpoints,
		},
		{
			name: "a workload type newer than Warren is kept",
			in:   edit(func(w *workloadapi.Workload) { w.WorkloadType = 42 }),
			want: want(func(w *state.Workload) { w.WorkloadType = "42" }), wantEndpoints: fullEndpoints,
		},
		{
			name: "bad address bytes",
			in:   edit(func(w *workloadapi.Workload) { w.Addresses = append(w.Addresses, []byte{10, 0, 0}) }),
			err:  `workload "` + wuid + `": addresses[2]: 3 bytes`,
		},
		{
			name: "unknown protocol",
			in:   edit(func(w *workloadapi.Workload) { w.TunnelProtocol = 7 }),
			err:  `workload "` + wuid + `": tunnel_protocol: unknown value 7`,
		},
		{
			name: "uid is not the resource name",
			in:   edit(func(w *workloadapi.Workload) { w.Uid = "other" }),
			err:  "uid:",
		},
		{
			name: "no namespace",
			in:   edit(func(w *workloadapi.Workload) { w.Namespace = "" }),
			err:  "namespace: required",
		},
		{
			name: "names that form no identity",
			in:   edit(func(w *workloadapi.Workload) { w.ServiceAccount = "a/b" }),
			err:  "identity:",
		},
		{
			name: "bad trust domain",
			in:   edit(func(w *workloadapi.Workload) { w.TrustDomain = "Not A Domain" }),
			err:  "identity: trust domain",
		},
		{
			name: "service port out of range",
			in: edit(func(w *workloadapi.Workload) {
				w.Services["shop/api.shop.svc.cluster.local"].Ports[0].ServicePort = 70000
			}),
			err: `services["shop/api.shop.svc.cluster.local"].ports: [0].service_port`,
		},
		{
			name: "service key without namespace",
			in:   edit(func(w *workloadapi.Workload) { w.Services["api"] = &workloadapi.PortList{} }),
			err:  `services["api"]`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := workloadFromProto(wuid, tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got.w, stateOpts); d != "" {
				t.Errorf("workload (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tc.wantEndpoints, got.endpoints); d != "" {
				t.Errorf("endpoints (-want +got):\n%s", d)
			}
			if got.healthy == tc.unhealthy {
				t.Errorf("healthy = %v", got.healthy)
			}
		})
	}
}

const skey = "shop/api.shop.svc.cluster.local"

func protoService() *workloadapi.Service {
	return &workloadapi.Service{
		Name:      "api",
		Namespace: "shop",
		Hostname:  "api.shop.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: ip4("10.96.0.20")}, {Network: "n2", Address: ip16("fd00:96::20")}},
		Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 443}},
		SubjectAltNames: []string{
			"spiffe://cluster.local/ns/shop/sa/api",
			"api.shop.svc", // not a SPIFFE ID: not an identity
		},
	}
}

func TestServiceFromProto(t *testing.T) {
	full := &state.Service{
		Name: "api", Namespace: "shop", Hostname: "api.shop.svc.cluster.local",
		VIPs:            addrs("10.96.0.20", "fd00:96::20"),
		Ports:           map[uint16]uint16{80: 8080, 443: 0},
		SubjectAltNames: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/api")},
	}
	edit := func(f func(*workloadapi.Service)) *workloadapi.Service {
		s := protoService()
		f(s)
		return s
	}
	cases := []struct {
		name string
		in   *workloadapi.Service
		want *state.Service
		err  string
	}{
		{name: "every field", in: protoService(), want: full},
		{
			name: "minimal",
			in:   &workloadapi.Service{Namespace: "shop", Hostname: "api.shop.svc.cluster.local"},
			want: &state.Service{Namespace: "shop", Hostname: "api.shop.svc.cluster.local"},
		},
		{
			name: "bad VIP bytes",
			in:   edit(func(s *workloadapi.Service) { s.Addresses[1].Address = []byte{1, 2, 3, 4, 5} }),
			err:  `service "` + skey + `": addresses[1].address: 5 bytes`,
		},
		{
			name: "port out of range",
			in:   edit(func(s *workloadapi.Service) { s.Ports[1].TargetPort = 65536 }),
			err:  "ports: [1].target_port",
		},
		{
			name: "repeated port",
			in:   edit(func(s *workloadapi.Service) { s.Ports[1].ServicePort = 80 }),
			err:  "ports: [1].service_port: 80 repeated",
		},
		{
			name: "bad SPIFFE SAN",
			in:   edit(func(s *workloadapi.Service) { s.SubjectAltNames = []string{"spiffe://Bad Domain/ns/x"} }),
			err:  "subject_alt_names[0]",
		},
		{
			name: "hostname is not the resource name",
			in:   edit(func(s *workloadapi.Service) { s.Hostname = "other.shop.svc.cluster.local" }),
			err:  "differs from the resource name",
		},
		{
			name: "no hostname",
			in:   edit(func(s *workloadapi.Service) { s.Hostname = "" }),
			err:  "hostname: required",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := serviceFromProto(skey, tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got, stateOpts, cmpopts.EquateEmpty()); d != "" {
				t.Errorf("service (-want +got):\n%s", d)
			}
		})
	}
}

func TestPolicyFromProto(t *testing.T) {
	good := &security.Authorization{
		Name: "deny-80", Namespace: "shop", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{DestinationPorts: []uint32{80}}}}}}},
	}
	p, err := policyFromProto("shop/deny-80", good)
	if err != nil {
		t.Fatal(err)
	}
	want := &state.Policy{Name: "deny-80", Namespace: "shop", Scope: state.ScopeNamespace, Action: state.ActionDeny,
		Groups: []state.Group{{Rules: []state.Rule{{Matches: []state.Match{{DestinationPorts: []uint16{80}}}}}}}}
	if d := cmp.Diff(want, p); d != "" {
		t.Errorf("policy (-want +got):\n%s", d)
	}
	if _, err := policyFromProto("shop/other", good); err == nil || !strings.Contains(err.Error(), "differs from the resource name") {
		t.Errorf("name mismatch: %v", err)
	}
	bad := proto.Clone(good).(*security.Authorization)
	bad.Action = 9
	if _, err := policyFromProto("shop/deny-80", bad); !errors.Is(err, authz.ErrInvalid) || !strings.Contains(err.Error(), `authorization "shop/deny-80"`) {
		t.Errorf("bad action: %v, want authz.ErrInvalid naming the resource", err)
	}
}

func resource(t *testing.T, name string, m proto.Message) *discoveryv3.Resource {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return &discoveryv3.Resource{Name: name, Resource: a, Version: "v"}
}

func TestDecodeAddress(t *testing.T) {
	w := resource(t, wuid, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: protoWorkload()}})
	if a, err := decodeAddress(w); err != nil || a.workload == nil || a.service != nil {
		t.Errorf("workload: %+v, %v", a, err)
	}
	s := resource(t, skey, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: protoService()}})
	if a, err := decodeAddress(s); err != nil || a.service == nil || a.workload != nil {
		t.Errorf("service: %+v, %v", a, err)
	}
	if a, err := anypb.New(&workloadapi.Address{}); err == nil {
		if _, err := decodeAddress(&discoveryv3.Resource{Name: "x", Resource: a}); err == nil || !strings.Contains(err.Error(), "neither") {
			t.Errorf("empty address: %v", err)
		}
	}
	cases := []struct {
		name string
		r    *discoveryv3.Resource
		err  string
	}{
		{"no body", &discoveryv3.Resource{Name: "x"}, `resource "x": no body`},
		{"wrong type", resource(t, "x", protoWorkload()), "want " + xds.TypeAddress},
		{"garbage", &discoveryv3.Resource{Name: "x", Resource: &anypb.Any{TypeUrl: xds.TypeAddress, Value: []byte{0xff, 0xff}}}, `resource "x": decoding`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodeAddress(tc.r); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}

func TestBuildSnapshot(t *testing.T) {
	xw := func(uid, ip string, healthy bool, eps map[string]state.Endpoint) *xdsWorkload {
		w := &state.Workload{UID: uid, Name: uid, Namespace: "shop", ServiceAccount: "sa", Node: "xds-node", Protocol: state.ProtocolTCP}
		if ip != "" {
			w.IPs = addrs(ip)
		}
		return &xdsWorkload{w: w, healthy: healthy, endpoints: eps}
	}
	svc := &state.Service{Name: "api", Namespace: "shop", Hostname: "api", VIPs: addrs("10.96.0.1"), Ports: map[uint16]uint16{80: 8080}}
	in := buildInput{
		clusterID: "c1", trustDomain: "example.org",
		workloads: map[string]*xdsWorkload{
			"b":    xw("b", "10.0.0.2", true, map[string]state.Endpoint{"shop/api": {WorkloadUID: "b"}}),
			"a":    xw("a", "10.0.0.1", true, map[string]state.Endpoint{"shop/api": {WorkloadUID: "a", Ports: map[uint16]uint16{80: 9090}}, "shop/missing": {WorkloadUID: "a"}}),
			"sick": xw("sick", "10.0.0.3", false, map[string]state.Endpoint{"shop/api": {WorkloadUID: "sick"}}),
			"noip": xw("noip", "", true, nil),
		},
		services: map[string]*state.Service{"shop/api": svc},
		policies: map[string]*state.Policy{"shop/p": {Name: "p", Namespace: "shop", Scope: state.ScopeNamespace}},
		local: []LocalPod{
			{UID: "a", Node: "node-1", NetNS: "/run/netns/a", IPs: addrs("10.0.0.99")},
			{UID: "noip", Node: "node-1", NetNS: "/run/netns/noip", IPs: addrs("10.0.0.4")},
			{UID: "c1//Pod/shop/new", Name: "new", Namespace: "shop", ServiceAccount: "web", Node: "node-1", NetNS: "/run/netns/new", IPs: addrs("10.0.0.5")},
		},
	}
	snap, err := buildSnapshot("xds-7", in)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Version != "xds-7" {
		t.Errorf("version %q", snap.Version)
	}
	want := []*state.Workload{
		{UID: "a", Name: "a", Namespace: "shop", ServiceAccount: "sa", Node: "node-1", Protocol: state.ProtocolHBONE, NetNS: "/run/netns/a", IPs: addrs("10.0.0.1")},
		{UID: "b", Name: "b", Namespace: "shop", ServiceAccount: "sa", Node: "xds-node", Protocol: state.ProtocolTCP, IPs: addrs("10.0.0.2")},
		{UID: "c1//Pod/shop/new", Name: "new", Namespace: "shop", ServiceAccount: "web", TrustDomain: "example.org", ClusterID: "c1",
			Node: "node-1", Protocol: state.ProtocolHBONE, NetNS: "/run/netns/new", IPs: addrs("10.0.0.5")},
		{UID: "noip", Name: "noip", Namespace: "shop", ServiceAccount: "sa", Node: "node-1", Protocol: state.ProtocolHBONE, NetNS: "/run/netns/noip", IPs: addrs("10.0.0.4")},
		{UID: "sick", Name: "sick", Namespace: "shop", ServiceAccount: "sa", Node: "xds-node", Protocol: state.ProtocolTCP, IPs: addrs("10.0.0.3")},
	}
	if d := cmp.Diff(want, snap.Workloads(), stateOpts); d != "" {
		t.Errorf("workloads (-want +got):\n%s", d)
	}
	gotSvc, _ := snap.Service("shop/api")
	wantEps := []state.Endpoint{{WorkloadUID: "a", Ports: map[uint16]uint16{80: 9090}}, {WorkloadUID: "b"}}
	if d := cmp.Diff(wantEps, gotSvc.Endpoints); d != "" {
		t.Errorf("endpoints (-want +got):\n%s", d)
	}
	if len(snap.Policies()) != 1 || len(snap.LocalWorkloads("node-1")) != 3 {
		t.Errorf("policies %d, local workloads %d", len(snap.Policies()), len(snap.LocalWorkloads("node-1")))
	}
	// The input is not modified, and a second build shares no workload or
	// service with the first.
	if in.workloads["a"].w.NetNS != "" || svc.Endpoints != nil {
		t.Error("buildSnapshot modified its input")
	}
	again, err := buildSnapshot("xds-8", in)
	if err != nil {
		t.Fatal(err)
	}
	a1, _ := snap.Workload("a")
	a2, _ := again.Workload("a")
	s2, _ := again.Service("shop/api")
	if a1 == a2 || gotSvc == s2 {
		t.Error("two snapshots share objects")
	}

	in.local = append(in.local, LocalPod{UID: "clash", Namespace: "shop", IPs: addrs("10.0.0.2")})
	if _, err := buildSnapshot("xds-9", in); !errors.Is(err, state.ErrDuplicate) {
		t.Errorf("a local pod with another workload's address: %v, want ErrDuplicate", err)
	}
}
