package controller

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// fullPod is a pod as the apiserver returns it, with much Build never
// reads.
func fullPod() *corev1.Pod {
	always := corev1.ContainerRestartPolicyAlways
	p := pod("ns", "web-5f7c9-abcde", ips("10.0.0.1", "fd00::1"), ready, sa("web"), node("n1"),
		ownedBy("ReplicaSet", "web-5f7c9"), podLabels("app", "web", "pod-template-hash", "5f7c9"),
		annotations("ambient.istio.io/redirection", "enabled", lastApplied, "{...}"), containerPort("http", 8080))
	p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	p.Spec.Containers[0].Image = "web:1"
	p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "A", Value: "b"}}
	p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "no-ports", Image: "x"})
	p.Spec.InitContainers = []corev1.Container{
		{Name: "init", Ports: []corev1.ContainerPort{{Name: "i", ContainerPort: 1}}},
		{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090}}},
	}
	p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.ContainersReady, Status: corev1.ConditionTrue})
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Ready: true, RestartCount: 3}}
	return p
}

// TestTrimPodKeepsWhatBuildReads: the trimmed pod builds the same
// resources as the full one.
func TestTrimPodKeepsWhatBuildReads(t *testing.T) {
	full := fullPod()
	trimmed, err := trimPod(full)
	if err != nil {
		t.Fatal(err)
	}
	svcs := []*corev1.Service{service("ns", "web", clusterIPs("10.96.0.1"), selector("app", "web"), port("http", 80, "http"), port("metrics", 9090, "metrics"))}
	want := build(Inputs{Pods: []*corev1.Pod{full}, Services: svcs})
	got := build(Inputs{Pods: []*corev1.Pod{trimmed.(*corev1.Pod)}, Services: svcs})
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("build of the trimmed pod differs (-full +trimmed):\n%s", diff)
	}
	tp := trimmed.(*corev1.Pod)
	if tp.ManagedFields != nil || tp.Annotations[lastApplied] != "" || len(tp.Spec.Containers) != 1 || len(tp.Spec.InitContainers) != 1 ||
		tp.Status.ContainerStatuses != nil || len(tp.Status.Conditions) != 1 {
		t.Errorf("trimmed pod keeps more than needed: %+v", tp)
	}
	if full.Annotations[lastApplied] == "" {
		t.Error("trimPod modified the annotations of its input")
	}
}

func TestPodChanged(t *testing.T) {
	trim := func(p *corev1.Pod) any { out, _ := trimPod(p); return out }
	base := fullPod()
	tests := []struct {
		name string
		mod  func(*corev1.Pod)
		want bool
	}{
		{name: "resource version only", mod: func(p *corev1.Pod) { p.ResourceVersion = "2" }},
		{name: "container status", mod: func(p *corev1.Pod) { p.Status.ContainerStatuses[0].RestartCount++ }},
		{name: "other condition", mod: func(p *corev1.Pod) { p.Status.Conditions[1].Status = corev1.ConditionFalse }},
		{name: "ready time", mod: func(p *corev1.Pod) { p.Status.Conditions[0].LastTransitionTime = metav1.Now() }},
		{name: "readiness", mod: func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }, want: true},
		{name: "label", mod: func(p *corev1.Pod) { p.Labels["app"] = "api" }, want: true},
		{name: "annotation", mod: func(p *corev1.Pod) { p.Annotations["ambient.istio.io/redirection"] = "pending" }, want: true},
		{name: "IPs", mod: func(p *corev1.Pod) { p.Status.PodIPs = p.Status.PodIPs[:1] }, want: true},
		{name: "phase", mod: func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }, want: true},
		{name: "deletion", mod: deleting, want: true},
		{name: "container port", mod: func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].ContainerPort = 8081 }, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := base.DeepCopy()
			tt.mod(cur)
			if got := podChanged(trim(base.DeepCopy()), trim(cur)); got != tt.want {
				t.Errorf("podChanged = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestWaypointFrom(t *testing.T) {
	gw := func(class string, addrs ...any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{
			"metadata": map[string]any{"name": "wp", "namespace": "ns"},
			"spec":     map[string]any{"gatewayClassName": class},
			"status":   map[string]any{"addresses": addrs},
		}}
	}
	addr := func(typ, v string) any {
		m := map[string]any{"value": v}
		if typ != "" {
			m["type"] = typ
		}
		return m
	}
	tests := []struct {
		name string
		gw   *unstructured.Unstructured
		want *Waypoint
	}{
		{name: "other class", gw: gw("istio", addr("IPAddress", "10.0.0.1"))},
		{
			name: "addresses by type, bad ones skipped",
			gw:   gw("istio-waypoint", addr("IPAddress", "10.0.0.1"), addr("", "fd00::1"), addr("Hostname", "wp.ns.svc"), addr("IPAddress", "bogus"), addr("example.com/custom", "x")),
			want: &Waypoint{Name: "wp", Namespace: "ns", Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}, Hostnames: []string{"wp.ns.svc"}},
		},
		{name: "no status yet", gw: gw("istio-waypoint"), want: &Waypoint{Name: "wp", Namespace: "ns"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := waypointFrom(tt.gw, "istio-waypoint")
			if ok != (tt.want != nil) {
				t.Fatalf("ok = %v, want %v", ok, tt.want != nil)
			}
			if tt.want != nil {
				if diff := cmp.Diff(*tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
					t.Errorf("(-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestTrimEndpointSlice(t *testing.T) {
	full := slice("ns", "legacy", "legacy-1", map[string]int32{"http": 9000}, "web-1", "web-2")
	full.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "x"}}
	full.Endpoints[0].Conditions.Ready = new(true)
	full.Endpoints = append(full.Endpoints, discoveryv1.Endpoint{Addresses: []string{"192.0.2.9"}})
	pods := []*corev1.Pod{pod("ns", "web-1", ips("10.0.0.1")), pod("ns", "web-2", ips("10.0.0.2"))}
	svcs := []*corev1.Service{service("ns", "legacy", clusterIPs("10.96.0.9"), port("http", 80, 8080))}
	trimmed, err := trimEndpointSlice(full)
	if err != nil {
		t.Fatal(err)
	}
	want := build(Inputs{Pods: pods, Services: svcs, EndpointSlices: []*discoveryv1.EndpointSlice{full}})
	got := build(Inputs{Pods: pods, Services: svcs, EndpointSlices: []*discoveryv1.EndpointSlice{trimmed.(*discoveryv1.EndpointSlice)}})
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("build of the trimmed slice differs (-full +trimmed):\n%s", diff)
	}
	if workloadOf(got, "ns", "web-2").GetServices()["ns/legacy.ns.svc.cluster.local"] == nil {
		t.Error("the slice did not reach the workload")
	}

	trim := func(es *discoveryv1.EndpointSlice) any { out, _ := trimEndpointSlice(es); return out }
	readier := full.DeepCopy()
	readier.Endpoints[1].Conditions.Ready = new(false)
	readier.ResourceVersion = "2"
	if sliceChanged(trim(full), trim(readier)) {
		t.Error("a readiness change counts as a change")
	}
	moved := full.DeepCopy()
	moved.Endpoints[1].TargetRef.Name = "web-3"
	if !sliceChanged(trim(full), trim(moved)) {
		t.Error("a new target pod does not count as a change")
	}
}
