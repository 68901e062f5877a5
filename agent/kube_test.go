package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

const testNS = "warren-system"

func agentPod(owner *metav1.OwnerReference) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "warren-agent-x"}}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	return p
}

func daemonSet(uid types.UID, deleting bool) *appsv1.DaemonSet {
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "warren-agent", UID: uid}}
	if deleting {
		now := metav1.Now()
		ds.DeletionTimestamp = &now
		ds.Finalizers = []string{"orphan"}
	}
	return ds
}

// TestUninstalling: only a DaemonSet that is gone, being deleted or
// replaced means uninstall; anything the agent cannot tell keeps pods
// captured.
func TestUninstalling(t *testing.T) {
	owner := &metav1.OwnerReference{Kind: "DaemonSet", Name: "warren-agent", UID: "ds-1"}
	for _, tc := range []struct {
		name    string
		objs    []runtime.Object
		podName string
		seen    bool // the watch saw the deletion earlier
		failGet bool // the API refuses (RBAC already deleted)
		want    bool
	}{
		{name: "daemonset present: restart", objs: []runtime.Object{agentPod(owner), daemonSet("ds-1", false)}, podName: "warren-agent-x"},
		{name: "daemonset gone", objs: []runtime.Object{agentPod(owner)}, podName: "warren-agent-x", want: true},
		{name: "daemonset being deleted", objs: []runtime.Object{agentPod(owner), daemonSet("ds-1", true)}, podName: "warren-agent-x", want: true},
		{name: "daemonset replaced by another", objs: []runtime.Object{agentPod(owner), daemonSet("ds-2", false)}, podName: "warren-agent-x", want: true},
		{name: "no owner", objs: []runtime.Object{agentPod(nil)}, podName: "warren-agent-x"},
		{name: "own pod unknown", podName: "warren-agent-x"},
		{name: "no pod name", objs: []runtime.Object{agentPod(owner)}},
		{name: "API refuses: keep capture", objs: []runtime.Object{agentPod(owner)}, podName: "warren-agent-x", failGet: true},
		{name: "deletion seen by the watch, API refuses now", podName: "warren-agent-x", seen: true, failGet: true, want: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset(tc.objs...)
			if tc.failGet {
				cs.PrependReactor("get", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
					return true, nil, errors.New("forbidden")
				})
			}
			k := &kubeAgent{cfg: KubeConfig{PodNamespace: testNS, PodName: tc.podName}, client: cs, log: slog.New(slog.DiscardHandler)}
			k.dsGone.Store(tc.seen)
			if got := k.uninstalling(t.Context()); got != tc.want {
				t.Errorf("uninstalling = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestWatchDaemonSet: the deletion is recorded as it happens, so the agent
// knows at shutdown even after its RBAC is gone.
func TestWatchDaemonSet(t *testing.T) {
	owner := &metav1.OwnerReference{Kind: "DaemonSet", Name: "warren-agent", UID: "ds-1"}
	cs := fake.NewClientset(agentPod(owner), daemonSet("ds-1", false))
	k := &kubeAgent{cfg: KubeConfig{PodNamespace: testNS, PodName: "warren-agent-x"}, client: cs, log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); k.watchDaemonSet(ctx) }()
	defer func() { cancel(); <-done }()

	time.Sleep(200 * time.Millisecond)
	if k.dsGone.Load() {
		t.Fatal("deletion recorded while the DaemonSet exists")
	}
	if err := cs.AppsV1().DaemonSets(testNS).Delete(ctx, "warren-agent", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !k.dsGone.Load() {
		if time.Now().After(deadline) {
			t.Fatal("DaemonSet deletion not recorded")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRootsFromConfigMap: the roots file follows the ConfigMap; an empty
// ConfigMap (the controller has not published yet) is waited for.
func TestRootsFromConfigMap(t *testing.T) {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "warren-ca-root"}}
	cs := fake.NewClientset(cm)
	dir := t.TempDir()
	k := &kubeAgent{
		cfg:      KubeConfig{PodNamespace: testNS, CARootConfigMap: "warren-ca-root"},
		client:   cs,
		log:      slog.New(slog.DiscardHandler),
		rootFile: filepath.Join(dir, "root-cert.pem"),
	}
	ctx := t.Context()
	if ok, err := k.syncRoots(ctx); ok || err != nil {
		t.Fatalf("empty ConfigMap: syncRoots = %v, %v; want not ready, no error", ok, err)
	}
	if _, err := os.Stat(k.rootFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("root file written for an empty ConfigMap: %v", err)
	}

	// Published while waitRoots waits.
	go func() {
		time.Sleep(100 * time.Millisecond)
		cm := cm.DeepCopy()
		cm.Data = map[string]string{"root-cert.pem": "ROOT A\n"}
		cs.CoreV1().ConfigMaps(testNS).Update(context.Background(), cm, metav1.UpdateOptions{})
	}()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := k.waitRoots(wctx); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(k.rootFile); string(b) != "ROOT A\n" {
		t.Errorf("root file = %q, want ROOT A", b)
	}

	// Rotation: the watch rewrites the file.
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); k.watchRoots(rctx) }()
	defer func() { rcancel(); <-done }()
	cm2, _ := cs.CoreV1().ConfigMaps(testNS).Get(ctx, "warren-ca-root", metav1.GetOptions{})
	cm2.Data["root-cert.pem"] = "ROOT A\nROOT B\n"
	if _, err := cs.CoreV1().ConfigMaps(testNS).Update(ctx, cm2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if b, _ := os.ReadFile(k.rootFile); string(b) == "ROOT A\nROOT B\n" {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(k.rootFile)
			t.Fatalf("root file not rotated: %q", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestXDSPort(t *testing.T) {
	for _, tc := range []struct {
		ports []corev1.ServicePort
		want  int32
	}{
		{[]corev1.ServicePort{{Name: "http-monitoring", Port: 15014}, {Name: "grpc-xds", Port: 15012}}, 15012},
		{[]corev1.ServicePort{{Name: "grpc-xds", Port: 16012}}, 16012},
		{[]corev1.ServicePort{{Name: "other", Port: 80}}, 15012},
	} {
		if got := xdsPort(&corev1.Service{Spec: corev1.ServiceSpec{Ports: tc.ports}}); got != tc.want {
			t.Errorf("xdsPort(%v) = %d, want %d", tc.ports, got, tc.want)
		}
	}
}
