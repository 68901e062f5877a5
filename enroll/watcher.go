package enroll

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/warren-mesh/warren/cni"
)

// Watcher keeps the set of this node's pods to capture: it watches the
// node's pods and all namespaces, learns each pod's network namespace from
// the CNI plugin (or by scanning NetNSDir for pods that predate the agent),
// and calls OnChange with the full set whenever it changes.
//
// The set holds the pods that Decide captures, that have addresses and
// whose namespace is known. OnChange runs on Run's goroutine, one call at a
// time, with the pods sorted by UID.
type Watcher struct {
	cfg      Config
	kube     kubernetes.Interface
	onChange func([]Pod)
	log      *slog.Logger
	// scan indexes NetNSDir; tests replace it.
	scan func(dir string) (netnsIndex, error)

	factories   []informers.SharedInformerFactory
	podInformer cache.SharedIndexInformer
	nsInformer  cache.SharedIndexInformer
	pods        corelisters.PodLister
	namespaces  corelisters.NamespaceLister

	// kick asks Run for a recomputation; one pending request is enough.
	kick chan struct{}
	// podEvent fires on every pod event (AddFromCNI waits for its pod);
	// captureEvent on every SetRedirection (WaitCaptured waits on it).
	podEvent     signal
	captureEvent signal
	synced       atomic.Bool

	mu sync.Mutex
	// netns is what the CNI plugin or a scan said about each pod.
	netns map[podKey]netnsRecord
	// current is the set last given to OnChange, by UID; nil before the
	// first call.
	current map[string]Pod
	// captured maps the UID of each pod the agent reported captured to the
	// namespace it was captured in.
	captured map[string]string
	// written is the annotation value this agent last patched per pod
	// (true: enabled); the informer cache lags behind our own patches.
	written map[podKey]bool
	// nsWarned is the misconfiguration last logged per namespace.
	nsWarned map[string]string
	// scanMissed is when a scan last failed to find a pod's namespace.
	scanMissed map[types.UID]time.Time
	unresolved bool
}

type podKey struct{ namespace, name string }

func keyOf(p *corev1.Pod) podKey { return podKey{p.Namespace, p.Name} }

// netnsRecord is a pod's network namespace as reported by the CNI plugin
// (containerID and ips set) or found by a scan (the pod's status addresses
// apply).
type netnsRecord struct {
	netns       string
	ips         []netip.Addr
	containerID string
	// k8sUID, when known, ties the record to one pod object, so that a
	// record of a deleted pod never applies to a new pod of the same name.
	k8sUID types.UID
}

// NewWatcher checks cfg and prepares the watches; Run starts them. kube
// needs RBAC to list and watch pods (with a field selector on the node) and
// namespaces, to get pods and namespaces, and to patch pods.
func NewWatcher(cfg Config, kube kubernetes.Interface, onChange func([]Pod), log *slog.Logger) (*Watcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("enrolment config: %w", err)
	}
	w := &Watcher{
		cfg:        cfg,
		kube:       kube,
		onChange:   onChange,
		log:        log.With("component", "enroll"),
		scan:       scanNetNS,
		kick:       make(chan struct{}, 1),
		netns:      map[podKey]netnsRecord{},
		captured:   map[string]string{},
		written:    map[podKey]bool{},
		nsWarned:   map[string]string{},
		scanMissed: map[types.UID]time.Time{},
	}
	// Pods of this node only: a node runs ~100 of a cluster's many
	// thousands. Namespaces are few and all are needed for the label.
	podFactory := informers.NewSharedInformerFactoryWithOptions(kube, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.Node).String()
		}),
		informers.WithTransform(dropManagedFields))
	nsFactory := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithTransform(dropManagedFields))
	w.factories = []informers.SharedInformerFactory{podFactory, nsFactory}
	w.podInformer = podFactory.Core().V1().Pods().Informer()
	w.pods = podFactory.Core().V1().Pods().Lister()
	w.nsInformer = nsFactory.Core().V1().Namespaces().Informer()
	w.namespaces = nsFactory.Core().V1().Namespaces().Lister()

	if _, err := w.podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.podChanged() },
		UpdateFunc: func(any, any) { w.podChanged() },
		DeleteFunc: w.podDeleted,
	}); err != nil {
		return nil, fmt.Errorf("watching pods: %w", err)
	}
	if _, err := w.nsInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.namespaceChanged,
		UpdateFunc: func(_, obj any) { w.namespaceChanged(obj) },
		DeleteFunc: w.namespaceDeleted,
	}); err != nil {
		return nil, fmt.Errorf("watching namespaces: %w", err)
	}
	return w, nil
}

// dropManagedFields keeps the cached objects small; nothing here reads
// managed fields.
func dropManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.ObjectMetaAccessor); ok {
		m.GetObjectMeta().SetManagedFields(nil)
	}
	return obj, nil
}

// Run starts the watches, waits for their first lists, delivers the first
// set (even if empty, so the caller can release what it no longer should
// capture) and then keeps it current until ctx ends. It returns nil when
// ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	for _, f := range w.factories {
		f.Start(ctx.Done())
	}
	defer func() {
		// Shutdown waits for the informers, which stop with ctx.
		for _, f := range w.factories {
			f.Shutdown()
		}
	}()
	if !cache.WaitForCacheSync(ctx.Done(), w.podInformer.HasSynced, w.nsInformer.HasSynced) {
		return nil
	}
	w.reconcile()
	w.synced.Store(true)
	w.log.Info("pod watch synced", "node", w.cfg.Node, "selector", w.cfg.Selector.String())

	// Changes are batched: the first one arms the timer and everything up
	// to its expiry is handled by one reconcile.
	batch := time.NewTimer(time.Hour)
	batch.Stop()
	defer batch.Stop()
	armed := false
	rescan := time.NewTicker(w.cfg.RescanInterval)
	defer rescan.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.kick:
			if !armed {
				batch.Reset(w.cfg.Debounce)
				armed = true
			}
		case <-batch.C:
			armed = false
			w.reconcile()
		case <-rescan.C:
			w.mu.Lock()
			again := w.unresolved
			w.mu.Unlock()
			if again {
				w.reconcile()
			}
		}
	}
}

// Synced reports whether the first set has been delivered: OnChange has
// returned from its first call.
func (w *Watcher) Synced() bool { return w.synced.Load() }

func (w *Watcher) trigger() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *Watcher) podChanged() {
	w.podEvent.fire()
	w.trigger()
}

func (w *Watcher) podDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if p, ok := obj.(*corev1.Pod); ok {
		w.mu.Lock()
		if rec, ok := w.netns[keyOf(p)]; ok && (rec.k8sUID == "" || rec.k8sUID == p.UID) {
			delete(w.netns, keyOf(p))
		}
		delete(w.scanMissed, p.UID)
		delete(w.captured, WorkloadUID(w.cfg.ClusterID, p.Namespace, p.Name))
		delete(w.written, keyOf(p))
		w.mu.Unlock()
	}
	w.podChanged()
}

// namespaceChanged logs a namespace whose selector label enrols nothing
// (a typo, most likely) once per change of that label.
func (w *Watcher) namespaceChanged(obj any) {
	if ns, ok := obj.(*corev1.Namespace); ok {
		problem := namespaceProblem(w.cfg.Selector, ns)
		w.mu.Lock()
		if problem != w.nsWarned[ns.Name] {
			w.nsWarned[ns.Name] = problem
			if problem != "" {
				w.log.Warn("namespace label enrols no pods", "namespace", ns.Name, "problem", problem)
			}
		}
		w.mu.Unlock()
	}
	w.trigger()
}

func (w *Watcher) namespaceDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if ns, ok := obj.(*corev1.Namespace); ok {
		w.mu.Lock()
		delete(w.nsWarned, ns.Name)
		w.mu.Unlock()
	}
	w.trigger()
}

// reconcile computes the set, scanning for missing namespaces first, and
// hands it to OnChange if it changed. Called from Run only.
func (w *Watcher) reconcile() {
	pods, err := w.pods.List(labels.Everything())
	if err != nil {
		w.log.Error("listing cached pods", "error", err)
		return
	}
	nsOf := func(name string) *corev1.Namespace {
		ns, err := w.namespaces.Get(name)
		if err != nil {
			return nil
		}
		return ns
	}
	w.mu.Lock()
	records := maps.Clone(w.netns)
	w.mu.Unlock()

	_, unresolved := desired(w.cfg, pods, nsOf, records)
	if found := w.scanFor(unresolved); len(found) > 0 {
		w.mu.Lock()
		for k, rec := range found {
			// The CNI plugin may have reported the pod meanwhile; it wins.
			if cur, ok := w.netns[k]; !ok || (cur.k8sUID != "" && cur.k8sUID != rec.k8sUID) {
				w.netns[k] = rec
			}
		}
		records = maps.Clone(w.netns)
		w.mu.Unlock()
	}
	want, unresolved := desired(w.cfg, pods, nsOf, records)

	w.mu.Lock()
	w.unresolved = len(unresolved) > 0
	changed := w.current == nil || !sameSet(w.current, want)
	if changed {
		w.current = make(map[string]Pod, len(want))
		for _, p := range want {
			w.current[p.UID] = p
		}
	}
	w.mu.Unlock()
	if changed {
		w.log.Info("pods to capture changed", "count", len(want), "waiting_for_netns", len(unresolved))
		w.onChange(want)
	}
}

func sameSet(cur map[string]Pod, want []Pod) bool {
	if len(cur) != len(want) {
		return false
	}
	for _, p := range want {
		if c, ok := cur[p.UID]; !ok || !c.equal(p) {
			return false
		}
	}
	return true
}

// scanFor looks for the namespaces of pods to capture that the CNI plugin
// never reported (they started before the agent). A pod not found is
// looked for again after RescanInterval. One scan serves all pods.
func (w *Watcher) scanFor(pods []*corev1.Pod) map[podKey]netnsRecord {
	now := time.Now()
	w.mu.Lock()
	var due []*corev1.Pod
	for _, p := range pods {
		if t, ok := w.scanMissed[p.UID]; !ok || now.Sub(t) >= w.cfg.RescanInterval {
			due = append(due, p)
		}
	}
	w.mu.Unlock()
	if len(due) == 0 {
		return nil
	}
	idx, err := w.scan(w.cfg.NetNSDir)
	if err != nil {
		w.log.Error("scanning for pod network namespaces", "dir", w.cfg.NetNSDir, "error", err)
		return nil
	}
	found := map[podKey]netnsRecord{}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range due {
		path, err := idx.find(statusIPs(p))
		if err != nil {
			if _, seen := w.scanMissed[p.UID]; !seen {
				w.log.Warn("network namespace of pod not found; retrying", "pod", p.Namespace+"/"+p.Name, "dir", w.cfg.NetNSDir, "error", err)
			}
			w.scanMissed[p.UID] = now
			continue
		}
		delete(w.scanMissed, p.UID)
		found[keyOf(p)] = netnsRecord{netns: path, k8sUID: p.UID}
		w.log.Info("found network namespace of running pod", "pod", p.Namespace+"/"+p.Name, "netns", path)
	}
	return found
}

// desired is the set to capture, from the cached pods and namespaces and
// what is known of their network namespaces, sorted by UID; unresolved are
// the pods to capture whose namespace is not known. No I/O.
func desired(cfg Config, pods []*corev1.Pod, nsOf func(string) *corev1.Namespace, records map[podKey]netnsRecord) (want []Pod, unresolved []*corev1.Pod) {
	for _, p := range pods {
		// The field selector already filters; a fake or misbehaving
		// source must not make another node's pod ours.
		if p.Spec.NodeName != cfg.Node {
			continue
		}
		if !Decide(cfg.Selector, p, nsOf(p.Namespace)).Capture {
			continue
		}
		rec, ok := records[keyOf(p)]
		if ok && rec.k8sUID != "" && rec.k8sUID != p.UID {
			ok = false
		}
		ips := statusIPs(p)
		if ok && len(rec.ips) > 0 {
			// The plugin's addresses describe the sandbox now; the status
			// lags behind after a sandbox is recreated.
			ips = rec.ips
		}
		switch {
		case len(ips) == 0:
			continue
		case !ok:
			unresolved = append(unresolved, p)
			continue
		}
		want = append(want, Pod{
			UID:            WorkloadUID(cfg.ClusterID, p.Namespace, p.Name),
			Name:           p.Name,
			Namespace:      p.Namespace,
			ServiceAccount: serviceAccount(p),
			Node:           p.Spec.NodeName,
			NetNS:          rec.netns,
			IPs:            slices.Clone(ips),
			K8sUID:         p.UID,
		})
	}
	slices.SortFunc(want, func(a, b Pod) int { return strings.Compare(a.UID, b.UID) })
	return want, unresolved
}

func serviceAccount(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName != "" {
		return p.Spec.ServiceAccountName
	}
	return "default"
}

// statusIPs are the pod's addresses as the kubelet reported them, sorted.
func statusIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && !slices.Contains(out, a.Unmap()) {
			out = append(out, a.Unmap())
		}
	}
	for _, ip := range p.Status.PodIPs {
		add(ip.IP)
	}
	add(p.Status.PodIP)
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// AddFromCNI records what the CNI plugin reports about a new sandbox (its
// netns and addresses) and tells whether the pod is to be captured, with
// its workload uid. In order: records the netns (also for pods not
// captured now, in case their labels change), asks for a recomputation,
// waits up to CNIWait for the pod to reach the watch (the runtime often
// runs before the informer has seen the pod) and otherwise reads it from
// the API, reads its namespace, decides. Errors: the pod cannot be read,
// or is not this node's; the caller fails the ADD and the kubelet retries.
func (w *Watcher) AddFromCNI(ctx context.Context, req cni.AddRequest) (capture bool, uid string, err error) {
	key := podKey{req.PodNamespace, req.PodName}
	uid = WorkloadUID(w.cfg.ClusterID, req.PodNamespace, req.PodName)
	rec := netnsRecord{netns: req.NetNS, containerID: req.ContainerID, k8sUID: types.UID(req.PodUID)}
	for _, p := range req.IPs {
		if a := p.Addr().Unmap(); !slices.Contains(rec.ips, a) {
			rec.ips = append(rec.ips, a)
		}
	}
	slices.SortFunc(rec.ips, netip.Addr.Compare)
	w.mu.Lock()
	w.netns[key] = rec
	w.mu.Unlock()
	w.trigger()

	pod, err := w.waitPod(ctx, key, rec.k8sUID)
	if err != nil {
		return false, uid, err
	}
	if pod.Spec.NodeName != w.cfg.Node {
		return false, uid, fmt.Errorf("pod %s/%s is scheduled to node %q, this is %q", key.namespace, key.name, pod.Spec.NodeName, w.cfg.Node)
	}
	ns, err := w.namespace(ctx, pod.Namespace)
	if err != nil {
		return false, uid, err
	}
	d := Decide(w.cfg.Selector, pod, ns)
	w.log.Debug("cni add", "pod", key.namespace+"/"+key.name, "netns", req.NetNS, "capture", d.Capture, "reason", d.Reason)
	return d.Capture, uid, nil
}

// waitPod returns the pod from the watch once it is there (with k8sUID,
// when given), or after CNIWait from the API.
func (w *Watcher) waitPod(ctx context.Context, key podKey, k8sUID types.UID) (*corev1.Pod, error) {
	deadline := time.NewTimer(w.cfg.CNIWait)
	defer deadline.Stop()
wait:
	for {
		// Take the signal before looking, so an event in between is not
		// missed.
		next := w.podEvent.wait()
		if p, err := w.pods.Pods(key.namespace).Get(key.name); err == nil && (k8sUID == "" || p.UID == k8sUID) {
			return p, nil
		}
		select {
		case <-next:
		case <-deadline.C:
			break wait
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for pod %s/%s: %w", key.namespace, key.name, ctx.Err())
		}
	}
	p, err := w.kube.CoreV1().Pods(key.namespace).Get(ctx, key.name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading pod %s/%s: %w", key.namespace, key.name, err)
	}
	if k8sUID != "" && p.UID != k8sUID {
		return nil, fmt.Errorf("pod %s/%s has uid %s, the runtime's sandbox is for uid %s", key.namespace, key.name, p.UID, k8sUID)
	}
	return p, nil
}

// namespace reads a namespace from the watch, else from the API; nil when
// it does not exist.
func (w *Watcher) namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	if ns, err := w.namespaces.Get(name); err == nil {
		return ns, nil
	}
	ns, err := w.kube.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading namespace %s: %w", name, err)
	}
	return ns, nil
}

// DeleteFromCNI forgets the sandbox the CNI plugin reports gone, so the pod
// leaves the set until a new sandbox is added. A DEL for an older sandbox
// of the pod (another container ID and netns) changes nothing.
func (w *Watcher) DeleteFromCNI(req cni.DelRequest) {
	key := podKey{req.PodNamespace, req.PodName}
	w.mu.Lock()
	rec, ok := w.netns[key]
	if ok && ((rec.containerID != "" && rec.containerID == req.ContainerID) || (req.NetNS != "" && rec.netns == req.NetNS)) {
		delete(w.netns, key)
	}
	w.mu.Unlock()
	w.trigger()
}

// SetRedirection records that the agent has captured (enabled) or released
// the pod with workload uid, and mirrors it on the pod's
// ambient.istio.io/redirection annotation. In order: patches the
// annotation with a JSON merge patch, unless the watched pod already shows
// it so; then updates the local record, whatever the patch gave (the
// capture is done; an API outage must not hold up pod starts), which wakes
// WaitCaptured. A pod that no longer exists needs no release. Errors come
// from the patch; it may be retried.
func (w *Watcher) SetRedirection(ctx context.Context, uid string, enabled bool) error {
	namespace, name, err := parseWorkloadUID(w.cfg.ClusterID, uid)
	if err != nil {
		return fmt.Errorf("setting redirection: %w", err)
	}
	err = w.annotate(ctx, namespace, name, enabled)
	w.mu.Lock()
	if enabled {
		// The namespace captured is the one in the set the agent was given.
		w.captured[uid] = w.current[uid].NetNS
	} else {
		delete(w.captured, uid)
	}
	w.mu.Unlock()
	w.captureEvent.fire()
	return err
}

func (w *Watcher) annotate(ctx context.Context, namespace, name string, enabled bool) error {
	key := podKey{namespace, name}
	w.mu.Lock()
	last, wrote := w.written[key]
	w.mu.Unlock()
	// The cache alone may not have seen our last patch yet: trust it only
	// when it agrees with what we last wrote.
	if p, err := w.pods.Pods(namespace).Get(name); err == nil && (p.Annotations[RedirectionAnnotation] == RedirectionEnabled) == enabled && (!wrote || last == enabled) {
		return nil
	}
	var value any // JSON null removes the key in a merge patch
	if enabled {
		value = RedirectionEnabled
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{RedirectionAnnotation: value}}})
	_, err := w.kube.CoreV1().Pods(namespace).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) && !enabled {
		w.forget(key)
		return nil
	}
	if err != nil {
		return fmt.Errorf("annotating pod %s/%s with %s=%v: %w", namespace, name, RedirectionAnnotation, value, err)
	}
	w.mu.Lock()
	w.written[key] = enabled
	w.mu.Unlock()
	return nil
}

// forget drops what was written for a pod that is gone.
func (w *Watcher) forget(key podKey) {
	w.mu.Lock()
	delete(w.written, key)
	w.mu.Unlock()
}

// WaitCaptured returns once SetRedirection(uid, true) has been called for
// the pod in netns (any netns when empty), or with ctx's error.
func (w *Watcher) WaitCaptured(ctx context.Context, uid, netns string) error {
	for {
		next := w.captureEvent.wait()
		w.mu.Lock()
		got, ok := w.captured[uid]
		w.mu.Unlock()
		if ok && (netns == "" || got == netns) {
			return nil
		}
		select {
		case <-next:
		case <-ctx.Done():
			return fmt.Errorf("waiting for pod %s to be captured: %w", uid, ctx.Err())
		}
	}
}

// Redirected lists the workload uids of this node's pods whose annotation
// says they are captured, sorted. After a restart the agent releases the
// annotation of those it does not capture.
func (w *Watcher) Redirected() []string {
	pods, _ := w.pods.List(labels.Everything())
	var out []string
	for _, p := range pods {
		if p.Spec.NodeName == w.cfg.Node && p.Annotations[RedirectionAnnotation] == RedirectionEnabled {
			out = append(out, WorkloadUID(w.cfg.ClusterID, p.Namespace, p.Name))
		}
	}
	slices.Sort(out)
	return out
}

// CNIHandler answers the CNI plugin's socket: Add records the sandbox and,
// for a pod to capture, returns only once the agent has reported it
// captured through SetRedirection (so the pod's containers start
// captured); the server's timeout bounds the wait. Del forgets the sandbox.
func (w *Watcher) CNIHandler() cni.Handler { return cniHandler{w} }

type cniHandler struct{ w *Watcher }

var _ cni.Handler = cniHandler{}

func (h cniHandler) Add(ctx context.Context, req cni.AddRequest) (bool, error) {
	capture, uid, err := h.w.AddFromCNI(ctx, req)
	if err != nil || !capture {
		return false, err
	}
	if err := h.w.WaitCaptured(ctx, uid, req.NetNS); err != nil {
		return false, err
	}
	return true, nil
}

func (h cniHandler) Del(_ context.Context, req cni.DelRequest) { h.w.DeleteFromCNI(req) }

// signal is a broadcast: wait returns a channel closed by the next fire.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *signal) fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}
