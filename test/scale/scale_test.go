package scale

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"istio.io/istio/pkg/workloadapi"
	clientfeatures "k8s.io/client-go/features"

	"github.com/warren-mesh/warren/state"
	"github.com/warren-mesh/warren/xds"
)

// TestMain stops what the benchmarks share, then checks that nothing is
// left running.
func TestMain(m *testing.M) {
	if err := disableWatchList(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	closeShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left running: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// disableWatchList makes informers list, then watch, instead of
// streaming the list in a watch (client-go's WatchListClient, on by
// default). The fake clientsets cannot stream a list, and Istio's
// generated informers, unlike client-go's, do not let the fake tell the
// reflector so: they would wait forever for the bookmark that ends the
// list.
func disableWatchList() error {
	gates, ok := clientfeatures.FeatureGates().(interface {
		Set(clientfeatures.Feature, bool) error
	})
	if !ok {
		return fmt.Errorf("client-go feature gates (%T) cannot be set", clientfeatures.FeatureGates())
	}
	if err := gates.Set(clientfeatures.WatchListClient, false); err != nil {
		return fmt.Errorf("disabling client-go's %s: %w", clientfeatures.WatchListClient, err)
	}
	return nil
}

// smallTimeout bounds each wait of TestScaleSmall; the changes arrive in
// tens of milliseconds.
const smallTimeout = 30 * time.Second

// TestScaleSmall runs the benchmarks' setup at a small size and checks
// that it is right: every agent ends with exactly the controller's
// workloads, services and policies, a changed, deleted or added pod
// reaches every agent, and nothing is left running.
func TestScaleSmall(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	// Registered first, so run last: after the plane and agents stopped.
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	c, err := generate(small)
	if err != nil {
		t.Fatal(err)
	}
	p, err := startPlane(c, 10*time.Millisecond, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	first := p.sink.firstBuild()
	if want := (summary{workloads: small.Pods, services: small.Services, authorizations: small.Policies}); first.workloads != want.workloads ||
		first.services != want.services || first.authorizations != want.authorizations {
		t.Fatalf("controller built %d workloads, %d services, %d authorizations; want %d, %d, %d",
			first.workloads, first.services, first.authorizations, want.workloads, want.services, want.authorizations)
	}

	f, err := newFleet(p.addr, 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.stop)
	if n := f.expect(hasAll(first)); n != 0 {
		t.Fatalf("%d agents hold the full state before connecting", n)
	}
	if err := f.start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.wait(smallTimeout); err != nil {
		t.Fatalf("initial sync: %v", err)
	}
	sameAsController(t, p, f)
	checkPods(t, p, f, []int{0, 9, 19, 123, small.Pods - 1})

	t.Run("label", func(t *testing.T) {
		for range 2 { // on, then off again
			ch, err := p.toggleCanary(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := propagate(ctx, p, f, ch, smallTimeout); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("delete", func(t *testing.T) {
		// Pod 42 is ready, so that it was an endpoint to lose.
		if !ready(42) {
			t.Fatal("pod 42 is not ready; pick a ready pod")
		}
		if _, err := propagate(ctx, p, f, p.deletePod(42), smallTimeout); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("add", func(t *testing.T) {
		ch, pod := p.addPod(small.Pods)
		if _, err := propagate(ctx, p, f, ch, smallTimeout); err != nil {
			t.Fatal(err)
		}
		for i, st := range f.stores {
			w, _ := st.Load().Workload(p.uid(pod.Namespace, pod.Name))
			if want := []netip.Addr{netip.MustParseAddr(pod.Status.PodIP)}; !slices.Equal(w.IPs, want) {
				t.Errorf("agent %d: new pod's IPs %v, want %v", i, w.IPs, want)
			}
		}
	})
	// Nothing else drifted on the way.
	sameAsController(t, p, f)
}

// sameAsController checks that every agent holds exactly the workloads,
// services and policies of the controller's last build.
func sameAsController(t *testing.T, p *plane, f *fleet) {
	t.Helper()
	addrs, err := p.sink.set(xds.TypeAddress)
	if err != nil {
		t.Fatal(err)
	}
	authzs, err := p.sink.set(xds.TypeAuthorization)
	if err != nil {
		t.Fatal(err)
	}
	var workloads, services []string
	for name, m := range addrs {
		if _, ok := m.(*workloadapi.Address).GetType().(*workloadapi.Address_Workload); ok {
			workloads = append(workloads, name)
		} else {
			services = append(services, name)
		}
	}
	slices.Sort(workloads)
	slices.Sort(services)
	policies := slices.Sorted(maps.Keys(authzs))
	for i, st := range f.stores {
		s := st.Load()
		got := keys(s.Workloads(), func(w *state.Workload) string { return w.UID })
		if d := cmp.Diff(workloads, got); d != "" {
			t.Errorf("agent %d: workloads differ from the controller's (-controller +agent):\n%s", i, d)
		}
		got = keys(s.Services(), (*state.Service).Key)
		if d := cmp.Diff(services, got); d != "" {
			t.Errorf("agent %d: services differ from the controller's (-controller +agent):\n%s", i, d)
		}
		got = keys(s.Policies(), (*state.Policy).Key)
		if d := cmp.Diff(policies, got); d != "" {
			t.Errorf("agent %d: policies differ from the controller's (-controller +agent):\n%s", i, d)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

func keys[T any](items []T, key func(T) string) []string {
	out := make([]string, 0, len(items))
	for _, it := range items {
		out = append(out, key(it))
	}
	return out
}

// checkPods compares what the agents hold of the given generated pods
// with the pods themselves.
func checkPods(t *testing.T, p *plane, f *fleet, idx []int) {
	t.Helper()
	for _, i := range idx {
		pod := p.cluster.pods[i]
		uid, svc := p.uid(pod.Namespace, pod.Name), p.serviceKey(i%len(p.cluster.services))
		want := state.ProtocolTCP
		if captured(i) {
			want = state.ProtocolHBONE
		}
		for a, st := range f.stores {
			s := st.Load()
			w, ok := s.Workload(uid)
			if !ok {
				t.Errorf("agent %d: pod %d (%s) missing", a, i, uid)
				continue
			}
			if ip := netip.MustParseAddr(pod.Status.PodIP); !slices.Equal(w.IPs, []netip.Addr{ip}) {
				t.Errorf("agent %d: pod %d IPs %v, want [%s]", a, i, w.IPs, ip)
			}
			if w.Node != pod.Spec.NodeName || w.Protocol != want || w.ServiceAccount != pod.Spec.ServiceAccountName {
				t.Errorf("agent %d: pod %d on node %q, protocol %s, service account %q; want %q, %s, %q",
					a, i, w.Node, w.Protocol, w.ServiceAccount, pod.Spec.NodeName, want, pod.Spec.ServiceAccountName)
			}
			if got := isEndpoint(s, svc, uid); got != ready(i) {
				t.Errorf("agent %d: pod %d is an endpoint of %s: %v, want %v (ready)", a, i, svc, got, ready(i))
			}
		}
	}
}

func TestPercentile(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		var out []time.Duration
		for _, n := range ns {
			out = append(out, time.Duration(n)*time.Millisecond)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		q    float64
		want time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one", ms(7), 0.99, 7 * time.Millisecond},
		{"median of odd", ms(3, 1, 2), 0.5, 2 * time.Millisecond},
		{"median of even is the lower", ms(4, 1, 3, 2), 0.5, 2 * time.Millisecond},
		{"p99 of 20 is the largest", ms(20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1), 0.99, 20 * time.Millisecond},
		{"p0 is the smallest", ms(5, 3, 9), 0, 3 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.in, tc.q); got != tc.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tc.in, tc.q, got, tc.want)
			}
		})
	}
}
