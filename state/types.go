package state

import (
	"fmt"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Protocol is how a workload accepts mesh traffic (Istio's
// workload.TunnelProtocol).
type Protocol string

const (
	// ProtocolHBONE: the workload is captured; peers reach it through HBONE
	// on port 15008.
	ProtocolHBONE Protocol = "HBONE"
	// ProtocolTCP: the workload is not captured; peers reach it with plain TCP.
	ProtocolTCP Protocol = "TCP"
)

// DefaultTrustDomain is Istio's default SPIFFE trust domain.
const DefaultTrustDomain = "cluster.local"

// Workload is one pod (or VM) in the mesh, following Istio's
// istio.workload.Workload. Fields are read-only once in a Snapshot.
type Workload struct {
	UID               string
	Name              string
	Namespace         string
	ServiceAccount    string
	TrustDomain       string
	IPs               []netip.Addr
	Node              string
	Protocol          Protocol
	WorkloadName      string
	WorkloadType      string
	CanonicalName     string
	CanonicalRevision string
	ClusterID         string
	// AuthorizationPolicies are the keys ("<namespace>/<name>") of the
	// workload-selector policies that apply to this workload.
	AuthorizationPolicies []string
	// NetNS is the path of the pod's network namespace; set only for pods
	// on this agent's node that the agent must capture.
	NetNS string

	// id is computed once by NewSnapshot: the identity is needed on every
	// connection and building it allocates.
	id spiffeid.ID
}

// Identity is the workload's SPIFFE ID:
// spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
func (w *Workload) Identity() spiffeid.ID {
	if !w.id.IsZero() {
		return w.id
	}
	id, err := w.buildIdentity()
	if err != nil {
		// NewSnapshot rejects workloads whose names cannot form an ID, so
		// this only happens for a Workload used outside a Snapshot.
		panic("state: workload " + w.UID + " has no valid identity: " + err.Error())
	}
	return id
}

func (w *Workload) buildIdentity() (spiffeid.ID, error) {
	td := w.TrustDomain
	if td == "" {
		td = DefaultTrustDomain
	}
	sa := w.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	trust, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("trust domain %q: %w", td, err)
	}
	return spiffeid.FromSegments(trust, "ns", w.Namespace, "sa", sa)
}

// Captured reports whether traffic to and from the workload is in HBONE.
func (w *Workload) Captured() bool { return w.Protocol == ProtocolHBONE }

// Service is a named set of endpoints behind virtual IPs, following Istio's
// istio.workload.Service.
type Service struct {
	Name      string
	Namespace string
	Hostname  string
	VIPs      []netip.Addr
	// Ports maps a service port to the target port on the endpoints; a
	// target of 0 means "same as the service port".
	Ports map[uint16]uint16
	// Endpoints back the service, in a stable order.
	Endpoints []Endpoint
	// SubjectAltNames, when set, are the identities a client accepts from
	// any endpoint of the service (in addition to the endpoint's own).
	SubjectAltNames []spiffeid.ID
}

// Key is the service's resource name, "<namespace>/<hostname>".
func (s *Service) Key() string { return s.Namespace + "/" + s.Hostname }

// Endpoint is one workload behind a service.
type Endpoint struct {
	WorkloadUID string
	// Ports overrides the service's target ports for this endpoint.
	Ports map[uint16]uint16
}

// TargetPort resolves a service port to the port on endpoint e. ok is false
// when the service does not expose port.
func (s *Service) TargetPort(e Endpoint, port uint16) (target uint16, ok bool) {
	if t, found := e.Ports[port]; found && t != 0 {
		return t, true
	}
	t, found := s.Ports[port]
	if !found {
		return 0, false
	}
	if t == 0 {
		return port, true
	}
	return t, true
}
