package controller

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"istio.io/api/annotation"
	"istio.io/api/label"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Values of the istio.io/dataplane-mode label Istio knows.
const (
	dataplaneModeAmbient = "ambient"
	dataplaneModeNone    = "none"
)

// checkNamespaces reports namespaces whose dataplane-mode label Istio would
// not understand: their pods are then not enrolled, which the label's
// author surely did not mean.
func (b *builder) checkNamespaces(namespaces []*corev1.Namespace) {
	for _, ns := range namespaces {
		if msg, ok := checkDataplaneMode(ns.Labels); !ok {
			b.problem(refTo(kindNamespace, "", ns.Name, ns.UID), ReasonUnknownDataplaneMode, msg)
		}
	}
}

func checkDataplaneMode(labels map[string]string) (string, bool) {
	mode, ok := labels[label.IoIstioDataplaneMode.Name]
	if !ok || mode == dataplaneModeAmbient || mode == dataplaneModeNone {
		return "", true
	}
	return fmt.Sprintf("unknown dataplane mode %q in label %s: want %q or %q; pods are not enrolled",
		mode, label.IoIstioDataplaneMode.Name, dataplaneModeAmbient, dataplaneModeNone), false
}

// addPod adds the Workload of p, if it has one, reusing the previous
// build's when neither p nor anything else a workload depends on changed.
func (b *builder) addPod(p *corev1.Pod) {
	name := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
	if m, ok := b.prev.pod(name); ok && b.reuseWorkloads && (m.pod == p || !podChanged(m.pod, p)) {
		b.next.pods[name] = m
		b.out.Problems = append(b.out.Problems, m.problems...)
		if m.resource != nil {
			b.out.Addresses[m.resource.GetWorkload().GetUid()] = m.resource
		}
		return
	}
	first := len(b.out.Problems)
	w := b.podWorkload(p)
	m := podMemo{pod: p, problems: slices.Clone(b.out.Problems[first:])}
	if w != nil {
		m.resource = &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
		b.out.Addresses[w.Uid] = m.resource
	}
	b.next.pods[name] = m
}

// podWorkload converts p following istiod's pod workload builder, or
// returns nil for a pod that is not a workload: without an IP, finished
// (Succeeded or Failed), or, unlike istiod, on the host network: such pods
// share their node's IP, so that a lookup by IP could not tell them apart,
// and they are never captured.
func (b *builder) podWorkload(p *corev1.Pod) *workloadapi.Workload {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil
	}
	addrs, err := podAddresses(p)
	if err != nil {
		b.problem(refTo(kindPod, p.Namespace, p.Name, p.UID), ReasonInvalidAddress, err.Error())
		return nil
	}
	if len(addrs) == 0 {
		return nil
	}
	if msg, ok := checkDataplaneMode(p.Labels); !ok {
		b.problem(refTo(kindPod, p.Namespace, p.Name, p.UID), ReasonUnknownDataplaneMode, msg)
	}
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	w := &workloadapi.Workload{
		Uid:            b.cfg.ClusterID + "//Pod/" + p.Namespace + "/" + p.Name,
		Name:           p.Name,
		Namespace:      p.Namespace,
		Addresses:      addrs,
		ServiceAccount: sa,
		Node:           p.Spec.NodeName,
		TrustDomain:    b.cfg.TrustDomain,
		ClusterId:      b.cfg.ClusterID,
		WorkloadName:   workloadName(p),
		// istiod always says POD ("backwards compatibility"); the owner's
		// kind only shapes WorkloadName.
		WorkloadType: workloadapi.WorkloadType_POD,
		Status:       workloadapi.WorkloadStatus_UNHEALTHY,
	}
	w.CanonicalName, w.CanonicalRevision = canonicalService(p.Labels, w.WorkloadName)
	if podReady(p) && p.DeletionTimestamp == nil {
		w.Status = workloadapi.WorkloadStatus_HEALTHY
	}
	// The node agent writes the annotation once the pod's traffic is
	// redirected; before that, peers must not send it HBONE.
	if p.Annotations[annotation.AmbientRedirection.Name] == "enabled" {
		w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
	}
	w.Services = b.podServices(p)
	w.AuthorizationPolicies = b.podPolicies(p)
	return w
}

// podAddresses parses status.podIPs (status.podIP on old clusters) into 4-
// or 16-byte addresses.
func podAddresses(p *corev1.Pod) ([][]byte, error) {
	n := len(p.Status.PodIPs)
	if n == 0 {
		if p.Status.PodIP == "" {
			return nil, nil
		}
		a, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil {
			return nil, fmt.Errorf("pod IP %q: not an IP address", p.Status.PodIP)
		}
		return [][]byte{a.AsSlice()}, nil
	}
	out := make([][]byte, 0, n)
	for _, ip := range p.Status.PodIPs {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil {
			return nil, fmt.Errorf("pod IP %q: not an IP address", ip.IP)
		}
		out = append(out, a.AsSlice())
	}
	return out, nil
}

func podReady(p *corev1.Pod) bool {
	for i := range p.Status.Conditions {
		if c := &p.Status.Conditions[i]; c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podServices is the Workload's services map: the services whose selector
// selects the pod, then those whose endpoint slices name it (services
// without a selector), as in istiod.
func (b *builder) podServices(p *corev1.Pod) map[string]*workloadapi.PortList {
	var buf [4]*serviceInfo
	selected := b.servicesBySelector.appendSelecting(buf[:0], p.Namespace, p.Labels)
	memberships := b.slicesByPod[types.NamespacedName{Namespace: p.Namespace, Name: p.Name}]
	if len(selected) == 0 && len(memberships) == 0 {
		return nil
	}
	out := make(map[string]*workloadapi.PortList, len(selected)+len(memberships))
	for _, si := range selected {
		out[si.key] = si.portsForPod(p)
	}
	for _, m := range memberships {
		if m.uid != "" && m.uid != p.UID {
			continue
		}
		if _, ok := out[m.svc.key]; ok {
			continue
		}
		out[m.svc.key] = m.svc.portsFromSlice(p, m.ports)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// podPolicies lists the policies selected for the workload: the
// workload-selector AuthorizationPolicies of its namespace and of the root
// namespace, sorted, then the PeerAuthentication-derived ones (istiod's
// order). Namespace and global policies apply by scope and are not listed.
func (b *builder) podPolicies(p *corev1.Pod) []string {
	keys := b.authzBySelector.appendSelecting(nil, p.Namespace, p.Labels)
	if p.Namespace != b.cfg.RootNamespace {
		keys = b.authzBySelector.appendSelecting(keys, b.cfg.RootNamespace, p.Labels)
	}
	slices.Sort(keys)
	return b.peerAuthn.appendKeys(keys, &b.paScratch, p.Namespace, p.Labels)
}

// Labels that name a workload's canonical service and revision, in
// Istio's order of precedence.
var (
	canonicalNameLabels     = []string{"service.istio.io/canonical-name", "app.kubernetes.io/name", "app"}
	canonicalRevisionLabels = []string{"service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"}
)

// canonicalService is Istio's canonical service name and revision: the
// first label present, else the workload name and "latest".
func canonicalService(labels map[string]string, workloadName string) (name, revision string) {
	name, revision = workloadName, "latest"
	for _, k := range canonicalNameLabels {
		if v, ok := labels[k]; ok {
			name = v
			break
		}
	}
	for _, k := range canonicalRevisionLabels {
		if v, ok := labels[k]; ok {
			revision = v
			break
		}
	}
	return name, revision
}

// workloadName is the name of what runs the pod, by istiod's heuristics:
// the service.istio.io/workload-name label; else, for a pod with a
// generated name, its controller's name with the Deployment's
// pod-template-hash (or Argo Rollout's) or a CronJob's timestamp
// stripped, or an OpenShift DeploymentConfig's name; else the pod's name.
func workloadName(p *corev1.Pod) string {
	if wn, ok := p.Labels[label.ServiceWorkloadName.Name]; ok {
		return wn
	}
	if p.GenerateName == "" {
		return p.Name
	}
	ref := metav1.GetControllerOfNoCopy(p)
	if ref == nil || ref.Name == "" {
		return p.Name
	}
	switch ref.Kind {
	case "ReplicaSet":
		for _, l := range []string{"pod-template-hash", "rollouts-pod-template-hash"} {
			if h := p.Labels[l]; h != "" && strings.HasSuffix(ref.Name, h) {
				return strings.TrimSuffix(ref.Name, "-"+h)
			}
		}
	case "ReplicationController":
		if dc := p.Labels["deploymentconfig"]; dc != "" {
			return dc
		}
	case "Job":
		if cron, ok := cronJobName(ref.Name); ok {
			return cron
		}
	}
	return ref.Name
}

// cronJobName strips the "-<8 to 10 digits>" a CronJob appends to its
// Jobs' names (the scheduled time in minutes).
func cronJobName(job string) (string, bool) {
	i := strings.LastIndexByte(job, '-')
	if i <= 0 {
		return "", false
	}
	digits := job[i+1:]
	if len(digits) < 8 || len(digits) > 10 {
		return "", false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return "", false
		}
	}
	return job[:i], true
}
