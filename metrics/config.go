package metrics

import (
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/state"
)

// DefaultClusterID is the cluster name Istio uses when none is configured
// (istiod's CLUSTER_ID default), so Warren's series join Istio's.
const DefaultClusterID = "Kubernetes"

// Config configures the metrics.
type Config struct {
	// ClusterID fills source_cluster and destination_cluster for workloads
	// whose state carries no cluster.
	ClusterID string
	// TrustDomain is the mesh's SPIFFE trust domain. Principal labels come
	// from the authenticated identities in each flow.Record, so it is only
	// checked here; it is kept so that the agent configures every package
	// from one value.
	TrustDomain string
}

// DefaultConfig returns Istio's defaults.
func DefaultConfig() Config {
	return Config{ClusterID: DefaultClusterID, TrustDomain: state.DefaultTrustDomain}
}

// Validate reports a missing cluster or a malformed trust domain.
func (c Config) Validate() error {
	var errs []error
	if c.ClusterID == "" {
		errs = append(errs, errors.New("cluster id is empty"))
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		errs = append(errs, fmt.Errorf("trust domain %q: %w", c.TrustDomain, err))
	}
	return errors.Join(errs...)
}
