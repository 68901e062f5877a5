package scale

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	"istio.io/istio/pkg/workloadapi"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/warren-mesh/warren/controller"
	"github.com/warren-mesh/warren/xds"
)

// plane is warren-controller in-process: the controller over fake
// Kubernetes and Istio clientsets, feeding the xDS cache that an xDS server
// serves on a loopback port.
type plane struct {
	cluster *cluster
	kube    *kubefake.Clientset
	cfg     controller.Config
	sink    *sink
	addr    string
	// heldBytes is the live heap the controller side (informer caches,
	// incremental builder, xDS cache and server) holds after its first
	// build, beside the fake clientsets.
	heldBytes uint64
	stop      func()
	// next picks the pod of the next change.
	next int
}

// anyone authenticates every stream: the benchmark measures discovery, not
// credentials.
type anyone struct{}

func (anyone) Authenticate(context.Context) (string, error) { return "scale agent", nil }

var _ xds.Authenticator = anyone{}

// buildTimeout bounds the controller's first build of the large cluster,
// which takes seconds; a wait that long is a hang.
const buildTimeout = 2 * time.Minute

// startPlane starts the controller side for c with the given debounce.
// keep makes the sink keep every resource set it is handed, for tests that
// compare agents with it. It measures the controller side's memory between
// filling the fake clientsets and the first build. The returned plane must
// be stopped.
func startPlane(c *cluster, debounce time.Duration, keep bool) (*plane, error) {
	// NewSimpleClientset rather than NewClientset: the field-managed
	// tracker computes managed fields for each of the 10,000 pods, which
	// is the apiserver's work, not the controller's.
	kube := kubefake.NewSimpleClientset(c.kubeObjects()...)
	// The controller asks discovery whether Istio's CRDs are installed.
	kube.Resources = []*metav1.APIResourceList{{
		GroupVersion: "security.istio.io/v1",
		APIResources: []metav1.APIResource{{Name: "authorizationpolicies"}, {Name: "peerauthentications"}},
	}}
	istio := istiofake.NewSimpleClientset(c.istioObjects()...)

	before := liveHeap()
	cfg := controller.DefaultConfig()
	cfg.Debounce = debounce
	s := newSink(xds.NewCache(), keep)
	srv, err := xds.NewServer(xds.DefaultServerConfig(), s.cache, anyone{}, nil, nil)
	if err != nil {
		return nil, err
	}
	ctrl, err := controller.New(cfg, kube, istio, nil, s, nil, nil)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening for xDS: %w", err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = g.Serve(ln)
	}()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- ctrl.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-ran
			g.Stop()
			<-served
		})
	}

	select {
	case <-s.built:
	case err := <-ran:
		ran <- err // for stop
		stop()
		return nil, fmt.Errorf("controller stopped before its first build: %v", err)
	case <-time.After(buildTimeout):
		stop()
		return nil, fmt.Errorf("no first build within %v", buildTimeout)
	}
	held := liveHeap()
	p := &plane{cluster: c, kube: kube, cfg: cfg, sink: s, addr: ln.Addr().String(), stop: stop}
	if held > before {
		p.heldBytes = held - before
	}
	// Keep the clientsets, whose memory the first measure excludes,
	// alive across the second.
	runtime.KeepAlive(istio)
	return p, nil
}

// liveHeap is the live heap after two forced collections (the second
// frees what finalizers and sync.Pools held on to after the first).
func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// uid is the workload uid of the pod ns/name.
func (p *plane) uid(ns, name string) string {
	return p.cfg.ClusterID + "//Pod/" + ns + "/" + name
}

// serviceKey is the resource name, and the agents' key, of app's Service.
func (p *plane) serviceKey(app int) string {
	s := p.cluster.services[app]
	return s.Namespace + "/" + s.Name + "." + s.Namespace + ".svc." + p.cfg.DomainSuffix
}

// sink is the xDS cache as the controller's Sink. It notes when the last
// change reached the cache, summarizes the first build and, when asked
// to, keeps the resource sets for comparison with the agents.
type sink struct {
	cache *xds.Cache
	keep  bool

	// built is closed once the first build's addresses are in the cache.
	built chan struct{}

	mu sync.Mutex
	// first summarizes the first build.
	first summary
	// changed is when the last Replace that changed anything returned,
	// and replaced how long the cache took over it.
	changed  time.Time
	replaced time.Duration
	// sets are the last resources of each type, when keep is set.
	sets map[string]map[string]proto.Message
}

// summary counts a build's resources and the bytes a full push carries.
type summary struct {
	workloads, services, authorizations int
	pushBytes                           int
}

var _ controller.Sink = (*sink)(nil)

func newSink(c *xds.Cache, keep bool) *sink {
	return &sink{cache: c, keep: keep, built: make(chan struct{}), sets: map[string]map[string]proto.Message{}}
}

// Replace hands the set to the cache. Only the first build is summarized:
// measuring every build would add to the delay being measured.
func (s *sink) Replace(typeURL string, resources map[string]proto.Message) (updated, removed int) {
	start := time.Now()
	updated, removed = s.cache.Replace(typeURL, resources)
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if updated+removed > 0 {
		s.changed, s.replaced = now, now.Sub(start)
	}
	if s.keep {
		s.sets[typeURL] = resources
	}
	select {
	case <-s.built:
		return updated, removed
	default:
	}
	for _, m := range resources {
		s.first.pushBytes += proto.Size(m)
	}
	switch typeURL {
	case xds.TypeAuthorization:
		s.first.authorizations = len(resources)
	case xds.TypeAddress:
		for _, m := range resources {
			if _, ok := m.(*workloadapi.Address).GetType().(*workloadapi.Address_Workload); ok {
				s.first.workloads++
			} else {
				s.first.services++
			}
		}
		// The controller hands addresses last.
		close(s.built)
	}
	return updated, removed
}

func (s *sink) firstBuild() summary {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.first
}

// lastChange is when the last change reached the cache, and how long
// the cache's Replace took.
func (s *sink) lastChange() (at time.Time, took time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed, s.replaced
}

// set is the last resource set of typeURL; it needs keep.
func (s *sink) set(typeURL string) (map[string]proto.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.keep {
		return nil, errors.New("sink keeps no resource sets")
	}
	return s.sets[typeURL], nil
}
