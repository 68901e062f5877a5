package enroll

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	kubetest "github.com/warren-mesh/warren/test/kube"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

// TestKubeAPIServer runs the watcher against a real kube-apiserver: the
// field selector keeps other nodes' pods out of the cache, a CNI report
// captures a pod of a labelled namespace, and the redirection annotation
// is set and removed with merge patches the real server accepts.
func TestKubeAPIServer(t *testing.T) {
	c := kubetest.Require(t)
	ctx := t.Context()
	client := c.Client()
	ns := c.Namespace(t)
	nsObj, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setMap(&nsObj.Labels, modeKey, "ambient")
	if _, err := client.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	web := c.Pod(t, ns, "web", "node-a")
	c.Pod(t, ns, "db", "node-b")

	cfg := DefaultConfig()
	cfg.Node = "node-a"
	cfg.Debounce = 10 * time.Millisecond
	changes := make(chan []Pod, 10)
	w, err := NewWatcher(cfg, client, func(p []Pod) { changes <- p }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	w.scan = func(string) (netnsIndex, error) { return netnsIndex{}, nil }
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	next := func() []Pod {
		t.Helper()
		select {
		case p := <-changes:
			return p
		case <-time.After(10 * time.Second):
			t.Fatal("no OnChange within 10s")
			return nil
		}
	}
	if first := next(); len(first) != 0 {
		t.Fatalf("first set %+v, want empty (no pod has a netns yet)", first)
	}
	cached, _ := w.pods.List(labels.Everything())
	for _, p := range cached {
		if p.Spec.NodeName != "node-a" {
			t.Errorf("pod %s/%s of %s is in the cache of node-a", p.Namespace, p.Name, p.Spec.NodeName)
		}
	}

	req := addReq(ns, web.Name, "/run/netns/cni-web", "c1", "10.244.1.7/24")
	req.PodUID = string(web.UID)
	capture, uid, err := w.AddFromCNI(ctx, req)
	if err != nil || !capture {
		t.Fatalf("AddFromCNI = %v, %v; want captured", capture, err)
	}
	set := next()
	if len(set) != 1 || set[0].UID != uid || set[0].NetNS != "/run/netns/cni-web" || set[0].K8sUID != web.UID || set[0].ServiceAccount != "web" {
		t.Fatalf("set %+v, want web in /run/netns/cni-web", set)
	}

	annotation := func() (string, bool) {
		p, err := client.CoreV1().Pods(ns).Get(ctx, web.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		v, ok := p.Annotations[RedirectionAnnotation]
		return v, ok
	}
	if err := w.SetRedirection(ctx, uid, true); err != nil {
		t.Fatalf("SetRedirection(true): %v", err)
	}
	if v, ok := annotation(); !ok || v != RedirectionEnabled {
		t.Fatalf("annotation %q, %v after capture", v, ok)
	}
	if err := w.SetRedirection(ctx, uid, false); err != nil {
		t.Fatalf("SetRedirection(false): %v", err)
	}
	if v, ok := annotation(); ok {
		t.Fatalf("annotation %q still there after release", v)
	}

	// Opting the pod out takes it out of the set.
	p, err := client.CoreV1().Pods(ns).Get(ctx, web.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setMap(&p.Labels, modeKey, ModeNone)
	if _, err := client.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if set := next(); len(set) != 0 {
		t.Fatalf("set %+v after the pod opted out, want empty", set)
	}
}
