package kubee2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warren-mesh/warren/deploy/image"
	"github.com/warren-mesh/warren/test/cluster"
)

const (
	// warrenRef is the image the test builds and the chart installs.
	warrenRef = "warren.test/warren:e2e"
	// releaseNS is where the chart is installed.
	releaseNS = "warren-system"
)

// moduleRoot finds the repository root from the test's directory.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

// buildWarrenImage builds Warren's static binaries and writes the image the
// chart runs (as `make images` does).
func buildWarrenImage(t *testing.T, ctx context.Context, root, dir string) string {
	t.Helper()
	bins := []string{"warren-agent", "warren-controller", "warren-cni", "warrenctl"}
	args := []string{"build", "-trimpath", "-ldflags=-s -w", "-o", dir + "/"}
	for _, b := range bins {
		args = append(args, "./cmd/"+b)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building Warren's binaries: %v\n%s", err, out)
	}
	spec := image.Spec{Ref: warrenRef, Entrypoint: []string{"/usr/local/bin/warren-agent"}, User: "0"}
	for _, b := range bins {
		spec.Files = append(spec.Files, image.File{Path: "/usr/local/bin/" + b, Source: filepath.Join(dir, b)})
	}
	out := filepath.Join(dir, "warren.tar")
	if err := image.Write(out, spec); err != nil {
		t.Fatal(err)
	}
	return out
}

// helmBinary is bin/helm (make helm) or $HELM.
func helmBinary(t *testing.T, root string) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	h := filepath.Join(root, "bin", "helm")
	if _, err := os.Stat(h); err != nil {
		t.Fatalf("helm not found at %s: run `make helm` (or set $HELM)", h)
	}
	return h
}

// eventually polls check every 200ms until it returns nil or timeout
// passes; it returns how long that took, or fails the test with the last
// error.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for {
		if err = check(); err == nil {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// appPods lists the pods of app in ns, by node index.
func appPods(ctx context.Context, c *cluster.Cluster, ns, app string) ([]corev1.Pod, error) {
	list, err := c.Client().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		return nil, err
	}
	pods := list.Items
	sort.Slice(pods, func(i, j int) bool { return pods[i].Spec.NodeName < pods[j].Spec.NodeName })
	return pods, nil
}

// readyPods waits until app in ns has n Ready pods and returns them.
func readyPods(t *testing.T, ctx context.Context, c *cluster.Cluster, ns, app string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	eventually(t, 90*time.Second, fmt.Sprintf("%d ready pods of %s/%s", n, ns, app), func() error {
		all, err := appPods(ctx, c, ns, app)
		if err != nil {
			return err
		}
		pods = pods[:0]
		for _, p := range all {
			if p.DeletionTimestamp == nil && isReady(&p) {
				pods = append(pods, p)
			}
		}
		if len(pods) != n {
			return fmt.Errorf("%d ready of %d", len(pods), len(all))
		}
		return nil
	})
	return pods
}

func isReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podOn returns the pod of pods on node, failing when there is none.
func podOn(t *testing.T, pods []corev1.Pod, node string) corev1.Pod {
	t.Helper()
	for _, p := range pods {
		if p.Spec.NodeName == node {
			return p
		}
	}
	t.Fatalf("no pod on %s among %d", node, len(pods))
	return corev1.Pod{}
}

// containerIDs identifies a pod's running containers and restarts: equal
// before and after means the pod was not restarted.
func containerIDs(p *corev1.Pod) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", p.UID)
	for _, s := range p.Status.ContainerStatuses {
		fmt.Fprintf(&b, " %s=%s/%d", s.Name, s.ContainerID, s.RestartCount)
	}
	return b.String()
}

// agentMetrics scrapes the agent on node i (host network, :15020).
func agentMetrics(ctx context.Context, c *cluster.Cluster, i int) (map[string]*dto.MetricFamily, error) {
	return scrape(ctx, c, i, "http://127.0.0.1:15020/metrics")
}

func scrape(ctx context.Context, c *cluster.Cluster, i int, url string) (map[string]*dto.MetricFamily, error) {
	body, err := nodeGet(ctx, c, i, url)
	if err != nil {
		return nil, err
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(bytes.NewReader(body))
}

// nodeGet GETs url from inside node i's network namespace, where the
// agent's ports (host network) and pod IPs are reachable.
func nodeGet(ctx context.Context, c *cluster.Cluster, i int, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTPClient(i).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return body, nil
}

// sumMetric adds up the samples of name whose labels include want.
func sumMetric(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f, ok := fams[name]
	if !ok {
		return 0
	}
	var sum float64
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			if labels[k] != v {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		}
	}
	return sum
}

// netnsState is, per pod network namespace on node i, its nftables rules,
// policy-routing rules and routes: what capture changes and release must
// restore.
func netnsState(ctx context.Context, c *cluster.Cluster, i int) (map[string]string, error) {
	out, err := c.RunInNode(ctx, i, "ip", "-all", "netns", "exec", "sh", "-c", "nft list ruleset; ip rule; ip -6 rule; ip route show table all")
	if err != nil {
		return nil, err
	}
	state := map[string]string{}
	var cur string
	for _, line := range strings.Split(string(out), "\n") {
		if name, ok := strings.CutPrefix(line, "netns: "); ok {
			cur = name
			state[cur] = ""
			continue
		}
		if cur != "" {
			state[cur] += line + "\n"
		}
	}
	return state, nil
}

// cniState is node i's CNI configuration files and plugin names.
func cniState(c *cluster.Cluster, i int) (map[string]string, error) {
	state := map[string]string{}
	conf := c.NodePath(i, "/etc/cni/net.d")
	entries, err := os.ReadDir(conf)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(conf, e.Name()))
		if err != nil {
			return nil, err
		}
		state["conf/"+e.Name()] = string(b)
	}
	bins, err := os.ReadDir(c.NodePath(i, "/opt/cni/bin"))
	if err != nil {
		return nil, err
	}
	for _, e := range bins {
		state["bin/"+e.Name()] = ""
	}
	return state, nil
}

// diffState lists the keys whose values differ between a and b (only keys
// present in both when common is set).
func diffState(a, b map[string]string, common bool) []string {
	var out []string
	for k, va := range a {
		vb, ok := b[k]
		if !ok {
			if !common {
				out = append(out, "-"+k)
			}
			continue
		}
		if va != vb {
			out = append(out, "~"+k+"\n--- before\n"+va+"--- after\n"+vb)
		}
	}
	if !common {
		for k := range b {
			if _, ok := a[k]; !ok {
				out = append(out, "+"+k)
			}
		}
	}
	sort.Strings(out)
	return out
}

// logsOf returns the last lines of every container of the pods matching
// selector in ns, for failure reports.
func logsOf(ctx context.Context, c *cluster.Cluster, ns, selector string) string {
	pods, err := c.Client().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	tail := int64(60)
	for _, p := range pods.Items {
		data, err := c.Client().CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: &tail}).DoRaw(ctx)
		if err != nil {
			data = []byte(err.Error())
		}
		fmt.Fprintf(&b, "=== %s/%s on %s (%s)\n%s\n", ns, p.Name, p.Spec.NodeName, p.Status.Phase, data)
	}
	return b.String()
}

// errOf turns a test app's result into an error.
func errOf(r cluster.FetchResult, err error) error {
	if err != nil {
		return err
	}
	if r.Error != "" {
		return errors.New(r.Error)
	}
	return nil
}

// agentDump summarises the agent's state on node i (its /config_dump):
// workloads and services it knows, for failure reports.
func agentDump(ctx context.Context, c *cluster.Cluster, i int) string {
	body, err := nodeGet(ctx, c, i, configDumpURL)
	if err != nil {
		return err.Error()
	}
	var dump map[string]json.RawMessage
	if err := json.Unmarshal(body, &dump); err != nil {
		return fmt.Sprintf("%v: %.2000s", err, body)
	}
	var b strings.Builder
	for _, k := range []string{"services", "workloads", "policies"} {
		fmt.Fprintf(&b, "%s: %.3000s\n", k, dump[k])
	}
	return b.String()
}

// agentState is the part of an agent's /config_dump the tests wait on.
type agentState struct {
	Workloads []struct {
		UID       string `json:"uid"`
		Namespace string `json:"namespace"`
		Protocol  string `json:"protocol"`
	} `json:"workloads"`
	Services []struct {
		Name      string                     `json:"name"`
		Namespace string                     `json:"namespace"`
		Endpoints map[string]json.RawMessage `json:"endpoints"`
	} `json:"services"`
}

// readAgentState reads the agent's view on node i.
func readAgentState(ctx context.Context, c *cluster.Cluster, i int) (*agentState, error) {
	body, err := nodeGet(ctx, c, i, configDumpURL)
	if err != nil {
		return nil, err
	}
	var st agentState
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("config_dump on node %d: %w", i, err)
	}
	return &st, nil
}

// configDumpURL is the agent's admin endpoint, on the node's loopback.
const configDumpURL = "http://127.0.0.1:15000/config_dump"

// agentsSee waits until check accepts both agents' views: state reaches
// every node through the controller, a moment after the API changes.
func agentsSee(t *testing.T, ctx context.Context, c *cluster.Cluster, what string, check func(*agentState) error) time.Duration {
	t.Helper()
	return eventually(t, 20*time.Second, "agents see "+what, func() error {
		for i := 0; i < c.Nodes(); i++ {
			st, err := readAgentState(ctx, c, i)
			if err != nil {
				return err
			}
			if err := check(st); err != nil {
				return fmt.Errorf("node %d: %w", i, err)
			}
		}
		return nil
	})
}

// protocolIn checks that every workload of ns has protocol want.
func protocolIn(ns, want string) func(*agentState) error {
	return func(st *agentState) error {
		n := 0
		for _, w := range st.Workloads {
			if w.Namespace != ns {
				continue
			}
			n++
			if w.Protocol != want {
				return fmt.Errorf("%s is %s", w.UID, w.Protocol)
			}
		}
		if n == 0 {
			return fmt.Errorf("no workloads in %s", ns)
		}
		return nil
	}
}

// endpointsOf checks that service ns/name has n endpoints.
func endpointsOf(ns, name string, n int) func(*agentState) error {
	return func(st *agentState) error {
		for _, s := range st.Services {
			if s.Namespace == ns && s.Name == name {
				if len(s.Endpoints) != n {
					return fmt.Errorf("service %s/%s has %d endpoints, want %d", ns, name, len(s.Endpoints), n)
				}
				return nil
			}
		}
		return fmt.Errorf("no service %s/%s", ns, name)
	}
}
