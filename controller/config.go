package controller

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/warren-mesh/warren/ca"
)

// Type URLs of the resources the controller builds (COMPAT.md "Workload
// discovery"). Defined here rather than imported from the xDS server so that
// building resources does not depend on serving them.
const (
	addressTypeURL       = "type.googleapis.com/istio.workload.Address"
	authorizationTypeURL = "type.googleapis.com/istio.security.Authorization"
)

// Config configures a Controller and Build.
type Config struct {
	// ClusterID names the cluster in workload uids ("<ClusterID>//Pod/<ns>/<name>")
	// and in Workload.cluster_id; istiod's default is "Kubernetes".
	ClusterID string
	// TrustDomain is the SPIFFE trust domain of every workload.
	TrustDomain string
	// DomainSuffix ends service hostnames: <svc>.<ns>.svc.<DomainSuffix>.
	DomainSuffix string
	// RootNamespace is Istio's meshConfig.rootNamespace: policies there
	// without a selector apply mesh-wide, with one they select workloads in
	// every namespace.
	RootNamespace string
	// WaypointClass is the GatewayClass name of waypoints.
	WaypointClass string
	// Debounce is how long the cluster must stay quiet after a change before
	// the resources are rebuilt; a burst never delays a rebuild by more than
	// maxDelayFactor times this.
	Debounce time.Duration
}

// DefaultConfig returns Istio's defaults.
func DefaultConfig() Config {
	return Config{
		ClusterID:     "Kubernetes",
		TrustDomain:   "cluster.local",
		DomainSuffix:  "cluster.local",
		RootNamespace: "istio-system",
		WaypointClass: "istio-waypoint",
		// 100 ms coalesces a rollout's burst of pod updates into a few
		// rebuilds while keeping a new pod's reachability delay small.
		Debounce: 100 * time.Millisecond,
	}
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if c.ClusterID == "" {
		return errors.New("cluster ID is empty")
	}
	// '/' separates the uid's parts; a cluster ID holding one would make
	// uids ambiguous.
	if strings.Contains(c.ClusterID, "/") {
		return fmt.Errorf("cluster ID %q: must not contain '/'", c.ClusterID)
	}
	if err := ca.ValidateTrustDomain(c.TrustDomain); err != nil {
		return err
	}
	if errs := validation.IsDNS1123Subdomain(c.DomainSuffix); len(errs) > 0 {
		return fmt.Errorf("domain suffix %q: %s", c.DomainSuffix, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Label(c.RootNamespace); len(errs) > 0 {
		return fmt.Errorf("root namespace %q: %s", c.RootNamespace, strings.Join(errs, "; "))
	}
	if c.WaypointClass == "" {
		return errors.New("waypoint class is empty")
	}
	if c.Debounce < 0 {
		return fmt.Errorf("debounce %v: must not be negative", c.Debounce)
	}
	return nil
}
