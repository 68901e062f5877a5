package authz

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/state"
)

// Test fixtures: the destination lives in namespace "server"; the client
// is spiffe://cluster.local/ns/client/sa/app at 10.1.0.5 calling
// 10.2.0.7:8080.
const (
	destNS     = "server"
	clientID   = "spiffe://cluster.local/ns/client/sa/app"
	clientPrin = "cluster.local/ns/client/sa/app"
)

var (
	srcIP = netip.MustParseAddr("10.1.0.5")
	dstIP = netip.MustParseAddr("10.2.0.7")
)

func tlsConn() Conn {
	return Conn{Identity: spiffeid.RequireFromString(clientID), SrcIP: srcIP, DstIP: dstIP, DstPort: 8080}
}

func plainConn() Conn {
	return Conn{SrcIP: srcIP, DstIP: dstIP, DstPort: 8080}
}

func v6Conn() Conn {
	return Conn{Identity: spiffeid.RequireFromString(clientID),
		SrcIP: netip.MustParseAddr("fd00:1::5"), DstIP: netip.MustParseAddr("fd00:2::7"), DstPort: 8080}
}

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, v := range s {
		p, err := ParsePrefix(v)
		if err != nil {
			panic(err)
		}
		out = append(out, p)
	}
	return out
}

func exact(s string) []state.StringMatch  { return []state.StringMatch{{Exact: s}} }
func prefix(s string) []state.StringMatch { return []state.StringMatch{{Prefix: s}} }
func suffix(s string) []state.StringMatch { return []state.StringMatch{{Suffix: s}} }

var presence = []state.StringMatch{{Presence: true}}

// one is a group holding a single rule with a single match.
func one(m state.Match) state.Group {
	return state.Group{Rules: []state.Rule{{Matches: []state.Match{m}}}}
}

type polOpt func(*state.Policy)

func deny(p *state.Policy)   { p.Action = state.ActionDeny }
func dryRun(p *state.Policy) { p.DryRun = true }
func global(p *state.Policy) { p.Scope, p.Namespace = state.ScopeGlobal, DefaultRootNamespace }
func selector(p *state.Policy) {
	p.Scope = state.ScopeWorkloadSelector
}
func inNS(ns string) polOpt { return func(p *state.Policy) { p.Namespace = ns } }
func groups(gs ...state.Group) polOpt {
	return func(p *state.Policy) { p.Groups = gs }
}

// pol is a namespace-scoped ALLOW policy in the destination's namespace
// unless opts say otherwise.
func pol(name string, opts ...polOpt) *state.Policy {
	p := &state.Policy{Name: name, Namespace: destNS, Scope: state.ScopeNamespace, Action: state.ActionAllow}
	for _, o := range opts {
		o(p)
	}
	return p
}

// allowIf is the usual case for field tests: one ALLOW policy with one match.
func allowIf(m state.Match) []*state.Policy {
	return []*state.Policy{pol("allow", groups(one(m)))}
}

// outcome is a Decision with policies named by key, for cmp.Diff.
type outcome struct {
	Allowed        bool
	Reason         flow.Reason
	Policy, DryRun string
}

func summarize(d Decision) outcome {
	o := outcome{Allowed: d.Allowed, Reason: d.Reason}
	if d.Policy != nil {
		o.Policy = d.Policy.Key()
	}
	if d.DryRun != nil {
		o.DryRun = d.DryRun.Key()
	}
	return o
}

var (
	allowed    = outcome{Allowed: true}
	notAllowed = outcome{Reason: flow.ReasonPolicyNotAllowed}
)

func allowedBy(key string) outcome { return outcome{Allowed: true, Policy: key} }
func deniedBy(key string) outcome  { return outcome{Reason: flow.ReasonPolicy, Policy: key} }

const allowKey = destNS + "/allow"

func TestEvaluate(t *testing.T) {
	strict, err := FromPeerAuthentication(peerAuth(t, `
metadata: {name: strict, namespace: server}
spec: {mtls: {mode: STRICT}}`), DefaultRootNamespace)
	if err != nil {
		t.Fatal(err)
	}
	strictExempt, err := FromPeerAuthentication(peerAuth(t, `
metadata: {name: strict-exempt, namespace: server}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: STRICT}
  portLevelMtls: {"9090": {mode: PERMISSIVE}}`), DefaultRootNamespace)
	if err != nil {
		t.Fatal(err)
	}
	spiffeOnly := spiffeid.RequireFromString("spiffe://example.org/custom/workload")

	tests := []struct {
		name     string
		policies []*state.Policy
		// selected are the dest's AuthorizationPolicies keys.
		selected []string
		conn     Conn
		want     outcome
	}{
		// Each field, positive and Not, in an ALLOW policy.
		{"namespaces exact", allowIf(state.Match{Namespaces: exact("client")}), nil, tlsConn(), allowedBy(allowKey)},
		{"namespaces exact mismatch", allowIf(state.Match{Namespaces: exact("other")}), nil, tlsConn(), notAllowed},
		{"namespaces prefix", allowIf(state.Match{Namespaces: prefix("cli")}), nil, tlsConn(), allowedBy(allowKey)},
		{"namespaces prefix mismatch", allowIf(state.Match{Namespaces: prefix("ent")}), nil, tlsConn(), notAllowed},
		{"namespaces suffix", allowIf(state.Match{Namespaces: suffix("ent")}), nil, tlsConn(), allowedBy(allowKey)},
		{"namespaces presence with identity", allowIf(state.Match{Namespaces: presence}), nil, tlsConn(), allowedBy(allowKey)},
		{"namespaces presence plaintext", allowIf(state.Match{Namespaces: presence}), nil, plainConn(), notAllowed},
		{"namespaces exact plaintext", allowIf(state.Match{Namespaces: exact("client")}), nil, plainConn(), notAllowed},
		{"notNamespaces hit", allowIf(state.Match{NotNamespaces: exact("client")}), nil, tlsConn(), notAllowed},
		{"notNamespaces miss", allowIf(state.Match{NotNamespaces: exact("other")}), nil, tlsConn(), allowedBy(allowKey)},
		{"notNamespaces plaintext has no namespace", allowIf(state.Match{NotNamespaces: exact("client")}), nil, plainConn(), allowedBy(allowKey)},
		{"notNamespaces presence plaintext", allowIf(state.Match{NotNamespaces: presence}), nil, plainConn(), allowedBy(allowKey)},
		{"serviceAccounts", allowIf(state.Match{ServiceAccounts: []state.ServiceAccountMatch{{Namespace: "client", ServiceAccount: "app"}}}), nil, tlsConn(), allowedBy(allowKey)},
		{"serviceAccounts same name other namespace", allowIf(state.Match{ServiceAccounts: []state.ServiceAccountMatch{{Namespace: "server", ServiceAccount: "app"}}}), nil, tlsConn(), notAllowed},
		{"serviceAccounts plaintext", allowIf(state.Match{ServiceAccounts: []state.ServiceAccountMatch{{Namespace: "client", ServiceAccount: "app"}}}), nil, plainConn(), notAllowed},
		{"notServiceAccounts hit", allowIf(state.Match{NotServiceAccounts: []state.ServiceAccountMatch{{Namespace: "client", ServiceAccount: "app"}}}), nil, tlsConn(), notAllowed},
		{"notServiceAccounts plaintext", allowIf(state.Match{NotServiceAccounts: []state.ServiceAccountMatch{{Namespace: "client", ServiceAccount: "app"}}}), nil, plainConn(), allowedBy(allowKey)},
		{"principals exact without scheme", allowIf(state.Match{Principals: exact(clientPrin)}), nil, tlsConn(), allowedBy(allowKey)},
		{"principals with spiffe scheme never match", allowIf(state.Match{Principals: exact(clientID)}), nil, tlsConn(), notAllowed},
		{"principals prefix", allowIf(state.Match{Principals: prefix("cluster.local/ns/client/")}), nil, tlsConn(), allowedBy(allowKey)},
		{"principals suffix", allowIf(state.Match{Principals: suffix("/sa/app")}), nil, tlsConn(), allowedBy(allowKey)},
		{"principals suffix mismatch", allowIf(state.Match{Principals: suffix("/sa/other")}), nil, tlsConn(), notAllowed},
		{"principals presence with identity", allowIf(state.Match{Principals: presence}), nil, tlsConn(), allowedBy(allowKey)},
		{"principals presence plaintext", allowIf(state.Match{Principals: presence}), nil, plainConn(), notAllowed},
		{"principals empty exact plaintext", allowIf(state.Match{Principals: exact("")}), nil, plainConn(), notAllowed},
		{"notPrincipals presence plaintext", allowIf(state.Match{NotPrincipals: presence}), nil, plainConn(), allowedBy(allowKey)},
		{"notPrincipals presence with identity", allowIf(state.Match{NotPrincipals: presence}), nil, tlsConn(), notAllowed},
		{"notPrincipals exact hit", allowIf(state.Match{NotPrincipals: exact(clientPrin)}), nil, tlsConn(), notAllowed},
		{"sourceIps ipv4 block", allowIf(state.Match{SourceIPs: prefixes("10.1.0.0/16")}), nil, tlsConn(), allowedBy(allowKey)},
		{"sourceIps ipv4 address mismatch", allowIf(state.Match{SourceIPs: prefixes("10.1.0.6")}), nil, tlsConn(), notAllowed},
		{"sourceIps ipv4 block, v4-mapped source", allowIf(state.Match{SourceIPs: prefixes("10.1.0.0/16")}), nil,
			Conn{SrcIP: netip.MustParseAddr("::ffff:10.1.0.5"), DstIP: dstIP, DstPort: 8080}, allowedBy(allowKey)},
		{"sourceIps ipv6 block", allowIf(state.Match{SourceIPs: prefixes("fd00:1::/64")}), nil, v6Conn(), allowedBy(allowKey)},
		{"sourceIps ipv4 block, ipv6 source", allowIf(state.Match{SourceIPs: prefixes("0.0.0.0/0")}), nil, v6Conn(), notAllowed},
		{"notSourceIps hit", allowIf(state.Match{NotSourceIPs: prefixes("10.0.0.0/8")}), nil, tlsConn(), notAllowed},
		{"notSourceIps miss", allowIf(state.Match{NotSourceIPs: prefixes("192.168.0.0/16")}), nil, tlsConn(), allowedBy(allowKey)},
		{"destinationIps hit", allowIf(state.Match{DestinationIPs: prefixes("10.2.0.7")}), nil, tlsConn(), allowedBy(allowKey)},
		{"destinationIps ipv6 miss", allowIf(state.Match{DestinationIPs: prefixes("fd00:3::/64")}), nil, v6Conn(), notAllowed},
		{"notDestinationIps hit", allowIf(state.Match{NotDestinationIPs: prefixes("10.2.0.0/24")}), nil, tlsConn(), notAllowed},
		{"notDestinationIps ipv6 miss", allowIf(state.Match{NotDestinationIPs: prefixes("fd00:3::/64")}), nil, v6Conn(), allowedBy(allowKey)},
		{"destinationPorts hit", allowIf(state.Match{DestinationPorts: []uint16{80, 8080}}), nil, tlsConn(), allowedBy(allowKey)},
		{"destinationPorts miss", allowIf(state.Match{DestinationPorts: []uint16{80}}), nil, tlsConn(), notAllowed},
		{"notDestinationPorts hit", allowIf(state.Match{NotDestinationPorts: []uint16{8080}}), nil, tlsConn(), notAllowed},
		{"notDestinationPorts miss", allowIf(state.Match{NotDestinationPorts: []uint16{9090}}), nil, tlsConn(), allowedBy(allowKey)},
		{"positive and Not of one field", allowIf(state.Match{Namespaces: prefix("c"), NotNamespaces: exact("client")}), nil, tlsConn(), notAllowed},
		{"fields of a match are AND-ed", allowIf(state.Match{Namespaces: exact("client"), DestinationPorts: []uint16{80}}), nil, tlsConn(), notAllowed},
		{"identity not in Kubernetes form", allowIf(state.Match{Principals: exact("example.org/custom/workload"), NotServiceAccounts: []state.ServiceAccountMatch{{}}}), nil,
			Conn{Identity: spiffeOnly, SrcIP: srcIP, DstIP: dstIP, DstPort: 8080}, allowedBy(allowKey)},

		// How matches, rules and groups combine.
		{"matches of a rule are OR-ed",
			[]*state.Policy{pol("allow", groups(state.Group{Rules: []state.Rule{{Matches: []state.Match{{Namespaces: exact("x")}, {DestinationPorts: []uint16{8080}}}}}}))},
			nil, tlsConn(), allowedBy(allowKey)},
		{"rules of a group are AND-ed",
			[]*state.Policy{pol("allow", groups(state.Group{Rules: []state.Rule{{Matches: []state.Match{{Namespaces: exact("client")}}}, {Matches: []state.Match{{DestinationPorts: []uint16{80}}}}}}))},
			nil, tlsConn(), notAllowed},
		{"groups are OR-ed",
			[]*state.Policy{pol("allow", groups(one(state.Match{DestinationPorts: []uint16{80}}), one(state.Match{Namespaces: exact("client")})))},
			nil, tlsConn(), allowedBy(allowKey)},
		{"empty match never matches", allowIf(state.Match{}), nil, tlsConn(), notAllowed},
		{"rule without matches matches everything",
			[]*state.Policy{pol("allow", groups(state.Group{Rules: []state.Rule{{}}}))}, nil, plainConn(), allowedBy(allowKey)},
		{"group without rules matches everything (rule {})",
			[]*state.Policy{pol("allow", groups(state.Group{}))}, nil, plainConn(), allowedBy(allowKey)},
		{"policy without groups allows nothing", []*state.Policy{pol("allow")}, nil, tlsConn(), notAllowed},

		// Scopes and evaluation order.
		{"no policies", nil, nil, plainConn(), allowed},
		{"only a DENY that does not match", []*state.Policy{pol("d", deny, groups(one(state.Match{Namespaces: exact("x")})))}, nil, tlsConn(), allowed},
		{"matching DENY beats matching ALLOW",
			[]*state.Policy{pol("a", groups(state.Group{})), pol("d", deny, groups(one(state.Match{DestinationPorts: []uint16{8080}})))},
			nil, tlsConn(), deniedBy("server/d")},
		{"ALLOW of another namespace does not apply", []*state.Policy{pol("a", inNS("other"))}, nil, tlsConn(), allowed},
		{"DENY of another namespace does not apply", []*state.Policy{pol("d", deny, inNS("other"), groups(state.Group{}))}, nil, tlsConn(), allowed},
		{"global ALLOW applies to every namespace", []*state.Policy{pol("a", global)}, nil, tlsConn(), notAllowed},
		{"global DENY applies", []*state.Policy{pol("d", global, deny, groups(state.Group{}))}, nil, tlsConn(), deniedBy("istio-system/d")},
		{"namespace ALLOW is checked before global ALLOW",
			[]*state.Policy{pol("a", global, groups(state.Group{})), pol("b", groups(state.Group{}))}, nil, tlsConn(), allowedBy("server/b")},
		{"global ALLOW matches when the namespace's does not",
			[]*state.Policy{pol("a", global, groups(state.Group{})), pol("b")}, nil, tlsConn(), allowedBy("istio-system/a")},
		{"selector policy listed by the workload applies",
			[]*state.Policy{pol("s", selector, deny, groups(state.Group{}))}, []string{"server/s"}, tlsConn(), deniedBy("server/s")},
		{"selector policy not listed does not apply",
			[]*state.Policy{pol("s", selector, deny, groups(state.Group{}))}, nil, tlsConn(), allowed},
		{"selector ALLOW listed makes others deny",
			[]*state.Policy{pol("s", selector, groups(one(state.Match{Namespaces: exact("x")})))}, []string{"server/s"}, tlsConn(), notAllowed},
		{"unknown selector key is skipped", nil, []string{"server/missing"}, tlsConn(), allowed},

		// PeerAuthentication STRICT.
		{"strict denies plaintext", []*state.Policy{strict}, nil, plainConn(), deniedBy("server/converted_peer_authentication_strict")},
		{"strict allows mutual TLS", []*state.Policy{strict}, nil, tlsConn(), allowed},
		{"strict with exempt port: plaintext on it",
			[]*state.Policy{strictExempt}, []string{strictExempt.Key()},
			Conn{SrcIP: srcIP, DstIP: dstIP, DstPort: 9090}, allowed},
		{"strict with exempt port: plaintext elsewhere",
			[]*state.Policy{strictExempt}, []string{strictExempt.Key()}, plainConn(), deniedBy(strictExempt.Key())},

		// Dry run.
		{"dry-run DENY that would deny",
			[]*state.Policy{pol("d", deny, dryRun, groups(state.Group{}))}, nil, tlsConn(),
			outcome{Allowed: true, DryRun: "server/d"}},
		{"dry-run DENY that does not match", []*state.Policy{pol("d", deny, dryRun, groups(one(state.Match{Namespaces: exact("x")})))}, nil, tlsConn(), allowed},
		{"dry-run DENY under an enforced DENY",
			[]*state.Policy{pol("a", deny, dryRun, groups(state.Group{})), pol("b", deny, groups(state.Group{}))}, nil, tlsConn(), deniedBy("server/b")},
		{"dry-run DENY over a matching ALLOW",
			[]*state.Policy{pol("a", groups(state.Group{})), pol("d", deny, dryRun, groups(state.Group{}))}, nil, tlsConn(),
			outcome{Allowed: true, Policy: "server/a", DryRun: "server/d"}},
		{"dry-run ALLOW alone, not matching, would deny",
			[]*state.Policy{pol("a", dryRun, groups(one(state.Match{Namespaces: exact("x")})))}, nil, tlsConn(),
			outcome{Allowed: true, DryRun: "server/a"}},
		{"dry-run ALLOW alone, matching",
			[]*state.Policy{pol("a", dryRun, groups(state.Group{}))}, nil, tlsConn(), allowed},
		{"dry-run ALLOW would allow what enforcement denies",
			[]*state.Policy{pol("a", groups(one(state.Match{Namespaces: exact("x")}))), pol("b", dryRun, groups(state.Group{}))}, nil, tlsConn(),
			outcome{Reason: flow.ReasonPolicyNotAllowed, DryRun: "server/b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dest := &state.Workload{UID: "dest", Name: "dest", Namespace: destNS, IPs: []netip.Addr{dstIP}, AuthorizationPolicies: tt.selected}
			snap, err := state.NewSnapshot("t", []*state.Workload{dest}, nil, tt.policies)
			if err != nil {
				t.Fatal(err)
			}
			got := summarize(Evaluate(snap, dest, tt.conn))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Evaluate (-want +got):\n%s", diff)
			}
			// A workload the snapshot did not index (a copy) takes the
			// path that resolves its keys one by one, to the same answer.
			other := *dest
			if diff := cmp.Diff(tt.want, summarize(Evaluate(snap, &other, tt.conn))); diff != "" {
				t.Errorf("Evaluate(unindexed workload) (-want +got):\n%s", diff)
			}
		})
	}
}

// benchSnapshot has n policies applying to the destination, a third each
// global, namespace and selector, ALLOW and DENY mixed, of which only the
// last ALLOW (in evaluation order) matches: the worst case, every policy
// evaluated.
func benchSnapshot(tb testing.TB, n int) (*state.Snapshot, *state.Workload) {
	tb.Helper()
	dest := &state.Workload{UID: "dest", Name: "dest", Namespace: destNS, IPs: []netip.Addr{dstIP}}
	var pols []*state.Policy
	for i := range n {
		m := state.Match{
			Principals:       exact(fmt.Sprintf("cluster.local/ns/other-%d/sa/app", i)),
			SourceIPs:        prefixes("10.1.0.0/16", "fd00:1::/64"),
			DestinationPorts: []uint16{80, 8080},
		}
		var opts []polOpt
		switch i % 3 {
		case 0:
			opts = append(opts, global)
		case 1:
			// namespace scope: the default
		case 2:
			opts = append(opts, selector)
		}
		if i%4 == 0 {
			opts = append(opts, deny)
		}
		if i == n-1 {
			m.Principals = exact(clientPrin)
			opts = append(opts, selector)
		}
		p := pol(fmt.Sprintf("p%04d", i), append(opts, groups(one(m)))...)
		if p.Scope == state.ScopeWorkloadSelector {
			dest.AuthorizationPolicies = append(dest.AuthorizationPolicies, p.Key())
		}
		pols = append(pols, p)
	}
	snap, err := state.NewSnapshot("bench", []*state.Workload{dest}, nil, pols)
	if err != nil {
		tb.Fatal(err)
	}
	return snap, dest
}

func TestEvaluateNoAllocs(t *testing.T) {
	snap, dest := benchSnapshot(t, 30)
	for _, c := range []Conn{tlsConn(), plainConn(), v6Conn()} {
		var d Decision
		allocs := testing.AllocsPerRun(100, func() { d = Evaluate(snap, dest, c) })
		if allocs != 0 {
			t.Errorf("Evaluate(%v) allocates %.1f times per run, want 0", c.Identity, allocs)
		}
		_ = d
	}
	if d := Evaluate(snap, dest, tlsConn()); !d.Allowed || d.Policy == nil || d.Policy.Name != "p0029" {
		t.Errorf("benchmark setup: got %+v, want allowed by p0029", summarize(d))
	}
}

func BenchmarkEvaluate(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("policies=%d", n), func(b *testing.B) {
			snap, dest := benchSnapshot(b, n)
			c := tlsConn()
			b.ReportAllocs()
			for b.Loop() {
				if d := Evaluate(snap, dest, c); !d.Allowed {
					b.Fatal("denied")
				}
			}
		})
	}
}
