package classify

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/state"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
func ip(s string) netip.Addr     { return netip.MustParseAddr(s) }

func testSnapshot(t testing.TB) *state.Snapshot {
	t.Helper()
	ws := []*state.Workload{
		{UID: "client", Name: "client", Namespace: "a", ServiceAccount: "client", IPs: []netip.Addr{ip("10.1.1.11")}, Protocol: state.ProtocolHBONE},
		{UID: "server-1", Name: "server-1", Namespace: "b", ServiceAccount: "server", IPs: []netip.Addr{ip("10.1.2.11")}, Protocol: state.ProtocolHBONE},
		{UID: "server-2", Name: "server-2", Namespace: "b", ServiceAccount: "server", IPs: []netip.Addr{ip("10.1.2.12")}, Protocol: state.ProtocolHBONE},
		{UID: "legacy", Name: "legacy", Namespace: "c", IPs: []netip.Addr{ip("10.1.3.11")}, Protocol: state.ProtocolTCP},
		{UID: "v6", Name: "v6", Namespace: "b", ServiceAccount: "six", IPs: []netip.Addr{ip("fd00::11")}, Protocol: state.ProtocolHBONE},
		{UID: "noip", Name: "noip", Namespace: "b", Protocol: state.ProtocolHBONE},
	}
	ss := []*state.Service{
		{Name: "echo", Namespace: "b", Hostname: "echo.b.svc.cluster.local", VIPs: []netip.Addr{ip("10.96.0.20")},
			Ports: map[uint16]uint16{80: 8080, 81: 0},
			Endpoints: []state.Endpoint{
				{WorkloadUID: "server-1"},
				{WorkloadUID: "server-2", Ports: map[uint16]uint16{80: 9090}},
			},
			SubjectAltNames: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/shared")},
		},
		{Name: "legacy", Namespace: "c", Hostname: "legacy.c.svc.cluster.local", VIPs: []netip.Addr{ip("10.96.0.30")},
			Ports: map[uint16]uint16{80: 8080}, Endpoints: []state.Endpoint{{WorkloadUID: "legacy"}}},
		{Name: "empty", Namespace: "b", Hostname: "empty.b.svc.cluster.local", VIPs: []netip.Addr{ip("10.96.0.40")},
			Ports: map[uint16]uint16{80: 8080}, Endpoints: []state.Endpoint{{WorkloadUID: "gone"}, {WorkloadUID: "noip"}}},
	}
	snap, err := state.NewSnapshot("test", ws, ss, nil)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func TestOutbound(t *testing.T) {
	snap := testSnapshot(t)
	client, _ := snap.Workload("client")
	server := spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/server")
	shared := spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/shared")
	six := spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/six")

	type want struct {
		Action     Action
		Reason     flow.Reason
		Target     netip.AddrPort
		Authority  netip.AddrPort
		Identities []spiffeid.ID
		Dest       string
		Service    string
	}
	cases := []struct {
		name string
		src  *state.Workload
		dst  netip.AddrPort
		pick int
		want want
	}{
		{name: "pod ip in mesh goes direct over HBONE", src: client, dst: ap("10.1.2.11:8080"),
			want: want{Action: HBONE, Target: ap("10.1.2.11:15008"), Authority: ap("10.1.2.11:8080"), Identities: []spiffeid.ID{server}, Dest: "server-1"}},
		{name: "v4-mapped destination is unmapped", src: client, dst: netip.AddrPortFrom(netip.AddrFrom16(ip("10.1.2.12").As16()), 8080),
			want: want{Action: HBONE, Target: ap("10.1.2.12:15008"), Authority: ap("10.1.2.12:8080"), Identities: []spiffeid.ID{server}, Dest: "server-2"}},
		{name: "ipv6 pod", src: client, dst: ap("[fd00::11]:443"),
			want: want{Action: HBONE, Target: ap("[fd00::11]:15008"), Authority: ap("[fd00::11]:443"), Identities: []spiffeid.ID{six}, Dest: "v6"}},
		{name: "service VIP resolves to first endpoint with service target port", src: client, dst: ap("10.96.0.20:80"), pick: 0,
			want: want{Action: HBONE, Target: ap("10.1.2.11:15008"), Authority: ap("10.1.2.11:8080"), Identities: []spiffeid.ID{server, shared}, Dest: "server-1", Service: "b/echo.b.svc.cluster.local"}},
		{name: "service VIP endpoint port override", src: client, dst: ap("10.96.0.20:80"), pick: 1,
			want: want{Action: HBONE, Target: ap("10.1.2.12:15008"), Authority: ap("10.1.2.12:9090"), Identities: []spiffeid.ID{server, shared}, Dest: "server-2", Service: "b/echo.b.svc.cluster.local"}},
		{name: "service target port 0 means same port", src: client, dst: ap("10.96.0.20:81"), pick: 1,
			want: want{Action: HBONE, Target: ap("10.1.2.12:15008"), Authority: ap("10.1.2.12:81"), Identities: []spiffeid.ID{server, shared}, Dest: "server-2", Service: "b/echo.b.svc.cluster.local"}},
		{name: "service port not exposed is denied", src: client, dst: ap("10.96.0.20:443"),
			want: want{Action: Deny, Reason: flow.ReasonNoServicePort, Service: "b/echo.b.svc.cluster.local"}},
		{name: "service without usable endpoints is denied", src: client, dst: ap("10.96.0.40:80"),
			want: want{Action: Deny, Reason: flow.ReasonNoEndpoints, Service: "b/empty.b.svc.cluster.local"}},
		{name: "service backed by TCP workload passes through to the endpoint", src: client, dst: ap("10.96.0.30:80"),
			want: want{Action: Passthrough, Target: ap("10.1.3.11:8080"), Dest: "legacy", Service: "c/legacy.c.svc.cluster.local"}},
		{name: "TCP workload passes through", src: client, dst: ap("10.1.3.11:5432"),
			want: want{Action: Passthrough, Target: ap("10.1.3.11:5432"), Dest: "legacy"}},
		{name: "outside the mesh passes through", src: client, dst: ap("10.200.0.1:443"),
			want: want{Action: Passthrough, Target: ap("10.200.0.1:443")}},
		{name: "HBONE port is a self loop", src: client, dst: ap("10.1.2.11:15008"), want: want{Action: Deny, Reason: flow.ReasonSelfLoop}},
		{name: "outbound port is a self loop", src: client, dst: ap("10.200.0.1:15001"), want: want{Action: Deny, Reason: flow.ReasonSelfLoop}},
		{name: "inbound plaintext port is a self loop", src: client, dst: ap("10.96.0.20:15006"), want: want{Action: Deny, Reason: flow.ReasonSelfLoop}},
		{name: "unknown source is denied", src: nil, dst: ap("10.1.2.11:8080"), want: want{Action: Deny, Reason: flow.ReasonUnknownSource}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(DefaultConfig(), func(n int) int {
				if tc.pick >= n {
					t.Fatalf("pick %d out of %d candidates", tc.pick, n)
				}
				return tc.pick
			})
			if err != nil {
				t.Fatal(err)
			}
			p := c.Outbound(snap, tc.src, tc.dst)
			got := want{Action: p.Action, Reason: p.Reason, Target: p.Target, Authority: p.Authority, Identities: p.Identities}
			if p.Dest != nil {
				got.Dest = p.Dest.UID
			}
			if p.Service != nil {
				got.Service = p.Service.Key()
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateComparable(netip.AddrPort{}, spiffeid.ID{}), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("plan mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"default", DefaultConfig(), true},
		{"no hbone port", Config{Reserved: []uint16{15001}}, false},
		{"hbone port not reserved", Config{HBONEPort: 15008, Reserved: []uint16{15001}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// Direct pod-to-pod classification is on every captured connection; it
// should cost one small allocation (the identity list) at most.
func TestOutboundAllocs(t *testing.T) {
	snap := testSnapshot(t)
	client, _ := snap.Workload("client")
	c, _ := New(DefaultConfig(), func(int) int { return 0 })
	for _, dst := range []netip.AddrPort{ap("10.200.0.1:443"), ap("10.1.2.11:8080"), ap("10.96.0.20:80")} {
		allocs := testing.AllocsPerRun(1000, func() { _ = c.Outbound(snap, client, dst) })
		max := 0.0
		if dst.Addr() != ip("10.200.0.1") {
			max = 2 // identity slice (and its growth for a service SAN)
		}
		if allocs > max {
			t.Errorf("Outbound(%s): %v allocs per run, want <= %v", dst, allocs, max)
		}
	}
}

func BenchmarkOutbound(b *testing.B) {
	snap := testSnapshot(b)
	client, _ := snap.Workload("client")
	c, _ := New(DefaultConfig(), nil)
	for _, bc := range []struct{ name, dst string }{{"pod", "10.1.2.11:8080"}, {"service", "10.96.0.20:80"}, {"passthrough", "10.200.0.1:443"}} {
		dst := ap(bc.dst)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = c.Outbound(snap, client, dst)
			}
		})
	}
}
