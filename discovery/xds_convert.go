package discovery

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/warren-mesh/warren/authz"
	"github.com/warren-mesh/warren/state"
	"github.com/warren-mesh/warren/xds"
)

// xdsWorkload is a workload received over xDS with its memberships, which
// become endpoints of the services when a snapshot is built.
type xdsWorkload struct {
	w *state.Workload
	// endpoints is the workload as an endpoint of each service it backs,
	// by service key "<namespace>/<hostname>".
	endpoints map[string]state.Endpoint
	// healthy is false for a workload that is not ready: like ztunnel,
	// Warren keeps it (it may still call out and be called by address) but
	// balances no service traffic to it.
	healthy bool
}

// xdsAddress is a decoded Address resource: a workload or a service.
type xdsAddress struct {
	workload *xdsWorkload
	service  *state.Service
}

// decodeAddress decodes and converts one Address resource. Errors name the
// resource and the field at fault.
func decodeAddress(r *discoveryv3.Resource) (xdsAddress, error) {
	var a workloadapi.Address
	if err := decode(r, xds.TypeAddress, &a); err != nil {
		return xdsAddress{}, err
	}
	switch t := a.GetType().(type) {
	case *workloadapi.Address_Workload:
		w, err := workloadFromProto(r.GetName(), t.Workload)
		return xdsAddress{workload: w}, err
	case *workloadapi.Address_Service:
		s, err := serviceFromProto(r.GetName(), t.Service)
		return xdsAddress{service: s}, err
	}
	return xdsAddress{}, fmt.Errorf("address %q: neither a workload nor a service", r.GetName())
}

// decodeAuthorization decodes and converts one Authorization resource.
func decodeAuthorization(r *discoveryv3.Resource) (*state.Policy, error) {
	var a security.Authorization
	if err := decode(r, xds.TypeAuthorization, &a); err != nil {
		return nil, err
	}
	return policyFromProto(r.GetName(), &a)
}

func decode(r *discoveryv3.Resource, typeURL string, m proto.Message) error {
	body := r.GetResource()
	if body == nil {
		return fmt.Errorf("resource %q: no body", r.GetName())
	}
	if t := body.GetTypeUrl(); t != "" && t != typeURL {
		return fmt.Errorf("resource %q: body is a %s, want %s", r.GetName(), t, typeURL)
	}
	if err := proto.Unmarshal(body.GetValue(), m); err != nil {
		return fmt.Errorf("resource %q: decoding: %w", r.GetName(), err)
	}
	return nil
}

// workloadFromProto converts a Workload sent under resource name name (its
// uid). It has no side effects.
func workloadFromProto(name string, in *workloadapi.Workload) (*xdsWorkload, error) {
	fail := func(field, format string, args ...any) (*xdsWorkload, error) {
		return nil, fmt.Errorf("workload %q: %s: %s", name, field, fmt.Sprintf(format, args...))
	}
	if in.GetUid() == "" {
		return fail("uid", "required")
	}
	if in.GetUid() != name {
		// Removals name the resource; a workload filed under another name
		// could never be removed.
		return fail("uid", "%q differs from the resource name", in.GetUid())
	}
	w := &state.Workload{
		UID:                   in.GetUid(),
		Name:                  in.GetName(),
		Namespace:             in.GetNamespace(),
		ServiceAccount:        in.GetServiceAccount(),
		TrustDomain:           in.GetTrustDomain(),
		Node:                  in.GetNode(),
		WorkloadName:          in.GetWorkloadName(),
		WorkloadType:          workloadType(in.GetWorkloadType()),
		CanonicalName:         in.GetCanonicalName(),
		CanonicalRevision:     in.GetCanonicalRevision(),
		ClusterID:             in.GetClusterId(),
		AuthorizationPolicies: slices.Clone(in.GetAuthorizationPolicies()),
	}
	if w.Namespace == "" {
		return fail("namespace", "required")
	}
	// Checked here, as NewSnapshot would, so that one bad workload is
	// rejected alone instead of failing the whole snapshot.
	if err := checkIdentity(w); err != nil {
		return fail("identity", "%v", err)
	}
	for i, b := range in.GetAddresses() {
		ip, err := addrFromBytes(b)
		if err != nil {
			return fail(fmt.Sprintf("addresses[%d]", i), "%v", err)
		}
		// A repeat (also 10.0.0.1 next to ::ffff:10.0.0.1) would clash
		// with itself in the snapshot's address index.
		if !slices.Contains(w.IPs, ip) {
			w.IPs = append(w.IPs, ip)
		}
	}
	switch p := in.GetTunnelProtocol(); p {
	case workloadapi.TunnelProtocol_HBONE:
		w.Protocol = state.ProtocolHBONE
	case workloadapi.TunnelProtocol_NONE:
		w.Protocol = state.ProtocolTCP
	case workloadapi.TunnelProtocol_LEGACY_ISTIO_MTLS:
		// A sidecar pod. Warren cannot originate Istio's sidecar mTLS
		// (ztunnel cannot either) and sends it plain TCP, which a sidecar
		// accepts unless its PeerAuthentication is STRICT.
		w.Protocol = state.ProtocolTCP
	default:
		return fail("tunnel_protocol", "unknown value %d", int32(p))
	}
	out := &xdsWorkload{w: w, healthy: in.GetStatus() == workloadapi.WorkloadStatus_HEALTHY}
	for key, pl := range in.GetServices() {
		if ns, host, ok := strings.Cut(key, "/"); !ok || ns == "" || host == "" {
			return fail(fmt.Sprintf("services[%q]", key), `want "<namespace>/<hostname>"`)
		}
		ports, err := portMap(pl.GetPorts())
		if err != nil {
			return fail(fmt.Sprintf("services[%q].ports", key), "%v", err)
		}
		if out.endpoints == nil {
			out.endpoints = make(map[string]state.Endpoint)
		}
		out.endpoints[key] = state.Endpoint{WorkloadUID: w.UID, Ports: ports}
	}
	return out, nil
}

// checkIdentity checks that w's names form a SPIFFE ID, with the defaults
// state.Workload applies.
func checkIdentity(w *state.Workload) error {
	td, sa := w.TrustDomain, w.ServiceAccount
	if td == "" {
		td = state.DefaultTrustDomain
	}
	if sa == "" {
		sa = "default"
	}
	trust, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return fmt.Errorf("trust domain %q: %w", td, err)
	}
	_, err = spiffeid.FromSegments(trust, "ns", w.Namespace, "sa", sa)
	return err
}

// workloadType names t as ztunnel's config dump does.
func workloadType(t workloadapi.WorkloadType) string {
	switch t {
	case workloadapi.WorkloadType_DEPLOYMENT:
		return "deployment"
	case workloadapi.WorkloadType_CRONJOB:
		return "cronjob"
	case workloadapi.WorkloadType_POD:
		return "pod"
	case workloadapi.WorkloadType_JOB:
		return "job"
	}
	// Only descriptive (telemetry), so a type newer than this code is kept
	// rather than rejected.
	return strings.ToLower(t.String())
}

// serviceFromProto converts a Service sent under resource name name
// ("<namespace>/<hostname>"). Its endpoints come from the workloads. It has
// no side effects.
func serviceFromProto(name string, in *workloadapi.Service) (*state.Service, error) {
	fail := func(field, format string, args ...any) (*state.Service, error) {
		return nil, fmt.Errorf("service %q: %s: %s", name, field, fmt.Sprintf(format, args...))
	}
	s := &state.Service{Name: in.GetName(), Namespace: in.GetNamespace(), Hostname: in.GetHostname()}
	if s.Namespace == "" {
		return fail("namespace", "required")
	}
	if s.Hostname == "" {
		return fail("hostname", "required")
	}
	if s.Key() != name {
		return fail("hostname", "key %q differs from the resource name", s.Key())
	}
	for i, a := range in.GetAddresses() {
		// The network is not kept: Warren serves one network, where every
		// VIP is reachable.
		ip, err := addrFromBytes(a.GetAddress())
		if err != nil {
			return fail(fmt.Sprintf("addresses[%d].address", i), "%v", err)
		}
		if !slices.Contains(s.VIPs, ip) {
			s.VIPs = append(s.VIPs, ip)
		}
	}
	ports, err := portMap(in.GetPorts())
	if err != nil {
		return fail("ports", "%v", err)
	}
	s.Ports = ports
	for i, san := range in.GetSubjectAltNames() {
		if !strings.HasPrefix(san, "spiffe://") {
			// Only SPIFFE URI SANs identify a peer; skipping any other
			// name accepts fewer peers, never more.
			continue
		}
		id, err := spiffeid.FromString(san)
		if err != nil {
			return fail(fmt.Sprintf("subject_alt_names[%d]", i), "%v", err)
		}
		s.SubjectAltNames = append(s.SubjectAltNames, id)
	}
	return s, nil
}

// policyFromProto converts an Authorization sent under resource name name
// ("<namespace>/<name>").
func policyFromProto(name string, in *security.Authorization) (*state.Policy, error) {
	p, err := authz.FromProto(in)
	if err != nil {
		return nil, fmt.Errorf("authorization %q: %w", name, err)
	}
	if p.Key() != name {
		// Workloads refer to selector policies by this key.
		return nil, fmt.Errorf("authorization %q: namespace/name %q differs from the resource name", name, p.Key())
	}
	return p, nil
}

// addrFromBytes reads a 4- or 16-byte address; IPv4-mapped IPv6 becomes
// IPv4, as the snapshot looks addresses up unmapped.
func addrFromBytes(b []byte) (netip.Addr, error) {
	ip, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, fmt.Errorf("%d bytes, want 4 or 16", len(b))
	}
	return ip.Unmap(), nil
}

// portMap converts service-port -> target-port pairs.
func portMap(ports []*workloadapi.Port) (map[uint16]uint16, error) {
	if len(ports) == 0 {
		return nil, nil
	}
	out := make(map[uint16]uint16, len(ports))
	var errs []error
	for i, p := range ports {
		sp, tp := p.GetServicePort(), p.GetTargetPort()
		switch {
		case sp == 0 || sp > 65535:
			errs = append(errs, fmt.Errorf("[%d].service_port: %d is not a port", i, sp))
		case tp > 65535:
			errs = append(errs, fmt.Errorf("[%d].target_port: %d is not a port", i, tp))
		default:
			if _, dup := out[uint16(sp)]; dup {
				errs = append(errs, fmt.Errorf("[%d].service_port: %d repeated", i, sp))
				continue
			}
			out[uint16(sp)] = uint16(tp)
		}
	}
	return out, errors.Join(errs...)
}
