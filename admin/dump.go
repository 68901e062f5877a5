package admin

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/identity"
	"github.com/warren-mesh/warren/state"
)

// Dump is the JSON document served at /config_dump. It follows ztunnel's
// config dump, field for field where Warren has the data, so that
// `istioctl ztunnel-config ... --file` reads it; warrenctl decodes it with
// these same types.
type Dump struct {
	Workloads    []Workload    `json:"workloads"`
	Services     []Service     `json:"services"`
	Policies     []Policy      `json:"policies"`
	Certificates []Certificate `json:"certificates"`
	// WorkloadState is keyed by the UID of each pod this agent captures.
	WorkloadState map[string]WorkloadState `json:"workloadState"`
	Config        json.RawMessage          `json:"config,omitempty"`
	Version       BuildInfo                `json:"version"`
	// StateVersion names the snapshot the dump shows (Warren's addition:
	// it tells when a state change has been applied).
	StateVersion string `json:"stateVersion,omitempty"`
}

// Workload is ztunnel's rendering of istio.workload.Workload.
type Workload struct {
	UID                   string            `json:"uid"`
	WorkloadIPs           []string          `json:"workloadIps"`
	Waypoint              *GatewayAddress   `json:"waypoint,omitempty"`
	Protocol              string            `json:"protocol"`
	Name                  string            `json:"name"`
	Namespace             string            `json:"namespace"`
	ServiceAccount        string            `json:"serviceAccount"`
	WorkloadName          string            `json:"workloadName"`
	WorkloadType          string            `json:"workloadType"`
	CanonicalName         string            `json:"canonicalName"`
	CanonicalRevision     string            `json:"canonicalRevision"`
	ClusterID             string            `json:"clusterId"`
	TrustDomain           string            `json:"trustDomain"`
	Locality              Locality          `json:"locality"`
	Node                  string            `json:"node"`
	Status                string            `json:"status"`
	Hostname              string            `json:"hostname"`
	Capacity              uint32            `json:"capacity"`
	ApplicationTunnel     ApplicationTunnel `json:"applicationTunnel"`
	AuthorizationPolicies []string          `json:"authorizationPolicies,omitempty"`
}

// GatewayAddress names a waypoint or gateway as "<namespace>/<hostname>".
type GatewayAddress struct {
	Destination string `json:"destination"`
}

// Locality is where a workload runs; Warren does not track it, so it is
// always empty.
type Locality struct {
	Region  string `json:"region,omitempty"`
	Zone    string `json:"zone,omitempty"`
	Subzone string `json:"subzone,omitempty"`
}

// ApplicationTunnel is how a workload wants tunneled traffic delivered;
// Warren always delivers plain TCP (protocol "").
type ApplicationTunnel struct {
	Protocol string `json:"protocol"`
}

// Service is ztunnel's rendering of istio.workload.Service.
type Service struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Hostname  string `json:"hostname"`
	// VIPs are "<network>/<address>"; Warren has a single, unnamed network.
	VIPs []string `json:"vips"`
	// Ports maps a service port to the target port (0: same port).
	Ports           map[uint16]uint16   `json:"ports"`
	Waypoint        *GatewayAddress     `json:"waypoint,omitempty"`
	Endpoints       map[string]Endpoint `json:"endpoints"`
	SubjectAltNames []string            `json:"subjectAltNames,omitempty"`
	IPFamilies      string              `json:"ipFamilies,omitempty"`
}

// Endpoint is one workload behind a service, with its resolved target ports.
type Endpoint struct {
	WorkloadUID string            `json:"workloadUid"`
	Service     string            `json:"service"`
	Port        map[uint16]uint16 `json:"port"`
}

// Policy is ztunnel's rendering of istio.security.Authorization: Rules is
// rules -> clauses -> matches; a policy matches when any rule does, a rule
// when all its clauses do, a clause when any of its matches does.
type Policy struct {
	Name      string      `json:"name"`
	Namespace string      `json:"namespace"`
	Scope     string      `json:"scope"`
	Action    string      `json:"action"`
	Rules     [][][]Match `json:"rules"`
	DryRun    bool        `json:"dryRun"`
}

// Match is one RBAC match; empty fields are left out, as ztunnel does.
type Match struct {
	Namespaces          []StringMatch         `json:"namespaces,omitempty"`
	NotNamespaces       []StringMatch         `json:"notNamespaces,omitempty"`
	ServiceAccounts     []ServiceAccountMatch `json:"serviceAccounts,omitempty"`
	NotServiceAccounts  []ServiceAccountMatch `json:"notServiceAccounts,omitempty"`
	Principals          []StringMatch         `json:"principals,omitempty"`
	NotPrincipals       []StringMatch         `json:"notPrincipals,omitempty"`
	SourceIPs           []string              `json:"sourceIps,omitempty"`
	NotSourceIPs        []string              `json:"notSourceIps,omitempty"`
	DestinationIPs      []string              `json:"destinationIps,omitempty"`
	NotDestinationIPs   []string              `json:"notDestinationIps,omitempty"`
	DestinationPorts    []uint16              `json:"destinationPorts,omitempty"`
	NotDestinationPorts []uint16              `json:"notDestinationPorts,omitempty"`
}

// StringMatch is rendered the way ztunnel's serde enum is: {"Exact": "x"},
// {"Prefix": "x"}, {"Suffix": "x"} or {"Presence": []}.
type StringMatch struct {
	Exact, Prefix, Suffix string
	Presence              bool
}

// MarshalJSON implements json.Marshaler.
func (m StringMatch) MarshalJSON() ([]byte, error) {
	switch {
	case m.Presence:
		return []byte(`{"Presence":[]}`), nil
	case m.Prefix != "":
		return json.Marshal(map[string]string{"Prefix": m.Prefix})
	case m.Suffix != "":
		return json.Marshal(map[string]string{"Suffix": m.Suffix})
	}
	return json.Marshal(map[string]string{"Exact": m.Exact})
}

// UnmarshalJSON implements json.Unmarshaler.
func (m *StringMatch) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("string match: %w", err)
	}
	if len(raw) != 1 {
		return fmt.Errorf("string match %s: want exactly one key", b)
	}
	*m = StringMatch{}
	for k, v := range raw {
		if k == "Presence" {
			m.Presence = true
			return nil
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return fmt.Errorf("string match %s: %w", k, err)
		}
		switch k {
		case "Exact":
			m.Exact = s
		case "Prefix":
			m.Prefix = s
		case "Suffix":
			m.Suffix = s
		default:
			return fmt.Errorf("string match: unknown kind %q", k)
		}
	}
	return nil
}

// String renders the match for tables: "x", "x*", "*x" or "*".
func (m StringMatch) String() string {
	switch {
	case m.Presence:
		return "*"
	case m.Prefix != "":
		return m.Prefix + "*"
	case m.Suffix != "":
		return "*" + m.Suffix
	}
	return m.Exact
}

// ServiceAccountMatch names one service account.
type ServiceAccountMatch struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
}

// Certificate is one identity's certificate state, as ztunnel dumps it.
// State is "Available", "Initializing" or "Unavailable: <why>".
type Certificate struct {
	Identity  string `json:"identity"`
	State     string `json:"state"`
	CertChain []Cert `json:"certChain"`
	RootCerts []Cert `json:"rootCerts"`
}

// Cert is one X.509 certificate. SerialNumber is decimal and the times are
// RFC 3339 in UTC, as in ztunnel (istioctl parses both).
type Cert struct {
	PEM            string `json:"pem"`
	SerialNumber   string `json:"serialNumber"`
	ValidFrom      string `json:"validFrom"`
	ExpirationTime string `json:"expirationTime"`
}

// WorkloadState is one captured pod: whether its capture is up and the
// connections open for it.
type WorkloadState struct {
	// State is "Up" or "Pending" (ztunnel's values).
	State string `json:"state"`
	// Pending says why the pod is not up.
	Pending     string       `json:"pending,omitempty"`
	NetNS       string       `json:"netns,omitempty"`
	Connections *Connections `json:"connections,omitempty"`
	Info        WorkloadInfo `json:"info"`
}

// Connections are a pod's open connections by direction.
type Connections struct {
	Inbound  []Connection `json:"inbound"`
	Outbound []Connection `json:"outbound"`
}

// Connection is one open connection. OriginalDst is where the client sent
// it; ActualDst is where the agent connected (the peer's tunnel port for
// outbound HBONE, the application for inbound). Protocol is HBONE or TCP.
// The fields after Protocol are Warren's additions.
type Connection struct {
	Src         string `json:"src"`
	OriginalDst string `json:"originalDst"`
	ActualDst   string `json:"actualDst"`
	Protocol    string `json:"protocol"`
	SrcIdentity string `json:"srcIdentity,omitempty"`
	DstIdentity string `json:"dstIdentity,omitempty"`
	Start       string `json:"start,omitempty"`
	Sent        int64  `json:"bytesSent"`
	Received    int64  `json:"bytesReceived"`
}

// WorkloadInfo names a pod.
type WorkloadInfo struct {
	Name           string `json:"name"`
	Namespace      string `json:"namespace"`
	TrustDomain    string `json:"trustDomain"`
	ServiceAccount string `json:"serviceAccount"`
}

// BuildInfo is the agent's version.
type BuildInfo struct {
	Version   string `json:"version"`
	GoVersion string `json:"goVersion"`
}

// PodState is one pod this agent captures, as the agent sees it.
type PodState struct {
	// Workload is the pod as last seen in the state.
	Workload *state.Workload
	// Up is true once the pod's capture rules and listeners are in place.
	Up bool
	// Pending says why the pod is not up yet.
	Pending string
}

// dumpInput is everything a Dump is built from, read once per request.
type dumpInput struct {
	snap   *state.Snapshot
	certs  []identity.CertInfo
	conns  []flow.Record
	pods   []PodState
	config json.RawMessage
	build  BuildInfo
}

// buildDump renders in as a Dump. It has no I/O and its output is in a
// stable order, for golden tests and diffs between two dumps.
func buildDump(in dumpInput) *Dump {
	d := &Dump{
		Workloads:     []Workload{},
		Services:      []Service{},
		Policies:      []Policy{},
		Certificates:  []Certificate{},
		WorkloadState: map[string]WorkloadState{},
		Config:        in.config,
		Version:       in.build,
	}
	snap := in.snap
	if snap == nil {
		snap = state.Empty
	}
	d.StateVersion = snap.Version
	for _, w := range snap.Workloads() {
		d.Workloads = append(d.Workloads, renderWorkload(w))
	}
	for _, s := range snap.Services() {
		d.Services = append(d.Services, renderService(s))
	}
	for _, p := range snap.Policies() {
		d.Policies = append(d.Policies, renderPolicy(p))
	}
	for _, c := range in.certs {
		d.Certificates = append(d.Certificates, renderCert(c))
	}
	slices.SortFunc(d.Certificates, func(a, b Certificate) int { return strings.Compare(a.Identity, b.Identity) })

	for _, p := range in.pods {
		if p.Workload == nil {
			continue
		}
		st := WorkloadState{State: "Pending", Pending: p.Pending, NetNS: p.Workload.NetNS, Info: info(p.Workload)}
		if p.Up {
			st.State, st.Pending = "Up", ""
			st.Connections = &Connections{Inbound: []Connection{}, Outbound: []Connection{}}
		}
		d.WorkloadState[p.Workload.UID] = st
	}
	for i := range in.conns {
		addConnection(d.WorkloadState, &in.conns[i])
	}
	for uid, st := range d.WorkloadState {
		if st.Connections != nil {
			slices.SortFunc(st.Connections.Inbound, compareConn)
			slices.SortFunc(st.Connections.Outbound, compareConn)
		}
		d.WorkloadState[uid] = st
	}
	return d
}

// addConnection files r under the local pod it belongs to: the source for
// outbound, the destination for inbound. A record whose pod the agent does
// not list (it left while the connection is open) gets an entry of its own
// with no state, so no open connection is hidden.
func addConnection(states map[string]WorkloadState, r *flow.Record) {
	local := r.Dest
	if r.Direction == flow.Outbound {
		local = r.Source
	}
	if local == nil {
		return
	}
	st, ok := states[local.UID]
	if !ok {
		st = WorkloadState{Info: info(local), NetNS: local.NetNS}
	}
	if st.Connections == nil {
		st.Connections = &Connections{Inbound: []Connection{}, Outbound: []Connection{}}
	}
	c := Connection{
		Src:         addr(r.Src),
		OriginalDst: addr(r.Dst),
		ActualDst:   addr(r.Target),
		Protocol:    "TCP",
		SrcIdentity: r.SrcIdentity,
		DstIdentity: r.DstIdentity,
		Sent:        r.Sent,
		Received:    r.Received,
	}
	if !r.Start.IsZero() {
		c.Start = r.Start.UTC().Format(time.RFC3339)
	}
	if r.Direction == flow.Outbound {
		if r.Path == flow.PathHBONE {
			c.Protocol = "HBONE"
		}
		st.Connections.Outbound = append(st.Connections.Outbound, c)
	} else {
		if r.MTLS {
			c.Protocol = "HBONE"
		}
		st.Connections.Inbound = append(st.Connections.Inbound, c)
	}
	states[local.UID] = st
}

func compareConn(a, b Connection) int {
	if c := strings.Compare(a.Src, b.Src); c != 0 {
		return c
	}
	if c := strings.Compare(a.OriginalDst, b.OriginalDst); c != 0 {
		return c
	}
	return strings.Compare(a.Start, b.Start)
}

func info(w *state.Workload) WorkloadInfo {
	return WorkloadInfo{Name: w.Name, Namespace: w.Namespace, TrustDomain: trustDomain(w), ServiceAccount: serviceAccount(w)}
}

// trustDomain and serviceAccount are the values the workload's identity is
// built from (state fills in defaults for empty fields).
func trustDomain(w *state.Workload) string {
	if w.TrustDomain == "" {
		return state.DefaultTrustDomain
	}
	return w.TrustDomain
}

func serviceAccount(w *state.Workload) string {
	if w.ServiceAccount == "" {
		return "default"
	}
	return w.ServiceAccount
}

func renderWorkload(w *state.Workload) Workload {
	out := Workload{
		UID:               w.UID,
		WorkloadIPs:       addrs(w.IPs),
		Protocol:          string(w.Protocol),
		Name:              w.Name,
		Namespace:         w.Namespace,
		ServiceAccount:    serviceAccount(w),
		WorkloadName:      w.WorkloadName,
		WorkloadType:      w.WorkloadType,
		CanonicalName:     w.CanonicalName,
		CanonicalRevision: w.CanonicalRevision,
		ClusterID:         w.ClusterID,
		TrustDomain:       trustDomain(w),
		Node:              w.Node,
		// Warren keeps no health: a workload in the state is a usable one.
		Status: "Healthy",
		// Every workload counts once when balancing (ztunnel's default).
		Capacity:              1,
		AuthorizationPolicies: slices.Clone(w.AuthorizationPolicies),
	}
	if out.Protocol == "" {
		out.Protocol = string(state.ProtocolTCP)
	}
	return out
}

func renderService(s *state.Service) Service {
	out := Service{
		Name:      s.Name,
		Namespace: s.Namespace,
		Hostname:  s.Hostname,
		VIPs:      make([]string, 0, len(s.VIPs)),
		Ports:     make(map[uint16]uint16, len(s.Ports)),
		Endpoints: make(map[string]Endpoint, len(s.Endpoints)),
	}
	var v4, v6 bool
	for _, ip := range s.VIPs {
		// ztunnel prefixes each VIP with its network; Warren's is unnamed.
		out.VIPs = append(out.VIPs, "/"+ip.String())
		v4, v6 = v4 || ip.Is4(), v6 || ip.Is6()
	}
	switch {
	case v4 && v6:
		out.IPFamilies = "Dual"
	case v4:
		out.IPFamilies = "IPv4"
	case v6:
		out.IPFamilies = "IPv6"
	}
	for p, t := range s.Ports {
		out.Ports[p] = t
	}
	for _, e := range s.Endpoints {
		ports := make(map[uint16]uint16, len(s.Ports))
		for p := range s.Ports {
			if t, ok := s.TargetPort(e, p); ok {
				ports[p] = t
			}
		}
		out.Endpoints[e.WorkloadUID] = Endpoint{WorkloadUID: e.WorkloadUID, Service: s.Key(), Port: ports}
	}
	for _, id := range s.SubjectAltNames {
		out.SubjectAltNames = append(out.SubjectAltNames, id.String())
	}
	return out
}

func renderPolicy(p *state.Policy) Policy {
	out := Policy{
		Name:      p.Name,
		Namespace: p.Namespace,
		Scope:     p.Scope.String(),
		Action:    p.Action.String(),
		Rules:     make([][][]Match, 0, len(p.Groups)),
		DryRun:    p.DryRun,
	}
	for _, g := range p.Groups {
		clauses := make([][]Match, 0, len(g.Rules))
		for _, r := range g.Rules {
			matches := make([]Match, 0, len(r.Matches))
			for _, m := range r.Matches {
				matches = append(matches, renderMatch(m))
			}
			clauses = append(clauses, matches)
		}
		out.Rules = append(out.Rules, clauses)
	}
	return out
}

func renderMatch(m state.Match) Match {
	return Match{
		Namespaces:          stringMatches(m.Namespaces),
		NotNamespaces:       stringMatches(m.NotNamespaces),
		ServiceAccounts:     saMatches(m.ServiceAccounts),
		NotServiceAccounts:  saMatches(m.NotServiceAccounts),
		Principals:          stringMatches(m.Principals),
		NotPrincipals:       stringMatches(m.NotPrincipals),
		SourceIPs:           prefixes(m.SourceIPs),
		NotSourceIPs:        prefixes(m.NotSourceIPs),
		DestinationIPs:      prefixes(m.DestinationIPs),
		NotDestinationIPs:   prefixes(m.NotDestinationIPs),
		DestinationPorts:    slices.Clone(m.DestinationPorts),
		NotDestinationPorts: slices.Clone(m.NotDestinationPorts),
	}
}

func stringMatches(in []state.StringMatch) []StringMatch {
	var out []StringMatch
	for _, m := range in {
		out = append(out, StringMatch{Exact: m.Exact, Prefix: m.Prefix, Suffix: m.Suffix, Presence: m.Presence})
	}
	return out
}

func saMatches(in []state.ServiceAccountMatch) []ServiceAccountMatch {
	var out []ServiceAccountMatch
	for _, m := range in {
		out = append(out, ServiceAccountMatch{Namespace: m.Namespace, ServiceAccount: m.ServiceAccount})
	}
	return out
}

func prefixes(in []netip.Prefix) []string {
	var out []string
	for _, p := range in {
		out = append(out, p.String())
	}
	return out
}

// renderCert maps identity's states onto ztunnel's: pending before the
// first failure is Initializing, pending after one and expired are
// Unavailable with the reason. The chain (leaf first) and the roots carry
// their PEM, as in the sample dump.
func renderCert(c identity.CertInfo) Certificate {
	out := Certificate{Identity: c.ID.String()}
	switch c.State {
	case identity.StateValid:
		out.State = "Available"
	case identity.StateExpired:
		out.State = "Unavailable: certificate expired"
		if c.LastError != "" {
			out.State += ": " + c.LastError
		}
	default:
		out.State = "Initializing"
		if c.LastError != "" {
			out.State = "Unavailable: " + c.LastError
		}
	}
	if c.State != identity.StateValid && c.State != identity.StateExpired {
		return out
	}
	if len(c.Chain) == 0 {
		// Only the leaf's facts are known.
		out.CertChain = []Cert{{
			SerialNumber:   decimalSerial(c.Serial),
			ValidFrom:      rfc3339(c.NotBefore),
			ExpirationTime: rfc3339(c.NotAfter),
		}}
		return out
	}
	for _, cert := range c.Chain {
		out.CertChain = append(out.CertChain, renderX509(cert))
	}
	for _, cert := range c.Roots {
		out.RootCerts = append(out.RootCerts, renderX509(cert))
	}
	return out
}

func renderX509(c *x509.Certificate) Cert {
	return Cert{
		PEM:            string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})),
		SerialNumber:   c.SerialNumber.String(),
		ValidFrom:      rfc3339(c.NotBefore),
		ExpirationTime: rfc3339(c.NotAfter),
	}
}

// decimalSerial converts identity's hex serial to the decimal form ztunnel
// uses; it keeps the input if it is not hex.
func decimalSerial(hex string) string {
	n, ok := new(big.Int).SetString(hex, 16)
	if !ok {
		return hex
	}
	return n.String()
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func addrs(ips []netip.Addr) []string {
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, ip.String())
	}
	return out
}

func addr(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
