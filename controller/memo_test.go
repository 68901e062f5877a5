package controller

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// replaceAt returns s with element i replaced by a modified deep copy, the
// way an informer replaces an updated object.
func replaceAt[T interface{ DeepCopy() T }](s []T, i int, mod func(T)) []T {
	s = slices.Clone(s)
	c := s[i].DeepCopy()
	mod(c)
	s[i] = c
	return s
}

func deleteAt[T any](s []T, i int) []T {
	return slices.Delete(slices.Clone(s), i, i+1)
}

// changedAddresses names the resources of next that are not the very
// same object as in prev.
func changedAddresses(prev, next Output) []string {
	var out []string
	for k, v := range next.Addresses {
		if prev.Addresses[k] != v {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// TestIncrementalMatchesBuild applies random informer-style changes and
// checks after each that the incremental build equals a fresh Build.
func TestIncrementalMatchesBuild(t *testing.T) {
	in := benchInputs(t, 80, 12, 20)
	// A service without selector whose endpoints are written by hand.
	in.Services = append(in.Services, service("ns-0", "legacy", clusterIPs("10.96.100.1"), port("http", 80, 8080)))
	in.EndpointSlices = append(in.EndpointSlices, slice("ns-0", "legacy", "legacy-1", map[string]int32{"http": 9000}, in.Pods[0].Name))

	r := rand.New(rand.NewPCG(7, 11))
	mutations := []struct {
		name string
		do   func(in *Inputs)
	}{
		{"pod label", func(in *Inputs) {
			in.Pods = replaceAt(in.Pods, r.IntN(len(in.Pods)), func(p *corev1.Pod) { p.Labels = map[string]string{"app": fmt.Sprintf("app-%d", r.IntN(12))} })
		}},
		{"pod redirection", func(in *Inputs) {
			in.Pods = replaceAt(in.Pods, r.IntN(len(in.Pods)), func(p *corev1.Pod) { p.Annotations = map[string]string{"ambient.istio.io/redirection": "pending"} })
		}},
		{"pod readiness", func(in *Inputs) {
			in.Pods = replaceAt(in.Pods, r.IntN(len(in.Pods)), func(p *corev1.Pod) {
				p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
			})
		}},
		{"pod container status only", func(in *Inputs) {
			in.Pods = replaceAt(in.Pods, r.IntN(len(in.Pods)), func(p *corev1.Pod) {
				p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", RestartCount: 1}}
			})
		}},
		{"pod odd dataplane label", func(in *Inputs) {
			in.Pods = replaceAt(in.Pods, r.IntN(len(in.Pods)), func(p *corev1.Pod) { p.Labels = map[string]string{"istio.io/dataplane-mode": "odd"} })
		}},
		{"pod deleted", func(in *Inputs) { in.Pods = deleteAt(in.Pods, r.IntN(len(in.Pods))) }},
		{"pod added", func(in *Inputs) {
			in.Pods = append(slices.Clone(in.Pods), pod("ns-1", fmt.Sprintf("new-%d", r.Int()), ips(fmt.Sprintf("10.200.0.%d", r.IntN(250))), podLabels("app", "app-1")))
		}},
		{"service selector", func(in *Inputs) {
			in.Services = replaceAt(in.Services, r.IntN(len(in.Services)), func(s *corev1.Service) {
				if len(s.Spec.Selector) > 0 {
					s.Spec.Selector = map[string]string{"team": "team-1"}
				}
			})
		}},
		{"service port", func(in *Inputs) {
			in.Services = replaceAt(in.Services, r.IntN(len(in.Services)), func(s *corev1.Service) { s.Spec.Ports[0].Port++ })
		}},
		{"legacy slice ports", func(in *Inputs) {
			i := slices.IndexFunc(in.EndpointSlices, func(es *discoveryv1.EndpointSlice) bool { return es.Name == "legacy-1" })
			in.EndpointSlices = replaceAt(in.EndpointSlices, i, func(es *discoveryv1.EndpointSlice) { *es.Ports[0].Port++ })
		}},
		{"selector service slice", func(in *Inputs) {
			in.EndpointSlices = replaceAt(in.EndpointSlices, r.IntN(len(in.EndpointSlices)-1), func(es *discoveryv1.EndpointSlice) {
				es.Endpoints = es.Endpoints[:len(es.Endpoints)/2]
			})
		}},
		{"namespace traffic distribution", func(in *Inputs) {
			in.Namespaces = replaceAt(in.Namespaces, r.IntN(len(in.Namespaces)), func(n *corev1.Namespace) {
				n.Annotations = map[string]string{"networking.istio.io/traffic-distribution": "PreferSameNode"}
			})
		}},
		{"policy selector", func(in *Inputs) {
			in.AuthorizationPolicies = replaceAt(in.AuthorizationPolicies, r.IntN(len(in.AuthorizationPolicies)), func(ap *securityv1.AuthorizationPolicy) {
				if ap.Spec.Selector != nil {
					ap.Spec.Selector.MatchLabels = map[string]string{"team": fmt.Sprintf("team-%d", r.IntN(7))}
				}
			})
		}},
		{"policy made invalid", func(in *Inputs) {
			in.AuthorizationPolicies = replaceAt(in.AuthorizationPolicies, r.IntN(len(in.AuthorizationPolicies)), func(ap *securityv1.AuthorizationPolicy) {
				for _, rule := range ap.Spec.Rules {
					for _, to := range rule.To {
						to.Operation.Ports = []string{"http"}
					}
				}
			})
		}},
		{"policy deleted", func(in *Inputs) {
			in.AuthorizationPolicies = deleteAt(in.AuthorizationPolicies, r.IntN(len(in.AuthorizationPolicies)))
		}},
		{"peer authentication mode", func(in *Inputs) {
			in.PeerAuthentications = replaceAt(in.PeerAuthentications, r.IntN(len(in.PeerAuthentications)), func(pa *securityv1.PeerAuthentication) {
				pa.Spec.Mtls.Mode = 3 - pa.Spec.Mtls.Mode // STRICT (2) <-> PERMISSIVE (1)
			})
		}},
		{"config", func(in *Inputs) { in.Config.TrustDomain = fmt.Sprintf("td%d.example", r.IntN(3)) }},
	}

	var inc incremental
	prev := inc.build(in)
	if diff := cmp.Diff(Build(in), prev, protocmp.Transform()); diff != "" {
		t.Fatalf("first incremental build differs (-Build +incremental):\n%s", diff)
	}
	for step := range 150 {
		m := mutations[r.IntN(len(mutations))]
		m.do(&in)
		got := inc.build(in)
		if diff := cmp.Diff(Build(in), got, protocmp.Transform()); diff != "" {
			t.Fatalf("step %d (%s): incremental build differs (-Build +incremental):\n%s", step, m.name, diff)
		}
		prev = got
	}
	_ = prev
}

// TestIncrementalReuses: unchanged objects keep their resource objects, so
// that comparing builds is cheap.
func TestIncrementalReuses(t *testing.T) {
	in := benchInputs(t, 40, 8, 10)
	var inc incremental
	first := inc.build(in)

	t.Run("nothing changed", func(t *testing.T) {
		next := inc.build(in)
		if got := changedAddresses(first, next); len(got) != 0 {
			t.Errorf("new resources for %v", got)
		}
		for k, v := range next.Authorizations {
			if first.Authorizations[k] != v && !proto.Equal(first.Authorizations[k], v) {
				t.Errorf("authorization %s changed", k)
			}
		}
		first = next
	})
	t.Run("irrelevant pod update", func(t *testing.T) {
		in.Pods = replaceAt(in.Pods, 3, func(p *corev1.Pod) { p.ResourceVersion = "99" })
		next := inc.build(in)
		if got := changedAddresses(first, next); len(got) != 0 {
			t.Errorf("new resources for %v", got)
		}
		first = next
	})
	t.Run("one pod's label", func(t *testing.T) {
		in.Pods = replaceAt(in.Pods, 5, func(p *corev1.Pod) { p.Labels["app"] = "elsewhere" })
		next := inc.build(in)
		want := []string{"Kubernetes//Pod/" + in.Pods[5].Namespace + "/" + in.Pods[5].Name}
		if diff := cmp.Diff(want, changedAddresses(first, next)); diff != "" {
			t.Errorf("changed resources (-want +got):\n%s", diff)
		}
		first = next
	})
	t.Run("one service", func(t *testing.T) {
		in.Services = replaceAt(in.Services, 2, func(s *corev1.Service) { s.Spec.Ports[0].Port = 81 })
		next := inc.build(in)
		changed := changedAddresses(first, next)
		if !slices.Contains(changed, in.Services[2].Namespace+"/"+in.Services[2].Name+"."+in.Services[2].Namespace+".svc.cluster.local") {
			t.Errorf("the changed service kept its resource")
		}
		for _, s := range in.Services {
			if k := s.Namespace + "/" + s.Name + "." + s.Namespace + ".svc.cluster.local"; s != in.Services[2] && slices.Contains(changed, k) {
				t.Errorf("unchanged service %s got a new resource", k)
			}
		}
	})
}

// BenchmarkIncrementalBuild is a rebuild after one pod changed, the common
// case during a rollout, plus what a sink pays to compare the builds.
func BenchmarkIncrementalBuild(b *testing.B) {
	in := benchInputs(b, benchPods, benchServices, benchPolicies)
	var inc incremental
	prev := inc.build(in)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		in.Pods = replaceAt(in.Pods, i%len(in.Pods), func(p *corev1.Pod) {
			p.Status.Conditions[0].Status = []corev1.ConditionStatus{corev1.ConditionFalse, corev1.ConditionTrue}[i/len(in.Pods)%2]
		})
		next := inc.build(in)
		changed := 0
		for k, v := range next.Addresses {
			if !proto.Equal(prev.Addresses[k], v) {
				changed++
			}
		}
		if changed != 1 {
			b.Fatalf("%d resources changed, want 1", changed)
		}
		prev = next
	}
}
