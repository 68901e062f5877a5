package controller

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/warren-mesh/warren/authz"
	"github.com/warren-mesh/warren/state"
)

// Object builders for Build's tests: a pod is created bare and each option
// sets one thing, so that a table row says only what it is about.

type podOpt func(*corev1.Pod)

func pod(ns, name string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name)}}
	for _, o := range opts {
		o(p)
	}
	return p
}

func ips(addrs ...string) podOpt {
	return func(p *corev1.Pod) {
		p.Status.PodIPs = nil
		for _, a := range addrs {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a})
		}
		if len(addrs) > 0 {
			p.Status.PodIP = addrs[0]
		}
	}
}

func podLabels(kv ...string) podOpt {
	return func(p *corev1.Pod) { p.Labels = kvMap(kv...) }
}

func annotations(kv ...string) podOpt {
	return func(p *corev1.Pod) { p.Annotations = kvMap(kv...) }
}

func ready(p *corev1.Pod) {
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue})
}

func phase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }
func sa(name string) podOpt           { return func(p *corev1.Pod) { p.Spec.ServiceAccountName = name } }
func node(name string) podOpt         { return func(p *corev1.Pod) { p.Spec.NodeName = name } }
func hostNetwork(p *corev1.Pod)       { p.Spec.HostNetwork = true }
func deleting(p *corev1.Pod) {
	ts := metav1.NewTime(time.Unix(1e9, 0))
	p.DeletionTimestamp = &ts
}

// ownedBy gives the pod a generated name and a controller.
func ownedBy(kind, name string) podOpt {
	return func(p *corev1.Pod) {
		yes := true
		p.GenerateName = name + "-"
		p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: name, Controller: &yes}}
	}
}

func containerPort(name string, port int32) podOpt {
	return func(p *corev1.Pod) {
		if len(p.Spec.Containers) == 0 {
			p.Spec.Containers = []corev1.Container{{Name: "app"}}
		}
		p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{Name: name, ContainerPort: port, Protocol: corev1.ProtocolTCP})
	}
}

func kvMap(kv ...string) map[string]string {
	if len(kv) == 0 {
		return nil
	}
	m := make(map[string]string, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

type svcOpt func(*corev1.Service)

func service(ns, name string, opts ...svcOpt) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-svc-" + name)}}
	for _, o := range opts {
		o(s)
	}
	return s
}

func clusterIPs(addrs ...string) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.ClusterIPs = addrs
		if len(addrs) > 0 {
			s.Spec.ClusterIP = addrs[0]
		}
	}
}

func selector(kv ...string) svcOpt {
	return func(s *corev1.Service) { s.Spec.Selector = kvMap(kv...) }
}

// port adds a service port; target is an int or a string (named).
func port(name string, p int32, target any) svcOpt {
	return func(s *corev1.Service) {
		sp := corev1.ServicePort{Name: name, Port: p, Protocol: corev1.ProtocolTCP}
		switch t := target.(type) {
		case int:
			sp.TargetPort = intstr.FromInt32(int32(t))
		case string:
			sp.TargetPort = intstr.FromString(t)
		}
		s.Spec.Ports = append(s.Spec.Ports, sp)
	}
}

func slice(ns, svcName, name string, ports map[string]int32, podNames ...string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for n, p := range ports {
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: &n, Port: &p})
	}
	for _, pn := range podNames {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{"192.0.2.1"},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pn, UID: types.UID("uid-" + pn)},
		})
	}
	return es
}

func namespace(name string, kv ...string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-ns-" + name), Labels: kvMap(kv...)}}
}

func authzPolicy(t testing.TB, y string) *securityv1.AuthorizationPolicy {
	t.Helper()
	ap := &securityv1.AuthorizationPolicy{}
	if err := yaml.Unmarshal([]byte(y), ap); err != nil {
		t.Fatalf("decoding test policy: %v", err)
	}
	return ap
}

func peerAuthn(t testing.TB, y string) *securityv1.PeerAuthentication {
	t.Helper()
	pa := &securityv1.PeerAuthentication{}
	if err := yaml.Unmarshal([]byte(y), pa); err != nil {
		t.Fatalf("decoding test policy: %v", err)
	}
	return pa
}

// addrBytes is the workload API's form of addresses.
func addrBytes(addrs ...string) [][]byte {
	var out [][]byte
	for _, a := range addrs {
		out = append(out, netip.MustParseAddr(a).AsSlice())
	}
	return out
}

// workloadOf returns the workload of pod ns/name in out, or nil.
func workloadOf(out Output, ns, name string) *workloadapi.Workload {
	a, ok := out.Addresses[DefaultConfig().ClusterID+"//Pod/"+ns+"/"+name].(*workloadapi.Address)
	if !ok {
		return nil
	}
	return a.GetWorkload()
}

// serviceOf returns the service resource of ns/name in out, or nil.
func serviceOf(out Output, ns, name string) *workloadapi.Service {
	a, ok := out.Addresses[ns+"/"+name+"."+ns+".svc.cluster.local"].(*workloadapi.Address)
	if !ok {
		return nil
	}
	return a.GetService()
}

// policyOf converts the authorization named key back, or returns nil.
func policyOf(t *testing.T, out Output, key string) *state.Policy {
	t.Helper()
	a, ok := out.Authorizations[key].(*security.Authorization)
	if !ok {
		return nil
	}
	p, err := authz.FromProto(a)
	if err != nil {
		t.Fatalf("authorization %s does not convert back: %v", key, err)
	}
	return p
}

var policyCmp = []cmp.Option{
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmpopts.EquateEmpty(),
}

func build(in Inputs) Output {
	if in.Config == (Config{}) {
		in.Config = DefaultConfig()
	}
	return Build(in)
}
