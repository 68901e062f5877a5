package flow

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"github.com/warren-mesh/warren/state"
)

// Direction says which side of the tunnel an agent saw a connection on.
type Direction string

const (
	// Outbound: captured from a local pod on 15001.
	Outbound Direction = "outbound"
	// Inbound: arrived for a local pod over HBONE on 15008.
	Inbound Direction = "inbound"
	// InboundPlain: arrived for a local pod in plaintext on 15006.
	InboundPlain Direction = "inbound_plaintext"
)

// Path is how the agent carried a connection.
type Path string

const (
	PathHBONE       Path = "hbone"       // mutual TLS tunnel to the destination's agent
	PathPassthrough Path = "passthrough" // plain TCP: destination not in HBONE
	PathDenied      Path = "denied"      // never opened
)

// Reason says why a connection was refused or failed. The empty Reason means
// none. Values are stable: they appear in logs and metrics.
type Reason string

const (
	ReasonNone Reason = ""
	// ReasonSelfLoop: the destination port is one of the agent's own
	// (15001/15006/15008); forwarding it would loop forever.
	ReasonSelfLoop Reason = "self_loop"
	// ReasonNoServicePort: a service VIP was called on a port the service
	// does not expose.
	ReasonNoServicePort Reason = "no_service_port"
	// ReasonNoEndpoints: the service has no usable endpoint.
	ReasonNoEndpoints Reason = "no_healthy_upstream"
	// ReasonUnknownSource: the capturing pod is no longer in the state.
	ReasonUnknownSource Reason = "unknown_source"
	// ReasonUnknownDestination: inbound traffic for an address this agent
	// does not serve.
	ReasonUnknownDestination Reason = "unknown_destination"
	// ReasonPolicy: denied by authorization policy: a DENY policy matched.
	ReasonPolicy Reason = "policy_denied"
	// ReasonPolicyNotAllowed: denied by authorization policy: ALLOW
	// policies apply to the destination and none matched (ztunnel's
	// "NotAllowed", as opposed to an explicit deny).
	ReasonPolicyNotAllowed Reason = "policy_not_allowed"
	// ReasonUpstreamConnect: the next hop (tunnel or application) could not
	// be reached.
	ReasonUpstreamConnect Reason = "upstream_connect_failed"
	// ReasonTunnelRefused: the peer agent answered the CONNECT with a
	// non-200 status.
	ReasonTunnelRefused Reason = "tunnel_refused"
	// ReasonIdentity: no certificate is available for the source identity.
	ReasonIdentity Reason = "identity_unavailable"
)

// PolicyDenied reports whether the reason is a denial by authorization
// policy (an explicit DENY, or no ALLOW matching).
func (r Reason) PolicyDenied() bool { return r == ReasonPolicy || r == ReasonPolicyNotAllowed }

// Record is what Warren knows about one connection: filled in as the
// connection is decided and opened, completed at close, then written once to
// the access log and counted in metrics.
type Record struct {
	// Source, Dest and Service are the state objects the connection was
	// matched to (nil when unknown), for metric labels and the config dump.
	Source  *state.Workload
	Dest    *state.Workload
	Service *state.Service
	// MTLS is true when the connection was carried in (or arrived over) an
	// HBONE tunnel, i.e. with mutual TLS.
	MTLS bool

	Direction Direction
	Path      Path
	Src, Dst  netip.AddrPort // application's view: client and original destination
	// SrcIdentity and DstIdentity are SPIFFE IDs as authenticated (the
	// peer's certificate inbound, the expected identity outbound); empty
	// when unknown or not mutual TLS.
	SrcIdentity string
	DstIdentity string
	Target      netip.AddrPort
	Sent        int64 // bytes from client to server
	Received    int64 // bytes from server to client
	Start       time.Time
	Duration    time.Duration
	Reason      Reason
	// Policy is the key of the authorization policy that decided, if any;
	// DryRun the key of a dry-run policy that would have decided otherwise.
	Policy string
	DryRun string
	Err    error
}

// Log writes r as one structured record. It is the only log line a
// connection produces.
func (r *Record) Log(ctx context.Context, log *slog.Logger) {
	level := slog.LevelInfo
	if r.Reason != ReasonNone {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("direction", string(r.Direction)),
		slog.String("path", string(r.Path)),
		slog.String("src.addr", addr(r.Src)),
		slog.String("dst.addr", addr(r.Dst)),
		slog.String("src.workload", workloadName(r.Source)),
		slog.String("dst.workload", workloadName(r.Dest)),
		slog.String("src.identity", r.SrcIdentity),
		slog.String("dst.identity", r.DstIdentity),
		slog.String("dst.service", serviceName(r.Service)),
		slog.String("target", addr(r.Target)),
		slog.Int64("bytes_sent", r.Sent),
		slog.Int64("bytes_received", r.Received),
		slog.Float64("duration_ms", float64(r.Duration.Microseconds())/1000),
	}
	if r.Reason != ReasonNone {
		attrs = append(attrs, slog.String("reason", string(r.Reason)))
	}
	if r.Policy != "" {
		attrs = append(attrs, slog.String("policy", r.Policy))
	}
	if r.DryRun != "" {
		attrs = append(attrs, slog.String("dry_run_policy", r.DryRun))
	}
	if r.Err != nil {
		attrs = append(attrs, slog.String("error", r.Err.Error()))
	}
	log.LogAttrs(ctx, level, "connection", attrs...)
}

func addr(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// workloadName is "namespace/name", or "" for nil.
func workloadName(w *state.Workload) string {
	if w == nil {
		return ""
	}
	return w.Namespace + "/" + w.Name
}

// serviceName is the service key "namespace/hostname", or "" for nil.
func serviceName(s *state.Service) string {
	if s == nil {
		return ""
	}
	return s.Key()
}
