package enroll

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/warren-mesh/warren/cni"
)

const modeKey = "istio.io/dataplane-mode"

// podCmp compares sets of pods: addresses by value, no set and an empty set
// alike.
var podCmp = []cmp.Option{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmpopts.EquateEmpty()}

// syncBuffer is a log sink tests read while the watcher writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), sub)
}

// harness runs a Watcher for node-a against a fake clientset.
type harness struct {
	t       *testing.T
	kube    kubernetes.Interface
	w       *Watcher
	changes chan []Pod
	logs    *syncBuffer

	mu    sync.Mutex
	index netnsIndex
	scans int
}

type harnessOpts struct {
	tweak    func(*Config)
	onChange func(h *harness, pods []Pod)
	noRun    bool
	// index is what scans find until setIndex.
	index netnsIndex
}

func newHarness(t *testing.T, opts harnessOpts, objs ...runtime.Object) *harness {
	t.Helper()
	h := &harness{t: t, kube: fake.NewClientset(objs...), changes: make(chan []Pod, 100), logs: &syncBuffer{}, index: opts.index}
	cfg := DefaultConfig()
	cfg.Node = "node-a"
	cfg.Selector = testSelector()
	cfg.Debounce = 10 * time.Millisecond
	cfg.CNIWait = 2 * time.Second
	cfg.RescanInterval = 200 * time.Millisecond
	if opts.tweak != nil {
		opts.tweak(&cfg)
	}
	onChange := func(pods []Pod) {
		if opts.onChange != nil {
			opts.onChange(h, pods)
		}
		h.changes <- pods
	}
	w, err := NewWatcher(cfg, h.kube, onChange, slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	w.scan = func(string) (netnsIndex, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.scans++
		return h.index, nil
	}
	h.w = w
	if opts.noRun {
		return h
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return h
}

// next returns the next set given to OnChange.
func (h *harness) next() []Pod {
	h.t.Helper()
	select {
	case p := <-h.changes:
		return p
	case <-time.After(5 * time.Second):
		h.t.Fatal("no OnChange within 5s")
		return nil
	}
}

// expect waits for the next set and compares it.
func (h *harness) expect(want []Pod) {
	h.t.Helper()
	if diff := cmp.Diff(want, h.next(), podCmp...); diff != "" {
		h.t.Fatalf("OnChange (-want +got):\n%s", diff)
	}
}

// quiet checks that OnChange is not called for a while.
func (h *harness) quiet() {
	h.t.Helper()
	select {
	case p := <-h.changes:
		h.t.Fatalf("unexpected OnChange %+v", p)
	case <-time.After(300 * time.Millisecond):
	}
}

func (h *harness) setIndex(idx netnsIndex) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.index = idx
}

func (h *harness) updatePod(ns, name string, change func(*corev1.Pod)) {
	h.t.Helper()
	ctx := context.Background()
	p, err := h.kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	change(p)
	if _, err := h.kube.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) updateNamespace(name string, change func(*corev1.Namespace)) {
	h.t.Helper()
	ctx := context.Background()
	ns, err := h.kube.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	change(ns)
	if _, err := h.kube.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

// kpod is a pod object on node with uid, service account and status IPs.
func kpod(ns, name, node string, ips ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name)},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: "sa-" + name, Containers: []corev1.Container{{Name: "app"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}

func addReq(ns, name, netnsPath, containerID string, ips ...string) cni.AddRequest {
	r := cni.AddRequest{PodName: name, PodNamespace: ns, PodUID: "uid-" + name, ContainerID: containerID, NetNS: netnsPath, IfName: "eth0"}
	for _, ip := range ips {
		r.IPs = append(r.IPs, netip.MustParsePrefix(ip))
	}
	return r
}

func wantPod(ns, name, netnsPath string, ips ...string) Pod {
	p := Pod{
		UID: WorkloadUID("Kubernetes", ns, name), Name: name, Namespace: ns, ServiceAccount: "sa-" + name,
		Node: "node-a", NetNS: netnsPath, K8sUID: types.UID("uid-" + name),
	}
	for _, ip := range ips {
		p.IPs = append(p.IPs, netip.MustParseAddr(ip))
	}
	return p
}

func TestWatcherCNIFlow(t *testing.T) {
	h := newHarness(t, harnessOpts{},
		newNamespace("shop", map[string]string{modeKey: "ambient"}),
		kpod("shop", "web-0", "node-a"),
		// On another node: the fake API ignores the field selector, the
		// watcher must not.
		kpod("shop", "db-0", "node-b", "10.244.2.9"),
	)
	h.expect(nil)
	for deadline := time.Now().Add(5 * time.Second); !h.w.Synced(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not synced after the first OnChange")
		}
	}

	ctx := t.Context()
	capture, uid, err := h.w.AddFromCNI(ctx, addReq("shop", "web-0", "/run/netns/cni-1", "c1", "10.244.1.7/24", "fd00::7/64"))
	if err != nil || !capture || uid != "Kubernetes//Pod/shop/web-0" {
		t.Fatalf("AddFromCNI = %v, %q, %v; want capture of Kubernetes//Pod/shop/web-0", capture, uid, err)
	}
	// Captured before the kubelet writes the pod's IPs: they come from CNI.
	h.expect([]Pod{wantPod("shop", "web-0", "/run/netns/cni-1", "10.244.1.7", "fd00::7")})

	h.updatePod("shop", "web-0", func(p *corev1.Pod) {
		p.Status.PodIPs = []corev1.PodIP{{IP: "10.244.1.7"}, {IP: "fd00::7"}}
	})
	h.quiet()

	h.updatePod("shop", "web-0", func(p *corev1.Pod) { setMap(&p.Labels, modeKey, ModeNone) })
	h.expect([]Pod{})
	h.updatePod("shop", "web-0", func(p *corev1.Pod) { delete(p.Labels, modeKey) })
	h.expect([]Pod{wantPod("shop", "web-0", "/run/netns/cni-1", "10.244.1.7", "fd00::7")})

	// A late DEL of an older sandbox changes nothing.
	h.w.DeleteFromCNI(cni.DelRequest{PodName: "web-0", PodNamespace: "shop", ContainerID: "c0", NetNS: "/run/netns/cni-0"})
	h.quiet()
	h.w.DeleteFromCNI(cni.DelRequest{PodName: "web-0", PodNamespace: "shop", ContainerID: "c1"})
	h.expect([]Pod{})

	// The sandbox is recreated: new netns and address.
	if capture, _, err := h.w.AddFromCNI(ctx, addReq("shop", "web-0", "/run/netns/cni-2", "c2", "10.244.1.8/24")); err != nil || !capture {
		t.Fatalf("AddFromCNI for the new sandbox = %v, %v", capture, err)
	}
	h.expect([]Pod{wantPod("shop", "web-0", "/run/netns/cni-2", "10.244.1.8")})

	if err := h.kube.CoreV1().Pods("shop").Delete(ctx, "web-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.expect([]Pod{})
}

func TestWatcherNamespaceLabel(t *testing.T) {
	h := newHarness(t, harnessOpts{},
		newNamespace("plain", nil),
		kpod("plain", "api-0", "node-a", "10.244.1.30"),
	)
	h.expect(nil)
	capture, _, err := h.w.AddFromCNI(t.Context(), addReq("plain", "api-0", "/run/netns/cni-api", "c1", "10.244.1.30/24"))
	if err != nil || capture {
		t.Fatalf("AddFromCNI in an unlabelled namespace = %v, %v; want not captured", capture, err)
	}
	h.quiet()

	// Labelled later: the netns the plugin reported is still known.
	h.updateNamespace("plain", func(ns *corev1.Namespace) { setMap(&ns.Labels, modeKey, "ambient") })
	h.expect([]Pod{wantPod("plain", "api-0", "/run/netns/cni-api", "10.244.1.30")})

	const warning = `which is not \"ambient\"`
	h.updateNamespace("plain", func(ns *corev1.Namespace) { setMap(&ns.Labels, modeKey, "ambiant") })
	h.expect([]Pod{})
	// Other changes to the namespace do not repeat the warning.
	h.updateNamespace("plain", func(ns *corev1.Namespace) { setMap(&ns.Annotations, "owner", "team-a") })
	h.quiet()
	if n := h.logs.count(warning); n != 1 {
		t.Errorf("misspelt label logged %d times, want once", n)
	}
	h.updateNamespace("plain", func(ns *corev1.Namespace) { setMap(&ns.Labels, modeKey, "ambint") })
	h.quiet()
	if n := h.logs.count(warning); n != 2 {
		t.Errorf("second misspelling logged %d warnings in all, want 2", n)
	}
	h.updateNamespace("plain", func(ns *corev1.Namespace) { setMap(&ns.Labels, modeKey, ModeNone) })
	h.quiet()
	if n := h.logs.count(warning); n != 2 {
		t.Errorf("opting out logged a warning (%d in all)", n)
	}
}

// TestWatcherScan: pods that were running before the agent have no CNI
// report; their netns is found by scanning, and looked for again later when
// a scan misses.
func TestWatcherScan(t *testing.T) {
	host := kpod("shop", "host-0", "node-a", "10.0.0.5")
	host.Spec.HostNetwork = true
	h := newHarness(t, harnessOpts{index: netnsIndex{
		netip.MustParseAddr("10.244.1.21"): {"/run/netns/cni-old1"},
		// A host-network pod is never captured, so never looked for.
		netip.MustParseAddr("10.0.0.5"): {"/run/netns/host"},
	}},
		newNamespace("shop", map[string]string{modeKey: "ambient"}),
		kpod("shop", "old-0", "node-a", "10.244.1.20"),
		kpod("shop", "old-1", "node-a", "10.244.1.21"),
		host,
	)
	h.expect([]Pod{wantPod("shop", "old-1", "/run/netns/cni-old1", "10.244.1.21")})
	// old-0's netns appears later (the scan missed it): found on a rescan.
	h.setIndex(netnsIndex{
		netip.MustParseAddr("10.244.1.20"): {"/run/netns/cni-old0"},
		netip.MustParseAddr("10.244.1.21"): {"/run/netns/cni-old1"},
	})
	h.expect([]Pod{
		wantPod("shop", "old-0", "/run/netns/cni-old0", "10.244.1.20"),
		wantPod("shop", "old-1", "/run/netns/cni-old1", "10.244.1.21"),
	})
	if n := h.logs.count("network namespace of pod not found"); n != 1 {
		t.Errorf("missing netns logged %d times, want once", n)
	}
	// Nothing left to find: no more scans.
	h.mu.Lock()
	before := h.scans
	h.mu.Unlock()
	time.Sleep(3 * h.w.cfg.RescanInterval)
	h.mu.Lock()
	after := h.scans
	h.mu.Unlock()
	if after != before {
		t.Errorf("%d scans while every pod's netns was known", after-before)
	}
}

func TestAddFromCNIWaitsForPod(t *testing.T) {
	t.Run("pod reaches the watch later", func(t *testing.T) {
		h := newHarness(t, harnessOpts{tweak: func(c *Config) { c.CNIWait = 10 * time.Second }},
			newNamespace("shop", map[string]string{modeKey: "ambient"}))
		h.expect(nil)
		go func() {
			time.Sleep(200 * time.Millisecond)
			h.kube.CoreV1().Pods("shop").Create(context.Background(), kpod("shop", "web-0", "node-a"), metav1.CreateOptions{})
		}()
		start := time.Now()
		capture, _, err := h.w.AddFromCNI(t.Context(), addReq("shop", "web-0", "/run/netns/cni-1", "c1", "10.244.1.7/24"))
		if err != nil || !capture {
			t.Fatalf("AddFromCNI = %v, %v", capture, err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("took %v: waited for the timeout instead of the watch", took)
		}
	})
	t.Run("read from the API when the watch lags", func(t *testing.T) {
		// Not running: the watch never sees anything.
		h := newHarness(t, harnessOpts{noRun: true, tweak: func(c *Config) { c.CNIWait = 100 * time.Millisecond }},
			newNamespace("shop", map[string]string{modeKey: "ambient"}), kpod("shop", "web-0", "node-a"))
		capture, _, err := h.w.AddFromCNI(t.Context(), addReq("shop", "web-0", "/run/netns/cni-1", "c1", "10.244.1.7/24"))
		if err != nil || !capture {
			t.Fatalf("AddFromCNI = %v, %v", capture, err)
		}
	})
	errCases := []struct {
		name string
		req  cni.AddRequest
		want string
	}{
		{"no such pod", addReq("shop", "ghost", "/run/netns/cni-1", "c1", "10.244.1.7/24"), "not found"},
		{"another node's pod", addReq("shop", "db-0", "/run/netns/cni-1", "c1", "10.244.1.7/24"), `scheduled to node "node-b"`},
		{"pod replaced", func() cni.AddRequest {
			r := addReq("shop", "web-0", "/run/netns/cni-1", "c1", "10.244.1.7/24")
			r.PodUID = "uid-of-an-older-web-0"
			return r
		}(), "the runtime's sandbox is for uid uid-of-an-older-web-0"},
	}
	for _, tc := range errCases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOpts{tweak: func(c *Config) { c.CNIWait = 100 * time.Millisecond }},
				newNamespace("shop", map[string]string{modeKey: "ambient"}),
				kpod("shop", "web-0", "node-a"), kpod("shop", "db-0", "node-b"))
			h.expect(nil)
			_, _, err := h.w.AddFromCNI(t.Context(), tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("AddFromCNI = %v, want an error containing %q", err, tc.want)
			}
			if tc.name == "no such pod" && !apierrors.IsNotFound(err) {
				t.Errorf("error %v does not wrap the API's NotFound", err)
			}
		})
	}
}

func TestSetRedirection(t *testing.T) {
	h := newHarness(t, harnessOpts{},
		newNamespace("shop", map[string]string{modeKey: "ambient"}), kpod("shop", "web-0", "node-a"))
	h.expect(nil)
	ctx := t.Context()
	fk := h.kube.(*fake.Clientset)
	patches := func() int {
		n := 0
		for _, a := range fk.Actions() {
			if a.GetVerb() == "patch" {
				n++
			}
		}
		return n
	}
	annotation := func() (string, bool) {
		p, err := h.kube.CoreV1().Pods("shop").Get(ctx, "web-0", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		v, ok := p.Annotations[RedirectionAnnotation]
		return v, ok
	}
	// waitCached waits until the watch shows the annotation as wanted.
	waitCached := func(enabled bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			p, err := h.w.pods.Pods("shop").Get("web-0")
			if err == nil && (p.Annotations[RedirectionAnnotation] == RedirectionEnabled) == enabled {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("watch never showed redirection=%v", enabled)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	uid := WorkloadUID("Kubernetes", "shop", "web-0")
	if _, _, err := h.w.AddFromCNI(ctx, addReq("shop", "web-0", "/run/netns/cni-1", "c1", "10.244.1.7/24")); err != nil {
		t.Fatal(err)
	}
	h.next()

	if err := h.w.SetRedirection(ctx, uid, true); err != nil {
		t.Fatalf("SetRedirection(true): %v", err)
	}
	if v, ok := annotation(); !ok || v != RedirectionEnabled {
		t.Fatalf("annotation = %q, %v; want %q", v, ok, RedirectionEnabled)
	}
	if err := h.w.WaitCaptured(ctx, uid, "/run/netns/cni-1"); err != nil {
		t.Fatalf("WaitCaptured: %v", err)
	}
	waitCached(true)
	if diff := cmp.Diff([]string{uid}, h.w.Redirected()); diff != "" {
		t.Errorf("Redirected (-want +got):\n%s", diff)
	}
	n := patches()
	if err := h.w.SetRedirection(ctx, uid, true); err != nil {
		t.Fatal(err)
	}
	if patches() != n {
		t.Error("SetRedirection patched a pod that already had the annotation")
	}

	if err := h.w.SetRedirection(ctx, uid, false); err != nil {
		t.Fatalf("SetRedirection(false): %v", err)
	}
	if v, ok := annotation(); ok {
		t.Fatalf("annotation still there (%q) after release", v)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := h.w.WaitCaptured(short, uid, ""); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitCaptured after release = %v, want a timeout", err)
	}
	waitCached(false)
	n = patches()
	if err := h.w.SetRedirection(ctx, uid, false); err != nil || patches() != n {
		t.Errorf("second release: %v, %d patches; want none", err, patches()-n)
	}

	// Capture and release back to back, before the watch has shown the
	// first patch: the release must still reach the pod.
	for i := 0; i < 20; i++ {
		if err := h.w.SetRedirection(ctx, uid, true); err != nil {
			t.Fatal(err)
		}
		if err := h.w.SetRedirection(ctx, uid, false); err != nil {
			t.Fatal(err)
		}
		if v, ok := annotation(); ok {
			t.Fatalf("round %d: annotation %q left after a release right after a capture", i, v)
		}
	}

	if err := h.w.SetRedirection(ctx, WorkloadUID("Kubernetes", "shop", "gone"), false); err != nil {
		t.Errorf("releasing a deleted pod: %v", err)
	}
	if err := h.w.SetRedirection(ctx, WorkloadUID("Kubernetes", "shop", "gone"), true); err == nil {
		t.Error("capturing a missing pod succeeded")
	}
	if err := h.w.SetRedirection(ctx, "shop/web-0", true); err == nil {
		t.Error("a malformed uid was accepted")
	}
}

// TestCNIHandler: the agent's socket handler answers an ADD only once the
// agent has captured the pod (here: an OnChange that reports every pod of
// the set captured, as the agent does after enrolling it).
func TestCNIHandler(t *testing.T) {
	var released sync.Map
	h := newHarness(t, harnessOpts{onChange: func(h *harness, pods []Pod) {
		for _, p := range pods {
			if _, no := released.Load(p.Name); no {
				continue
			}
			if err := h.w.SetRedirection(context.Background(), p.UID, true); err != nil {
				h.t.Errorf("SetRedirection: %v", err)
			}
		}
	}},
		newNamespace("shop", map[string]string{modeKey: "ambient"}),
		newNamespace("plain", nil),
		kpod("shop", "web-0", "node-a"), kpod("shop", "stuck-0", "node-a"), kpod("plain", "api-0", "node-a"),
	)
	h.expect(nil)
	handler := h.w.CNIHandler()
	ctx := t.Context()

	captured, err := handler.Add(ctx, addReq("shop", "web-0", "/run/netns/cni-1", "c1", "10.244.1.7/24"))
	if err != nil || !captured {
		t.Fatalf("Add = %v, %v; want captured", captured, err)
	}
	if v, _ := h.kube.CoreV1().Pods("shop").Get(ctx, "web-0", metav1.GetOptions{}); v.Annotations[RedirectionAnnotation] != RedirectionEnabled {
		t.Error("Add returned before the pod was annotated")
	}

	captured, err = handler.Add(ctx, addReq("plain", "api-0", "/run/netns/cni-2", "c2", "10.244.1.8/24"))
	if err != nil || captured {
		t.Fatalf("Add in an unlabelled namespace = %v, %v; want not captured", captured, err)
	}

	// The agent never captures this one: Add gives up with the context.
	released.Store("stuck-0", true)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := handler.Add(short, addReq("shop", "stuck-0", "/run/netns/cni-3", "c3", "10.244.1.9/24")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Add of a pod never captured = %v, want a timeout", err)
	}

	handler.Del(ctx, cni.DelRequest{PodName: "web-0", PodNamespace: "shop", ContainerID: "c1"})
	for {
		set := h.next()
		if len(set) == 1 && set[0].Name == "stuck-0" {
			break
		}
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "node") {
		t.Errorf("default config without node: %v, want the node named", err)
	}
	cfg.Node = "n"
	if err := cfg.Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
	bad := Config{NetNSDir: "rel"}
	err := bad.Validate()
	for _, want := range []string{"node", "cluster id", "selector", "netns dir", "debounce", "cni wait", "rescan"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want %q named", err, want)
		}
	}
}
