package enroll

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

// Pod is a pod of this node that the agent must capture, with everything
// capturing it takes.
type Pod struct {
	// UID is the workload uid used in xDS, the admin dump and metrics:
	// "<clusterID>//Pod/<namespace>/<name>".
	UID            string
	Name           string
	Namespace      string
	ServiceAccount string
	Node           string
	// NetNS is the path of the pod's network namespace.
	NetNS string
	// IPs are the pod's addresses, sorted.
	IPs []netip.Addr
	// K8sUID is the pod object's metadata.uid; it tells a pod from a later
	// one with the same name.
	K8sUID types.UID
}

func (p Pod) equal(q Pod) bool {
	return p.UID == q.UID && p.Name == q.Name && p.Namespace == q.Namespace &&
		p.ServiceAccount == q.ServiceAccount && p.Node == q.Node && p.NetNS == q.NetNS &&
		slices.Equal(p.IPs, q.IPs) && p.K8sUID == q.K8sUID
}

// WorkloadUID is the workload uid of a Kubernetes pod, as Istio names it.
func WorkloadUID(clusterID, namespace, name string) string {
	return clusterID + "//Pod/" + namespace + "/" + name
}

// parseWorkloadUID splits a workload uid of clusterID into namespace and
// name.
func parseWorkloadUID(clusterID, uid string) (namespace, name string, err error) {
	rest, ok := strings.CutPrefix(uid, clusterID+"//Pod/")
	if ok {
		namespace, name, ok = strings.Cut(rest, "/")
	}
	if !ok || namespace == "" || name == "" || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("%q is not a pod workload uid of cluster %q (want %s)", uid, clusterID, WorkloadUID(clusterID, "<namespace>", "<name>"))
	}
	return namespace, name, nil
}
