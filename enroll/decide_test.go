package enroll

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func testSelector() Selector {
	return Selector{Key: "istio.io/dataplane-mode", Value: "ambient", AgentNamespace: "warren-system", AgentPodName: "warren-agent-x7k2p"}
}

// podOpt changes a test pod.
type podOpt func(*corev1.Pod)

func label(k, v string) podOpt      { return func(p *corev1.Pod) { setMap(&p.Labels, k, v) } }
func annotation(k, v string) podOpt { return func(p *corev1.Pod) { setMap(&p.Annotations, k, v) } }
func hostNetwork() podOpt           { return func(p *corev1.Pod) { p.Spec.HostNetwork = true } }
func phase(ph corev1.PodPhase) podOpt {
	return func(p *corev1.Pod) { p.Status.Phase = ph }
}
func container(name string) podOpt {
	return func(p *corev1.Pod) { p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: name}) }
}
func initContainer(name string) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: name})
	}
}
func named(ns, name string) podOpt {
	return func(p *corev1.Pod) { p.Namespace, p.Name = ns, name }
}

func setMap(m *map[string]string, k, v string) {
	if *m == nil {
		*m = map[string]string{}
	}
	(*m)[k] = v
}

func newPod(opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-0"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func newNamespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func TestDecide(t *testing.T) {
	const key = "istio.io/dataplane-mode"
	ambientNS := newNamespace("shop", map[string]string{key: "ambient"})
	plainNS := newNamespace("shop", nil)
	typoNS := newNamespace("shop", map[string]string{key: "ambiant"})
	noneNS := newNamespace("shop", map[string]string{key: "none"})
	tests := []struct {
		name    string
		sel     Selector
		pod     *corev1.Pod
		ns      *corev1.Namespace
		capture bool
		reason  string // a substring of the reason
	}{
		{name: "namespace enrolled", pod: newPod(), ns: ambientNS, capture: true, reason: "namespace shop has label istio.io/dataplane-mode=ambient"},
		{name: "pod enrolled", pod: newPod(label(key, "ambient")), ns: plainNS, capture: true, reason: "pod has label"},
		{name: "pod enrolled, namespace unknown", pod: newPod(label(key, "ambient")), ns: nil, capture: true},
		{name: "pod enrolled in opted-out namespace", pod: newPod(label(key, "ambient")), ns: noneNS, capture: true},
		{name: "pod opts out", pod: newPod(label(key, "none")), ns: ambientNS, reason: "pod opts out with label istio.io/dataplane-mode=none"},
		{name: "nothing enrolled", pod: newPod(), ns: plainNS, reason: "neither the pod nor namespace shop has label istio.io/dataplane-mode=ambient"},
		{name: "namespace label misspelt", pod: newPod(), ns: typoNS, reason: `namespace shop has label istio.io/dataplane-mode="ambiant", which is not "ambient"`},
		{name: "namespace opts out", pod: newPod(), ns: noneNS, reason: "namespace shop has label istio.io/dataplane-mode=none"},
		{name: "pod label misspelt, namespace enrolled", pod: newPod(label(key, "ambiant")), ns: ambientNS, capture: true, reason: `pod label istio.io/dataplane-mode="ambiant" ignored`},
		{name: "pod label misspelt, namespace not enrolled", pod: newPod(label(key, "ambiant")), ns: plainNS, reason: `pod label istio.io/dataplane-mode="ambiant" ignored`},
		{name: "namespace unknown", pod: newPod(), ns: nil, reason: "namespace shop is not known"},
		{name: "host network", pod: newPod(hostNetwork(), label(key, "ambient")), ns: ambientNS, reason: "host network"},
		{name: "sidecar container", pod: newPod(container("istio-proxy")), ns: ambientNS, reason: "container istio-proxy"},
		{name: "native sidecar", pod: newPod(initContainer("istio-proxy")), ns: ambientNS, reason: "container istio-proxy"},
		{name: "sidecar annotation", pod: newPod(annotation("sidecar.istio.io/status", `{"containers":["x"]}`)), ns: ambientNS, reason: "annotation sidecar.istio.io/status"},
		{name: "agent's own pod", pod: newPod(named("warren-system", "warren-agent-x7k2p"), label(key, "ambient")), ns: ambientNS, reason: "the agent itself"},
		{name: "another pod of the agent's namespace", pod: newPod(named("warren-system", "web")), ns: newNamespace("warren-system", map[string]string{key: "ambient"}), capture: true},
		{name: "succeeded", pod: newPod(phase(corev1.PodSucceeded)), ns: ambientNS, reason: "terminated (phase Succeeded)"},
		{name: "failed", pod: newPod(phase(corev1.PodFailed)), ns: ambientNS, reason: "terminated (phase Failed)"},
		{name: "pending pod", pod: newPod(phase(corev1.PodPending)), ns: ambientNS, capture: true},
		{name: "no pod", pod: nil, ns: ambientNS, reason: "no pod"},
		{
			name: "custom selector", sel: Selector{Key: "mesh.example.com/capture", Value: "yes"},
			pod: newPod(), ns: newNamespace("shop", map[string]string{"mesh.example.com/capture": "yes", key: "none"}), capture: true,
		},
		{
			name: "custom selector ignores istio's label", sel: Selector{Key: "mesh.example.com/capture", Value: "yes"},
			pod: newPod(label(key, "ambient")), ns: ambientNS,
		},
		{
			name: "custom selector, none opts out", sel: Selector{Key: "mesh.example.com/capture", Value: "yes"},
			pod: newPod(label("mesh.example.com/capture", "none")), ns: newNamespace("shop", map[string]string{"mesh.example.com/capture": "yes"}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel := tt.sel
			if sel.Key == "" {
				sel = testSelector()
			}
			d := Decide(sel, tt.pod, tt.ns)
			if d.Capture != tt.capture {
				t.Errorf("Capture = %v, want %v (reason %q)", d.Capture, tt.capture, d.Reason)
			}
			if d.Reason == "" || !strings.Contains(d.Reason, tt.reason) {
				t.Errorf("Reason = %q, want it to contain %q", d.Reason, tt.reason)
			}
		})
	}
}

func TestParseSelector(t *testing.T) {
	tests := []struct {
		in      string
		want    Selector
		wantErr string
	}{
		{in: DefaultSelector, want: Selector{Key: "istio.io/dataplane-mode", Value: "ambient"}},
		{in: "mesh=on", want: Selector{Key: "mesh", Value: "on"}},
		{in: "istio.io/dataplane-mode", wantErr: "want key=value"},
		{in: "=ambient", wantErr: "key"},
		{in: "istio.io/dataplane-mode=", wantErr: "value is empty"},
		{in: "istio.io/dataplane-mode=none", wantErr: "opt-out value"},
		{in: "bad key!=x", wantErr: `key "bad key!"`},
		{in: "k=bad value", wantErr: `value "bad value"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSelector(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSelector(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseSelector(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestWorkloadUID(t *testing.T) {
	uid := WorkloadUID("Kubernetes", "shop", "web-0")
	if uid != "Kubernetes//Pod/shop/web-0" {
		t.Fatalf("WorkloadUID = %q", uid)
	}
	ns, name, err := parseWorkloadUID("Kubernetes", uid)
	if err != nil || ns != "shop" || name != "web-0" {
		t.Fatalf("parseWorkloadUID = %q, %q, %v", ns, name, err)
	}
	for _, bad := range []string{"Other//Pod/shop/web-0", "Kubernetes//Pod/shop", "Kubernetes//Pod//web", "Kubernetes//Pod/a/b/c", "shop/web-0"} {
		if _, _, err := parseWorkloadUID("Kubernetes", bad); err == nil {
			t.Errorf("parseWorkloadUID(%q) succeeded", bad)
		}
	}
}
