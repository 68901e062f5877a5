package metrics

import (
	"crypto/tls"
	"crypto/x509"
	"errors"

	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/state"
)

// unknown is Istio's value for a label Warren cannot fill.
const unknown = "unknown"

// Indices into labelValues, in the order of trafficLabelNames.
const (
	lReporter = iota
	lSourceWorkload
	lSourceCanonicalService
	lSourceCanonicalRevision
	lSourceWorkloadNamespace
	lSourcePrincipal
	lSourceApp
	lSourceVersion
	lSourceCluster
	lDestinationService
	lDestinationServiceNamespace
	lDestinationServiceName
	lDestinationWorkload
	lDestinationCanonicalService
	lDestinationCanonicalRevision
	lDestinationWorkloadNamespace
	lDestinationPrincipal
	lDestinationApp
	lDestinationVersion
	lDestinationCluster
	lRequestProtocol
	lResponseFlags
	lConnectionSecurityPolicy
	numTrafficLabels
)

// trafficLabelNames are the labels of Istio's TCP metrics, in ztunnel's
// order (src/proxy/metrics.rs CommonTrafficLabels, without the optional
// locality labels). A function, not a package variable, so nothing shared can
// be mutated.
func trafficLabelNames() []string {
	return []string{
		"reporter",
		"source_workload",
		"source_canonical_service",
		"source_canonical_revision",
		"source_workload_namespace",
		"source_principal",
		"source_app",
		"source_version",
		"source_cluster",
		"destination_service",
		"destination_service_namespace",
		"destination_service_name",
		"destination_workload",
		"destination_canonical_service",
		"destination_canonical_revision",
		"destination_workload_namespace",
		"destination_principal",
		"destination_app",
		"destination_version",
		"destination_cluster",
		"request_protocol",
		"response_flags",
		"connection_security_policy",
	}
}

// labelValues holds one value per traffic label; an array so that deriving
// it does not allocate.
type labelValues [numTrafficLabels]string

// responseFlag is the response_flags label: a small closed set, so the label
// cannot grow the number of series.
type responseFlag uint8

const (
	flagNone    responseFlag = iota // "-": the connection ended normally
	flagDeny                        // denied by authorization policy
	flagConnect                     // the next hop could not be reached, or refused the tunnel
	flagTLS                         // mutual TLS could not be established
	numFlags
)

// String returns the label value. ztunnel writes "-", "DENY" and "CONNECT";
// "TLS_FAILURE" is the value COMPAT.md lists for handshake failures.
func (f responseFlag) String() string {
	switch f {
	case flagDeny:
		return "DENY"
	case flagConnect:
		return "CONNECT"
	case flagTLS:
		return "TLS_FAILURE"
	default:
		return "-"
	}
}

// flagOf maps a record's outcome to a response flag. Like ztunnel, any
// failure without a more specific flag counts as a connection failure
// (CONNECT): a connection Warren refused for want of a route or an endpoint
// never reached its destination either.
func flagOf(r *flow.Record) responseFlag {
	if r.Reason.PolicyDenied() {
		return flagDeny
	}
	switch r.Reason {
	case flow.ReasonNone:
		return flagNone
	case flow.ReasonIdentity:
		// No certificate to present: mutual TLS was impossible.
		return flagTLS
	case flow.ReasonUpstreamConnect:
		if isTLSError(r.Err) {
			return flagTLS
		}
		return flagConnect
	default:
		return flagConnect
	}
}

// isTLSError reports whether err came from a TLS handshake: the peer's alert
// (in TLS 1.3 a rejected client certificate shows up this way), a certificate
// that failed verification, or a peer that does not speak TLS. Handshake
// failures raised by a custom verifier carry no type and read CONNECT.
func isTLSError(err error) bool {
	if err == nil {
		return false
	}
	var (
		alert    tls.AlertError
		verify   *tls.CertificateVerificationError
		header   tls.RecordHeaderError
		auth     x509.UnknownAuthorityError
		invalid  x509.CertificateInvalidError
		hostname x509.HostnameError
	)
	return errors.As(err, &alert) || errors.As(err, &verify) || errors.As(err, &header) ||
		errors.As(err, &auth) || errors.As(err, &invalid) || errors.As(err, &hostname)
}

// reporter is "source" for connections this agent captured leaving a local
// pod and "destination" for those it delivered to one, as ztunnel reports.
func reporter(d flow.Direction) string {
	switch d {
	case flow.Outbound:
		return "source"
	case flow.Inbound, flow.InboundPlain:
		return "destination"
	default:
		return unknown
	}
}

// deriveLabels computes the traffic labels of r with response flag f,
// following ztunnel's CommonTrafficLabels: workload labels from the state
// objects, principals from the identities authenticated on the connection,
// and "unknown" for anything missing. It is pure, so it can be cached per
// (state objects, identities) tuple.
func deriveLabels(cfg Config, r *flow.Record, f responseFlag) labelValues {
	var v labelValues
	for i := range v {
		v[i] = unknown
	}
	v[lReporter] = reporter(r.Direction)
	if w := r.Source; w != nil {
		v[lSourceWorkload] = orUnknown(workloadName(w))
		v[lSourceCanonicalService] = orUnknown(canonicalName(w))
		v[lSourceCanonicalRevision] = canonicalRevision(w)
		v[lSourceWorkloadNamespace] = orUnknown(w.Namespace)
		v[lSourceApp] = v[lSourceCanonicalService]
		v[lSourceVersion] = v[lSourceCanonicalRevision]
		v[lSourceCluster] = cluster(cfg, w)
	}
	v[lSourcePrincipal] = orUnknown(r.SrcIdentity)
	if s := r.Service; s != nil {
		v[lDestinationService] = orUnknown(s.Hostname)
		v[lDestinationServiceNamespace] = orUnknown(s.Namespace)
		v[lDestinationServiceName] = orUnknown(s.Name)
	}
	if w := r.Dest; w != nil {
		v[lDestinationWorkload] = orUnknown(workloadName(w))
		v[lDestinationCanonicalService] = orUnknown(canonicalName(w))
		v[lDestinationCanonicalRevision] = canonicalRevision(w)
		v[lDestinationWorkloadNamespace] = orUnknown(w.Namespace)
		v[lDestinationApp] = v[lDestinationCanonicalService]
		v[lDestinationVersion] = v[lDestinationCanonicalRevision]
		v[lDestinationCluster] = cluster(cfg, w)
	}
	v[lDestinationPrincipal] = orUnknown(r.DstIdentity)
	// Warren carries TCP only; it never parses the application protocol.
	v[lRequestProtocol] = "tcp"
	v[lResponseFlags] = f.String()
	v[lConnectionSecurityPolicy] = unknown
	if r.MTLS {
		v[lConnectionSecurityPolicy] = "mutual_tls"
	}
	return v
}

func orUnknown(s string) string {
	if s == "" {
		return unknown
	}
	return s
}

// workloadName is the owning workload (Deployment, ...) when known, else
// the pod's own name.
func workloadName(w *state.Workload) string {
	if w.WorkloadName != "" {
		return w.WorkloadName
	}
	return w.Name
}

// canonicalName is the service.istio.io/canonical-name, which Istio
// defaults to the app label and then the workload name.
func canonicalName(w *state.Workload) string {
	if w.CanonicalName != "" {
		return w.CanonicalName
	}
	return workloadName(w)
}

// canonicalRevision defaults to "latest", as Istio does when a pod has no
// service.istio.io/canonical-revision or version label.
func canonicalRevision(w *state.Workload) string {
	if w.CanonicalRevision != "" {
		return w.CanonicalRevision
	}
	return "latest"
}

func cluster(cfg Config, w *state.Workload) string {
	if w.ClusterID != "" {
		return w.ClusterID
	}
	return orUnknown(cfg.ClusterID)
}
