package deploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/warren-mesh/warren/test/kube"
)

var update = flag.Bool("update", false, "rewrite deploy/manifests/warren.yaml and the chart's CRDs from their sources instead of comparing them")

const (
	chartRel     = "deploy/helm/warren"
	manifestsRel = "deploy/manifests/warren.yaml"
	crdsRel      = "deploy/helm/warren/crds"
	// releaseNS is the namespace of the docs and the rendered manifests.
	releaseNS = "warren-system"
	// regenerate is what `make manifests` runs (from the repository root).
	regenerate = "helm template warren deploy/helm/warren --namespace warren-system --include-crds > deploy/manifests/warren.yaml"
)

func TestMain(m *testing.M) { os.Exit(kube.Main(m)) }

// repoRoot is the module root, one level above this file.
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate this test file")
	}
	return filepath.Dir(filepath.Dir(file))
}

// helmBin finds helm: $HELM, else bin/helm of the repository.
func helmBin(t testing.TB) string {
	t.Helper()
	p := os.Getenv("HELM")
	if p == "" {
		p = filepath.Join(repoRoot(t), "bin", "helm")
	}
	if _, err := exec.LookPath(p); err != nil {
		t.Fatalf("helm not found at %s (set $HELM to use another): run `make helm` to install it into bin/: %v", p, err)
	}
	return p
}

// runHelm runs helm in the repository root with its own empty config and
// cache dirs, so the user's repositories and plugins play no part.
func runHelm(t testing.TB, args ...string) (stdout []byte, stderr string, err error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(helmBin(t), args...)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.Bytes(), errb.String(), err
}

// valuesArgs writes values (YAML) to a file and returns helm's -f flag for
// it; none for empty values.
func valuesArgs(t testing.TB, values string) []string {
	t.Helper()
	if values == "" {
		return nil
	}
	p := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(p, []byte(values), 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{"-f", p}
}

// templateArgs is `helm template` of the chart as release warren in ns.
func templateArgs(ns string, extra ...string) []string {
	return append([]string{"template", "warren", chartRel, "--namespace", ns}, extra...)
}

// object is one rendered document.
type object struct {
	kind, name, namespace string
	// json is the document as the API server takes it.
	json []byte
	// typed is the Kubernetes type of kind, or *unstructured.Unstructured
	// for CRDs.
	typed any
}

func (o object) String() string {
	if o.namespace == "" {
		return o.kind + " " + o.name
	}
	return o.kind + " " + o.namespace + "/" + o.name
}

// kinds are the kinds the chart renders, as Go types. A kind not listed
// fails the test: a new kind needs a look at what it grants.
var kinds = map[string]func() any{
	"ServiceAccount":      func() any { return &corev1.ServiceAccount{} },
	"Secret":              func() any { return &corev1.Secret{} },
	"ConfigMap":           func() any { return &corev1.ConfigMap{} },
	"Service":             func() any { return &corev1.Service{} },
	"DaemonSet":           func() any { return &appsv1.DaemonSet{} },
	"Deployment":          func() any { return &appsv1.Deployment{} },
	"PodDisruptionBudget": func() any { return &policyv1.PodDisruptionBudget{} },
	"ClusterRole":         func() any { return &rbacv1.ClusterRole{} },
	"ClusterRoleBinding":  func() any { return &rbacv1.ClusterRoleBinding{} },
	"Role":                func() any { return &rbacv1.Role{} },
	"RoleBinding":         func() any { return &rbacv1.RoleBinding{} },
}

// parse splits helm's output into objects, decoding each strictly into its
// Go type: a field the type does not have (a typo in a template) fails.
func parse(t testing.TB, out []byte) []object {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(out)))
	var objs []object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading rendered YAML: %v", err)
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatalf("rendered document is not YAML: %v\n%s", err, doc)
		}
		if string(bytes.TrimSpace(js)) == "null" {
			continue // comments only
		}
		var meta struct {
			metav1.TypeMeta   `json:",inline"`
			metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(js, &meta); err != nil {
			t.Fatalf("rendered document has no kind/metadata: %v\n%s", err, doc)
		}
		o := object{kind: meta.Kind, name: meta.Name, namespace: meta.Namespace, json: js}
		if o.kind == "CustomResourceDefinition" {
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(js); err != nil {
				t.Fatalf("CRD %s: %v", o.name, err)
			}
			o.typed = u
		} else {
			mk, ok := kinds[o.kind]
			if !ok {
				t.Fatalf("chart renders kind %s (%s), which this test does not know", o.kind, o.name)
			}
			o.typed = mk()
			if err := yaml.UnmarshalStrict(doc, o.typed); err != nil {
				t.Fatalf("%s does not decode strictly into its API type: %v", o, err)
			}
		}
		objs = append(objs, o)
	}
	return objs
}

// render runs helm template with values (YAML, may be empty) and parses
// the result; it fails the test when helm fails.
func render(t testing.TB, ns, values string, extra ...string) []object {
	t.Helper()
	out, stderr, err := runHelm(t, templateArgs(ns, append(valuesArgs(t, values), extra...)...)...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, stderr)
	}
	return parse(t, out)
}

// one returns the rendered kind/name as its Go type.
func one[T any](t testing.TB, objs []object, kind, name string) *T {
	t.Helper()
	for _, o := range objs {
		if o.kind == kind && o.name == name {
			v, ok := o.typed.(*T)
			if !ok {
				t.Fatalf("%s decoded as %T", o, o.typed)
			}
			return v
		}
	}
	t.Fatalf("chart renders no %s %s", kind, name)
	return nil
}

func TestLint(t *testing.T) {
	for _, tc := range []struct{ name, values string }{
		{"defaults", ""},
		{"custom", customValues},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, err := runHelm(t, append([]string{"lint", "--strict", chartRel}, valuesArgs(t, tc.values)...)...)
			if err != nil {
				t.Errorf("helm lint --strict: %v\n%s%s", err, out, stderr)
			}
		})
	}
}

// customValues changes every value that reaches an argument, a path or a
// label.
const customValues = `
image:
  repository: registry.example.com/mesh/warren
  tag: v1.2.3
  pullPolicy: Always
trustDomain: example.org
clusterID: east-1
clusterDomain: corp.internal
logLevel: info,hbone:debug,proxy=warn
rootNamespace: mesh-root
enrollment:
  label: mesh.example.com/member=yes
cni:
  confDir: /etc/kubernetes/cni/net.d
  binDir: /home/kubernetes/bin
netnsDir: /run/netns
controller:
  replicas: 3
  priorityClassName: system-cluster-critical
agent:
  priorityClassName: ""
  nodeSelector:
    mesh.example.com/agent: "true"
  tolerations:
    - key: dedicated
      operator: Equal
      value: mesh
      effect: NoSchedule
  resources:
    limits:
      memory: 2Gi
`

// renderCase is one set of values and what the rendered objects must say.
type renderCase struct {
	name      string
	namespace string
	values    string

	image, pullPolicy   string
	replicas            int32
	enrollKey           string
	agentArgs, ctrlArgs []string
	hostPaths           map[string]string // agent volume -> node path
	netnsDir            string
	agentPriority       string
	ctrlPriority        string
	nodeSelector        map[string]string
	tolerations         []corev1.Toleration
	agentResources      corev1.ResourceRequirements
	appVersionLabel     string
	wantPDB             bool
}

var renderCases = []renderCase{
	{
		name:       "defaults",
		namespace:  releaseNS,
		image:      "ghcr.io/warren-mesh/warren:dev",
		pullPolicy: "IfNotPresent",
		replicas:   2,
		enrollKey:  "istio.io/dataplane-mode",
		agentArgs: []string{
			"--controller-service=warren-controller",
			"--ca-token-file=/var/run/secrets/tokens/istio-token",
			"--ca-root-configmap=warren-ca-root",
			"--trust-domain=cluster.local",
			"--cluster-id=Kubernetes",
			"--log-level=info",
			"--log-format=json",
			"--enroll-label=istio.io/dataplane-mode=ambient",
			"--cni-conf-dir=/host/etc/cni/net.d",
			"--cni-bin-dir=/host/opt/cni/bin",
			"--cni-socket=/var/run/warren/cni.sock",
			"--netns-dir=/var/run/netns",
			"--redirect=nftables",
		},
		ctrlArgs: []string{
			"--auth=kubernetes",
			"--ca-secret=warren-ca",
			"--ca-root-configmap=warren-ca-root",
			"--leader-elect=true",
			"--lease-name=warren-controller",
			"--listen=:15012",
			"--metrics-addr=:15014",
			"--trust-domain=cluster.local",
			"--cluster-id=Kubernetes",
			"--domain-suffix=cluster.local",
			"--root-namespace=warren-system",
			"--node-agents=warren-system/warren-agent",
			"--token-audiences=istio-ca",
			"--server-dns-names=warren-controller.warren-system.svc,warren-controller.warren-system.svc.cluster.local",
			"--log-level=info",
			"--log-format=json",
		},
		hostPaths: map[string]string{
			"cni-conf":   "/etc/cni/net.d",
			"cni-bin":    "/opt/cni/bin",
			"netns":      "/var/run/netns",
			"warren-run": "/var/run/warren",
		},
		netnsDir:      "/var/run/netns",
		agentPriority: "system-node-critical",
		nodeSelector:  map[string]string{"kubernetes.io/os": "linux"},
		tolerations:   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
		agentResources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("100m"),
			corev1.ResourceMemory: resource.MustParse("128Mi"),
		}},
		appVersionLabel: "dev",
		wantPDB:         true,
	},
	{
		name:       "custom",
		namespace:  "mesh",
		values:     customValues,
		image:      "registry.example.com/mesh/warren:v1.2.3",
		pullPolicy: "Always",
		replicas:   3,
		enrollKey:  "mesh.example.com/member",
		agentArgs: []string{
			"--controller-service=warren-controller",
			"--ca-token-file=/var/run/secrets/tokens/istio-token",
			"--ca-root-configmap=warren-ca-root",
			"--trust-domain=example.org",
			"--cluster-id=east-1",
			"--log-level=info,hbone:debug,proxy=warn",
			"--log-format=json",
			"--enroll-label=mesh.example.com/member=yes",
			"--cni-conf-dir=/host/etc/cni/net.d",
			"--cni-bin-dir=/host/opt/cni/bin",
			"--cni-socket=/var/run/warren/cni.sock",
			"--netns-dir=/run/netns",
			"--redirect=nftables",
		},
		ctrlArgs: []string{
			"--auth=kubernetes",
			"--ca-secret=warren-ca",
			"--ca-root-configmap=warren-ca-root",
			"--leader-elect=true",
			"--lease-name=warren-controller",
			"--listen=:15012",
			"--metrics-addr=:15014",
			"--trust-domain=example.org",
			"--cluster-id=east-1",
			"--domain-suffix=corp.internal",
			"--root-namespace=mesh-root",
			"--node-agents=mesh/warren-agent",
			"--token-audiences=istio-ca",
			"--server-dns-names=warren-controller.mesh.svc,warren-controller.mesh.svc.corp.internal",
			"--log-level=info,hbone:debug,proxy=warn",
			"--log-format=json",
		},
		hostPaths: map[string]string{
			"cni-conf":   "/etc/kubernetes/cni/net.d",
			"cni-bin":    "/home/kubernetes/bin",
			"netns":      "/run/netns",
			"warren-run": "/var/run/warren",
		},
		netnsDir:     "/run/netns",
		ctrlPriority: "system-cluster-critical",
		// Helm merges maps with the defaults and replaces lists.
		nodeSelector: map[string]string{"kubernetes.io/os": "linux", "mesh.example.com/agent": "true"},
		tolerations: []corev1.Toleration{{
			Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "mesh", Effect: corev1.TaintEffectNoSchedule,
		}},
		agentResources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("100m"),
				corev1.ResourceMemory: resource.MustParse("128Mi"),
			},
			Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("2Gi")},
		},
		appVersionLabel: "v1.2.3",
		wantPDB:         true,
	},
}

// oneReplica: a single controller gets no PodDisruptionBudget (it would
// block every drain of its node).
var oneReplica = func() renderCase {
	c := renderCases[0]
	c.name, c.values, c.replicas, c.wantPDB = "one-replica", "controller:\n  replicas: 1\n", 1, false
	return c
}()

func TestRender(t *testing.T) {
	for _, c := range append(slices.Clone(renderCases), oneReplica) {
		t.Run(c.name, func(t *testing.T) {
			objs := render(t, c.namespace, c.values)
			checkObjects(t, c, objs)
			checkAgent(t, c, objs)
			checkController(t, c, objs)
			checkCA(t, objs)
			checkBindings(t, c, objs)
		})
	}
}

// checkObjects: exactly the expected objects, all in the release namespace
// (or cluster-scoped), none of them a Namespace.
func checkObjects(t *testing.T, c renderCase, objs []object) {
	ns := c.namespace
	want := []string{
		"ClusterRole warren-agent",
		"ClusterRole warren-controller",
		"ClusterRoleBinding warren-agent",
		"ClusterRoleBinding warren-controller",
		"ConfigMap " + ns + "/warren-ca-root",
		"DaemonSet " + ns + "/warren-agent",
		"Deployment " + ns + "/warren-controller",
		"Role " + ns + "/warren-agent",
		"Role " + ns + "/warren-controller",
		"RoleBinding " + ns + "/warren-agent",
		"RoleBinding " + ns + "/warren-controller",
		"Secret " + ns + "/warren-ca",
		"Service " + ns + "/warren-controller",
		"ServiceAccount " + ns + "/warren-agent",
		"ServiceAccount " + ns + "/warren-controller",
	}
	if c.wantPDB {
		want = append(want, "PodDisruptionBudget "+ns+"/warren-controller")
	}
	var got []string
	for _, o := range objs {
		got = append(got, o.String())
	}
	slices.Sort(got)
	slices.Sort(want)
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("rendered objects (-want +got):\n%s", d)
	}
	for _, o := range objs {
		m := o.typed.(metav1.Object)
		if v := m.GetLabels()["app.kubernetes.io/version"]; v != c.appVersionLabel {
			t.Errorf("%s: label app.kubernetes.io/version %q, want %q", o, v, c.appVersionLabel)
		}
	}
}

func checkAgent(t *testing.T, c renderCase, objs []object) {
	ds := one[appsv1.DaemonSet](t, objs, "DaemonSet", "warren-agent")
	pod := ds.Spec.Template.Spec
	if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 {
		t.Fatalf("agent pod has %d containers and %d init containers, want one container", len(pod.Containers), len(pod.InitContainers))
	}
	ctr := pod.Containers[0]
	if ctr.Name != "warren-agent" || ctr.Image != c.image || string(ctr.ImagePullPolicy) != c.pullPolicy {
		t.Errorf("agent container %s image %s pull %s, want warren-agent %s %s", ctr.Name, ctr.Image, ctr.ImagePullPolicy, c.image, c.pullPolicy)
	}
	if d := cmp.Diff([]string{"/usr/local/bin/warren-agent"}, ctr.Command); d != "" {
		t.Errorf("agent command (-want +got):\n%s", d)
	}
	if d := cmp.Diff(c.agentArgs, ctr.Args); d != "" {
		t.Errorf("agent args (-want +got):\n%s", d)
	}
	wantEnv := map[string]string{
		"NODE_NAME":     "spec.nodeName",
		"INSTANCE_IP":   "status.hostIP",
		"POD_NAME":      "metadata.name",
		"POD_NAMESPACE": "metadata.namespace",
	}
	if d := cmp.Diff(wantEnv, fieldRefEnv(t, ctr.Env)); d != "" {
		t.Errorf("agent env (-want +got):\n%s", d)
	}

	if !pod.HostNetwork || pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("agent hostNetwork %v dnsPolicy %s, want true ClusterFirstWithHostNet", pod.HostNetwork, pod.DNSPolicy)
	}
	if pod.ServiceAccountName != "warren-agent" || pod.AutomountServiceAccountToken == nil || !*pod.AutomountServiceAccountToken {
		t.Errorf("agent service account %q automount %s, want warren-agent, true", pod.ServiceAccountName, ptrString(pod.AutomountServiceAccountToken))
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g != 30 {
		t.Errorf("agent terminationGracePeriodSeconds %s, want 30", ptrString(g))
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxUnavailable == nil || *us.RollingUpdate.MaxUnavailable != intstr.FromInt32(1) {
		t.Errorf("agent updateStrategy %+v, want RollingUpdate maxUnavailable 1", us)
	}
	if pod.PriorityClassName != c.agentPriority {
		t.Errorf("agent priorityClassName %q, want %q", pod.PriorityClassName, c.agentPriority)
	}
	if d := cmp.Diff(c.nodeSelector, pod.NodeSelector); d != "" {
		t.Errorf("agent nodeSelector (-want +got):\n%s", d)
	}
	if d := cmp.Diff(c.tolerations, pod.Tolerations); d != "" {
		t.Errorf("agent tolerations (-want +got):\n%s", d)
	}
	if d := cmp.Diff(c.agentResources, ctr.Resources); d != "" {
		t.Errorf("agent resources (-want +got):\n%s", d)
	}

	// Capabilities: exactly the three, everything else dropped.
	sc := ctr.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("agent container has no securityContext.capabilities")
	}
	if d := cmp.Diff([]corev1.Capability{"NET_ADMIN", "SYS_ADMIN"}, sc.Capabilities.Add); d != "" {
		t.Errorf("agent capabilities added (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]corev1.Capability{"ALL"}, sc.Capabilities.Drop); d != "" {
		t.Errorf("agent capabilities dropped (-want +got):\n%s", d)
	}
	checkBool(t, "agent privileged", sc.Privileged, false)
	checkBool(t, "agent allowPrivilegeEscalation", sc.AllowPrivilegeEscalation, false)
	checkBool(t, "agent readOnlyRootFilesystem", sc.ReadOnlyRootFilesystem, true)
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("agent runAsUser %s, want 0 (capabilities are granted to root only)", ptrString(sc.RunAsUser))
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("agent seccompProfile %+v, want RuntimeDefault", sc.SeccompProfile)
	}

	// Volumes and where they are mounted; the arguments must name the
	// mounted paths.
	hostPaths := map[string]string{}
	var token *corev1.ServiceAccountTokenProjection
	for _, v := range pod.Volumes {
		switch {
		case v.HostPath != nil:
			hostPaths[v.Name] = v.HostPath.Path
			if v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectoryOrCreate {
				t.Errorf("agent hostPath volume %s type %s, want DirectoryOrCreate", v.Name, ptrString(v.HostPath.Type))
			}
		case v.Projected != nil && v.Name == "istio-token":
			if len(v.Projected.Sources) != 1 || v.Projected.Sources[0].ServiceAccountToken == nil {
				t.Fatalf("istio-token volume %+v, want one service-account token", v.Projected)
			}
			token = v.Projected.Sources[0].ServiceAccountToken
		case v.EmptyDir != nil && v.Name == "tmp":
		default:
			t.Errorf("agent volume %s is unexpected", v.Name)
		}
	}
	if d := cmp.Diff(c.hostPaths, hostPaths); d != "" {
		t.Errorf("agent hostPath volumes (-want +got):\n%s", d)
	}
	if token == nil || token.Audience != "istio-ca" || token.ExpirationSeconds == nil || *token.ExpirationSeconds != 43200 || token.Path != "istio-token" {
		t.Errorf("agent CA token projection %+v, want audience istio-ca, 43200 s, path istio-token", token)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range ctr.VolumeMounts {
		mounts[m.Name] = m
	}
	wantMounts := map[string]string{
		"cni-conf":    "/host/etc/cni/net.d",
		"cni-bin":     "/host/opt/cni/bin",
		"netns":       c.netnsDir,
		"warren-run":  "/var/run/warren",
		"istio-token": "/var/run/secrets/tokens",
		"tmp":         "/tmp",
	}
	gotMounts := map[string]string{}
	for n, m := range mounts {
		gotMounts[n] = m.MountPath
	}
	if d := cmp.Diff(wantMounts, gotMounts); d != "" {
		t.Errorf("agent volume mounts (-want +got):\n%s", d)
	}
	if p := mounts["netns"].MountPropagation; p == nil || *p != corev1.MountPropagationHostToContainer {
		t.Errorf("netns mount propagation %s, want HostToContainer (pods started later must show up)", ptrString(p))
	}
	args := argMap(ctr.Args)
	for flag, want := range map[string]string{
		"--ca-token-file": mounts["istio-token"].MountPath + "/" + token.Path,
		"--cni-conf-dir":  mounts["cni-conf"].MountPath,
		"--cni-bin-dir":   mounts["cni-bin"].MountPath,
		"--netns-dir":     mounts["netns"].MountPath,
		"--cni-socket":    mounts["warren-run"].MountPath + "/cni.sock",
	} {
		if args[flag] != want {
			t.Errorf("agent %s=%s does not name the mounted path %s", flag, args[flag], want)
		}
	}

	wantPorts := []corev1.ContainerPort{
		{Name: "http-metrics", ContainerPort: 15020, Protocol: corev1.ProtocolTCP},
		{Name: "http-readiness", ContainerPort: 15021, Protocol: corev1.ProtocolTCP},
	}
	if d := cmp.Diff(wantPorts, ctr.Ports); d != "" {
		t.Errorf("agent ports (-want +got):\n%s", d)
	}
	if p := ctr.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz/ready" || p.HTTPGet.Port != intstr.FromInt32(15021) {
		t.Errorf("agent readinessProbe %+v, want GET /healthz/ready on 15021", p)
	}
	wantAnn := map[string]string{
		"prometheus.io/scrape": "true",
		"prometheus.io/port":   "15020",
		"prometheus.io/path":   "/stats/prometheus",
	}
	if d := cmp.Diff(wantAnn, ds.Spec.Template.Annotations); d != "" {
		t.Errorf("agent pod annotations (-want +got):\n%s", d)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("agent selector %v does not match its pod labels %v (%v)", ds.Spec.Selector, ds.Spec.Template.Labels, err)
	}
}

func checkController(t *testing.T, c renderCase, objs []object) {
	dep := one[appsv1.Deployment](t, objs, "Deployment", "warren-controller")
	if r := dep.Spec.Replicas; r == nil || *r != c.replicas {
		t.Errorf("controller replicas %s, want %d", ptrString(r), c.replicas)
	}
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("controller pod has %d containers, want 1", len(pod.Containers))
	}
	ctr := pod.Containers[0]
	if ctr.Name != "warren-controller" || ctr.Image != c.image || string(ctr.ImagePullPolicy) != c.pullPolicy {
		t.Errorf("controller container %s image %s pull %s, want warren-controller %s %s", ctr.Name, ctr.Image, ctr.ImagePullPolicy, c.image, c.pullPolicy)
	}
	if d := cmp.Diff([]string{"/usr/local/bin/warren-controller"}, ctr.Command); d != "" {
		t.Errorf("controller command (-want +got):\n%s", d)
	}
	if d := cmp.Diff(c.ctrlArgs, ctr.Args); d != "" {
		t.Errorf("controller args (-want +got):\n%s", d)
	}
	wantEnv := map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
	if d := cmp.Diff(wantEnv, fieldRefEnv(t, ctr.Env)); d != "" {
		t.Errorf("controller env (-want +got):\n%s", d)
	}
	if pod.ServiceAccountName != "warren-controller" || pod.AutomountServiceAccountToken == nil || !*pod.AutomountServiceAccountToken {
		t.Errorf("controller service account %q automount %s, want warren-controller, true", pod.ServiceAccountName, ptrString(pod.AutomountServiceAccountToken))
	}
	if pod.PriorityClassName != c.ctrlPriority {
		t.Errorf("controller priorityClassName %q, want %q", pod.PriorityClassName, c.ctrlPriority)
	}
	if v := dep.Spec.Template.Labels[c.enrollKey]; v != "none" {
		t.Errorf("controller pod label %s=%q, want none (never captured)", c.enrollKey, v)
	}
	wantPorts := []corev1.ContainerPort{
		{Name: "grpc-xds", ContainerPort: 15012, Protocol: corev1.ProtocolTCP},
		{Name: "http-monitoring", ContainerPort: 15014, Protocol: corev1.ProtocolTCP},
	}
	if d := cmp.Diff(wantPorts, ctr.Ports); d != "" {
		t.Errorf("controller ports (-want +got):\n%s", d)
	}
	// The CA's key files need a writable, memory-backed /tmp under the
	// read-only root filesystem.
	if len(pod.Volumes) != 1 || pod.Volumes[0].EmptyDir == nil || pod.Volumes[0].EmptyDir.Medium != corev1.StorageMediumMemory ||
		len(ctr.VolumeMounts) != 1 || ctr.VolumeMounts[0].MountPath != "/tmp" || ctr.VolumeMounts[0].Name != pod.Volumes[0].Name {
		t.Errorf("controller volumes %+v mounts %+v, want one memory emptyDir at /tmp", pod.Volumes, ctr.VolumeMounts)
	}
	if p := ctr.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/ready" || p.HTTPGet.Port != intstr.FromString("http-monitoring") {
		t.Errorf("controller readinessProbe %+v, want GET /ready on http-monitoring (15014)", p)
	}

	psc := pod.SecurityContext
	if psc == nil || psc.RunAsUser == nil || *psc.RunAsUser != 65532 || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("controller pod securityContext %+v, want runAsNonRoot, runAsUser 65532", psc)
	}
	sc := ctr.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("controller container has no securityContext.capabilities")
	}
	if len(sc.Capabilities.Add) != 0 || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("controller capabilities %+v, want none added, ALL dropped", sc.Capabilities)
	}
	checkBool(t, "controller privileged", sc.Privileged, false)
	checkBool(t, "controller allowPrivilegeEscalation", sc.AllowPrivilegeEscalation, false)
	checkBool(t, "controller readOnlyRootFilesystem", sc.ReadOnlyRootFilesystem, true)
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("controller seccompProfile %+v, want RuntimeDefault", sc.SeccompProfile)
	}

	podLabels := labels.Set(dep.Spec.Template.Labels)
	agentLabels := labels.Set(one[appsv1.DaemonSet](t, objs, "DaemonSet", "warren-agent").Spec.Template.Labels)
	matches := func(what string, ls *metav1.LabelSelector) {
		t.Helper()
		sel, err := metav1.LabelSelectorAsSelector(ls)
		if err != nil {
			t.Errorf("%s selector: %v", what, err)
			return
		}
		if !sel.Matches(podLabels) || sel.Matches(agentLabels) {
			t.Errorf("%s selector %s must select the controller's pods (%v) and not the agent's (%v)", what, sel, podLabels, agentLabels)
		}
	}
	matches("controller Deployment", dep.Spec.Selector)
	aa := pod.Affinity
	if aa == nil || aa.PodAntiAffinity == nil || len(aa.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 ||
		len(aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 0 {
		t.Fatalf("controller affinity %+v, want one preferred pod anti-affinity term", aa)
	}
	term := aa.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm
	if term.TopologyKey != "kubernetes.io/hostname" {
		t.Errorf("controller anti-affinity topologyKey %q, want kubernetes.io/hostname", term.TopologyKey)
	}
	matches("controller anti-affinity", term.LabelSelector)

	if c.wantPDB {
		pdb := one[policyv1.PodDisruptionBudget](t, objs, "PodDisruptionBudget", "warren-controller")
		if pdb.Spec.MinAvailable == nil || *pdb.Spec.MinAvailable != intstr.FromInt32(1) || pdb.Spec.MaxUnavailable != nil {
			t.Errorf("controller PodDisruptionBudget minAvailable %s maxUnavailable %s, want minAvailable 1", ptrString(pdb.Spec.MinAvailable), ptrString(pdb.Spec.MaxUnavailable))
		}
		matches("controller PodDisruptionBudget", pdb.Spec.Selector)
	}

	svc := one[corev1.Service](t, objs, "Service", "warren-controller")
	if svc.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("controller Service type %s, want ClusterIP", svc.Spec.Type)
	}
	wantSvcPorts := []corev1.ServicePort{
		{Name: "grpc-xds", Port: 15012, TargetPort: intstr.FromString("grpc-xds"), Protocol: corev1.ProtocolTCP},
		{Name: "http-monitoring", Port: 15014, TargetPort: intstr.FromString("http-monitoring"), Protocol: corev1.ProtocolTCP},
	}
	if d := cmp.Diff(wantSvcPorts, svc.Spec.Ports); d != "" {
		t.Errorf("controller Service ports (-want +got):\n%s", d)
	}
	matches("controller Service", &metav1.LabelSelector{MatchLabels: svc.Spec.Selector})
}

// checkCA: both CA objects exist empty; the controller fills them.
func checkCA(t *testing.T, objs []object) {
	s := one[corev1.Secret](t, objs, "Secret", "warren-ca")
	if s.Type != corev1.SecretTypeOpaque || len(s.Data) != 0 || len(s.StringData) != 0 {
		t.Errorf("Secret warren-ca type %q with %d+%d keys, want Opaque and empty", s.Type, len(s.Data), len(s.StringData))
	}
	cm := one[corev1.ConfigMap](t, objs, "ConfigMap", "warren-ca-root")
	if len(cm.Data) != 0 || len(cm.BinaryData) != 0 {
		t.Errorf("ConfigMap warren-ca-root has data, want it empty")
	}
}

// checkBindings: each binding grants its own role to its own service
// account in the release namespace.
func checkBindings(t *testing.T, c renderCase, objs []object) {
	for _, name := range []string{"warren-agent", "warren-controller"} {
		want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: c.namespace}}
		crb := one[rbacv1.ClusterRoleBinding](t, objs, "ClusterRoleBinding", name)
		rb := one[rbacv1.RoleBinding](t, objs, "RoleBinding", name)
		one[rbacv1.ClusterRole](t, objs, "ClusterRole", name)
		one[rbacv1.Role](t, objs, "Role", name)
		one[corev1.ServiceAccount](t, objs, "ServiceAccount", name)
		for _, b := range []struct {
			what     string
			subjects []rbacv1.Subject
			ref      rbacv1.RoleRef
			kind     string
		}{
			{"ClusterRoleBinding " + name, crb.Subjects, crb.RoleRef, "ClusterRole"},
			{"RoleBinding " + name, rb.Subjects, rb.RoleRef, "Role"},
		} {
			if d := cmp.Diff(want, b.subjects); d != "" {
				t.Errorf("%s subjects (-want +got):\n%s", b.what, d)
			}
			if b.ref != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: b.kind, Name: name}) {
				t.Errorf("%s roleRef %+v, want %s %s", b.what, b.ref, b.kind, name)
			}
		}
	}
}

func fieldRefEnv(t *testing.T, env []corev1.EnvVar) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, e := range env {
		if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil {
			t.Errorf("env %s is not from the downward API", e.Name)
			continue
		}
		got[e.Name] = e.ValueFrom.FieldRef.FieldPath
	}
	return got
}

func checkBool(t *testing.T, what string, got *bool, want bool) {
	t.Helper()
	if got == nil || *got != want {
		t.Errorf("%s = %s, want %v", what, ptrString(got), want)
	}
}

// argMap maps --flag to its value for --flag=value arguments.
func argMap(args []string) map[string]string {
	m := map[string]string{}
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok {
			m[k] = v
		}
	}
	return m
}

// TestBadValues: values that would break the mesh stop the install with a
// message naming the value.
func TestBadValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"label without =", []string{"--set", "enrollment.label=istio.io/dataplane-mode"}, `enrollment.label must be one label key=value, e.g. istio.io/dataplane-mode=ambient; got "istio.io/dataplane-mode"`},
		{"label without key", []string{"--set", "enrollment.label==ambient"}, "enrollment.label must be one label key=value"},
		{"label without value", []string{"--set", "enrollment.label=istio.io/dataplane-mode="}, "enrollment.label must be one label key=value"},
		{"label with two =", []string{"--set", "enrollment.label=a=b=c"}, "enrollment.label must be one label key=value"},
		{"label with space", []string{"--set-string", "enrollment.label=mesh member=yes"}, "enrollment.label must be one label key=value"},
		{"no replicas", []string{"--set", "controller.replicas=0"}, "controller.replicas must be at least 1 (the controller is the mesh's CA and discovery server); got 0"},
		{"negative replicas", []string{"--set", "controller.replicas=-2"}, "controller.replicas must be at least 1"},
		{"replicas not a number", []string{"--set-string", "controller.replicas=two"}, "/controller/replicas"},
		{"trust domain with capitals", []string{"--set", "trustDomain=Cluster.Local"}, `trustDomain must be a SPIFFE trust domain`},
		{"trust domain with scheme", []string{"--set", "trustDomain=spiffe://cluster.local"}, `trustDomain must be a SPIFFE trust domain`},
		{"empty cluster id", []string{"--set", "clusterID="}, "clusterID must not be empty"},
		{"bad cluster domain", []string{"--set", "clusterDomain=cluster.local."}, "clusterDomain must be a DNS name"},
		{"empty log level", []string{"--set", "logLevel="}, "logLevel must not be empty"},
		{"relative CNI dir", []string{"--set", "cni.confDir=etc/cni/net.d"}, `cni.confDir must be an absolute path on the node; got "etc/cni/net.d"`},
		{"relative netns dir", []string{"--set", "netnsDir=run/netns"}, "netnsDir must be an absolute path"},
		{"unknown pull policy", []string{"--set", "image.pullPolicy=Sometimes"}, "/image/pullPolicy"},
		{"misspelt value", []string{"--set", "trustdomain=example.org"}, "trustdomain"},
		{"empty repository", []string{"--set", "image.repository="}, "/image/repository"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, err := runHelm(t, templateArgs(releaseNS, tc.args...)...)
			if err == nil {
				t.Fatalf("helm template %v succeeded, want an error containing %q; rendered %d bytes", tc.args, tc.want, len(out))
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("helm template %v failed with\n%s\nwant it to contain %q", tc.args, stderr, tc.want)
			}
		})
	}
}

// TestLeastPrivilege pins every rule the chart grants and checks the
// properties that must survive any change to them.
func TestLeastPrivilege(t *testing.T) {
	objs := render(t, releaseNS, "")
	rules := map[string][]rbacv1.PolicyRule{}
	for _, o := range objs {
		switch r := o.typed.(type) {
		case *rbacv1.ClusterRole:
			if r.AggregationRule != nil {
				t.Errorf("%s aggregates other roles", o)
			}
			rules[o.String()] = r.Rules
		case *rbacv1.Role:
			rules[o.String()] = r.Rules
		}
	}
	forbidden := []string{"delete", "deletecollection", "escalate", "bind", "impersonate", "approve", "sign"}
	for role, rs := range rules {
		for _, r := range rs {
			for _, list := range [][]string{r.Verbs, r.APIGroups, r.Resources, r.ResourceNames, r.NonResourceURLs} {
				for _, s := range list {
					if strings.Contains(s, "*") {
						t.Errorf("%s: rule %+v uses a wildcard %q", role, r, s)
					}
				}
			}
			if len(r.NonResourceURLs) > 0 {
				t.Errorf("%s: rule %+v grants non-resource URLs", role, r)
			}
			for _, v := range r.Verbs {
				if slices.Contains(forbidden, v) {
					t.Errorf("%s: rule %+v grants %q", role, r, v)
				}
			}
			for _, res := range r.Resources {
				if strings.Contains(res, "/") {
					t.Errorf("%s: rule %+v grants a subresource %q", role, r, res)
				}
				if res == "secrets" && (strings.HasPrefix(role, "ClusterRole ") || !slices.Equal(r.ResourceNames, []string{"warren-ca"})) {
					t.Errorf("%s: rule %+v grants Secrets other than warren-ca in the release namespace", role, r)
				}
			}
		}
	}

	core, apps := "", "apps"
	want := map[string][]rbacv1.PolicyRule{
		"ClusterRole warren-agent": {
			{APIGroups: []string{core}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch", "patch"}},
			{APIGroups: []string{core}, Resources: []string{"namespaces"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{core}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		},
		"Role warren-system/warren-agent": {
			{APIGroups: []string{core}, Resources: []string{"configmaps"}, ResourceNames: []string{"warren-ca-root"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{core}, Resources: []string{"services"}, ResourceNames: []string{"warren-controller"}, Verbs: []string{"get"}},
			{APIGroups: []string{apps}, Resources: []string{"daemonsets"}, ResourceNames: []string{"warren-agent"}, Verbs: []string{"get", "list", "watch"}},
		},
		"ClusterRole warren-controller": {
			{APIGroups: []string{core}, Resources: []string{"pods", "services", "namespaces"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"security.istio.io"}, Resources: []string{"authorizationpolicies", "peerauthentications"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"gateways"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
			{APIGroups: []string{core}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		},
		"Role warren-system/warren-controller": {
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{"warren-controller"}, Verbs: []string{"get", "update"}},
			{APIGroups: []string{core}, Resources: []string{"secrets"}, ResourceNames: []string{"warren-ca"}, Verbs: []string{"get", "list", "watch", "update"}},
			{APIGroups: []string{core}, Resources: []string{"configmaps"}, ResourceNames: []string{"warren-ca-root"}, Verbs: []string{"get", "list", "watch", "update"}},
		},
	}
	if d := cmp.Diff(want, rules); d != "" {
		t.Errorf("RBAC rules (-want +got); a change here needs a reason in the template's comments and deploy/README.md:\n%s", d)
	}
}

// TestManifestsUpToDate: the committed manifests are what the chart
// renders with default values.
func TestManifestsUpToDate(t *testing.T) {
	got, stderr, err := runHelm(t, templateArgs(releaseNS, "--include-crds")...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, stderr)
	}
	path := filepath.Join(repoRoot(t), manifestsRel)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	committed, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v; generate it with `make manifests` (%s)", manifestsRel, err, regenerate)
	}
	if !bytes.Equal(committed, got) {
		t.Errorf("%s is out of date with the chart (first difference: %s); regenerate it with `make manifests` (%s)",
			manifestsRel, firstDiff(committed, got), regenerate)
	}
	// The rendered file holds the CRDs first, so that one kubectl apply
	// creates them before anything could use them.
	objs := parse(t, committed)
	if len(objs) < 2 || objs[0].kind != "CustomResourceDefinition" || objs[1].kind != "CustomResourceDefinition" {
		t.Errorf("%s does not start with the two CRDs", manifestsRel)
	}
}

// firstDiff describes the first line where a and b differ.
func firstDiff(a, b []byte) string {
	al, bl := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	for i := range max(len(al), len(bl)) {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("line %d: committed %q, rendered %q", i+1, x, y)
		}
	}
	return "none"
}

// crdNames are the CRDs the chart ships, Istio's.
var crdNames = []string{"authorizationpolicies.security.istio.io", "peerauthentications.security.istio.io"}

// crdHeader precedes each copied CRD; the text below it is Istio's.
const crdHeader = `# Istio's CustomResourceDefinition %s,
# copied unchanged (all below this header) from the Go module
# istio.io/istio %s,
# file manifests/charts/base/files/crd-all.gen.yaml (Apache License 2.0).
# deploy/README.md says how to refresh it; deploy/chart_test.go checks it.
`

// upstreamCRDs reads the CRDs from the istio.io/istio module this module
// requires, keyed by name, and returns its version.
func upstreamCRDs(t *testing.T) (map[string]string, string) {
	t.Helper()
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}} {{.Version}}", "istio.io/istio")
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -m istio.io/istio: %v", err)
	}
	dir, version, ok := strings.Cut(strings.TrimSpace(string(out)), " ")
	if !ok || dir == "" {
		t.Fatalf("istio.io/istio is not in the module cache (go list said %q); run go mod download istio.io/istio", out)
	}
	all, err := os.ReadFile(filepath.Join(dir, "manifests", "charts", "base", "files", "crd-all.gen.yaml"))
	if err != nil {
		t.Fatalf("reading Istio's CRDs: %v", err)
	}
	name := regexp.MustCompile(`(?m)^  name: (\S+)$`)
	docs := map[string]string{}
	for _, d := range strings.Split(string(all), "\n---\n") {
		if m := name.FindStringSubmatch(d); m != nil && slices.Contains(crdNames, m[1]) {
			docs[m[1]] = strings.TrimSuffix(d, "\n") + "\n"
		}
	}
	return docs, version
}

// TestCRDsFromIstio: the chart's CRDs are Istio's, unchanged.
func TestCRDsFromIstio(t *testing.T) {
	upstream, version := upstreamCRDs(t)
	entries, err := os.ReadDir(filepath.Join(repoRoot(t), crdsRel))
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		files = append(files, e.Name())
	}
	var want []string
	for _, n := range crdNames {
		want = append(want, n+".yaml")
	}
	if d := cmp.Diff(want, files); d != "" {
		t.Errorf("files in %s (-want +got):\n%s", crdsRel, d)
	}
	for _, n := range crdNames {
		body, ok := upstream[n]
		if !ok {
			t.Errorf("istio.io/istio %s has no CRD %s", version, n)
			continue
		}
		path := filepath.Join(repoRoot(t), crdsRel, n+".yaml")
		if *update {
			if err := os.WriteFile(path, []byte(fmt.Sprintf(crdHeader, n, version)+body), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// The body is what follows the leading comment lines.
		got := string(b)
		for strings.HasPrefix(got, "#") {
			_, got, _ = strings.Cut(got, "\n")
		}
		if got != body {
			t.Errorf("%s differs from Istio's CRD in istio.io/istio %s (first difference: %s); refresh with go test ./deploy -run TestCRDsFromIstio -update",
				path, version, firstDiff([]byte(got), []byte(body)))
		}
	}
}

// TestValuesDocumented: every value has a comment in values.yaml and a row
// in deploy/README.md.
func TestValuesDocumented(t *testing.T) {
	root := repoRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, chartRel, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "deploy", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	// Maps users replace or extend as a whole are documented as one value.
	whole := map[string]bool{"resources": true, "nodeSelector": true, "tolerations": true}
	var keys []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			sub, isMap := v.(map[string]any)
			if isMap && !whole[k] {
				walk(prefix+k+".", sub)
				continue
			}
			keys = append(keys, prefix+k)
		}
	}
	walk("", values)
	slices.Sort(keys)
	if len(keys) < 15 {
		t.Fatalf("found only %d values (%v); is the walk broken?", len(keys), keys)
	}
	for _, k := range keys {
		if !bytes.Contains(readme, []byte("| `"+k+"` |")) {
			t.Errorf("value %s has no row in deploy/README.md's values table", k)
		}
	}
	// In values.yaml each value's line follows a comment line. parents
	// holds the keys enclosing the current line, by indentation.
	type parent struct {
		indent int
		key    string
	}
	var parents []parent
	key := regexp.MustCompile(`^(\s*)([A-Za-z]+):(.*)$`)
	lines := strings.Split(string(raw), "\n")
	for i, l := range lines {
		m := key.FindStringSubmatch(l)
		if m == nil {
			continue // comments, blank lines, list items
		}
		indent, name, rest := len(m[1]), m[2], strings.TrimSpace(m[3])
		for len(parents) > 0 && parents[len(parents)-1].indent >= indent {
			parents = parents[:len(parents)-1]
		}
		inWhole := slices.ContainsFunc(parents, func(p parent) bool { return whole[p.key] })
		parents = append(parents, parent{indent, name})
		if inWhole || (rest == "" && !whole[name]) {
			continue // an example inside a whole map, or a parent map
		}
		if i == 0 || !strings.HasPrefix(strings.TrimSpace(lines[i-1]), "#") {
			t.Errorf("values.yaml line %d (%s) has no comment above it", i+1, strings.TrimSpace(l))
		}
	}
}

func ptrString[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}

// TestAPIServer puts the chart in front of a real kube-apiserver: it
// installs the CRDs, applies every rendered object with server-side dry-run
// (strict field validation), installs the default render for real, admits
// pods made from the workload templates, and exercises the RBAC rules as
// the chart's service accounts.
func TestAPIServer(t *testing.T) {
	c := kube.Require(t)
	ctx := t.Context()
	cs := c.Client()
	dyn, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	a := &applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}

	defaults := render(t, releaseNS, "", "--include-crds")
	var crds []object
	for _, o := range defaults {
		if o.kind == "CustomResourceDefinition" {
			crds = append(crds, o)
		}
	}
	if len(crds) != len(crdNames) {
		t.Fatalf("--include-crds rendered %d CRDs, want %d", len(crds), len(crdNames))
	}
	// Custom resources need their CRD, and a dry-run CRD serves nothing:
	// install them for real, as `helm install` does before the templates.
	for _, o := range crds {
		if err := a.apply(ctx, o.json, false); err != nil {
			t.Fatalf("installing %s: %v", o, err)
		}
		waitEstablished(t, dyn, o.name)
	}
	a.mapper.Reset()
	for _, ns := range []string{releaseNS, "mesh"} {
		createNamespace(t, cs, ns, nil)
	}

	t.Run("dry-run", func(t *testing.T) {
		for _, rc := range append(slices.Clone(renderCases), oneReplica) {
			t.Run(rc.name, func(t *testing.T) {
				for _, o := range render(t, rc.namespace, rc.values) {
					if err := a.apply(ctx, o.json, true); err != nil {
						t.Errorf("%s: server-side dry-run: %v", o, err)
					}
				}
			})
		}
	})

	// The dry-run above must be able to fail: broken copies of rendered
	// objects are refused.
	t.Run("dry-run refuses", func(t *testing.T) {
		objs := render(t, releaseNS, "")
		ds := unstructuredOf(t, objs, "DaemonSet", "warren-agent")
		for _, tc := range []struct {
			name   string
			obj    *unstructured.Unstructured
			change func(pod map[string]any)
			want   string
		}{
			{"unknown field", ds, func(pod map[string]any) {
				container(t, pod)["mountPropagaton"] = "HostToContainer"
			}, "mountPropagaton"},
			{"token too short-lived", ds, func(pod map[string]any) {
				for _, v := range pod["volumes"].([]any) {
					if p, ok := v.(map[string]any)["projected"].(map[string]any); ok {
						p["sources"].([]any)[0].(map[string]any)["serviceAccountToken"].(map[string]any)["expirationSeconds"] = int64(60)
					}
				}
			}, "expirationSeconds"},
			{"unknown capability field", unstructuredOf(t, objs, "Deployment", "warren-controller"), func(pod map[string]any) {
				container(t, pod)["securityContext"].(map[string]any)["capabilities"].(map[string]any)["remove"] = []any{"ALL"}
			}, "remove"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				o := tc.obj.DeepCopy()
				pod, _, _ := unstructured.NestedMap(o.Object, "spec", "template", "spec")
				tc.change(pod)
				if err := unstructured.SetNestedMap(o.Object, pod, "spec", "template", "spec"); err != nil {
					t.Fatal(err)
				}
				js, err := o.MarshalJSON()
				if err != nil {
					t.Fatal(err)
				}
				err = a.apply(ctx, js, true)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("dry-run of a broken %s: error %v, want one naming %q", o.GetKind(), err, tc.want)
				}
			})
		}
	})

	t.Run("CRDs serve", func(t *testing.T) {
		for _, tc := range []struct {
			name, doc, wantErr string
		}{
			{"authorization policy", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-untrusted, namespace: warren-system}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [untrusted]}}]}]\n", ""},
			{"peer authentication", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: warren-system}\nspec: {mtls: {mode: STRICT}}\n", ""},
			{"bad action", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: warren-system}\nspec: {action: MAYBE}\n", "MAYBE"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				js, err := yaml.YAMLToJSON([]byte(tc.doc))
				if err != nil {
					t.Fatal(err)
				}
				// Discovery of a new CRD's resources lags its Established
				// condition by a moment.
				err = retry(t, 20, func() error {
					err := a.apply(ctx, js, true)
					if meta.IsNoMatchError(err) {
						a.mapper.Reset()
					}
					return err
				}, meta.IsNoMatchError)
				switch {
				case tc.wantErr == "" && err != nil:
					t.Errorf("dry-run: %v", err)
				case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
					t.Errorf("dry-run: error %v, want one naming %q", err, tc.wantErr)
				}
			})
		}
	})

	// The default render, installed for real: the pods and RBAC checks
	// below need the service accounts, roles and CA objects to exist.
	for _, o := range defaults {
		if o.kind != "CustomResourceDefinition" {
			if err := a.apply(ctx, o.json, false); err != nil {
				t.Fatalf("applying %s: %v", o, err)
			}
		}
	}

	t.Run("pods", func(t *testing.T) {
		agent := one[appsv1.DaemonSet](t, defaults, "DaemonSet", "warren-agent").Spec.Template
		ctrl := one[appsv1.Deployment](t, defaults, "Deployment", "warren-controller").Spec.Template
		// Pod Security "restricted" enforced: the controller passes, the
		// agent (host network, host paths, capabilities) does not.
		restricted := "warren-restricted"
		createNamespace(t, cs, restricted, map[string]string{
			"pod-security.kubernetes.io/enforce":         "restricted",
			"pod-security.kubernetes.io/enforce-version": "latest",
		})
		for _, sa := range []string{"warren-agent", "warren-controller"} {
			_, err := cs.CoreV1().ServiceAccounts(restricted).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
		for _, tc := range []struct {
			name, ns string
			tmpl     corev1.PodTemplateSpec
			wantErr  string
		}{
			{"agent", releaseNS, agent, ""},
			{"controller", releaseNS, ctrl, ""},
			{"controller restricted", restricted, ctrl, ""},
			{"agent restricted", restricted, agent, "violates PodSecurity"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				pod := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: "dry-run", Namespace: tc.ns, Labels: tc.tmpl.Labels, Annotations: tc.tmpl.Annotations},
					Spec:       tc.tmpl.Spec,
				}
				_, err := cs.CoreV1().Pods(tc.ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"})
				switch {
				case tc.wantErr == "" && err != nil:
					t.Errorf("pod from the %s template refused: %v", tc.name, err)
				case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
					t.Errorf("pod from the %s template: error %v, want %q", tc.name, err, tc.wantErr)
				}
			})
		}
	})

	t.Run("rbac", func(t *testing.T) { checkRBAC(t, c) })
}

// applier server-side applies JSON documents through the dynamic client.
type applier struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

// apply server-side applies doc (dry-run or for real) with strict field
// validation: a field the API does not know is an error, not a warning.
func (a *applier) apply(ctx context.Context, doc []byte, dryRun bool) error {
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(doc); err != nil {
		return err
	}
	gvk := u.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("mapping %s: %w", gvk, err)
	}
	var ri dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = a.dyn.Resource(m.Resource).Namespace(u.GetNamespace())
	}
	opts := metav1.PatchOptions{FieldManager: "warren-chart-test", FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err = ri.Patch(ctx, u.GetName(), types.ApplyPatchType, doc, opts)
	return err
}

// retry calls f up to n times, 250 ms apart, while its error is one
// transient says is transient.
func retry(t *testing.T, n int, f func() error, transient func(error) bool) error {
	t.Helper()
	var err error
	for range n {
		if err = f(); err == nil || !transient(err) {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
	return err
}

func waitEstablished(t *testing.T, dyn dynamic.Interface, name string) {
	t.Helper()
	gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	errNotYet := errors.New("not established yet")
	err := retry(t, 120, func() error {
		u, err := dyn.Resource(gvr).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
				return nil
			}
		}
		return errNotYet
	}, func(err error) bool { return errors.Is(err, errNotYet) })
	if err != nil {
		t.Fatalf("CRD %s: %v", name, err)
	}
}

func createNamespace(t *testing.T, cs kubernetes.Interface, name string, lbls map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}
	if _, err := cs.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
}

func unstructuredOf(t *testing.T, objs []object, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.kind == kind && o.name == name {
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(o.json); err != nil {
				t.Fatal(err)
			}
			return u
		}
	}
	t.Fatalf("chart renders no %s %s", kind, name)
	return nil
}

// container is the first container of an unstructured pod spec.
func container(t *testing.T, pod map[string]any) map[string]any {
	t.Helper()
	cs, ok := pod["containers"].([]any)
	if !ok || len(cs) == 0 {
		t.Fatalf("pod spec has no containers: %v", pod)
	}
	return cs[0].(map[string]any)
}

// checkRBAC asks the authorizer what each service account may do, then
// makes the calls the agent and controller make, as them.
func checkRBAC(t *testing.T, c *kube.Cluster) {
	ctx := t.Context()
	cs := c.Client()
	const (
		agent = "warren-agent"
		ctrl  = "warren-controller"
		ns    = releaseNS
		app   = "app" // any namespace that may hold enrolled pods
	)
	user := func(sa string) (string, []string) {
		return "system:serviceaccount:" + ns + ":" + sa,
			[]string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
	}
	for _, tc := range []struct {
		sa                                    string
		verb, group, resource, sub, namespace string
		name                                  string
		allowed                               bool
	}{
		{sa: agent, verb: "watch", resource: "pods", allowed: true},
		{sa: agent, verb: "patch", resource: "pods", namespace: app, name: "web-1", allowed: true},
		{sa: agent, verb: "update", resource: "pods", namespace: app, name: "web-1"},
		{sa: agent, verb: "delete", resource: "pods", namespace: app, name: "web-1"},
		{sa: agent, verb: "create", resource: "pods", namespace: app},
		{sa: agent, verb: "create", resource: "pods", sub: "exec", namespace: app, name: "web-1"},
		{sa: agent, verb: "list", resource: "namespaces", allowed: true},
		{sa: agent, verb: "patch", resource: "namespaces", name: app},
		{sa: agent, verb: "create", resource: "events", namespace: app, allowed: true},
		{sa: agent, verb: "get", resource: "configmaps", namespace: ns, name: "warren-ca-root", allowed: true},
		{sa: agent, verb: "watch", resource: "configmaps", namespace: ns, name: "warren-ca-root", allowed: true},
		{sa: agent, verb: "update", resource: "configmaps", namespace: ns, name: "warren-ca-root"},
		{sa: agent, verb: "list", resource: "configmaps", namespace: ns},
		{sa: agent, verb: "get", resource: "configmaps", namespace: ns, name: "other"},
		{sa: agent, verb: "get", resource: "configmaps", namespace: app, name: "warren-ca-root"},
		{sa: agent, verb: "get", resource: "secrets", namespace: ns, name: "warren-ca"},
		{sa: agent, verb: "list", resource: "secrets"},
		{sa: agent, verb: "get", resource: "services", namespace: ns, name: "warren-controller", allowed: true},
		{sa: agent, verb: "get", resource: "services", namespace: ns, name: "other"},
		{sa: agent, verb: "list", resource: "services", namespace: ns},
		{sa: agent, verb: "get", group: "apps", resource: "daemonsets", namespace: ns, name: "warren-agent", allowed: true},
		{sa: agent, verb: "watch", group: "apps", resource: "daemonsets", namespace: ns, name: "warren-agent", allowed: true},
		{sa: agent, verb: "patch", group: "apps", resource: "daemonsets", namespace: ns, name: "warren-agent"},
		{sa: agent, verb: "get", group: "apps", resource: "daemonsets", namespace: "kube-system", name: "warren-agent"},
		{sa: agent, verb: "get", resource: "nodes", name: "node-a"},
		{sa: agent, verb: "create", group: "authentication.k8s.io", resource: "tokenreviews"},

		{sa: ctrl, verb: "list", resource: "pods", allowed: true},
		{sa: ctrl, verb: "get", resource: "pods", namespace: app, name: "web-1", allowed: true},
		{sa: ctrl, verb: "watch", resource: "services", allowed: true},
		{sa: ctrl, verb: "watch", resource: "namespaces", allowed: true},
		{sa: ctrl, verb: "patch", resource: "pods", namespace: app, name: "web-1"},
		{sa: ctrl, verb: "delete", resource: "services", namespace: app, name: "web"},
		{sa: ctrl, verb: "list", group: "discovery.k8s.io", resource: "endpointslices", allowed: true},
		{sa: ctrl, verb: "update", group: "discovery.k8s.io", resource: "endpointslices", namespace: app, name: "web-abc"},
		{sa: ctrl, verb: "watch", group: "security.istio.io", resource: "authorizationpolicies", allowed: true},
		{sa: ctrl, verb: "list", group: "security.istio.io", resource: "peerauthentications", allowed: true},
		{sa: ctrl, verb: "create", group: "security.istio.io", resource: "authorizationpolicies", namespace: app},
		{sa: ctrl, verb: "watch", group: "gateway.networking.k8s.io", resource: "gateways", allowed: true},
		{sa: ctrl, verb: "list", group: "gateway.networking.k8s.io", resource: "httproutes"},
		{sa: ctrl, verb: "create", group: "authentication.k8s.io", resource: "tokenreviews", allowed: true},
		{sa: ctrl, verb: "create", group: "authorization.k8s.io", resource: "subjectaccessreviews"},
		{sa: ctrl, verb: "create", resource: "events", namespace: app, allowed: true},
		{sa: ctrl, verb: "create", group: "coordination.k8s.io", resource: "leases", namespace: ns, allowed: true},
		{sa: ctrl, verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: ns, name: "warren-controller", allowed: true},
		{sa: ctrl, verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: ns, name: "other"},
		{sa: ctrl, verb: "get", group: "coordination.k8s.io", resource: "leases", namespace: "kube-system", name: "warren-controller"},
		{sa: ctrl, verb: "update", resource: "secrets", namespace: ns, name: "warren-ca", allowed: true},
		{sa: ctrl, verb: "watch", resource: "secrets", namespace: ns, name: "warren-ca", allowed: true},
		{sa: ctrl, verb: "delete", resource: "secrets", namespace: ns, name: "warren-ca"},
		{sa: ctrl, verb: "create", resource: "secrets", namespace: ns},
		{sa: ctrl, verb: "list", resource: "secrets", namespace: ns},
		{sa: ctrl, verb: "get", resource: "secrets", namespace: ns, name: "other"},
		{sa: ctrl, verb: "get", resource: "secrets", namespace: "kube-system", name: "warren-ca"},
		{sa: ctrl, verb: "update", resource: "configmaps", namespace: ns, name: "warren-ca-root", allowed: true},
		{sa: ctrl, verb: "update", resource: "configmaps", namespace: ns, name: "other"},
		{sa: ctrl, verb: "create", resource: "configmaps", namespace: ns},
	} {
		what := fmt.Sprintf("%s %s %s", tc.sa, tc.verb, tc.resource)
		if tc.sub != "" {
			what += "/" + tc.sub
		}
		if tc.group != "" {
			what += "." + tc.group
		}
		if tc.namespace != "" || tc.name != "" {
			what += " " + tc.namespace + "/" + tc.name
		}
		t.Run(what, func(t *testing.T) {
			u, groups := user(tc.sa)
			sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
				User: u, Groups: groups,
				ResourceAttributes: &authzv1.ResourceAttributes{
					Namespace: tc.namespace, Verb: tc.verb, Group: tc.group, Resource: tc.resource, Subresource: tc.sub, Name: tc.name,
				},
			}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if sar.Status.Allowed != tc.allowed {
				t.Errorf("allowed = %v, want %v (%s)", sar.Status.Allowed, tc.allowed, sar.Status.Reason)
			}
		})
	}

	// The calls themselves, as the service accounts. The subtle one: list
	// and watch of one named object pass RBAC's resourceNames only with
	// the metadata.name field selector.
	as := func(sa string) kubernetes.Interface {
		cfg := c.RESTConfig()
		u, groups := user(sa)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: u, Groups: groups}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return client
	}
	agentClient, ctrlClient := as(agent), as(ctrl)
	// Objects the service accounts must not reach.
	if _, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "other"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	byName := func(name string) metav1.ListOptions {
		return metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()}
	}
	forbidden := func(err error) error {
		if !apierrors.IsForbidden(err) {
			return fmt.Errorf("got %v, want forbidden", err)
		}
		return nil
	}
	watchOnce := func(w watch.Interface, err error) error {
		if err == nil {
			w.Stop()
		}
		return err
	}
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"agent gets the roots", func() error {
			_, err := agentClient.CoreV1().ConfigMaps(ns).Get(ctx, "warren-ca-root", metav1.GetOptions{})
			return err
		}},
		{"agent lists the roots by name", func() error {
			_, err := agentClient.CoreV1().ConfigMaps(ns).List(ctx, byName("warren-ca-root"))
			return err
		}},
		{"agent watches the roots by name", func() error {
			return watchOnce(agentClient.CoreV1().ConfigMaps(ns).Watch(ctx, byName("warren-ca-root")))
		}},
		{"agent may not list all configmaps", func() error {
			_, err := agentClient.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
			return forbidden(err)
		}},
		{"agent may not read the CA", func() error {
			_, err := agentClient.CoreV1().Secrets(ns).Get(ctx, "warren-ca", metav1.GetOptions{})
			return forbidden(err)
		}},
		{"agent finds the controller", func() error {
			_, err := agentClient.CoreV1().Services(ns).Get(ctx, "warren-controller", metav1.GetOptions{})
			return err
		}},
		{"agent reads its DaemonSet", func() error {
			_, err := agentClient.AppsV1().DaemonSets(ns).Get(ctx, "warren-agent", metav1.GetOptions{})
			return err
		}},
		{"agent watches pods of its node", func() error {
			return watchOnce(agentClient.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=node-a"}))
		}},
		{"controller fills the CA", func() error {
			s, err := ctrlClient.CoreV1().Secrets(ns).Get(ctx, "warren-ca", metav1.GetOptions{})
			if err != nil {
				return err
			}
			s.Data = map[string][]byte{"root.pem": []byte("not a real root")}
			_, err = ctrlClient.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
			return err
		}},
		{"controller watches the CA by name", func() error {
			return watchOnce(ctrlClient.CoreV1().Secrets(ns).Watch(ctx, byName("warren-ca")))
		}},
		{"controller publishes the roots", func() error {
			cm, err := ctrlClient.CoreV1().ConfigMaps(ns).Get(ctx, "warren-ca-root", metav1.GetOptions{})
			if err != nil {
				return err
			}
			cm.Data = map[string]string{"root-cert.pem": "not a real root"}
			_, err = ctrlClient.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
			return err
		}},
		{"controller may not read other secrets", func() error {
			_, err := ctrlClient.CoreV1().Secrets(ns).Get(ctx, "other", metav1.GetOptions{})
			return forbidden(err)
		}},
		{"controller takes the lease", func() error {
			holder := "warren-controller-0"
			l, err := ctrlClient.CoordinationV1().Leases(ns).Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: "warren-controller"},
				Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder},
			}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				l, err = ctrlClient.CoordinationV1().Leases(ns).Get(ctx, "warren-controller", metav1.GetOptions{})
			}
			if err != nil {
				return err
			}
			holder = "warren-controller-1"
			l.Spec.HolderIdentity = &holder
			_, err = ctrlClient.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{})
			return err
		}},
		{"controller reviews tokens", func() error {
			_, err := ctrlClient.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
				Spec: authnv1.TokenReviewSpec{Token: "not-a-token", Audiences: []string{"istio-ca"}},
			}, metav1.CreateOptions{})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); err != nil {
				t.Error(err)
			}
		})
	}
}
