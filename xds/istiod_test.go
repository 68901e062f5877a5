package xds_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/api/annotation"
	"istio.io/api/label"
	securityv1beta1 "istio.io/api/security/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pilot/pkg/features"
	istiodtest "istio.io/istio/pilot/test/xds"
	istiotest "istio.io/istio/pkg/test"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/warren-mesh/warren/discovery"
	"github.com/warren-mesh/warren/state"
)

// TestIstiodInterop connects the agent's xDS source to Istio's own
// discovery server (istiod's code, with fake Kubernetes objects), as
// ztunnel would, and checks that the ambient pod, its service and a policy
// arrive, convert and land in the store.
func TestIstiodInterop(t *testing.T) {
	istiotest.SetForTest(t, &features.EnableAmbient, true)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:   "shop",
		Labels: map[string]string{label.IoIstioDataplaneMode.Name: "ambient"},
	}}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "api-0", Namespace: "shop",
			Labels:      map[string]string{"app": "api"},
			Annotations: map[string]string{annotation.AmbientRedirection.Name: "enabled"},
		},
		Spec: corev1.PodSpec{ServiceAccountName: "api", NodeName: "node-1"},
		Status: corev1.PodStatus{
			Phase:  corev1.PodRunning,
			PodIP:  "10.244.1.5",
			PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}},
			Conditions: []corev1.PodCondition{{
				Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now(),
			}},
		},
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "shop"},
		Spec: corev1.ServiceSpec{
			ClusterIP: "10.96.0.20",
			Selector:  map[string]string{"app": "api"},
			Type:      corev1.ServiceTypeClusterIP,
			Ports:     []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}
	policy := &securityclient.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-9000", Namespace: "shop"},
		Spec: securityv1beta1.AuthorizationPolicy{
			Action: securityv1beta1.AuthorizationPolicy_DENY,
			Rules:  []*securityv1beta1.Rule{{To: []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Ports: []string{"9000"}}}}}},
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	istiodtest.NewFakeDiscoveryServer(t, istiodtest.FakeOptions{
		KubernetesObjects: []runtime.Object{ns, pod, svc, policy},
		ListenerBuilder:   func() (net.Listener, error) { return ln, nil },
	})

	// The node and metadata ztunnel sends (istio/ztunnel src/xds/client.rs).
	meta, err := structpb.NewStruct(map[string]any{
		"NAME":         "ztunnel-x1",
		"NAMESPACE":    "istio-system",
		"INSTANCE_IPS": "10.244.1.2",
		"NODE_NAME":    "node-1",
		"CLUSTER_ID":   "Kubernetes",
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := discovery.DefaultXDSConfig()
	cfg.Client.Address = "passthrough:///" + ln.Addr().String()
	cfg.Client.NodeID = "ztunnel~10.244.1.2~ztunnel-x1.istio-system~istio-system.svc.cluster.local"
	cfg.Client.Metadata = meta
	// The fake istiod serves plaintext and authenticates no one.
	cfg.Client.Dial = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("XDS_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	store := state.NewStore()
	x, err := discovery.NewXDS(cfg, store, prometheus.NewRegistry(), log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := x.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer x.Stop()
	if err := x.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}

	const uid = "Kubernetes//Pod/shop/api-0"
	const key = "shop/api.shop.svc.cluster.local"
	var snap *state.Snapshot
	for {
		snap = store.Load()
		_, haveW := snap.Workload(uid)
		s, haveS := snap.Service(key)
		_, haveP := snap.Policy("shop/deny-9000")
		if haveW && haveS && len(s.Endpoints) == 1 && haveP {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("istiod's state did not arrive: workloads %v, services %d, policies %d, last error %v",
				len(snap.Workloads()), len(snap.Services()), len(snap.Policies()), x.LastError())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := x.LastError(); err != nil {
		t.Errorf("istiod sent something Warren rejected: %v", err)
	}

	w, _ := snap.Workload(uid)
	if w.Name != "api-0" || w.Namespace != "shop" || w.ServiceAccount != "api" || w.Node != "node-1" ||
		w.Protocol != state.ProtocolHBONE || w.ClusterID != "Kubernetes" ||
		!cmp.Equal(w.IPs, []netip.Addr{netip.MustParseAddr("10.244.1.5")}, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
		t.Errorf("workload %+v", w)
	}
	if got := w.Identity().String(); got != "spiffe://cluster.local/ns/shop/sa/api" {
		t.Errorf("identity %s", got)
	}
	s, _ := snap.Service(key)
	if vip, ok := snap.ServiceByVIP(netip.MustParseAddr("10.96.0.20")); !ok || vip != s {
		t.Errorf("service not found by its cluster IP")
	}
	if s.Name != "api" || s.Hostname != "api.shop.svc.cluster.local" || s.Endpoints[0].WorkloadUID != uid {
		t.Errorf("service %+v", s)
	}
	if port, ok := s.TargetPort(s.Endpoints[0], 80); !ok || port != 8080 {
		t.Errorf("target port of 80 = %d, %v; want 8080", port, ok)
	}
	p, _ := snap.Policy("shop/deny-9000")
	if p.Action != state.ActionDeny || p.Scope != state.ScopeNamespace || len(p.Groups) == 0 {
		t.Errorf("policy %+v", p)
	}
}
