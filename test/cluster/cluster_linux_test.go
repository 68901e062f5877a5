package cluster

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// requireCluster skips like Require, for the tests that start their own
// cluster to check what Stop leaves behind.
func requireCluster(t *testing.T) {
	t.Helper()
	if os.Getenv(skipEnv) == "1" {
		t.Skipf("%s=1: skipping a test that needs a real Kubernetes cluster", skipEnv)
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping a test that needs a real Kubernetes cluster: not root")
	}
	if testing.Short() {
		t.Skip("-short: skipping a test that starts a real Kubernetes cluster")
	}
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// TestCluster starts a two-node cluster, runs the test app on both nodes,
// checks pod-to-pod traffic across nodes directly and through a ClusterIP
// keeps the source pod IP, and that Stop leaves nothing behind.
func TestCluster(t *testing.T) {
	requireCluster(t)
	before := snapshotHost(t)
	ctx := t.Context()

	begin := time.Now()
	c, err := Start(ctx, Options{Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	startTime := time.Since(begin)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			c.Stop()
		}
	})
	t.Logf("cluster started in %v (target: under 60 s with the binaries cached)", startTime.Round(time.Millisecond))

	t.Run("nodes", func(t *testing.T) { checkNodes(t, c) })
	t.Run("node namespaces", func(t *testing.T) { checkNodeNamespaces(t, c) })

	appTar, ref, err := TestAppImage(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ImportImage(ctx, appTar); err != nil {
		t.Fatal(err)
	}
	t.Run("traffic", func(t *testing.T) { checkTraffic(t, c, ref) })

	rec := c.rec
	stopBegin := time.Now()
	stopped = true
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("cluster stopped in %v", time.Since(stopBegin).Round(time.Millisecond))
	checkNothingLeft(t, rec, before)
}

func checkNodes(t *testing.T, c *Cluster) {
	nodes, err := c.Client().CoreV1().Nodes().List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	type nodeFacts struct {
		Name, InternalIP, PodCIDR string
		Ready                     bool
	}
	var got, want []nodeFacts
	for _, n := range nodes.Items {
		f := nodeFacts{Name: n.Name, PodCIDR: n.Spec.PodCIDR, Ready: nodeReady(&n)}
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				f.InternalIP = a.Address
			}
		}
		got = append(got, f)
	}
	for i := range c.Nodes() {
		want = append(want, nodeFacts{Name: c.NodeName(i), InternalIP: c.NodeIP(i), PodCIDR: c.PodCIDR(i), Ready: true})
	}
	slices.SortFunc(got, func(a, b nodeFacts) int { return strings.Compare(a.Name, b.Name) })
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("nodes (-want +got):\n%s", diff)
	}
}

// checkNodeNamespaces checks what a node's processes see: their hostname,
// their own CNI config at the standard path (the same file NodePath
// names), and the kernel tunables the kubelet wants, while the host keeps
// its own.
func checkNodeNamespaces(t *testing.T, c *Cluster) {
	ctx := t.Context()
	for i := range c.Nodes() {
		host, err := c.RunInNode(ctx, i, "hostname")
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(host)); got != c.NodeName(i) {
			t.Errorf("node %d hostname = %q, want %q", i, got, c.NodeName(i))
		}
		inNode, err := c.RunInNode(ctx, i, "cat", "/etc/cni/net.d/"+cniConfName)
		if err != nil {
			t.Fatal(err)
		}
		onHost, err := os.ReadFile(c.NodePath(i, "/etc/cni/net.d/"+cniConfName))
		if err != nil {
			t.Fatal(err)
		}
		if string(inNode) != string(onHost) || !strings.Contains(string(onHost), c.PodCIDR(i)) {
			t.Errorf("node %d CNI config: in node %q, NodePath %q, want both with %s", i, inNode, onHost, c.PodCIDR(i))
		}
		// A file the node writes into /etc lands in the run dir.
		if _, err := c.RunInNode(ctx, i, "touch", "/etc/warren-cluster-test"); err != nil {
			t.Fatal(err)
		}
		if p := c.NodePath(i, "/etc/warren-cluster-test"); !strings.HasPrefix(p, c.Dir()) {
			t.Errorf("node %d: NodePath(/etc/warren-cluster-test) = %s, want a path in the run dir", i, p)
		}
		if _, err := os.Stat("/etc/warren-cluster-test"); err == nil {
			t.Errorf("node %d wrote /etc/warren-cluster-test on the host", i)
		}
		panicOnOops, err := c.RunInNode(ctx, i, "cat", "/proc/sys/kernel/panic_on_oops")
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(panicOnOops)); got != "1" {
			t.Errorf("node %d sees kernel.panic_on_oops = %s, want the kubelet's 1", i, got)
		}
	}
}

func checkTraffic(t *testing.T, c *Cluster, ref string) {
	ctx := t.Context()
	cs := c.Client()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cluster-test"}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	applied := time.Now()
	if _, err := cs.AppsV1().Deployments(ns.Name).Create(ctx, AppDeployment(ns.Name, "app", ref, 2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := waitPodsReady(t, c, ns.Name, "app=app", 2)
	t.Logf("2 test app pods Ready %v after the Deployment was created", time.Since(applied).Round(time.Millisecond))
	if pods[0].Spec.NodeName == pods[1].Spec.NodeName {
		t.Fatalf("both replicas on %s, want one per node", pods[0].Spec.NodeName)
	}
	// a is on node 1, b on node 2.
	a, b := pods[0], pods[1]
	if a.Spec.NodeName != c.NodeName(0) {
		a, b = b, a
	}

	// A Service whose only endpoint is b, so every connection crosses nodes.
	patch := []byte(`{"metadata":{"labels":{"target":"b"}}}`)
	if _, err := cs.CoreV1().Pods(ns.Name).Patch(ctx, b.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := cs.CoreV1().Services(ns.Name).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "b"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "app", "target": "b"},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(AppHTTPPort)},
				{Name: "echo", Port: 9, TargetPort: intstr.FromInt32(AppEchoPort)},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clusterIP := svc.Spec.ClusterIP

	for _, tc := range []struct {
		name     string
		from, to *corev1.Pod
		target   string
	}{
		{"pod a to pod b across nodes", &a, &b, net.JoinHostPort(b.Status.PodIP, strconv.Itoa(AppHTTPPort))},
		{"pod b to pod a across nodes", &b, &a, net.JoinHostPort(a.Status.PodIP, strconv.Itoa(AppHTTPPort))},
		{"pod a to pod b through a ClusterIP", &a, &b, net.JoinHostPort(clusterIP, "80")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// kube-proxy programs a new Service within a second or two.
			res := eventually(t, 30*time.Second, func() (FetchResult, error) {
				res, err := c.Fetch(ctx, tc.from.Status.PodIP, tc.target)
				if err == nil && res.Error != "" {
					err = errors.New(res.Error)
				}
				return res, err
			})
			if res.App == nil {
				t.Fatalf("answer from %s is not the test app's: %+v", tc.target, res)
			}
			peerIP, _, _ := net.SplitHostPort(res.App.Peer)
			localIP, _, _ := net.SplitHostPort(res.Local)
			if res.App.Pod != tc.to.Name || peerIP != tc.from.Status.PodIP || localIP != tc.from.Status.PodIP {
				t.Errorf("%s answered %+v to a connection from %s; want %s seeing source %s", tc.target, *res.App, res.Local, tc.to.Name, tc.from.Status.PodIP)
			}
		})
	}
	t.Run("TCP echo through a ClusterIP", func(t *testing.T) {
		res := eventually(t, 30*time.Second, func() (FetchResult, error) {
			res, err := c.Echo(ctx, a.Status.PodIP, net.JoinHostPort(clusterIP, "9"), "hello")
			if err == nil && res.Error != "" {
				err = errors.New(res.Error)
			}
			return res, err
		})
		if res.Echo != "hello" {
			t.Errorf("echo = %q, want hello", res.Echo)
		}
	})
	t.Run("test process to pod", func(t *testing.T) {
		for i := range c.Nodes() {
			resp, err := c.HTTPClient(i).Get("http://" + net.JoinHostPort(b.Status.PodIP, strconv.Itoa(AppHTTPPort)) + "/healthz")
			if err != nil {
				t.Fatalf("from node %d: %v", i, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("from node %d: %s %s", i, resp.Status, body)
			}
		}
	})
}

// waitPodsReady waits until n pods match selector and all are Running and
// Ready, and returns them.
func waitPodsReady(t *testing.T, c *Cluster, ns, selector string, n int) []corev1.Pod {
	t.Helper()
	return eventually(t, 90*time.Second, func() ([]corev1.Pod, error) {
		list, err := c.Client().CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return nil, err
		}
		var ready []corev1.Pod
		var states []string
		for _, p := range list.Items {
			states = append(states, p.Name+"="+string(p.Status.Phase))
			for _, cond := range p.Status.Conditions {
				if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue && p.Status.Phase == corev1.PodRunning {
					ready = append(ready, p)
				}
			}
		}
		if len(ready) != n {
			return nil, fmt.Errorf("%d of %d pods ready: %v", len(ready), n, states)
		}
		return ready, nil
	})
}

// eventually retries f every 200 ms until it succeeds or timeout passes.
func eventually[T any](t *testing.T, timeout time.Duration, f func() (T, error)) T {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v, err := f()
		if err == nil {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestStartFailureCleansUp fails a start once every kind of thing exists
// (namespaces, mounts, cgroups, daemons, a running kubelet), checks that it
// does, and then that the failed Start left nothing. One node: the second
// adds nothing new here, and it exercises the one-node wiring.
func TestStartFailureCleansUp(t *testing.T) {
	requireCluster(t)
	before := snapshotHost(t)
	dir := t.TempDir()
	prefix := "f" + strconv.FormatInt(int64(os.Getpid()), 36)
	errInjected := errors.New("injected failure")
	var atFailure record
	hook := func(step string, r record) error {
		if step != "sandbox image" {
			return nil
		}
		atFailure = r
		// Everything Stop must remove is there.
		if len(r.Netns) != 1 || len(r.Cgroups) != 1 || len(r.MountNS) != 1 {
			t.Errorf("at failure: record %+v, want one network namespace, cgroup and mount namespace", r)
		}
		// The holder, etcd, kube-apiserver, the controller manager, the
		// scheduler, containerd, the kubelet and kube-proxy.
		if len(mountNSPIDs(r.MountNS, r.Dir)) < 8 {
			t.Errorf("at failure: %d processes in the node mount namespaces, want the daemons", len(mountNSPIDs(r.MountNS, r.Dir)))
		}
		// The kubelets create their cgroups within a second of starting.
		for _, cg := range r.Cgroups {
			kubepods := filepath.Join(cgroupHierarchies()[0], cg, "kubepods")
			eventually(t, 30*time.Second, func() (os.FileInfo, error) { return os.Stat(kubepods) })
		}
		return errInjected
	}
	c, err := Start(t.Context(), Options{Nodes: 1, Prefix: prefix, Dir: dir, Log: testLog(t), afterStep: hook})
	if !errors.Is(err, errInjected) {
		if c != nil {
			c.Stop()
		}
		t.Fatalf("Start: %v, want the injected failure", err)
	}
	checkNothingLeft(t, atFailure, before)
	if left, _ := filepath.Glob(filepath.Join(dir, runDirPattern)); len(left) > 0 {
		t.Errorf("run dirs left: %v", left)
	}
}

// hostState is what a cluster must leave as it found it.
type hostState struct {
	Sysctls map[string]string
	// Paths says which of the paths a node uses exist on the host.
	Paths map[string]bool
}

// hostPathsToCheck are paths a node's processes use or would create by
// default.
var hostPathsToCheck = []string{
	"/etc/cni", "/opt/cni", "/opt/containerd", "/var/lib/kubelet", "/var/lib/containerd", "/var/lib/cni",
	"/var/log/pods", "/var/log/containers", "/run/containerd", "/run/warren", "/run/nri",
	"/usr/libexec/kubernetes", "/etc/kubernetes", "/var/run/kubernetes",
}

func snapshotHost(t *testing.T) hostState {
	t.Helper()
	s := hostState{Sysctls: map[string]string{}, Paths: map[string]bool{}}
	for _, k := range kernelTunables {
		b, err := os.ReadFile("/proc/sys/" + k.name)
		if err != nil {
			t.Fatal(err)
		}
		s.Sysctls[k.name] = strings.TrimSpace(string(b))
	}
	for _, p := range hostPathsToCheck {
		_, err := os.Lstat(p)
		s.Paths[p] = err == nil
	}
	return s
}

// checkNothingLeft checks that nothing named by r is left: no network
// namespace, cgroup, mount or process of the prefix or run dir (r.Dir may
// be a glob), no process in the nodes' mount namespaces, no run dir, and the
// host's sysctls and paths as before.
func checkNothingLeft(t *testing.T, r record, before hostState) {
	t.Helper()
	if diff := cmp.Diff(before, snapshotHost(t)); diff != "" {
		t.Errorf("host changed (-before +after):\n%s", diff)
	}
	if left, _ := filepath.Glob(filepath.Join(netnsDir, r.Prefix+"-*")); len(left) > 0 {
		t.Errorf("network namespaces left: %v", left)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/*/" + r.Prefix + "-*"); len(left) > 0 {
		t.Errorf("cgroups left: %v", left)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/" + r.Prefix + "-*"); len(left) > 0 {
		t.Errorf("cgroups left: %v", left)
	}
	if matches, _ := filepath.Glob(r.Dir); len(matches) > 0 {
		t.Errorf("run dir left: %v", matches)
	}
	dirStem := strings.TrimSuffix(r.Dir, "*")
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		if strings.Contains(line, dirStem) || strings.Contains(line, "/"+r.Prefix+"-") {
			t.Errorf("mount left: %s", line)
		}
	}
	if pids := mountNSPIDs(r.MountNS, r.Dir); len(pids) > 0 {
		t.Errorf("processes left in the nodes' mount namespaces: %v", pids)
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.Contains(string(cmdline), dirStem) {
			t.Errorf("process left: %s %s", e.Name(), strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
}
