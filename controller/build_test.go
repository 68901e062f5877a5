package controller

import (
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/warren-mesh/warren/state"
)

// baseWorkload is what a bare pod ns/name with addresses becomes.
func baseWorkload(ns, name string, addrs ...string) *workloadapi.Workload {
	return &workloadapi.Workload{
		Uid:               "Kubernetes//Pod/" + ns + "/" + name,
		Name:              name,
		Namespace:         ns,
		Addresses:         addrBytes(addrs...),
		ServiceAccount:    "default",
		TrustDomain:       "cluster.local",
		ClusterId:         "Kubernetes",
		WorkloadName:      name,
		WorkloadType:      workloadapi.WorkloadType_POD,
		CanonicalName:     name,
		CanonicalRevision: "latest",
		Status:            workloadapi.WorkloadStatus_UNHEALTHY,
	}
}

func TestBuildWorkloads(t *testing.T) {
	with := func(w *workloadapi.Workload, f func(*workloadapi.Workload)) *workloadapi.Workload {
		f(w)
		return w
	}
	tests := []struct {
		name string
		pod  *corev1.Pod
		want *workloadapi.Workload // nil: no workload
	}{
		{
			name: "ready pod, every field",
			pod: pod("ns", "web-7d9f8-abcde", ips("10.0.0.5"), ready, sa("web-sa"), node("node-1"),
				ownedBy("ReplicaSet", "web-7d9f8"), podLabels("pod-template-hash", "7d9f8", "app", "web", "version", "v2"),
				annotations("ambient.istio.io/redirection", "enabled")),
			want: with(baseWorkload("ns", "web-7d9f8-abcde", "10.0.0.5"), func(w *workloadapi.Workload) {
				w.ServiceAccount = "web-sa"
				w.Node = "node-1"
				w.WorkloadName = "web"
				w.CanonicalName = "web"
				w.CanonicalRevision = "v2"
				w.Status = workloadapi.WorkloadStatus_HEALTHY
				w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
			}),
		},
		{name: "no IP", pod: pod("ns", "p", ready)},
		{name: "succeeded", pod: pod("ns", "p", ips("10.0.0.1"), phase(corev1.PodSucceeded))},
		{name: "failed", pod: pod("ns", "p", ips("10.0.0.1"), phase(corev1.PodFailed))},
		{name: "host network", pod: pod("ns", "p", ips("192.168.1.10"), ready, hostNetwork)},
		{
			name: "pending with IP is kept, unhealthy",
			pod:  pod("ns", "p", ips("10.0.0.1"), phase(corev1.PodPending)),
			want: baseWorkload("ns", "p", "10.0.0.1"),
		},
		{
			name: "dual stack",
			pod:  pod("ns", "p", ips("10.0.0.1", "fd00::1")),
			want: baseWorkload("ns", "p", "10.0.0.1", "fd00::1"),
		},
		{
			name: "IPv6 only: 16 bytes",
			pod:  pod("ns", "p", ips("fd00::7")),
			want: baseWorkload("ns", "p", "fd00::7"),
		},
		{
			name: "podIP without podIPs",
			pod:  pod("ns", "p", func(p *corev1.Pod) { p.Status.PodIP = "10.0.0.9" }),
			want: baseWorkload("ns", "p", "10.0.0.9"),
		},
		{
			name: "ready condition false",
			pod: pod("ns", "p", ips("10.0.0.1"), func(p *corev1.Pod) {
				p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
			}),
			want: baseWorkload("ns", "p", "10.0.0.1"),
		},
		{
			name: "terminating pod is unhealthy",
			pod:  pod("ns", "p", ips("10.0.0.1"), ready, deleting),
			want: baseWorkload("ns", "p", "10.0.0.1"),
		},
		{
			name: "redirection pending: not HBONE",
			pod:  pod("ns", "p", ips("10.0.0.1"), annotations("ambient.istio.io/redirection", "pending")),
			want: baseWorkload("ns", "p", "10.0.0.1"),
		},
		{
			name: "dataplane-mode label alone does not make HBONE",
			pod:  pod("ns", "p", ips("10.0.0.1"), podLabels("istio.io/dataplane-mode", "ambient")),
			want: baseWorkload("ns", "p", "10.0.0.1"),
		},
		{
			name: "canonical labels: istio's over app.kubernetes.io over app",
			pod: pod("ns", "p", ips("10.0.0.1"), podLabels(
				"service.istio.io/canonical-name", "canon", "app.kubernetes.io/name", "k8s-name", "app", "app",
				"service.istio.io/canonical-revision", "r1", "app.kubernetes.io/version", "r2", "version", "r3")),
			want: with(baseWorkload("ns", "p", "10.0.0.1"), func(w *workloadapi.Workload) {
				w.CanonicalName, w.CanonicalRevision = "canon", "r1"
			}),
		},
		{
			name: "canonical labels: app.kubernetes.io over app",
			pod:  pod("ns", "p", ips("10.0.0.1"), podLabels("app.kubernetes.io/name", "k8s-name", "app", "app", "app.kubernetes.io/version", "r2", "version", "r3")),
			want: with(baseWorkload("ns", "p", "10.0.0.1"), func(w *workloadapi.Workload) {
				w.CanonicalName, w.CanonicalRevision = "k8s-name", "r2"
			}),
		},
		{
			name: "StatefulSet: owner name",
			pod:  pod("ns", "db-0", ips("10.0.0.1"), ownedBy("StatefulSet", "db")),
			want: with(baseWorkload("ns", "db-0", "10.0.0.1"), func(w *workloadapi.Workload) {
				w.WorkloadName, w.CanonicalName = "db", "db"
			}),
		},
		{
			name: "CronJob: timestamp stripped from the Job's name",
			pod:  pod("ns", "backup-28000000-xyz", ips("10.0.0.1"), ownedBy("Job", "backup-28000000")),
			want: with(baseWorkload("ns", "backup-28000000-xyz", "10.0.0.1"), func(w *workloadapi.Workload) {
				w.WorkloadName, w.CanonicalName = "backup", "backup"
			}),
		},
		{
			name: "Job: its name",
			pod:  pod("ns", "migrate-abc", ips("10.0.0.1"), ownedBy("Job", "migrate")),
			want: with(baseWorkload("ns", "migrate-abc", "10.0.0.1"), func(w *workloadapi.Workload) {
				w.WorkloadName, w.CanonicalName = "migrate", "migrate"
			}),
		},
		{
			name: "ReplicaSet without the hash label: its name",
			pod:  pod("ns", "rs-abc", ips("10.0.0.1"), ownedBy("ReplicaSet", "rs")),
			want: with(baseWorkload("ns", "rs-abc", "10.0.0.1"), func(w *workloadapi.Workload) {
				w.WorkloadName, w.CanonicalName = "rs", "rs"
			}),
		},
		{
			name: "workload-name label wins",
			pod:  pod("ns", "web-1-abc", ips("10.0.0.1"), ownedBy("ReplicaSet", "web-1"), podLabels("pod-template-hash", "1", "service.istio.io/workload-name", "custom")),
			want: with(baseWorkload("ns", "web-1-abc", "10.0.0.1"), func(w *workloadapi.Workload) {
				w.WorkloadName, w.CanonicalName = "custom", "custom"
			}),
		},
		{
			name: "owner without generated name: pod name",
			pod: pod("ns", "p", ips("10.0.0.1"), ownedBy("StatefulSet", "db"), func(p *corev1.Pod) {
				p.GenerateName = ""
			}),
			want: baseWorkload("ns", "p", "10.0.0.1"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := build(Inputs{Pods: []*corev1.Pod{tt.pod}})
			want := map[string]proto.Message{}
			if tt.want != nil {
				want[tt.want.Uid] = &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: tt.want}}
			}
			if diff := cmp.Diff(want, out.Addresses, protocmp.Transform()); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
			if len(out.Problems) > 0 {
				t.Errorf("unexpected problems: %+v", out.Problems)
			}
		})
	}
}

func TestBuildConfigIdentity(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ClusterID, cfg.TrustDomain = "east", "example.org"
	out := Build(Inputs{Config: cfg, Pods: []*corev1.Pod{pod("ns", "p", ips("10.0.0.1"))}})
	a, ok := out.Addresses["east//Pod/ns/p"].(*workloadapi.Address)
	if !ok {
		t.Fatalf("no workload east//Pod/ns/p in %v", keys(out.Addresses))
	}
	if w := a.GetWorkload(); w.GetClusterId() != "east" || w.GetTrustDomain() != "example.org" {
		t.Errorf("cluster %q trust domain %q, want east and example.org", w.GetClusterId(), w.GetTrustDomain())
	}
}

func TestBuildServiceResources(t *testing.T) {
	svcAddr := func(ips ...string) []*workloadapi.NetworkAddress {
		var out []*workloadapi.NetworkAddress
		for _, b := range addrBytes(ips...) {
			out = append(out, &workloadapi.NetworkAddress{Address: b})
		}
		return out
	}
	local := corev1.ServiceInternalTrafficPolicyLocal
	tests := []struct {
		name string
		svc  *corev1.Service
		ns   *corev1.Namespace
		want *workloadapi.Service // nil: none
	}{
		{
			name: "cluster IP with ports and protocols",
			svc: service("ns", "web", clusterIPs("10.96.0.10"), port("http-web", 80, 8080), port("grpc", 9090, "grpc-port"),
				port("", 5432, 5432), port("mysql", 3306, 3306), port("dns", 53, 53), func(s *corev1.Service) {
					s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
					s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "web", Port: 81, TargetPort: intstr.FromInt32(81), AppProtocol: new("kubernetes.io/h2c")})
				}),
			want: &workloadapi.Service{
				Name: "web", Namespace: "ns", Hostname: "web.ns.svc.cluster.local",
				Addresses: svcAddr("10.96.0.10"),
				Ports: []*workloadapi.Port{
					{ServicePort: 80, TargetPort: 8080, AppProtocol: workloadapi.AppProtocol_HTTP11},
					{ServicePort: 9090, TargetPort: 0, AppProtocol: workloadapi.AppProtocol_GRPC},
					{ServicePort: 5432, TargetPort: 5432},
					{ServicePort: 3306, TargetPort: 3306},
					{ServicePort: 53, TargetPort: 53, AppProtocol: workloadapi.AppProtocol_TCP},
					{ServicePort: 81, TargetPort: 81, AppProtocol: workloadapi.AppProtocol_HTTP2},
				},
				IpFamilies: workloadapi.IPFamilies_IPV4_ONLY,
				Canonical:  true,
			},
		},
		{
			name: "dual stack",
			svc: service("ns", "web", clusterIPs("10.96.0.10", "fd00:96::10"), func(s *corev1.Service) {
				s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
			}),
			want: &workloadapi.Service{
				Name: "web", Namespace: "ns", Hostname: "web.ns.svc.cluster.local",
				Addresses: svcAddr("10.96.0.10", "fd00:96::10"), Ports: []*workloadapi.Port{},
				IpFamilies: workloadapi.IPFamilies_DUAL, Canonical: true,
			},
		},
		{
			name: "headless: kept without address",
			svc:  service("ns", "db", clusterIPs("None"), port("tcp", 5432, 5432)),
			want: &workloadapi.Service{
				Name: "db", Namespace: "ns", Hostname: "db.ns.svc.cluster.local",
				Ports:     []*workloadapi.Port{{ServicePort: 5432, TargetPort: 5432, AppProtocol: workloadapi.AppProtocol_TCP}},
				Canonical: true,
			},
		},
		{
			name: "ExternalName: left out",
			svc: service("ns", "ext", func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeExternalName
				s.Spec.ExternalName = "example.com"
			}),
		},
		{
			name: "internal traffic policy Local",
			svc:  service("ns", "web", clusterIPs("10.96.0.10"), func(s *corev1.Service) { s.Spec.InternalTrafficPolicy = &local }),
			want: &workloadapi.Service{
				Name: "web", Namespace: "ns", Hostname: "web.ns.svc.cluster.local", Addresses: svcAddr("10.96.0.10"),
				LoadBalancing: &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NODE}, Mode: workloadapi.LoadBalancing_STRICT},
				Canonical:     true,
			},
		},
		{
			name: "traffic distribution from the namespace annotation, not-ready endpoints published",
			svc:  service("ns", "web", clusterIPs("10.96.0.10"), func(s *corev1.Service) { s.Spec.PublishNotReadyAddresses = true }),
			ns: func() *corev1.Namespace {
				n := namespace("ns")
				n.Annotations = map[string]string{"networking.istio.io/traffic-distribution": "PreferClose"}
				return n
			}(),
			want: &workloadapi.Service{
				Name: "web", Namespace: "ns", Hostname: "web.ns.svc.cluster.local", Addresses: svcAddr("10.96.0.10"),
				LoadBalancing: &workloadapi.LoadBalancing{
					RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE},
					Mode:              workloadapi.LoadBalancing_FAILOVER,
					HealthPolicy:      workloadapi.LoadBalancing_ALLOW_ALL,
				},
				Canonical: true,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Inputs{Services: []*corev1.Service{tt.svc}}
			if tt.ns != nil {
				in.Namespaces = []*corev1.Namespace{tt.ns}
			}
			out := build(in)
			want := map[string]proto.Message{}
			if tt.want != nil {
				want[tt.want.Namespace+"/"+tt.want.Hostname] = &workloadapi.Address{Type: &workloadapi.Address_Service{Service: tt.want}}
			}
			if diff := cmp.Diff(want, out.Addresses, protocmp.Transform()); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBuildServiceAddressProblem(t *testing.T) {
	out := build(Inputs{Services: []*corev1.Service{
		service("ns", "bad", clusterIPs("10.96.0.300")),
		service("ns", "good", clusterIPs("10.96.0.3")),
	}})
	if serviceOf(out, "ns", "bad") != nil || serviceOf(out, "ns", "good") == nil {
		t.Errorf("want only ns/good, got %v", keys(out.Addresses))
	}
	want := []Problem{{Object: refTo(kindService, "ns", "bad", "uid-svc-bad"), Reason: ReasonInvalidAddress, Message: `cluster IP "10.96.0.300": not an IP address`}}
	if diff := cmp.Diff(want, out.Problems); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
}

// TestBuildWorkloadServices covers the services map of workloads:
// selector services with numeric and named target ports, and services
// without selector reached through endpoint slices.
func TestBuildWorkloadServices(t *testing.T) {
	pl := func(pairs ...uint32) *workloadapi.PortList {
		l := &workloadapi.PortList{Ports: []*workloadapi.Port{}}
		for i := 0; i+1 < len(pairs); i += 2 {
			l.Ports = append(l.Ports, &workloadapi.Port{ServicePort: pairs[i], TargetPort: pairs[i+1]})
		}
		return l
	}
	const webKey = "ns/web.ns.svc.cluster.local"
	webPod := func(opts ...podOpt) *corev1.Pod {
		return pod("ns", "web-1", append([]podOpt{ips("10.0.0.1"), podLabels("app", "web", "tier", "front")}, opts...)...)
	}
	tests := []struct {
		name   string
		pod    *corev1.Pod
		svcs   []*corev1.Service
		slices []*discoveryv1.EndpointSlice
		want   map[string]*workloadapi.PortList
	}{
		{
			name: "selector match, numeric target",
			pod:  webPod(),
			svcs: []*corev1.Service{service("ns", "web", clusterIPs("10.96.0.1"), selector("app", "web"), port("http", 80, 8080))},
			want: map[string]*workloadapi.PortList{webKey: pl(80, 8080)},
		},
		{
			name: "selector needs every label",
			pod:  webPod(),
			svcs: []*corev1.Service{service("ns", "web", clusterIPs("10.96.0.1"), selector("app", "web", "tier", "back"), port("http", 80, 8080))},
		},
		{
			name: "other namespace never selects",
			pod:  webPod(),
			svcs: []*corev1.Service{service("other", "web", clusterIPs("10.96.0.1"), selector("app", "web"), port("http", 80, 8080))},
		},
		{
			name: "empty selector selects nothing",
			pod:  webPod(),
			svcs: []*corev1.Service{service("ns", "web", clusterIPs("10.96.0.1"), port("http", 80, 8080))},
		},
		{
			name: "named target port resolved from the pod; unknown name leaves the port out",
			pod:  webPod(containerPort("http", 8080), containerPort("admin", 9901)),
			svcs: []*corev1.Service{service("ns", "web", clusterIPs("10.96.0.1"), selector("app", "web"),
				port("http", 80, "http"), port("admin", 9000, "admin"), port("metrics", 9090, "metrics"), port("raw", 7000, 7001))},
			want: map[string]*workloadapi.PortList{webKey: pl(80, 8080, 9000, 9901, 7000, 7001)},
		},
		{
			name: "named port of a native sidecar counts, of a plain init container not",
			pod: webPod(func(p *corev1.Pod) {
				always := corev1.ContainerRestartPolicyAlways
				p.Spec.InitContainers = []corev1.Container{
					{Name: "init", Ports: []corev1.ContainerPort{{Name: "a", ContainerPort: 1111}}},
					{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "b", ContainerPort: 2222}}},
				}
			}),
			svcs: []*corev1.Service{service("ns", "web", clusterIPs("10.96.0.1"), selector("app", "web"), port("a", 1, "a"), port("b", 2, "b"))},
			want: map[string]*workloadapi.PortList{webKey: pl(2, 2222)},
		},
		{
			name: "several services",
			pod:  webPod(),
			svcs: []*corev1.Service{
				service("ns", "web", clusterIPs("10.96.0.1"), selector("app", "web"), port("http", 80, 8080)),
				service("ns", "front", clusterIPs("10.96.0.2"), selector("tier", "front"), port("http", 8000, 8080)),
			},
			want: map[string]*workloadapi.PortList{webKey: pl(80, 8080), "ns/front.ns.svc.cluster.local": pl(8000, 8080)},
		},
		{
			name:   "service without selector: slice names the pod, slice port gives the target",
			pod:    webPod(),
			svcs:   []*corev1.Service{service("ns", "legacy", clusterIPs("10.96.0.3"), port("http", 80, 8080), port("other", 81, 81))},
			slices: []*discoveryv1.EndpointSlice{slice("ns", "legacy", "legacy-abc", map[string]int32{"http": 9999}, "web-1")},
			want:   map[string]*workloadapi.PortList{"ns/legacy.ns.svc.cluster.local": pl(80, 9999, 81, 81)},
		},
		{
			name: "slice of a recreated pod (other uid) does not count",
			pod:  webPod(),
			svcs: []*corev1.Service{service("ns", "legacy", clusterIPs("10.96.0.3"), port("http", 80, 8080))},
			slices: []*discoveryv1.EndpointSlice{func() *discoveryv1.EndpointSlice {
				es := slice("ns", "legacy", "legacy-abc", nil, "web-1")
				es.Endpoints[0].TargetRef.UID = "old-uid"
				return es
			}()},
		},
		{
			name:   "slice without service-name label or of an unknown service is ignored",
			pod:    webPod(),
			slices: []*discoveryv1.EndpointSlice{slice("ns", "nosuch", "x", nil, "web-1")},
		},
		{
			name:   "selector service whose slice lags: the selector decides",
			pod:    webPod(),
			svcs:   []*corev1.Service{service("ns", "api", clusterIPs("10.96.0.4"), selector("app", "api"), port("http", 80, 8080))},
			slices: []*discoveryv1.EndpointSlice{slice("ns", "api", "api-abc", map[string]int32{"http": 8080}, "web-1")},
		},
		{
			name:   "selector service found once even if its slice names the pod too",
			pod:    webPod(),
			svcs:   []*corev1.Service{service("ns", "web", clusterIPs("10.96.0.1"), selector("app", "web"), port("http", 80, 8080))},
			slices: []*discoveryv1.EndpointSlice{slice("ns", "web", "web-abc", map[string]int32{"http": 8080}, "web-1")},
			want:   map[string]*workloadapi.PortList{webKey: pl(80, 8080)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := build(Inputs{Pods: []*corev1.Pod{tt.pod}, Services: tt.svcs, EndpointSlices: tt.slices})
			w := workloadOf(out, tt.pod.Namespace, tt.pod.Name)
			if w == nil {
				t.Fatalf("no workload for the pod")
			}
			if diff := cmp.Diff(tt.want, w.GetServices(), protocmp.Transform()); diff != "" {
				t.Errorf("services (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBuildAuthorizationPolicies covers the conversion of
// AuthorizationPolicies and which workloads list them.
func TestBuildAuthorizationPolicies(t *testing.T) {
	pods := []*corev1.Pod{
		pod("ns", "web", ips("10.0.0.1"), podLabels("app", "web")),
		pod("ns", "db", ips("10.0.0.2"), podLabels("app", "db")),
		pod("other", "web", ips("10.0.1.1"), podLabels("app", "web")),
		pod("istio-system", "web", ips("10.0.2.1"), podLabels("app", "web")),
	}
	type listed map[string][]string // "ns/pod" -> authorization_policies
	tests := []struct {
		name     string
		policies []string // YAML
		want     []string // authorization keys
		listed   listed   // workloads not named list nothing
		problems []string // "reason: message substring"
	}{
		{
			name: "namespace policy: sent, listed nowhere",
			policies: []string{`
metadata: {name: allow-ns, namespace: ns}
spec: {action: ALLOW, rules: [{from: [{source: {namespaces: [ns]}}]}]}`},
			want: []string{"ns/allow-ns"},
		},
		{
			name: "global policy (root namespace, no selector)",
			policies: []string{`
metadata: {name: deny-all, namespace: istio-system}
spec: {action: DENY, rules: [{}]}`},
			want: []string{"istio-system/deny-all"},
		},
		{
			name: "selector policy: listed by the workloads it selects in its namespace",
			policies: []string{`
metadata: {name: web-only, namespace: ns}
spec: {selector: {matchLabels: {app: web}}, action: ALLOW, rules: [{to: [{operation: {ports: ["8080"]}}]}]}`},
			want:   []string{"ns/web-only"},
			listed: listed{"ns/web": {"ns/web-only"}},
		},
		{
			name: "root namespace selector policy: every namespace, listed sorted",
			policies: []string{`
metadata: {name: z-root, namespace: istio-system}
spec: {selector: {matchLabels: {app: web}}, action: DENY, rules: [{to: [{operation: {ports: ["22"]}}]}]}`, `
metadata: {name: a-local, namespace: ns}
spec: {selector: {matchLabels: {app: web}}, action: DENY, rules: [{to: [{operation: {ports: ["23"]}}]}]}`},
			want: []string{"istio-system/z-root", "ns/a-local"},
			listed: listed{
				"ns/web":           {"istio-system/z-root", "ns/a-local"},
				"other/web":        {"istio-system/z-root"},
				"istio-system/web": {"istio-system/z-root"},
			},
		},
		{
			name: "empty selector is namespace scope",
			policies: []string{`
metadata: {name: all, namespace: ns}
spec: {selector: {}, action: ALLOW, rules: [{}]}`},
			want: []string{"ns/all"},
		},
		{
			name: "targetRefs: waypoint policy, skipped without complaint",
			policies: []string{`
metadata: {name: wp, namespace: ns}
spec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], action: ALLOW, rules: [{}]}`},
		},
		{
			name: "AUDIT: not enforced, reported",
			policies: []string{`
metadata: {name: audit, namespace: ns}
spec: {action: AUDIT, rules: [{}]}`},
			problems: []string{"PolicyNotEnforced: action: AUDIT is not enforced at L4"},
		},
		{
			name: "unknown action value: not enforced, reported, others still built",
			policies: []string{`
metadata: {name: weird, namespace: ns}
spec: {action: 7, rules: [{}]}`, `
metadata: {name: fine, namespace: ns}
spec: {action: DENY, rules: [{}]}`},
			want:     []string{"ns/fine"},
			problems: []string{"PolicyNotEnforced: action: 7 is not enforced"},
		},
		{
			name: "L7 rule in ALLOW: kept narrowed, reported",
			policies: []string{`
metadata: {name: http, namespace: ns}
spec: {selector: {matchLabels: {app: db}}, action: ALLOW, rules: [{to: [{operation: {methods: [GET]}}]}, {from: [{source: {namespaces: [ns]}}]}]}`},
			want:     []string{"ns/http"},
			listed:   listed{"ns/db": {"ns/http"}},
			problems: []string{"PolicyNarrowed: rules[0]: dropped: methods"},
		},
		{
			name: "bad ipBlock in DENY: left out, reported, others still built",
			policies: []string{`
metadata: {name: bad-deny, namespace: ns}
spec: {selector: {matchLabels: {app: web}}, action: DENY, rules: [{from: [{source: {ipBlocks: [not-an-ip]}}]}]}`, `
metadata: {name: good, namespace: ns}
spec: {selector: {matchLabels: {app: web}}, action: DENY, rules: [{to: [{operation: {ports: ["1"]}}]}]}`},
			want:     []string{"ns/good"},
			listed:   listed{"ns/web": {"ns/good"}},
			problems: []string{`InvalidPolicy: AuthorizationPolicy ns/bad-deny: rules[0].from[0].source.ipBlocks[0]: "not-an-ip" is not an address or address block: invalid policy; not enforced until fixed`},
		},
		{
			name: "bad port in ALLOW: allows nothing until fixed",
			policies: []string{`
metadata: {name: bad-allow, namespace: ns}
spec: {selector: {matchLabels: {app: web}}, action: ALLOW, rules: [{to: [{operation: {ports: ["http"]}}]}]}`},
			want:     []string{"ns/bad-allow"},
			listed:   listed{"ns/web": {"ns/bad-allow"}},
			problems: []string{"InvalidPolicy: AuthorizationPolicy ns/bad-allow: rules[0].to[0].operation.ports[0]: \"http\" is not a port in 1-65535: invalid policy; enforced as allowing nothing until fixed"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var aps []*securityv1.AuthorizationPolicy
			for _, y := range tt.policies {
				aps = append(aps, authzPolicy(t, y))
			}
			out := build(Inputs{Pods: pods, AuthorizationPolicies: aps})
			if diff := cmp.Diff(tt.want, keys(out.Authorizations), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("authorization keys (-want +got):\n%s", diff)
			}
			for _, p := range pods {
				id := p.Namespace + "/" + p.Name
				if diff := cmp.Diff(tt.listed[id], workloadOf(out, p.Namespace, p.Name).GetAuthorizationPolicies(), cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("%s authorization_policies (-want +got):\n%s", id, diff)
				}
			}
			checkProblems(t, out.Problems, tt.problems)
		})
	}
}

func TestBuildInvalidAllowPolicyAllowsNothing(t *testing.T) {
	ap := authzPolicy(t, `
metadata: {name: bad, namespace: ns, annotations: {istio.io/dry-run: "true"}}
spec: {selector: {matchLabels: {app: web}}, action: ALLOW, rules: [{from: [{source: {ipBlocks: [nope]}}]}]}`)
	out := build(Inputs{AuthorizationPolicies: []*securityv1.AuthorizationPolicy{ap}})
	want := &state.Policy{Name: "bad", Namespace: "ns", Scope: state.ScopeWorkloadSelector, Action: state.ActionAllow, DryRun: true}
	if diff := cmp.Diff(want, policyOf(t, out, "ns/bad"), policyCmp...); diff != "" {
		t.Errorf("policy (-want +got):\n%s", diff)
	}
}

// checkProblems matches problems against "Reason: message prefix" lines.
func checkProblems(t *testing.T, got []Problem, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("got %d problems %+v, want %d %q", len(got), got, len(want), want)
		return
	}
	for i, p := range got {
		reason, msg, _ := strings.Cut(want[i], ": ")
		if p.Reason != reason || !strings.HasPrefix(p.Message, msg) {
			t.Errorf("problem %d: %s: %q, want %s: %q...", i, p.Reason, p.Message, reason, msg)
		}
	}
}

// TestBuildPeerAuthentication covers Istio's PeerAuthentication
// inheritance as workloads see it: the static strict policy, or their
// workload policy converted with the inherited mode.
func TestBuildPeerAuthentication(t *testing.T) {
	const static = "istio-system/istio_converted_static_strict"
	pods := []*corev1.Pod{
		pod("ns", "web", ips("10.0.0.1"), podLabels("app", "web")),
		pod("ns", "db", ips("10.0.0.2"), podLabels("app", "db")),
		pod("other", "web", ips("10.0.1.1"), podLabels("app", "web")),
	}
	noPrincipal := state.Match{NotPrincipals: []state.StringMatch{{Presence: true}}}
	denyPolicy := func(ns, name string, groups ...state.Group) *state.Policy {
		return &state.Policy{Name: name, Namespace: ns, Scope: state.ScopeWorkloadSelector, Action: state.ActionDeny, Groups: groups}
	}
	type listed map[string][]string
	tests := []struct {
		name     string
		pas      []string
		listed   listed
		policies map[string]*state.Policy // authorizations expected, by key
		problems []string
	}{
		{name: "none: nothing listed, no static policy", policies: map[string]*state.Policy{}},
		{
			name: "mesh STRICT: everyone strict",
			pas:  []string{`{metadata: {name: default, namespace: istio-system}, spec: {mtls: {mode: STRICT}}}`},
			listed: listed{
				"ns/web": {static}, "ns/db": {static}, "other/web": {static},
			},
			policies: map[string]*state.Policy{
				static: denyPolicy("istio-system", staticStrictName, state.Group{Rules: []state.Rule{{Matches: []state.Match{noPrincipal}}}}),
			},
		},
		{
			name: "namespace PERMISSIVE overrides mesh STRICT",
			pas: []string{
				`{metadata: {name: default, namespace: istio-system}, spec: {mtls: {mode: STRICT}}}`,
				`{metadata: {name: relaxed, namespace: ns}, spec: {mtls: {mode: PERMISSIVE}}}`,
			},
			listed: listed{"other/web": {static}},
		},
		{
			name: "namespace UNSET inherits mesh STRICT",
			pas: []string{
				`{metadata: {name: default, namespace: istio-system}, spec: {mtls: {mode: STRICT}}}`,
				`{metadata: {name: unset, namespace: ns}, spec: {}}`,
			},
			listed: listed{"ns/web": {static}, "ns/db": {static}, "other/web": {static}},
		},
		{
			name:   "workload STRICT in a permissive mesh",
			pas:    []string{`{metadata: {name: web, namespace: ns}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}}`},
			listed: listed{"ns/web": {static}},
		},
		{
			name: "workload PERMISSIVE under namespace STRICT",
			pas: []string{
				`{metadata: {name: strict, namespace: ns}, spec: {mtls: {mode: STRICT}}}`,
				`{metadata: {name: web, namespace: ns}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}}`,
			},
			listed: listed{"ns/db": {static}},
		},
		{
			name: "root namespace selector policy is ignored",
			pas:  []string{`{metadata: {name: web, namespace: istio-system}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}}`},
		},
		{
			name:   "STRICT with a PERMISSIVE port: converted policy instead of the static one",
			pas:    []string{`{metadata: {name: web, namespace: ns}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, portLevelMtls: {"8080": {mode: PERMISSIVE}}}}`},
			listed: listed{"ns/web": {"ns/converted_peer_authentication_web"}},
			policies: map[string]*state.Policy{
				static: denyPolicy("istio-system", staticStrictName, state.Group{Rules: []state.Rule{{Matches: []state.Match{noPrincipal}}}}),
				"ns/converted_peer_authentication_web": denyPolicy("ns", "converted_peer_authentication_web", state.Group{Rules: []state.Rule{
					{Matches: []state.Match{noPrincipal}},
					{Matches: []state.Match{{NotDestinationPorts: []uint16{8080}}}},
				}}),
			},
		},
		{
			name: "UNSET with a PERMISSIVE port under namespace STRICT: inherits STRICT into the converted policy",
			pas: []string{
				`{metadata: {name: strict, namespace: ns}, spec: {mtls: {mode: STRICT}}}`,
				`{metadata: {name: web, namespace: ns}, spec: {selector: {matchLabels: {app: web}}, portLevelMtls: {"8080": {mode: PERMISSIVE}}}}`,
			},
			listed: listed{"ns/web": {"ns/converted_peer_authentication_web"}, "ns/db": {static}},
			policies: map[string]*state.Policy{
				static: denyPolicy("istio-system", staticStrictName, state.Group{Rules: []state.Rule{{Matches: []state.Match{noPrincipal}}}}),
				"ns/converted_peer_authentication_web": denyPolicy("ns", "converted_peer_authentication_web", state.Group{Rules: []state.Rule{
					{Matches: []state.Match{noPrincipal}},
					{Matches: []state.Match{{NotDestinationPorts: []uint16{8080}}}},
				}}),
			},
		},
		{
			name:   "UNSET with a STRICT port in a permissive mesh: that port alone",
			pas:    []string{`{metadata: {name: web, namespace: ns}, spec: {selector: {matchLabels: {app: web}}, portLevelMtls: {"9000": {mode: STRICT}}}}`},
			listed: listed{"ns/web": {"ns/converted_peer_authentication_web"}},
			policies: map[string]*state.Policy{
				static: denyPolicy("istio-system", staticStrictName, state.Group{Rules: []state.Rule{{Matches: []state.Match{noPrincipal}}}}),
				"ns/converted_peer_authentication_web": denyPolicy("ns", "converted_peer_authentication_web", state.Group{Rules: []state.Rule{
					{Matches: []state.Match{{NotPrincipals: []state.StringMatch{{Presence: true}}, DestinationPorts: []uint16{9000}}}},
				}}),
			},
		},
		{
			name: "oldest workload policy wins",
			pas: []string{
				`{metadata: {name: newer, namespace: ns, creationTimestamp: "2024-02-01T00:00:00Z"}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}}`,
				`{metadata: {name: older, namespace: ns, creationTimestamp: "2024-01-01T00:00:00Z"}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}}`,
			},
			listed: listed{"ns/web": {static}},
		},
		{
			name: "oldest namespace policy wins",
			pas: []string{
				`{metadata: {name: newer, namespace: ns, creationTimestamp: "2024-02-01T00:00:00Z"}, spec: {mtls: {mode: STRICT}}}`,
				`{metadata: {name: older, namespace: ns, creationTimestamp: "2024-01-01T00:00:00Z"}, spec: {mtls: {mode: PERMISSIVE}}}`,
			},
		},
		{
			name: "invalid port: reported, workload falls back to its namespace",
			pas: []string{
				`{metadata: {name: strict, namespace: ns}, spec: {mtls: {mode: STRICT}}}`,
				`{metadata: {name: web, namespace: ns}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {"0": {mode: STRICT}}}}`,
			},
			listed:   listed{"ns/web": {static}, "ns/db": {static}},
			problems: []string{"InvalidPolicy: PeerAuthentication ns/web: portLevelMtls: 0 is not a port"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pas []*securityv1.PeerAuthentication
			for _, y := range tt.pas {
				pas = append(pas, peerAuthn(t, y))
			}
			out := build(Inputs{Pods: pods, PeerAuthentications: pas})
			for _, p := range pods {
				id := p.Namespace + "/" + p.Name
				if diff := cmp.Diff(tt.listed[id], workloadOf(out, p.Namespace, p.Name).GetAuthorizationPolicies(), cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("%s authorization_policies (-want +got):\n%s", id, diff)
				}
			}
			// Every listed key must exist.
			for _, p := range pods {
				for _, k := range workloadOf(out, p.Namespace, p.Name).GetAuthorizationPolicies() {
					if _, ok := out.Authorizations[k]; !ok {
						t.Errorf("%s/%s lists %s, which is not sent", p.Namespace, p.Name, k)
					}
				}
			}
			if tt.policies != nil {
				got := map[string]*state.Policy{}
				for k := range out.Authorizations {
					got[k] = policyOf(t, out, k)
				}
				if diff := cmp.Diff(tt.policies, got, policyCmp...); diff != "" {
					t.Errorf("authorizations (-want +got):\n%s", diff)
				}
			}
			checkProblems(t, out.Problems, tt.problems)
		})
	}
}

func TestBuildDataplaneMode(t *testing.T) {
	out := build(Inputs{
		Namespaces: []*corev1.Namespace{
			namespace("a", "istio.io/dataplane-mode", "ambient"),
			namespace("b", "istio.io/dataplane-mode", "none"),
			namespace("c"),
			namespace("d", "istio.io/dataplane-mode", "Ambient"),
		},
		Pods: []*corev1.Pod{pod("a", "p", ips("10.0.0.1"), podLabels("istio.io/dataplane-mode", "sidecar"))},
	})
	want := []Problem{
		{Object: refTo(kindNamespace, "", "d", "uid-ns-d"), Reason: ReasonUnknownDataplaneMode,
			Message: `unknown dataplane mode "Ambient" in label istio.io/dataplane-mode: want "ambient" or "none"; pods are not enrolled`},
		{Object: refTo(kindPod, "a", "p", "uid-p"), Reason: ReasonUnknownDataplaneMode,
			Message: `unknown dataplane mode "sidecar" in label istio.io/dataplane-mode: want "ambient" or "none"; pods are not enrolled`},
	}
	if diff := cmp.Diff(want, out.Problems); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	if workloadOf(out, "a", "p") == nil {
		t.Error("the pod with the odd label must still be a workload")
	}
}

func TestBuildBadPodIP(t *testing.T) {
	out := build(Inputs{Pods: []*corev1.Pod{
		pod("ns", "bad", ips("10.0.0.1", "garbage")),
		pod("ns", "good", ips("10.0.0.2")),
	}})
	if workloadOf(out, "ns", "bad") != nil || workloadOf(out, "ns", "good") == nil {
		t.Errorf("want only ns/good, got %v", keys(out.Addresses))
	}
	checkProblems(t, out.Problems, []string{`InvalidAddress: pod IP "garbage": not an IP address`})
}

// TestBuildDeterministic: the order of the inputs does not matter.
func TestBuildDeterministic(t *testing.T) {
	in := benchInputs(t, 300, 60, 30)
	first := Build(in)
	r := rand.New(rand.NewPCG(1, 2))
	for range 3 {
		shuffled := in
		shuffled.Pods = shuffle(r, in.Pods)
		shuffled.Services = shuffle(r, in.Services)
		shuffled.EndpointSlices = shuffle(r, in.EndpointSlices)
		shuffled.AuthorizationPolicies = shuffle(r, in.AuthorizationPolicies)
		shuffled.PeerAuthentications = shuffle(r, in.PeerAuthentications)
		next := Build(shuffled)
		if diff := cmp.Diff(first, next, protocmp.Transform()); diff != "" {
			t.Fatalf("output depends on input order (-first +shuffled):\n%s", diff)
		}
	}
}

func shuffle[T any](r *rand.Rand, s []T) []T {
	s = slices.Clone(s)
	r.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
	return s
}

func keys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
