package controller

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"sync"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// gatewayGVR is Gateway API's Gateway, watched through the dynamic client
// so that Warren needs no Gateway API Go types.
var gatewayGVR = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}

// watcher holds the informers of one Run.
type watcher struct {
	c      *Controller
	kf     informers.SharedInformerFactory
	istioF istioinformers.SharedInformerFactory         // nil without an Istio client
	dynF   dynamicinformer.DynamicSharedInformerFactory // nil without a dynamic client

	core     []cache.SharedIndexInformer
	optional []*optionalKind
}

// optionalKind is a kind whose CRD may be missing: the controller works
// without it and starts watching once it appears.
type optionalKind struct {
	name                   string // for logs
	groupVersion, resource string
	// begin creates the informer with its handlers and starts it.
	begin func(ctx context.Context) cache.SharedIndexInformer

	mu       sync.Mutex
	informer cache.SharedIndexInformer // nil until the CRD was found
}

func (k *optionalKind) get() cache.SharedIndexInformer {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.informer
}

func newWatcher(c *Controller) *watcher {
	w := &watcher{c: c, kf: informers.NewSharedInformerFactory(c.kube, 0)}
	if c.istio != nil {
		w.istioF = istioinformers.NewSharedInformerFactory(c.istio, 0)
		w.optional = append(w.optional,
			&optionalKind{
				name: "AuthorizationPolicy", groupVersion: "security.istio.io/v1", resource: "authorizationpolicies",
				begin: func(ctx context.Context) cache.SharedIndexInformer {
					return w.startIstio(ctx, w.istioF.Security().V1().AuthorizationPolicies().Informer())
				},
			},
			&optionalKind{
				name: "PeerAuthentication", groupVersion: "security.istio.io/v1", resource: "peerauthentications",
				begin: func(ctx context.Context) cache.SharedIndexInformer {
					return w.startIstio(ctx, w.istioF.Security().V1().PeerAuthentications().Informer())
				},
			})
	}
	if c.dyn != nil {
		w.dynF = dynamicinformer.NewDynamicSharedInformerFactory(c.dyn, 0)
		w.optional = append(w.optional, &optionalKind{
			name: "Gateway", groupVersion: gatewayGVR.GroupVersion().String(), resource: gatewayGVR.Resource,
			begin: func(ctx context.Context) cache.SharedIndexInformer {
				inf := w.dynF.ForResource(gatewayGVR).Informer()
				w.prepare(inf, stripMetadata, nil)
				w.dynF.Start(ctx.Done())
				return inf
			},
		})
	}
	return w
}

func (w *watcher) startIstio(ctx context.Context, inf cache.SharedIndexInformer) cache.SharedIndexInformer {
	w.prepare(inf, stripMetadata, nil)
	w.istioF.Start(ctx.Done())
	return inf
}

// prepare sets the transform and the change handler of an informer not
// yet started. changed filters updates; nil counts every update.
func (w *watcher) prepare(inf cache.SharedIndexInformer, transform cache.TransformFunc, changed func(old, cur any) bool) {
	if err := inf.SetTransform(transform); err != nil {
		// Only fails once the informer runs, which prepare precedes.
		panic(fmt.Sprintf("controller: setting informer transform: %v", err))
	}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { w.c.trigger() },
		UpdateFunc: func(old, cur any) {
			if changed == nil || changed(old, cur) {
				w.c.trigger()
			}
		},
		DeleteFunc: func(any) { w.c.trigger() },
	})
	if err != nil {
		panic(fmt.Sprintf("controller: adding informer handler: %v", err))
	}
}

// start starts the informers of the kinds that exist and waits until they
// have synced.
func (w *watcher) start(ctx context.Context) error {
	pods := w.kf.Core().V1().Pods().Informer()
	w.prepare(pods, trimPod, podChanged)
	w.core = []cache.SharedIndexInformer{pods}
	slices := w.kf.Discovery().V1().EndpointSlices().Informer()
	w.prepare(slices, trimEndpointSlice, sliceChanged)
	w.core = append(w.core, slices)
	for _, inf := range []cache.SharedIndexInformer{
		w.kf.Core().V1().Namespaces().Informer(),
		w.kf.Core().V1().Services().Informer(),
	} {
		w.prepare(inf, stripMetadata, nil)
		w.core = append(w.core, inf)
	}
	w.kf.Start(ctx.Done())

	synced := make([]cache.InformerSynced, 0, len(w.core)+len(w.optional))
	for _, inf := range w.core {
		synced = append(synced, inf.HasSynced)
	}
	for _, k := range w.optional {
		present, err := w.discover(ctx, k)
		if err != nil {
			return err
		}
		if !present {
			w.c.log.Info("CRD not installed; watching without it and checking again periodically",
				"kind", k.name, "group_version", k.groupVersion, "retry", w.c.crdRetry)
			continue
		}
		inf := k.begin(ctx)
		k.mu.Lock()
		k.informer = inf
		k.mu.Unlock()
		synced = append(synced, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("waiting for informers to sync: %w", ctx.Err())
	}
	return nil
}

// discover asks the apiserver whether k's CRD is installed, retrying while
// discovery itself fails: a policy kind taken for missing would be a first
// build without its policies.
func (w *watcher) discover(ctx context.Context, k *optionalKind) (bool, error) {
	delay := 500 * time.Millisecond
	for {
		present, err := w.lookup(k)
		if err == nil {
			return present, nil
		}
		w.c.log.Warn("API discovery failed; retrying", "group_version", k.groupVersion, "retry", delay, "err", err)
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("discovering %s: %w", k.groupVersion, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, w.c.crdRetry)
	}
}

func (w *watcher) lookup(k *optionalKind) (bool, error) {
	list, err := w.c.kube.Discovery().ServerResourcesForGroupVersion(k.groupVersion)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, r := range list.APIResources {
		if r.Name == k.resource {
			return true, nil
		}
	}
	return false, nil
}

// retryMissing starts watching kinds whose CRD appears later, until ctx is
// done. A kind counts only once its informer has synced, and a rebuild
// follows.
func (w *watcher) retryMissing(ctx context.Context) {
	ticker := time.NewTicker(w.c.crdRetry)
	defer ticker.Stop()
	for {
		missing := 0
		for _, k := range w.optional {
			if k.get() != nil {
				continue
			}
			missing++
			present, err := w.lookup(k)
			if err != nil || !present {
				continue
			}
			inf := k.begin(ctx)
			k.mu.Lock()
			k.informer = inf
			k.mu.Unlock()
			go func() {
				if cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
					w.c.log.Info("CRD appeared; now watching it", "kind", k.name)
					w.c.trigger()
				}
			}()
		}
		if missing == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func (w *watcher) shutdown() {
	w.kf.Shutdown()
	if w.istioF != nil {
		w.istioF.Shutdown()
	}
	if w.dynF != nil {
		w.dynF.Shutdown()
	}
}

// inputs lists the informers' caches. The objects are the caches' own and
// must not be modified.
func (w *watcher) inputs() Inputs {
	in := Inputs{Config: w.c.cfg}
	everything := labels.Everything()
	// Listers over synced caches cannot fail.
	in.Namespaces, _ = w.kf.Core().V1().Namespaces().Lister().List(everything)
	in.Pods, _ = w.kf.Core().V1().Pods().Lister().List(everything)
	in.Services, _ = w.kf.Core().V1().Services().Lister().List(everything)
	in.EndpointSlices, _ = w.kf.Discovery().V1().EndpointSlices().Lister().List(everything)
	for _, k := range w.optional {
		inf := k.get()
		if inf == nil || !inf.HasSynced() {
			continue
		}
		for _, obj := range inf.GetStore().List() {
			switch o := obj.(type) {
			case *securityv1.AuthorizationPolicy:
				in.AuthorizationPolicies = append(in.AuthorizationPolicies, o)
			case *securityv1.PeerAuthentication:
				in.PeerAuthentications = append(in.PeerAuthentications, o)
			case *unstructured.Unstructured:
				if wp, ok := waypointFrom(o, w.c.cfg.WaypointClass); ok {
					in.Waypoints = append(in.Waypoints, wp)
				}
			}
		}
	}
	return in
}

// waypointFrom reads a Gateway of the waypoint class.
func waypointFrom(u *unstructured.Unstructured, class string) (Waypoint, bool) {
	cls, _, _ := unstructured.NestedString(u.Object, "spec", "gatewayClassName")
	if cls != class {
		return Waypoint{}, false
	}
	wp := Waypoint{Name: u.GetName(), Namespace: u.GetNamespace()}
	addrs, _, _ := unstructured.NestedSlice(u.Object, "status", "addresses")
	for _, a := range addrs {
		m, ok := a.(map[string]any)
		if !ok {
			continue
		}
		typ, _ := m["type"].(string)
		value, _ := m["value"].(string)
		switch typ {
		case "", "IPAddress": // IPAddress is the API's default
			if ip, err := netip.ParseAddr(value); err == nil {
				wp.Addresses = append(wp.Addresses, ip)
			}
		case "Hostname":
			wp.Hostnames = append(wp.Hostnames, value)
		}
	}
	return wp, true
}

// lastApplied is kubectl's copy of the whole object, often the largest
// thing in its metadata and never read here.
const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// stripMetadata drops from cached objects the metadata Build never reads,
// to keep the caches small.
func stripMetadata(obj any) (any, error) {
	m, err := meta.Accessor(obj)
	if err != nil {
		// Tombstones (cache.DeletedFinalStateUnknown) pass as they are.
		return obj, nil
	}
	m.SetManagedFields(nil)
	if a := m.GetAnnotations(); a[lastApplied] != "" {
		a = maps.Clone(a)
		delete(a, lastApplied)
		m.SetAnnotations(a)
	}
	return obj, nil
}

// trimPod keeps of a pod only what Build reads: at 10,000 pods the full
// objects (container specs, environment, statuses) would hold hundreds of
// megabytes.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:              p.Name,
			GenerateName:      p.GenerateName,
			Namespace:         p.Namespace,
			UID:               p.UID,
			ResourceVersion:   p.ResourceVersion,
			CreationTimestamp: p.CreationTimestamp,
			DeletionTimestamp: p.DeletionTimestamp,
			Labels:            p.Labels,
			Annotations:       p.Annotations,
			OwnerReferences:   p.OwnerReferences,
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: p.Spec.ServiceAccountName,
			NodeName:           p.Spec.NodeName,
			HostNetwork:        p.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{
			Phase:  p.Status.Phase,
			PodIP:  p.Status.PodIP,
			PodIPs: p.Status.PodIPs,
		},
	}
	if out.Annotations[lastApplied] != "" {
		out.Annotations = maps.Clone(out.Annotations)
		delete(out.Annotations, lastApplied)
	}
	// Container ports resolve named target ports; native sidecars (init
	// containers that keep running) count too.
	for _, c := range p.Spec.Containers {
		if len(c.Ports) > 0 {
			out.Spec.Containers = append(out.Spec.Containers, corev1.Container{Name: c.Name, Ports: c.Ports})
		}
	}
	for _, c := range p.Spec.InitContainers {
		if len(c.Ports) > 0 && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			out.Spec.InitContainers = append(out.Spec.InitContainers, corev1.Container{Name: c.Name, Ports: c.Ports, RestartPolicy: c.RestartPolicy})
		}
	}
	// Readiness alone: the condition's times and messages change on every
	// probe transition and would wake the rebuild for nothing.
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			out.Status.Conditions = []corev1.PodCondition{{Type: cond.Type, Status: cond.Status}}
		}
	}
	return out, nil
}

// podChanged reports whether an update of a trimmed pod changes anything
// Build reads; most pod updates (container statuses, probe times) do not.
func podChanged(old, cur any) bool {
	a, ok1 := old.(*corev1.Pod)
	b, ok2 := cur.(*corev1.Pod)
	if !ok1 || !ok2 {
		return true
	}
	return a.UID != b.UID || a.Name != b.Name || a.Namespace != b.Namespace || a.GenerateName != b.GenerateName ||
		!maps.Equal(a.Labels, b.Labels) ||
		!maps.Equal(a.Annotations, b.Annotations) ||
		!a.DeletionTimestamp.Equal(b.DeletionTimestamp) ||
		!reflect.DeepEqual(a.OwnerReferences, b.OwnerReferences) ||
		!reflect.DeepEqual(a.Spec, b.Spec) ||
		!reflect.DeepEqual(a.Status, b.Status)
}

// trimEndpointSlice keeps of a slice what Build reads: its service, ports
// and the pods its endpoints point at. Addresses and conditions, the bulk
// of a slice and most of its updates, are dropped.
func trimEndpointSlice(obj any) (any, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	out := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:            es.Name,
			Namespace:       es.Namespace,
			UID:             es.UID,
			ResourceVersion: es.ResourceVersion,
			Labels:          es.Labels,
		},
		AddressType: es.AddressType,
		Ports:       es.Ports,
	}
	for _, ep := range es.Endpoints {
		if ref := ep.TargetRef; ref != nil && ref.Kind == "Pod" {
			out.Endpoints = append(out.Endpoints, discoveryv1.Endpoint{TargetRef: &corev1.ObjectReference{
				Kind: ref.Kind, Namespace: ref.Namespace, Name: ref.Name, UID: ref.UID,
			}})
		}
	}
	return out, nil
}

// sliceChanged reports whether an update of a trimmed slice changes
// anything Build reads.
func sliceChanged(old, cur any) bool {
	a, ok1 := old.(*discoveryv1.EndpointSlice)
	b, ok2 := cur.(*discoveryv1.EndpointSlice)
	if !ok1 || !ok2 {
		return true
	}
	return !maps.Equal(a.Labels, b.Labels) ||
		!reflect.DeepEqual(a.Ports, b.Ports) ||
		!reflect.DeepEqual(a.Endpoints, b.Endpoints)
}
