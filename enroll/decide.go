package enroll

import (
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Names Istio ambient uses; they are part of the compatibility surface.
const (
	// DefaultSelector enrols pods and namespaces the way Istio ambient does.
	DefaultSelector = "istio.io/dataplane-mode=ambient"
	// ModeNone on a pod, under the selector's key, opts it out of an
	// enrolled namespace.
	ModeNone = "none"
	// RedirectionAnnotation records on a pod that the agent captures it.
	RedirectionAnnotation = "ambient.istio.io/redirection"
	// RedirectionEnabled is its value while the pod is captured; the
	// annotation is removed when the pod is released.
	RedirectionEnabled = "enabled"
	// sidecarStatusAnnotation is written by Istio's sidecar injector.
	sidecarStatusAnnotation = "sidecar.istio.io/status"
	// sidecarContainer is the injected sidecar's container name.
	sidecarContainer = "istio-proxy"
)

// Selector says which pods are enrolled: those labelled Key=Value, or in a
// namespace labelled so (unless the pod says Key=none). The agent's own pod
// is never enrolled.
type Selector struct {
	Key, Value string
	// AgentNamespace and AgentPodName name the agent's own pod.
	AgentNamespace, AgentPodName string
}

// ParseSelector reads "key=value", e.g. DefaultSelector.
func ParseSelector(s string) (Selector, error) {
	key, value, ok := strings.Cut(s, "=")
	if !ok {
		return Selector{}, fmt.Errorf("enrolment selector %q: want key=value, e.g. %s", s, DefaultSelector)
	}
	var errs []error
	for _, msg := range validation.IsQualifiedName(key) {
		errs = append(errs, fmt.Errorf("key %q: %s", key, msg))
	}
	if value == "" {
		errs = append(errs, errors.New("value is empty"))
	}
	for _, msg := range validation.IsValidLabelValue(value) {
		errs = append(errs, fmt.Errorf("value %q: %s", value, msg))
	}
	if value == ModeNone {
		errs = append(errs, fmt.Errorf("value %q is the opt-out value", ModeNone))
	}
	if err := errors.Join(errs...); err != nil {
		return Selector{}, fmt.Errorf("enrolment selector %q: %w", s, err)
	}
	return Selector{Key: key, Value: value}, nil
}

func (s Selector) String() string { return s.Key + "=" + s.Value }

// Decision is whether a pod is captured, and why, in words for logs and
// status.
type Decision struct {
	Capture bool
	Reason  string
}

// Decide applies the enrolment rules to a pod and its namespace (nil when
// unknown). In order: never host-network pods, the agent's own pod, pods
// with an Istio sidecar or pods that have terminated; then the pod's label
// (Value enrols, "none" opts out), then the namespace's label. A label with
// any other value does not enrol, and the reason says which value was seen.
func Decide(sel Selector, pod *corev1.Pod, ns *corev1.Namespace) Decision {
	no := func(format string, args ...any) Decision { return Decision{Reason: fmt.Sprintf(format, args...)} }
	yes := func(format string, args ...any) Decision {
		return Decision{Capture: true, Reason: fmt.Sprintf(format, args...)}
	}
	if pod == nil {
		return no("no pod")
	}
	if pod.Spec.HostNetwork {
		return no("pod uses the host network")
	}
	if sel.AgentPodName != "" && pod.Namespace == sel.AgentNamespace && pod.Name == sel.AgentPodName {
		return no("pod is the agent itself")
	}
	if _, ok := pod.Annotations[sidecarStatusAnnotation]; ok {
		return no("pod has an Istio sidecar (annotation %s)", sidecarStatusAnnotation)
	}
	if hasContainer(pod, sidecarContainer) {
		return no("pod has an Istio sidecar (container %s)", sidecarContainer)
	}
	if p := pod.Status.Phase; p == corev1.PodSucceeded || p == corev1.PodFailed {
		return no("pod has terminated (phase %s)", p)
	}

	podValue, podLabelled := pod.Labels[sel.Key]
	switch {
	case podLabelled && podValue == sel.Value:
		return yes("pod has label %s", sel)
	case podLabelled && podValue == ModeNone:
		return no("pod opts out with label %s=%s", sel.Key, ModeNone)
	}
	// A pod label with another value decides nothing (as in Istio); the
	// namespace does, and the reason mentions the odd value.
	podNote := ""
	if podLabelled {
		podNote = fmt.Sprintf("; pod label %s=%q ignored: neither %q nor %q", sel.Key, podValue, sel.Value, ModeNone)
	}
	if ns == nil {
		return no("namespace %s is not known%s", pod.Namespace, podNote)
	}
	nsValue, nsLabelled := ns.Labels[sel.Key]
	switch {
	case nsLabelled && nsValue == sel.Value:
		return yes("namespace %s has label %s%s", ns.Name, sel, podNote)
	case nsLabelled && nsValue == ModeNone:
		return no("namespace %s has label %s=%s%s", ns.Name, sel.Key, ModeNone, podNote)
	case nsLabelled:
		return no("%s%s", namespaceProblem(sel, ns), podNote)
	}
	return no("neither the pod nor namespace %s has label %s%s", ns.Name, sel, podNote)
}

// namespaceProblem says why a namespace's selector label, although set,
// enrols nothing: a value that is neither the selector's nor "none", most
// likely a typo. It is "" for a namespace without that problem.
func namespaceProblem(sel Selector, ns *corev1.Namespace) string {
	v, ok := ns.Labels[sel.Key]
	if !ok || v == sel.Value || v == ModeNone {
		return ""
	}
	return fmt.Sprintf("namespace %s has label %s=%q, which is not %q: its pods are not captured", ns.Name, sel.Key, v, sel.Value)
}

func hasContainer(pod *corev1.Pod, name string) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name == name {
			return true
		}
	}
	// Istio's native sidecars are init containers that keep running.
	for _, c := range pod.Spec.InitContainers {
		if c.Name == name {
			return true
		}
	}
	return false
}
