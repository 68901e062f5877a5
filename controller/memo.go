package controller

import (
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// memo carries resources from one build to the next, so that an object
// that did not change keeps the very same resource. Two gains: the build
// skips the work, and the sink's comparison of old and new resources
// (proto.Equal stops at identical pointers) costs nothing for it; at
// 10,000 pods comparing fresh resources costs more than building them.
//
// Reuse relies on the informers' contract: a changed object is a new
// object, never the old one modified in place. An unchanged pointer is
// therefore an unchanged object; a pod with a new pointer is compared
// with podChanged, since most pod updates touch nothing Build reads.
type memo struct {
	cfg      Config
	services map[types.NamespacedName]serviceMemo
	authz    map[types.NamespacedName]authzMemo
	pods     map[types.NamespacedName]podMemo
	// deps are the inputs every workload may depend on besides its pod.
	deps workloadDeps
}

type serviceMemo struct {
	svc *corev1.Service
	// trafficDistribution is the namespace's annotation, which the
	// resource depends on too.
	trafficDistribution string
	info                *serviceInfo
	resource            *workloadapi.Address
}

type authzMemo struct {
	ap       *securityv1.AuthorizationPolicy
	resource *security.Authorization // nil when left out
	problems []Problem
}

type podMemo struct {
	pod      *corev1.Pod
	resource *workloadapi.Address // nil: no workload
	problems []Problem
}

// workloadDeps identifies, by pointer, the objects a workload is built
// from besides its pod: the services (selectors, ports), the endpoint
// slices of services without selector, and the policies.
type workloadDeps struct {
	objects map[any]struct{}
}

func (d *workloadDeps) add(obj any) { d.objects[obj] = struct{}{} }

func (d *workloadDeps) equal(o *workloadDeps) bool {
	if len(d.objects) != len(o.objects) {
		return false
	}
	for k := range d.objects {
		if _, ok := o.objects[k]; !ok {
			return false
		}
	}
	return true
}

func newMemo(in Inputs) *memo {
	return &memo{
		cfg:      in.Config,
		services: make(map[types.NamespacedName]serviceMemo, len(in.Services)),
		authz:    make(map[types.NamespacedName]authzMemo, len(in.AuthorizationPolicies)),
		pods:     make(map[types.NamespacedName]podMemo, len(in.Pods)),
		deps:     workloadDeps{objects: make(map[any]struct{}, len(in.Services)+len(in.AuthorizationPolicies)+len(in.PeerAuthentications))},
	}
}

// incremental builds like Build, reusing the resources of its previous
// build for the objects that did not change. Not safe for concurrent use.
type incremental struct {
	prev *memo
}

func (ib *incremental) build(in Inputs) Output {
	out, next := buildWith(in, ib.prev)
	ib.prev = next
	return out
}

// The lookups accept a nil memo (a build without a previous one).

func (m *memo) service(name types.NamespacedName) (serviceMemo, bool) {
	if m == nil {
		return serviceMemo{}, false
	}
	s, ok := m.services[name]
	return s, ok
}

func (m *memo) authorization(name types.NamespacedName) (authzMemo, bool) {
	if m == nil {
		return authzMemo{}, false
	}
	a, ok := m.authz[name]
	return a, ok
}

func (m *memo) pod(name types.NamespacedName) (podMemo, bool) {
	if m == nil {
		return podMemo{}, false
	}
	p, ok := m.pods[name]
	return p, ok
}
