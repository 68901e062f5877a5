package controller

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// syncTimeout bounds every wait for the controller to catch up: a
// debounce of 20 ms plus the watch latency of a local apiserver is well
// under a second; the margin is for a loaded two-core machine.
const syncTimeout = 15 * time.Second

func TestControllerFollowsCluster(t *testing.T) {
	cl := newClients(t)
	ns := cl.c.Namespace(t)
	kube := cl.c.Client()
	sink := &fakeSink{}
	startController(t, cl, sink, true, nil)

	svc, err := kube.CoreV1().Services(ns).Create(t.Context(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svcKey := ns + "/web." + ns + ".svc.cluster.local"
	serviceRes := func() *workloadapi.Service {
		a, _ := sink.get(addressTypeURL, svcKey).(*workloadapi.Address)
		return a.GetService()
	}
	eventually(t, syncTimeout, "service resource", func() bool { return serviceRes() != nil })
	vip := netip.MustParseAddr(svc.Spec.ClusterIP)
	if got := serviceRes().GetAddresses(); len(got) != 1 || !slicesEqual(got[0].GetAddress(), vip.AsSlice()) {
		t.Errorf("service addresses %v, want %v", got, vip)
	}

	p := cl.c.Pod(t, ns, "web", "node-a")
	uid := "Kubernetes//Pod/" + ns + "/" + p.Name
	workload := func() *workloadapi.Workload {
		a, _ := sink.get(addressTypeURL, uid).(*workloadapi.Address)
		return a.GetWorkload()
	}
	// Pending without an IP: no workload yet.
	time.Sleep(200 * time.Millisecond)
	if workload() != nil {
		t.Fatal("workload for a pod without IP")
	}
	patchPodMeta(t, cl, p, map[string]string{"app": "web"}, nil)
	setPodRunning(t, cl, p, true, "10.1.0.5", "fd00:1::5")

	eventually(t, syncTimeout, "healthy workload with its service", func() bool {
		w := workload()
		return w.GetStatus() == workloadapi.WorkloadStatus_HEALTHY && w.GetServices()[svcKey] != nil
	})
	w := workload()
	if w.GetNode() != "node-a" || w.GetServiceAccount() != "web" || len(w.GetAddresses()) != 2 ||
		w.GetTunnelProtocol() != workloadapi.TunnelProtocol_NONE {
		t.Errorf("workload %v: want node-a, sa web, two addresses, tunnel NONE", w)
	}
	if got := w.GetServices()[svcKey].GetPorts(); len(got) != 1 || got[0].GetServicePort() != 80 || got[0].GetTargetPort() != 8080 {
		t.Errorf("ports %v, want 80->8080", got)
	}

	t.Run("annotation switches the protocol", func(t *testing.T) {
		patchPodMeta(t, cl, p, nil, map[string]string{"ambient.istio.io/redirection": "enabled"})
		eventually(t, syncTimeout, "HBONE", func() bool { return workload().GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE })
		patchPodMeta(t, cl, p, nil, map[string]string{"ambient.istio.io/redirection": "pending"})
		eventually(t, syncTimeout, "back to NONE", func() bool { return workload().GetTunnelProtocol() == workloadapi.TunnelProtocol_NONE })
	})

	t.Run("policy appears, is listed, disappears", func(t *testing.T) {
		applyYAML(t, cl.dyn, apGVR, fmt.Sprintf(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-allow, namespace: %s}
spec: {selector: {matchLabels: {app: web}}, action: ALLOW, rules: [{from: [{source: {namespaces: [%s]}}]}]}`, ns, ns))
		key := ns + "/web-allow"
		eventually(t, syncTimeout, "authorization and its listing", func() bool {
			a, ok := sink.get(authorizationTypeURL, key).(*security.Authorization)
			return ok && a.GetScope() == security.Scope_WORKLOAD_SELECTOR && slicesEqual(workload().GetAuthorizationPolicies(), []string{key})
		})
		if err := cl.istio.SecurityV1().AuthorizationPolicies(ns).Delete(t.Context(), "web-allow", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, syncTimeout, "authorization removed", func() bool {
			return sink.get(authorizationTypeURL, key) == nil && len(workload().GetAuthorizationPolicies()) == 0
		})
	})

	t.Run("namespace STRICT lists the static policy", func(t *testing.T) {
		applyYAML(t, cl.dyn, schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"},
			fmt.Sprintf(`{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: default, namespace: %s}, spec: {mtls: {mode: STRICT}}}`, ns))
		static := DefaultConfig().RootNamespace + "/" + staticStrictName
		eventually(t, syncTimeout, "static strict policy listed", func() bool {
			return sink.get(authorizationTypeURL, static) != nil && slicesEqual(workload().GetAuthorizationPolicies(), []string{static})
		})
		if err := cl.istio.SecurityV1().PeerAuthentications(ns).Delete(t.Context(), "default", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, syncTimeout, "static strict policy no longer listed", func() bool { return len(workload().GetAuthorizationPolicies()) == 0 })
	})

	t.Run("service without selector through its endpoint slice", func(t *testing.T) {
		_, err := kube.CoreV1().Services(ns).Create(t.Context(), &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "legacy"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		httpName, port := "http", int32(9000)
		_, err = kube.DiscoveryV1().EndpointSlices(ns).Create(t.Context(), &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "legacy-1", Labels: map[string]string{discoveryv1.LabelServiceName: "legacy"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &httpName, Port: &port}},
			Endpoints: []discoveryv1.Endpoint{{
				Addresses: []string{"10.1.0.5"},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: p.Name, UID: p.UID},
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		legacyKey := ns + "/legacy." + ns + ".svc.cluster.local"
		eventually(t, syncTimeout, "legacy service on the workload", func() bool {
			ports := workload().GetServices()[legacyKey].GetPorts()
			return len(ports) == 1 && ports[0].GetServicePort() == 80 && ports[0].GetTargetPort() == 9000
		})
	})

	t.Run("label change leaves the service", func(t *testing.T) {
		patchPodMeta(t, cl, p, map[string]string{"app": "other"}, nil)
		eventually(t, syncTimeout, "service gone from the workload", func() bool {
			return workload() != nil && workload().GetServices()[svcKey] == nil
		})
	})

	t.Run("unready pod is unhealthy", func(t *testing.T) {
		setPodRunning(t, cl, p, false, "10.1.0.5")
		eventually(t, syncTimeout, "unhealthy", func() bool {
			return workload().GetStatus() == workloadapi.WorkloadStatus_UNHEALTHY && len(workload().GetAddresses()) == 1
		})
	})

	t.Run("deleted pod and service are removed", func(t *testing.T) {
		cl.c.DeletePod(t, p)
		if err := kube.CoreV1().Services(ns).Delete(t.Context(), "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, syncTimeout, "workload and service removed", func() bool { return workload() == nil && serviceRes() == nil })
	})
}

func slicesEqual[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestControllerBadPolicyEvents: a policy that cannot be converted is
// left out and reported with a Warning Event, by the leader only, once;
// the other policies still build.
func TestControllerBadPolicyEvents(t *testing.T) {
	cl := newClients(t)
	ns := cl.c.Namespace(t)
	sink := &fakeSink{}
	for _, y := range []string{
		`{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {name: bad, namespace: %s},
  spec: {action: DENY, rules: [{from: [{source: {ipBlocks: [not-an-ip]}}]}]}}`,
		`{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {name: good, namespace: %s},
  spec: {action: DENY, rules: [{to: [{operation: {ports: ["22"]}}]}]}}`,
	} {
		applyYAML(t, cl.dyn, apGVR, fmt.Sprintf(y, ns))
	}
	_, err := cl.c.Client().CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: ns + "-mode", Labels: map[string]string{"istio.io/dataplane-mode": "ambiant"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	ctrl := startController(t, cl, sink, false, nil)
	eventually(t, syncTimeout, "good policy", func() bool { return sink.get(authorizationTypeURL, ns+"/good") != nil })
	if sink.get(authorizationTypeURL, ns+"/bad") != nil {
		t.Error("the bad policy was sent")
	}
	// Not leading: no Event, however long we wait for the broadcaster.
	time.Sleep(time.Second)
	if evs := warningEvents(t, cl, ns, "AuthorizationPolicy", "bad"); len(evs) != 0 {
		t.Fatalf("a non-leader recorded events: %+v", evs)
	}

	ctrl.SetLeader(true)
	eventually(t, syncTimeout, "Warning Event on the bad policy", func() bool {
		return len(warningEvents(t, cl, ns, "AuthorizationPolicy", "bad")) > 0
	})
	ev := warningEvents(t, cl, ns, "AuthorizationPolicy", "bad")[0]
	if ev.Reason != ReasonInvalidPolicy || ev.Source.Component != eventComponent || ev.InvolvedObject.UID == "" {
		t.Errorf("event %s from %s about uid %q: want %s from %s with the policy's uid", ev.Reason, ev.Source.Component, ev.InvolvedObject.UID, ReasonInvalidPolicy, eventComponent)
	}
	t.Logf("event message: %s", ev.Message)
	eventually(t, syncTimeout, "Warning Event on the namespace", func() bool {
		return len(warningEvents(t, cl, "default", "Namespace", ns+"-mode")) > 0
	})

	// Further rebuilds do not repeat the Event.
	applyYAML(t, cl.dyn, apGVR, fmt.Sprintf(`{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {name: another, namespace: %s}, spec: {action: DENY, rules: [{}]}}`, ns))
	eventually(t, syncTimeout, "another policy", func() bool { return sink.get(authorizationTypeURL, ns+"/another") != nil })
	time.Sleep(time.Second)
	if evs := warningEvents(t, cl, ns, "AuthorizationPolicy", "bad"); len(evs) != 1 || evs[0].Count > 1 {
		t.Errorf("want the one Event recorded once, got %+v", evs)
	}
}

// TestControllerGatewayCRDLater: without the Gateway API CRD the
// controller runs; once the CRD is installed, it picks up waypoints.
func TestControllerGatewayCRDLater(t *testing.T) {
	cl := newClients(t)
	ns := cl.c.Namespace(t)
	crdName := "gateways.gateway.networking.k8s.io"
	if _, err := cl.dyn.Resource(crdGVR).Get(t.Context(), crdName, metav1.GetOptions{}); err == nil {
		t.Skip("the Gateway CRD is already installed (test run twice in one binary)")
	}
	ctrl := startController(t, cl, &fakeSink{}, true, func(c *Controller) { c.crdRetry = 100 * time.Millisecond })
	if got := len(ctrl.w.inputs().Waypoints); got != 0 {
		t.Fatalf("%d waypoints before the CRD exists", got)
	}

	// A minimal CRD: the test needs the kind to exist, not its schema.
	crd := &unstructured.Unstructured{}
	crd.SetUnstructuredContent(map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1",
		"kind":       "CustomResourceDefinition",
		"metadata": map[string]any{
			"name": crdName,
			// *.k8s.io groups need this; the real CRD carries it too.
			"annotations": map[string]any{"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/1538"},
		},
		"spec": map[string]any{
			"group": "gateway.networking.k8s.io",
			"names": map[string]any{"kind": "Gateway", "listKind": "GatewayList", "plural": "gateways", "singular": "gateway"},
			"scope": "Namespaced",
			"versions": []any{map[string]any{
				"name": "v1", "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{
					"type": "object", "x-kubernetes-preserve-unknown-fields": true,
				}},
			}},
		},
	})
	if err := createCRD(cl.dyn, crd); err != nil {
		t.Fatal(err)
	}
	gw := schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}
	applyYAML(t, cl.dyn, gw, fmt.Sprintf(`{apiVersion: gateway.networking.k8s.io/v1, kind: Gateway, metadata: {name: waypoint, namespace: %s},
  spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]},
  status: {addresses: [{type: IPAddress, value: 10.96.5.5}, {type: Hostname, value: waypoint.%s.svc.cluster.local}]}}`, ns, ns))
	applyYAML(t, cl.dyn, gw, fmt.Sprintf(`{apiVersion: gateway.networking.k8s.io/v1, kind: Gateway, metadata: {name: ingress, namespace: %s},
  spec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}}`, ns))

	want := Waypoint{Name: "waypoint", Namespace: ns, Addresses: []netip.Addr{netip.MustParseAddr("10.96.5.5")}, Hostnames: []string{"waypoint." + ns + ".svc.cluster.local"}}
	eventually(t, syncTimeout, "waypoint in the inputs", func() bool {
		for _, wp := range ctrl.w.inputs().Waypoints {
			if wp.Namespace == ns {
				return wp.Name == want.Name && slicesEqual(wp.Addresses, want.Addresses) && slicesEqual(wp.Hostnames, want.Hostnames)
			}
		}
		return false
	})
	for _, wp := range ctrl.w.inputs().Waypoints {
		if wp.Name == "ingress" {
			t.Errorf("a Gateway of another class counted as waypoint: %+v", wp)
		}
	}
}

// TestControllerRunStops: cancelling Run stops every goroutine it started
// (informers, event broadcaster, CRD retries).
func TestControllerRunStops(t *testing.T) {
	cl := newClients(t)
	// Warm the shared connections so that their goroutines predate the
	// snapshot.
	if _, err := cl.c.Client().CoreV1().Namespaces().List(t.Context(), metav1.ListOptions{Limit: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.istio.SecurityV1().AuthorizationPolicies("default").List(t.Context(), metav1.ListOptions{Limit: 1}); err != nil {
		t.Fatal(err)
	}
	ignore := goleak.IgnoreCurrent()
	cfg := DefaultConfig()
	ctrl, err := New(cfg, cl.c.Client(), cl.istio, cl.dyn, &fakeSink{}, prometheus.NewRegistry(), testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	ctrl.crdRetry = 50 * time.Millisecond
	ctrl.SetLeader(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	eventually(t, syncTimeout, "sync", ctrl.Synced)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := ctrl.Run(context.Background()); err == nil {
		t.Error("second Run did not fail")
	}
	goleak.VerifyNone(t, ignore)
}
