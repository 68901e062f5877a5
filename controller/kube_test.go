package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	kubetest "github.com/warren-mesh/warren/test/kube"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

// fakeSink records what the controller hands the xDS cache.
type fakeSink struct {
	mu        sync.Mutex
	resources map[string]map[string]proto.Message
	calls     int
}

var _ Sink = (*fakeSink)(nil)

func (s *fakeSink) Replace(typeURL string, resources map[string]proto.Message) (updated, removed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.resources == nil {
		s.resources = map[string]map[string]proto.Message{}
	}
	old := s.resources[typeURL]
	for k, v := range resources {
		if o, ok := old[k]; !ok || !proto.Equal(o, v) {
			updated++
		}
	}
	for k := range old {
		if _, ok := resources[k]; !ok {
			removed++
		}
	}
	s.resources[typeURL] = maps.Clone(resources)
	s.calls++
	return updated, removed
}

func (s *fakeSink) get(typeURL, name string) proto.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resources[typeURL][name]
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

type clients struct {
	c     *kubetest.Cluster
	istio istioclient.Interface
	dyn   dynamic.Interface
}

func newClients(t *testing.T) clients {
	t.Helper()
	c := kubetest.Require(t)
	ic, err := istioclient.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	dc, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	installIstioCRDs(t, dc)
	return clients{c: c, istio: ic, dyn: dc}
}

// startController runs a controller until the test ends and waits for its
// first build.
func startController(t *testing.T, cl clients, sink Sink, leader bool, tweak func(*Controller)) *Controller {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Debounce = 20 * time.Millisecond
	ctrl, err := New(cfg, cl.c.Client(), cl.istio, cl.dyn, sink, nil, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(ctrl)
	}
	ctrl.SetLeader(leader)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	eventually(t, 30*time.Second, "controller sync", ctrl.Synced)
	return ctrl
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

var istioCRDs struct {
	once sync.Once
	err  error
}

// installIstioCRDs installs Istio's AuthorizationPolicy and
// PeerAuthentication CRDs, once per test binary, from the istio.io/istio
// module in the module cache (the real schemas, with their validation).
func installIstioCRDs(t *testing.T, dc dynamic.Interface) {
	t.Helper()
	istioCRDs.once.Do(func() {
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/istio").Output()
		if err != nil {
			istioCRDs.err = fmt.Errorf("locating the istio.io/istio module: %w", err)
			return
		}
		path := filepath.Join(strings.TrimSpace(string(out)), "manifests", "charts", "base", "files", "crd-all.gen.yaml")
		data, err := os.ReadFile(path)
		if err != nil {
			istioCRDs.err = fmt.Errorf("reading Istio's CRDs: %w", err)
			return
		}
		want := map[string]bool{"authorizationpolicies.security.istio.io": true, "peerauthentications.security.istio.io": true}
		for doc := range strings.SplitSeq(string(data), "\n---\n") {
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil || !want[u.GetName()] {
				continue
			}
			if err := createCRD(dc, u); err != nil {
				istioCRDs.err = err
				return
			}
			delete(want, u.GetName())
		}
		if len(want) > 0 {
			istioCRDs.err = fmt.Errorf("%s has no CRD for %v", path, want)
		}
	})
	if istioCRDs.err != nil {
		t.Fatal(istioCRDs.err)
	}
}

// createCRD creates a CRD and waits until it is established.
func createCRD(dc dynamic.Interface, u *unstructured.Unstructured) error {
	ctx := context.Background()
	_, err := dc.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating CRD %s: %w", u.GetName(), err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		got, err := dc.Resource(crdGVR).Get(ctx, u.GetName(), metav1.GetOptions{})
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("CRD %s not established after 30s", u.GetName())
}

func applyYAML(t *testing.T, dc dynamic.Interface, gvr schema.GroupVersionResource, y string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(y), &u.Object); err != nil {
		t.Fatal(err)
	}
	got, err := dc.Resource(gvr).Namespace(u.GetNamespace()).Create(t.Context(), u, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating %s %s/%s: %v", gvr.Resource, u.GetNamespace(), u.GetName(), err)
	}
	return got
}

var apGVR = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}

// setPodRunning gives a pod what a kubelet would: IPs, Running, Ready.
func setPodRunning(t *testing.T, cl clients, p *corev1.Pod, ready bool, podIPs ...string) *corev1.Pod {
	t.Helper()
	cur, err := cl.c.Client().CoreV1().Pods(p.Namespace).Get(t.Context(), p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Status.Phase = corev1.PodRunning
	cur.Status.PodIP = podIPs[0]
	cur.Status.PodIPs = nil
	for _, ip := range podIPs {
		cur.Status.PodIPs = append(cur.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	cur.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}
	cur, err = cl.c.Client().CoreV1().Pods(p.Namespace).UpdateStatus(t.Context(), cur, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("updating pod status: %v", err)
	}
	return cur
}

// patchPodMeta merges labels and annotations into a pod's metadata.
func patchPodMeta(t *testing.T, cl clients, p *corev1.Pod, labels, annotations map[string]string) {
	t.Helper()
	// A nil map must be left out: null in a merge patch deletes the field.
	m := map[string]any{}
	if labels != nil {
		m["labels"] = labels
	}
	if annotations != nil {
		m["annotations"] = annotations
	}
	patch, _ := json.Marshal(map[string]any{"metadata": m})
	_, err := cl.c.Client().CoreV1().Pods(p.Namespace).Patch(t.Context(), p.Name, "application/merge-patch+json", patch, metav1.PatchOptions{})
	if err != nil {
		t.Fatalf("patching pod: %v", err)
	}
}

// warningEvents lists the Warning Events about an object.
func warningEvents(t *testing.T, cl clients, ns, kind, name string) []corev1.Event {
	t.Helper()
	list, err := cl.c.Client().CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{
		FieldSelector: "involvedObject.kind=" + kind + ",involvedObject.name=" + name + ",type=Warning",
	})
	if err != nil {
		t.Fatalf("listing events: %v", err)
	}
	return list.Items
}
