package state

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
)

func wl(uid, ns, node string, proto Protocol, netns string, ips ...string) *Workload {
	w := &Workload{UID: uid, Name: uid, Namespace: ns, ServiceAccount: "sa", Node: node, Protocol: proto, NetNS: netns}
	for _, ip := range ips {
		w.IPs = append(w.IPs, netip.MustParseAddr(ip))
	}
	return w
}

func TestNewSnapshotRejects(t *testing.T) {
	svc := func(ns, host string, vips ...string) *Service {
		s := &Service{Name: host, Namespace: ns, Hostname: host}
		for _, v := range vips {
			s.VIPs = append(s.VIPs, netip.MustParseAddr(v))
		}
		return s
	}
	cases := []struct {
		name string
		ws   []*Workload
		ss   []*Service
		dup  bool
	}{
		{"duplicate uid", []*Workload{wl("a", "x", "", ProtocolTCP, "", "10.0.0.1"), wl("a", "x", "", ProtocolTCP, "", "10.0.0.2")}, nil, true},
		{"duplicate ip", []*Workload{wl("a", "x", "", ProtocolTCP, "", "10.0.0.1"), wl("b", "x", "", ProtocolTCP, "", "10.0.0.1")}, nil, true},
		{"duplicate service", nil, []*Service{svc("x", "h"), svc("x", "h")}, true},
		{"duplicate vip", nil, []*Service{svc("x", "h1", "10.96.0.1"), svc("x", "h2", "10.96.0.1")}, true},
		{"vip is a workload ip", []*Workload{wl("a", "x", "", ProtocolTCP, "", "10.0.0.1")}, []*Service{svc("x", "h", "10.0.0.1")}, true},
		{"namespace cannot form an identity", []*Workload{wl("a", "Bad/NS", "", ProtocolTCP, "", "10.0.0.1")}, nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewSnapshot("v", tc.ws, tc.ss, nil)
			if err == nil {
				t.Fatal("NewSnapshot accepted invalid input")
			}
			if got := errors.Is(err, ErrDuplicate); got != tc.dup {
				t.Fatalf("errors.Is(%v, ErrDuplicate) = %v, want %v", err, got, tc.dup)
			}
		})
	}
}

func TestSnapshotLookups(t *testing.T) {
	ws := []*Workload{
		wl("b", "x", "node1", ProtocolHBONE, "/run/netns/b", "10.0.0.2"),
		wl("a", "x", "node1", ProtocolHBONE, "/run/netns/a", "10.0.0.1", "fd00::1"),
		wl("c", "x", "node1", ProtocolTCP, "", "10.0.0.3"),
		wl("d", "x", "node2", ProtocolHBONE, "/run/netns/d", "10.0.0.4"),
		wl("e", "x", "node1", ProtocolHBONE, "", "10.0.0.5"),
	}
	s, err := NewSnapshot("v1", ws, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var local []string
	for _, w := range s.LocalWorkloads("node1") {
		local = append(local, w.UID)
	}
	if want := []string{"a", "b"}; !slices.Equal(local, want) {
		t.Errorf("LocalWorkloads(node1) = %v, want %v (captured, with netns, sorted)", local, want)
	}
	if w, ok := s.WorkloadByIP(netip.MustParseAddr("::ffff:10.0.0.1")); !ok || w.UID != "a" {
		t.Errorf("WorkloadByIP(v4-mapped) = %v, %v", w, ok)
	}
	if w, ok := s.WorkloadByIP(netip.MustParseAddr("fd00::1")); !ok || w.UID != "a" {
		t.Errorf("WorkloadByIP(v6) = %v, %v", w, ok)
	}
	if got := ws[1].Identity().String(); got != "spiffe://cluster.local/ns/x/sa/sa" {
		t.Errorf("Identity() = %s", got)
	}
}

func TestStoreSwapNotifiesInOrder(t *testing.T) {
	st := NewStore()
	if st.Load() != Empty {
		t.Fatal("new store does not hold the empty snapshot")
	}
	var seen []string
	st.Subscribe(func(old, new *Snapshot) { seen = append(seen, old.Version+">"+new.Version) })
	for _, v := range []string{"1", "2"} {
		s, _ := NewSnapshot(v, nil, nil, nil)
		st.Swap(s)
	}
	if want := []string{">1", "1>2"}; !slices.Equal(seen, want) {
		t.Fatalf("subscriber saw %v, want %v", seen, want)
	}
	if st.Load().Version != "2" {
		t.Fatalf("Load().Version = %q", st.Load().Version)
	}
}

func TestSnapshotPolicyIndex(t *testing.T) {
	pol := func(ns, name string, scope Scope, action Action) *Policy {
		return &Policy{Name: name, Namespace: ns, Scope: scope, Action: action}
	}
	pols := []*Policy{
		pol("x", "b-allow", ScopeNamespace, ActionAllow),
		pol("x", "a-deny", ScopeNamespace, ActionDeny),
		pol("x", "a-allow", ScopeNamespace, ActionAllow),
		pol("y", "other", ScopeNamespace, ActionAllow),
		pol("istio-system", "mesh", ScopeGlobal, ActionDeny),
		pol("x", "sel", ScopeWorkloadSelector, ActionAllow),
		pol("x", "sel-deny", ScopeWorkloadSelector, ActionDeny),
	}
	a := wl("a", "x", "", ProtocolTCP, "", "10.0.0.1")
	a.AuthorizationPolicies = []string{"x/sel-deny", "x/missing", "x/sel"}
	b := wl("b", "x", "", ProtocolTCP, "", "10.0.0.2")
	s, err := NewSnapshot("v", []*Workload{a, b}, nil, pols)
	if err != nil {
		t.Fatal(err)
	}
	keys := func(ps []*Policy) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Key())
		}
		return out
	}
	check := func(what string, got []*Policy, want ...string) {
		t.Helper()
		if !slices.Equal(keys(got), want) {
			t.Errorf("%s = %v, want %v", what, keys(got), want)
		}
	}
	check("NamespacePolicies(x).Allow", s.NamespacePolicies("x").Allow, "x/a-allow", "x/b-allow")
	check("NamespacePolicies(x).Deny", s.NamespacePolicies("x").Deny, "x/a-deny")
	check("NamespacePolicies(z).Allow", s.NamespacePolicies("z").Allow)
	check("GlobalPolicies().Deny", s.GlobalPolicies().Deny, "istio-system/mesh")
	check("GlobalPolicies().Allow", s.GlobalPolicies().Allow)

	set, ok := s.SelectedPolicies(a)
	if !ok {
		t.Fatal("SelectedPolicies(a): not indexed")
	}
	check("SelectedPolicies(a).Deny", set.Deny, "x/sel-deny")
	check("SelectedPolicies(a).Allow", set.Allow, "x/sel")
	if set, ok := s.SelectedPolicies(b); !ok || len(set.Allow)+len(set.Deny) != 0 {
		t.Errorf("SelectedPolicies(b) = %v, %v; want empty, true", set, ok)
	}
	copyOfA := *a
	if _, ok := s.SelectedPolicies(&copyOfA); ok {
		t.Error("SelectedPolicies(a workload not in the snapshot) reports indexed")
	}
}
