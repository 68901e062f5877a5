package admin

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/identity"
	"github.com/warren-mesh/warren/state"
)

// fakeSource is a fixed two-node mesh modelled on the reference sample:
// pod x (a/x) calls service y (b/y) through the waypoint's node; x and y are
// local to this agent, z is still pending.
type fakeSource struct {
	mu      sync.Mutex
	snap    *state.Snapshot
	certs   []identity.CertInfo
	conns   []flow.Record
	pods    []PodState
	pending []string
}

var _ Source = (*fakeSource)(nil)

func (f *fakeSource) Snapshot() *state.Snapshot         { return f.snap }
func (f *fakeSource) Certificates() []identity.CertInfo { return f.certs }
func (f *fakeSource) Connections() []flow.Record        { return f.conns }
func (f *fakeSource) LocalPods() []PodState             { return f.pods }
func (f *fakeSource) Pending() []string                 { f.mu.Lock(); defer f.mu.Unlock(); return f.pending }
func (f *fakeSource) setPending(p ...string)            { f.mu.Lock(); defer f.mu.Unlock(); f.pending = p }

var (
	fixedStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fixedEnd   = time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)
)

func newFakeSource(t *testing.T) *fakeSource {
	t.Helper()
	x := &state.Workload{
		UID: "Kubernetes//Pod/a/x-7d4b9c-abcde", Name: "x-7d4b9c-abcde", Namespace: "a", ServiceAccount: "x",
		IPs: []netip.Addr{netip.MustParseAddr("10.0.0.10")}, Node: "node-1", Protocol: state.ProtocolHBONE,
		WorkloadName: "x", WorkloadType: "deployment", CanonicalName: "x", CanonicalRevision: "v1", ClusterID: "Kubernetes",
		AuthorizationPolicies: []string{"a/allow-b"}, NetNS: "/var/run/netns/x",
	}
	y := &state.Workload{
		UID: "Kubernetes//Pod/b/y-5f6c7d-fghij", Name: "y-5f6c7d-fghij", Namespace: "b", ServiceAccount: "y",
		TrustDomain: "cluster.local", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.20")}, Node: "node-1", Protocol: state.ProtocolHBONE,
		WorkloadName: "y", WorkloadType: "deployment", CanonicalName: "y", CanonicalRevision: "v1", ClusterID: "Kubernetes",
		NetNS: "/var/run/netns/y",
	}
	z := &state.Workload{
		UID: "Kubernetes//Pod/c/z-1a2b3c-pqrst", Name: "z-1a2b3c-pqrst", Namespace: "c", ServiceAccount: "z",
		IPs: []netip.Addr{netip.MustParseAddr("10.0.0.40"), netip.MustParseAddr("fd00::40")}, Node: "node-1", Protocol: state.ProtocolHBONE,
		WorkloadName: "z", WorkloadType: "deployment", CanonicalName: "z", CanonicalRevision: "v1", ClusterID: "Kubernetes",
		NetNS: "/var/run/netns/z",
	}
	wp := &state.Workload{
		UID: "Kubernetes//Pod/b/waypoint-66c9-klmno", Name: "waypoint-66c9-klmno", Namespace: "b", ServiceAccount: "waypoint",
		IPs: []netip.Addr{netip.MustParseAddr("10.0.0.30")}, Node: "node-2", Protocol: state.ProtocolTCP,
		WorkloadName: "waypoint", WorkloadType: "deployment", CanonicalName: "waypoint", CanonicalRevision: "latest", ClusterID: "Kubernetes",
	}
	svcY := &state.Service{
		Name: "y", Namespace: "b", Hostname: "y.b.svc.cluster.local",
		VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")}, Ports: map[uint16]uint16{80: 8080},
		Endpoints: []state.Endpoint{{WorkloadUID: y.UID}},
	}
	svcWP := &state.Service{
		Name: "waypoint", Namespace: "b", Hostname: "waypoint.b.svc.cluster.local",
		VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.30")}, Ports: map[uint16]uint16{15008: 0, 15021: 15021},
		Endpoints:       []state.Endpoint{{WorkloadUID: wp.UID}},
		SubjectAltNames: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/waypoint")},
	}
	svcZ := &state.Service{
		Name: "z", Namespace: "c", Hostname: "z.c.svc.cluster.local",
		VIPs:  []netip.Addr{netip.MustParseAddr("10.96.0.40"), netip.MustParseAddr("fd00:96::40")},
		Ports: map[uint16]uint16{443: 8443}, Endpoints: []state.Endpoint{{WorkloadUID: z.UID, Ports: map[uint16]uint16{443: 9443}}},
	}
	allowB := &state.Policy{
		Name: "allow-b", Namespace: "a", Scope: state.ScopeWorkloadSelector, Action: state.ActionAllow,
		Groups: []state.Group{{Rules: []state.Rule{{Matches: []state.Match{{
			Principals:       []state.StringMatch{{Exact: "cluster.local/ns/b/sa/y"}},
			DestinationPorts: []uint16{8080},
		}}}}}},
	}
	denyNothing := &state.Policy{Name: "deny-nothing", Namespace: "istio-system", Scope: state.ScopeGlobal, Action: state.ActionDeny}
	nsPolicy := &state.Policy{
		Name: "ns-rules", Namespace: "c", Scope: state.ScopeNamespace, Action: state.ActionDeny, DryRun: true,
		Groups: []state.Group{{Rules: []state.Rule{
			{Matches: []state.Match{
				{Namespaces: []state.StringMatch{{Prefix: "team-"}}, NotServiceAccounts: []state.ServiceAccountMatch{{Namespace: "c", ServiceAccount: "admin"}}},
				{Principals: []state.StringMatch{{Presence: true}}, NotPrincipals: []state.StringMatch{{Suffix: "/sa/robot"}}},
			}},
			{Matches: []state.Match{{
				SourceIPs:         []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")},
				NotDestinationIPs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}, NotDestinationPorts: []uint16{22},
				ServiceAccounts: []state.ServiceAccountMatch{{Namespace: "a", ServiceAccount: "x"}},
			}}},
		}}},
	}
	snap, err := state.NewSnapshot("file:sha256:0123", []*state.Workload{x, y, z, wp},
		[]*state.Service{svcY, svcWP, svcZ}, []*state.Policy{allowB, denyNothing, nsPolicy})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeSource{
		snap: snap,
		certs: []identity.CertInfo{
			{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/c/sa/z"), State: identity.StatePending, LastError: "CA unreachable"},
			{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/x"), State: identity.StateValid,
				Serial: "75bcd15", NotBefore: fixedStart, NotAfter: fixedEnd, RefreshAt: fixedStart.Add(time.Hour), Holders: 1},
			{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/y"), State: identity.StateValid,
				Serial: "1092", NotBefore: fixedStart, NotAfter: fixedEnd, Holders: 2},
		},
		conns: []flow.Record{
			{Source: x, Service: svcY, Direction: flow.Outbound, Path: flow.PathHBONE, MTLS: true,
				Src: netip.MustParseAddrPort("10.0.0.10:40001"), Dst: netip.MustParseAddrPort("10.96.0.20:80"),
				Target: netip.MustParseAddrPort("10.0.0.20:15008"), SrcIdentity: "spiffe://cluster.local/ns/a/sa/x",
				DstIdentity: "spiffe://cluster.local/ns/b/sa/y", Start: fixedStart, Sent: 120, Received: 4096},
			{Source: x, Dest: wp, Direction: flow.Outbound, Path: flow.PathPassthrough,
				Src: netip.MustParseAddrPort("10.0.0.10:40002"), Dst: netip.MustParseAddrPort("10.0.0.30:15021"),
				Target: netip.MustParseAddrPort("10.0.0.30:15021"), Start: fixedStart},
			{Source: x, Dest: y, Direction: flow.Inbound, Path: flow.PathHBONE, MTLS: true,
				Src: netip.MustParseAddrPort("10.0.0.10:40001"), Dst: netip.MustParseAddrPort("10.0.0.20:8080"),
				Target: netip.MustParseAddrPort("10.0.0.20:8080"), SrcIdentity: "spiffe://cluster.local/ns/a/sa/x", Start: fixedStart},
			{Dest: y, Direction: flow.InboundPlain, Path: flow.PathPassthrough,
				Src: netip.MustParseAddrPort("10.1.0.5:50000"), Dst: netip.MustParseAddrPort("10.0.0.20:8080"),
				Target: netip.MustParseAddrPort("10.0.0.20:8080"), Start: fixedStart},
		},
		pods: []PodState{
			{Workload: x, Up: true},
			{Workload: y, Up: true},
			{Workload: z, Pending: "entering netns /var/run/netns/z: no such file or directory"},
		},
	}
}
