package discovery

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/state"
	"github.com/warren-mesh/warren/xds"
)

// controlPlane is an in-process xds.Server over TLS on loopback.
type controlPlane struct {
	cache *xds.Cache
	addr  string
	roots *x509.CertPool
	creds credentials.TransportCredentials
	reg   *prometheus.Registry
	stop  func()
}

type bearer string

func (b bearer) Authenticate(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) == 1 && v[0] == "Bearer "+string(b) {
		return "agent", nil
	}
	return "", status.Error(codes.Unauthenticated, "bad token")
}

// newControlPlane starts a control plane for the test, and checks when the
// test ends (after everything else has stopped) that no goroutine is left.
func newControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
	c, err := ca.New(ca.DefaultConfig(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.SignServing(&key.PublicKey, nil, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: key}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	roots := x509.NewCertPool()
	for _, r := range c.Roots() {
		roots.AddCert(r)
	}
	cp := &controlPlane{
		cache: xds.NewCache(),
		addr:  "127.0.0.1:0",
		roots: roots,
		creds: credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}),
	}
	cp.start(t)
	return cp
}

// start serves the cache on cp.addr (the same port again after stop).
func (cp *controlPlane) start(t *testing.T) {
	t.Helper()
	cp.reg = prometheus.NewRegistry()
	srv, err := xds.NewServer(xds.DefaultServerConfig(), cp.cache, bearer("agent-token"), cp.reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	for i := 0; ; i++ {
		if ln, err = net.Listen("tcp", cp.addr); err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	cp.addr = ln.Addr().String()
	g := grpc.NewServer(grpc.Creds(cp.creds))
	srv.Register(g)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(ln)
	}()
	var once atomic.Bool
	cp.stop = func() {
		if once.CompareAndSwap(false, true) {
			g.Stop()
			<-done
		}
	}
	t.Cleanup(cp.stop)
}

func (cp *controlPlane) nacks(typ string) float64 {
	mfs, err := cp.reg.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != "warren_xds_nacks_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == typ {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// startXDS runs a source against cp until the test ends.
func startXDS(t *testing.T, cp *controlPlane, edit func(*XDSConfig)) (*XDS, *state.Store) {
	t.Helper()
	cfg := DefaultXDSConfig()
	cfg.Client.Address = "passthrough:///" + cp.addr
	cfg.Client.NodeID = "ztunnel~10.0.0.1~warren-agent-x.warren-system~warren-system.svc.cluster.local"
	cfg.Client.Dial = []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: cp.roots, ServerName: "127.0.0.1"}))}
	cfg.Client.Token = func(context.Context) (string, error) { return "agent-token", nil }
	cfg.Client.MinBackoff, cfg.Client.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
	if edit != nil {
		edit(&cfg)
	}
	store := state.NewStore()
	x, err := NewXDS(cfg, store, prometheus.NewRegistry(), testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Stop)
	return x, store
}

func waitSynced(t *testing.T, x *XDS) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := x.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
}

func pwl(name, ip string, svcs ...string) *workloadapi.Address {
	w := &workloadapi.Workload{
		Uid: "Kubernetes//Pod/shop/" + name, Name: name, Namespace: "shop", ServiceAccount: name,
		Addresses: [][]byte{ip4(ip)}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE, Node: "node-2",
	}
	for _, s := range svcs {
		if w.Services == nil {
			w.Services = map[string]*workloadapi.PortList{}
		}
		w.Services[s] = &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

func psvc(host, vip string) *workloadapi.Address {
	return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
		Name: strings.Split(host, ".")[0], Namespace: "shop", Hostname: host,
		Addresses: []*workloadapi.NetworkAddress{{Address: ip4(vip)}},
		Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}},
	}}}
}

const apiHost = "api.shop.svc.cluster.local"

func uidOf(name string) string { return "Kubernetes//Pod/shop/" + name }

func workloadUIDs(s *state.Snapshot) []string {
	var out []string
	for _, w := range s.Workloads() {
		out = append(out, w.UID)
	}
	return out
}

// TestXDSFollowsControlPlane: resources appear in the store, changes and
// removals follow, each as a new versioned snapshot.
func TestXDSFollowsControlPlane(t *testing.T) {
	cp := newControlPlane(t)
	cp.cache.Replace(xds.TypeAddress, map[string]proto.Message{
		uidOf("api-1"):      pwl("api-1", "10.0.0.1", "shop/"+apiHost),
		uidOf("api-2"):      pwl("api-2", "10.0.0.2", "shop/"+apiHost),
		"shop/" + apiHost:   psvc(apiHost, "10.96.0.1"),
		uidOf("standalone"): pwl("standalone", "10.0.0.3"),
	})
	cp.cache.Replace(xds.TypeAuthorization, map[string]proto.Message{
		"shop/deny": &security.Authorization{Name: "deny", Namespace: "shop", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY},
	})
	x, store := startXDS(t, cp, nil)
	waitSynced(t, x)
	if !x.Ready() || !x.Connected() {
		t.Fatalf("Ready %v, Connected %v after sync", x.Ready(), x.Connected())
	}
	snap := store.Load()
	if d := cmp.Diff([]string{uidOf("api-1"), uidOf("api-2"), uidOf("standalone")}, workloadUIDs(snap)); d != "" {
		t.Errorf("workloads (-want +got):\n%s", d)
	}
	svc, ok := snap.ServiceByVIP(netip.MustParseAddr("10.96.0.1"))
	if !ok || len(svc.Endpoints) != 2 || svc.Endpoints[0].WorkloadUID != uidOf("api-1") {
		t.Errorf("service by VIP: %+v, %v", svc, ok)
	}
	if _, ok := snap.Policy("shop/deny"); !ok {
		t.Error("policy missing")
	}
	if w, ok := snap.WorkloadByIP(netip.MustParseAddr("10.0.0.2")); !ok || w.Identity().String() != "spiffe://cluster.local/ns/shop/sa/api-2" {
		t.Errorf("workload by IP: %v, %v", w, ok)
	}
	first := snap.Version
	if !strings.HasPrefix(first, "xds-") {
		t.Errorf("version %q", first)
	}

	cp.cache.Replace(xds.TypeAddress, map[string]proto.Message{
		uidOf("api-1"):    pwl("api-1", "10.0.0.1", "shop/"+apiHost),
		"shop/" + apiHost: psvc(apiHost, "10.96.0.1"),
		uidOf("new"):      pwl("new", "10.0.0.4"),
	})
	cp.cache.Replace(xds.TypeAuthorization, nil)
	eventually(t, "the update", func() bool {
		s := store.Load()
		return cmp.Equal(workloadUIDs(s), []string{uidOf("api-1"), uidOf("new")}) && len(s.Policies()) == 0
	})
	snap = store.Load()
	if svc, _ := snap.Service("shop/" + apiHost); len(svc.Endpoints) != 1 {
		t.Errorf("endpoints after removal: %+v", svc.Endpoints)
	}
	if snap.Version == first {
		t.Errorf("version did not change: %q", snap.Version)
	}
	if x.LastError() != nil || x.Errors() != 0 {
		t.Errorf("LastError %v, Errors %d", x.LastError(), x.Errors())
	}
}

// TestXDSRejectsBadResource: a bad resource is rejected and NACKed while
// the others of its response apply; a bad new version of a resource keeps
// the previous one.
func TestXDSRejectsBadResource(t *testing.T) {
	cp := newControlPlane(t)
	bad := pwl("bad", "10.0.0.9")
	bad.GetWorkload().Addresses = [][]byte{{10, 0, 0}}
	cp.cache.Replace(xds.TypeAddress, map[string]proto.Message{
		uidOf("good"): pwl("good", "10.0.0.1"),
		uidOf("bad"):  bad,
	})
	x, store := startXDS(t, cp, nil)
	var reports atomic.Int32
	x.Report(func(ok bool) {
		if !ok {
			reports.Add(1)
		}
	})
	waitSynced(t, x)
	if got := workloadUIDs(store.Load()); !cmp.Equal(got, []string{uidOf("good")}) {
		t.Errorf("workloads %v, want only the good one", got)
	}
	err := x.LastError()
	if err == nil || !strings.Contains(err.Error(), uidOf("bad")) || !strings.Contains(err.Error(), "addresses[0]") {
		t.Errorf("LastError = %v, want it to name the resource and field", err)
	}
	eventually(t, "the NACK at the server", func() bool { return cp.nacks(xds.TypeAddress) == 1 })

	// A bad new version of "good" keeps the good one; "other" applies.
	badGood := pwl("good", "10.0.0.1")
	badGood.GetWorkload().TunnelProtocol = 9
	cp.cache.Replace(xds.TypeAddress, map[string]proto.Message{
		uidOf("good"):  badGood,
		uidOf("other"): pwl("other", "10.0.0.5"),
	})
	eventually(t, "the second NACK", func() bool { return cp.nacks(xds.TypeAddress) == 2 })
	eventually(t, "other applied", func() bool { _, ok := store.Load().Workload(uidOf("other")); return ok })
	w, ok := store.Load().Workload(uidOf("good"))
	if !ok || w.Protocol != state.ProtocolHBONE {
		t.Errorf("previous version of good not kept: %+v, %v", w, ok)
	}
	if !strings.Contains(x.LastError().Error(), "tunnel_protocol") {
		t.Errorf("LastError = %v", x.LastError())
	}
	if got := testutil.ToFloat64(x.metrics.rejected.WithLabelValues(xds.TypeAddress)); got != 2 {
		t.Errorf("rejected resources = %v, want 2", got)
	}
	if reports.Load() < 2 {
		t.Errorf("%d rejections reported, want 2", reports.Load())
	}
}

// TestXDSSetLocal: local pods become captured workloads, merged with the
// control plane's view once it has them.
func TestXDSSetLocal(t *testing.T) {
	cp := newControlPlane(t)
	cp.cache.Replace(xds.TypeAddress, map[string]proto.Message{uidOf("known"): pwl("known", "10.0.0.1")})
	x, store := startXDS(t, cp, func(c *XDSConfig) { c.ClusterID, c.TrustDomain = "Kubernetes", "example.org" })
	waitSynced(t, x)
	x.SetLocal([]LocalPod{
		{Name: "known", Namespace: "shop", Node: "node-1", NetNS: "/run/netns/known", IPs: addrs("10.0.0.1")},
		{Name: "fresh", Namespace: "shop", ServiceAccount: "fresh", Node: "node-1", NetNS: "/run/netns/fresh", IPs: addrs("10.0.0.7")},
	})
	eventually(t, "local pods", func() bool { return len(store.Load().LocalWorkloads("node-1")) == 2 })
	snap := store.Load()
	known, _ := snap.Workload(uidOf("known"))
	if known.NetNS != "/run/netns/known" || known.ServiceAccount != "known" || known.Node != "node-1" {
		t.Errorf("merged workload %+v", known)
	}
	fresh, _ := snap.Workload(uidOf("fresh"))
	if fresh.TrustDomain != "example.org" || fresh.ClusterID != "Kubernetes" || !fresh.Captured() {
		t.Errorf("workload from the local pod %+v", fresh)
	}
	// The control plane catches up: its view of "fresh" with the local
	// netns.
	cp.cache.Replace(xds.TypeAddress, map[string]proto.Message{
		uidOf("known"): pwl("known", "10.0.0.1"),
		uidOf("fresh"): pwl("fresh", "10.0.0.7"),
	})
	eventually(t, "the merge", func() bool {
		w, _ := store.Load().Workload(uidOf("fresh"))
		return w.TrustDomain == "" && w.NetNS == "/run/netns/fresh"
	})
	applied := x.Applied()
	x.SetLocal([]LocalPod{
		{Name: "fresh", Namespace: "shop", ServiceAccount: "fresh", Node: "node-1", NetNS: "/run/netns/fresh", IPs: addrs("10.0.0.7")},
		{Name: "known", Namespace: "shop", Node: "node-1", NetNS: "/run/netns/known", IPs: addrs("10.0.0.1")},
	})
	time.Sleep(50 * time.Millisecond)
	if x.Applied() != applied {
		t.Error("the same local pods in another order rebuilt the snapshot")
	}
	x.SetLocal(nil)
	eventually(t, "local pods gone", func() bool { return len(store.Load().LocalWorkloads("node-1")) == 0 })
	if _, ok := store.Load().Workload(uidOf("fresh")); !ok {
		t.Error("the control plane's workload went with the local pod")
	}
}

// TestXDSKeepsStateWhileServerDown: with the control plane gone the store
// keeps the last state, the source stays ready, and it catches up when
// the control plane is back.
func TestXDSKeepsStateWhileServerDown(t *testing.T) {
	cp := newControlPlane(t)
	cp.cache.Replace(xds.TypeAddress, map[string]proto.Message{uidOf("a"): pwl("a", "10.0.0.1"), uidOf("b"): pwl("b", "10.0.0.2")})
	x, store := startXDS(t, cp, nil)
	waitSynced(t, x)
	before := store.Load()
	cp.stop()
	eventually(t, "disconnect", func() bool { return !x.Connected() })
	time.Sleep(100 * time.Millisecond) // several reconnect attempts
	if store.Load() != before || !x.Ready() {
		t.Fatalf("state changed (%v) or not ready (%v) with the server down", store.Load() != before, x.Ready())
	}
	cp.cache.Replace(xds.TypeAddress, map[string]proto.Message{uidOf("a"): pwl("a", "10.0.0.1")})
	cp.start(t)
	eventually(t, "catch up", func() bool { return cmp.Equal(workloadUIDs(store.Load()), []string{uidOf("a")}) })
}

// TestXDSSnapshotFailureKeepsLastGood: state that does not form a snapshot
// (two workloads with one address) is counted and the last good snapshot
// stays until the conflict is gone.
func TestXDSSnapshotFailureKeepsLastGood(t *testing.T) {
	cp := newControlPlane(t)
	cp.cache.Replace(xds.TypeAddress, map[string]proto.Message{uidOf("a"): pwl("a", "10.0.0.1")})
	x, store := startXDS(t, cp, nil)
	waitSynced(t, x)
	good := store.Load()
	cp.cache.Replace(xds.TypeAddress, map[string]proto.Message{uidOf("a"): pwl("a", "10.0.0.1"), uidOf("b"): pwl("b", "10.0.0.1")})
	eventually(t, "the failed build", func() bool { return testutil.ToFloat64(x.metrics.snapshots.WithLabelValues(resultFailed)) == 1 })
	if store.Load() != good {
		t.Error("a failed build replaced the snapshot")
	}
	if err := x.LastError(); err == nil || !strings.Contains(err.Error(), "10.0.0.1") {
		t.Errorf("LastError = %v", err)
	}
	cp.cache.Replace(xds.TypeAddress, map[string]proto.Message{uidOf("a"): pwl("a", "10.0.0.1"), uidOf("b"): pwl("b", "10.0.0.2")})
	eventually(t, "recovery", func() bool { return len(store.Load().Workloads()) == 2 })
	if x.LastError() != nil {
		t.Errorf("LastError after recovery = %v", x.LastError())
	}
}

// TestXDSWaitsForEveryType: nothing reaches the store until every type has
// answered, and a burst of changes is built once.
func TestXDSWaitsForEveryType(t *testing.T) {
	defer goleak.VerifyNone(t)
	cfg := DefaultXDSConfig()
	// Nothing listens there; the handler is driven directly.
	cfg.Client.Address = "passthrough:///127.0.0.1:1"
	cfg.Client.NodeID = "n"
	cfg.Client.Dial = []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{}))}
	cfg.Debounce = 50 * time.Millisecond
	store := state.NewStore()
	x, err := NewXDS(cfg, store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer x.Stop()
	res := func(name string, m proto.Message) []*discoveryv3.Resource {
		return []*discoveryv3.Resource{resource(t, name, m)}
	}
	for i := range 5 {
		ip := netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}).String()
		if err := x.Apply(xds.TypeAddress, res(uidOf("a"), pwl("a", ip)), nil); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * cfg.Debounce)
	if x.Applied() != 0 || store.Load() != state.Empty || x.Ready() {
		t.Fatal("a snapshot was swapped in before authorizations arrived")
	}
	if err := x.Apply(xds.TypeAuthorization, nil, nil); err != nil {
		t.Fatal(err)
	}
	waitSynced(t, x)
	time.Sleep(2 * cfg.Debounce)
	if x.Applied() != 1 {
		t.Errorf("Applied = %d, want 1", x.Applied())
	}
	if w, ok := store.Load().Workload(uidOf("a")); !ok || w.IPs[0] != netip.MustParseAddr("10.0.0.5") {
		t.Errorf("workload %+v, %v; want the last version", w, ok)
	}
	if err := x.Apply("type.googleapis.com/other", nil, nil); err == nil {
		t.Error("an unsubscribed type was accepted")
	}
}

func TestXDSConfigValidate(t *testing.T) {
	good := DefaultXDSConfig()
	good.Client.Address, good.Client.NodeID = "x:1", "n"
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	cases := map[string]func(*XDSConfig){
		"no address": func(c *XDSConfig) { c.Client.Address = "" },
		"no cluster": func(c *XDSConfig) { c.ClusterID = "" },
		"no domain":  func(c *XDSConfig) { c.TrustDomain = "" },
		"debounce":   func(c *XDSConfig) { c.Debounce = time.Hour },
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			c := good
			edit(&c)
			if c.Validate() == nil {
				t.Error("Validate accepted it")
			}
		})
	}
}
