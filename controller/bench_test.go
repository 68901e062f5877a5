package controller

import (
	"fmt"
	"runtime"
	"testing"

	"google.golang.org/protobuf/proto"
)

// benchInputs is a cluster of nPods pods in 20 namespaces, nServices
// services each selecting pods by app label (one slice per service), and
// nPolicies AuthorizationPolicies (selector, namespace and global) plus a
// PeerAuthentication per namespace.
func benchInputs(tb testing.TB, nPods, nServices, nPolicies int) Inputs {
	tb.Helper()
	const nNamespaces = 20
	in := Inputs{Config: DefaultConfig()}
	for n := range nNamespaces {
		in.Namespaces = append(in.Namespaces, namespace(fmt.Sprintf("ns-%d", n), "istio.io/dataplane-mode", "ambient"))
	}
	// Apps are spread over the namespaces; pods over the apps.
	appNS := func(a int) string { return fmt.Sprintf("ns-%d", a%nNamespaces) }
	for s := range nServices {
		ns := appNS(s)
		svc := service(ns, fmt.Sprintf("app-%d", s), clusterIPs(fmt.Sprintf("10.96.%d.%d", s/250, s%250+1)),
			selector("app", fmt.Sprintf("app-%d", s)), port("http", 80, 8080), port("grpc", 9090, "grpc"))
		in.Services = append(in.Services, svc)
	}
	podsOf := make([][]string, nServices)
	for i := range nPods {
		app := i % nServices
		ns := appNS(app)
		name := fmt.Sprintf("app-%d-%d", app, i)
		p := pod(ns, name, ips(fmt.Sprintf("10.%d.%d.%d", 1+i/65536, i/256%256, i%256), fmt.Sprintf("fd00::%x", i+1)),
			ready, sa(fmt.Sprintf("app-%d", app)), node(fmt.Sprintf("node-%d", i%50)),
			ownedBy("ReplicaSet", fmt.Sprintf("app-%d-5f7c9", app)),
			podLabels("app", fmt.Sprintf("app-%d", app), "version", "v1", "pod-template-hash", "5f7c9", "team", fmt.Sprintf("team-%d", app%7)),
			annotations("ambient.istio.io/redirection", "enabled"), containerPort("grpc", 9091))
		in.Pods = append(in.Pods, p)
		podsOf[app] = append(podsOf[app], name)
	}
	for s, svc := range in.Services {
		in.EndpointSlices = append(in.EndpointSlices, slice(svc.Namespace, svc.Name, svc.Name+"-abcde", map[string]int32{"http": 8080, "grpc": 9091}, podsOf[s]...))
	}
	for i := range nPolicies {
		ns := appNS(i)
		var y string
		switch i % 10 {
		case 0:
			y = fmt.Sprintf(`{metadata: {name: ns-wide-%d, namespace: %s}, spec: {action: DENY, rules: [{from: [{source: {notNamespaces: [%s, istio-system]}}], to: [{operation: {ports: ["22"]}}]}]}}`, i, ns, ns)
		case 1:
			y = fmt.Sprintf(`{metadata: {name: global-%d, namespace: istio-system}, spec: {action: DENY, rules: [{from: [{source: {ipBlocks: ["203.0.113.0/24"]}}]}]}}`, i)
		default:
			y = fmt.Sprintf(`{metadata: {name: allow-%d, namespace: %s}, spec: {selector: {matchLabels: {app: app-%d}}, action: ALLOW, rules: [{from: [{source: {principals: ["cluster.local/ns/%s/sa/app-%d"], namespaces: [%s]}}], to: [{operation: {ports: ["8080", "9091"]}}]}]}}`,
				i, ns, i%nServices, appNS(i+1), (i+1)%nServices, appNS(i+1))
		}
		in.AuthorizationPolicies = append(in.AuthorizationPolicies, authzPolicy(tb, y))
	}
	for n := range nNamespaces {
		mode := "STRICT"
		if n%4 == 0 {
			mode = "PERMISSIVE"
		}
		in.PeerAuthentications = append(in.PeerAuthentications, peerAuthn(tb, fmt.Sprintf(`{metadata: {name: default, namespace: ns-%d}, spec: {mtls: {mode: %s}}}`, n, mode)))
	}
	return in
}

// Scale of the benchmark: the brief's target cluster.
const (
	benchPods     = 10000
	benchServices = 2000
	benchPolicies = 300
)

func BenchmarkBuild(b *testing.B) {
	in := benchInputs(b, benchPods, benchServices, benchPolicies)
	b.ReportAllocs()
	b.ResetTimer()
	var out Output
	for b.Loop() {
		out = Build(in)
	}
	b.StopTimer()
	if got := len(out.Addresses); got != benchPods+benchServices {
		b.Fatalf("%d addresses, want %d", got, benchPods+benchServices)
	}
	out = Output{}
	held, _ := heldBytes(func() Output { return Build(in) })
	// The inputs must outlive the measurement, or their collection hides
	// what the output holds.
	runtime.KeepAlive(in)
	b.ReportMetric(float64(held), "held-B")
}

// heldBytes is the live heap the result of build keeps, measured across
// forced collections.
func heldBytes(build func() Output) (uint64, Output) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	out := build()
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(out)
	if after.HeapAlloc < before.HeapAlloc {
		return 0, out
	}
	return after.HeapAlloc - before.HeapAlloc, out
}

// heldBudget bounds the memory of the resources of the benchmark's
// cluster: measured at 12.6 MiB, so that a regression that doubles it
// fails.
const heldBudget = 24 << 20

// TestBuildHeldMemory measures what the built resources of a 10,000-pod
// cluster hold, beyond their inputs.
func TestBuildHeldMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 10,000-pod cluster")
	}
	in := benchInputs(t, benchPods, benchServices, benchPolicies)
	held, out := heldBytes(func() Output { return Build(in) })
	t.Logf("%d pods, %d services, %d policies: resources hold %.1f MiB (%d B per address)",
		benchPods, benchServices, benchPolicies, float64(held)/(1<<20), held/uint64(len(out.Addresses)))
	if held > heldBudget {
		t.Errorf("resources hold %d B, over the budget of %d B", held, heldBudget)
	}
	runtime.KeepAlive(out)

	// The controller's incremental builder keeps a memo beside them.
	var inc incremental
	withMemo, out := heldBytes(func() Output { return inc.build(in) })
	t.Logf("with the incremental builder's memo: %.1f MiB", float64(withMemo)/(1<<20))
	if withMemo > heldBudget+heldBudget/2 {
		t.Errorf("resources and memo hold %d B, over the budget of %d B", withMemo, heldBudget+heldBudget/2)
	}
	runtime.KeepAlive(out)
	runtime.KeepAlive(&inc)
	runtime.KeepAlive(in)
}

// BenchmarkEqualBuilds is what a sink pays to find the changes between two
// builds of the benchmark cluster with proto.Equal: a reference for the
// xDS cache's Replace, which runs after every Build.
func BenchmarkEqualBuilds(b *testing.B) {
	in := benchInputs(b, benchPods, benchServices, benchPolicies)
	prev, next := Build(in), Build(in)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		for k, v := range next.Addresses {
			if !proto.Equal(prev.Addresses[k], v) {
				b.Fatalf("%s differs between equal builds", k)
			}
		}
	}
}
