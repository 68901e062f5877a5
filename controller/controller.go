package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// Sink receives the built resources of one type, replacing the previous
// set; it reports how many resources changed or appeared and how many
// went away. The xDS server's cache implements it.
type Sink interface {
	Replace(typeURL string, resources map[string]proto.Message) (updated, removed int)
}

// maxDelayFactor bounds debouncing: a steady stream of changes (a large
// rollout) still gets a rebuild every maxDelayFactor*Debounce.
const maxDelayFactor = 10

// crdRetryInterval is how often discovery is asked again for a missing
// CRD (Istio's security policies, Gateway API): installing one later
// needs no restart.
const crdRetryInterval = 30 * time.Second

// eventComponent is the source of the Events the controller records.
const eventComponent = "warren-controller"

// Controller watches the cluster and keeps a Sink filled with the
// workload-API resources Build makes of it. Every replica runs one; only
// the leader records Events.
type Controller struct {
	cfg   Config
	kube  kubernetes.Interface
	istio istioclient.Interface
	dyn   dynamic.Interface
	sink  Sink
	log   *slog.Logger
	m     *metrics

	// crdRetry is crdRetryInterval outside tests.
	crdRetry time.Duration

	running atomic.Bool
	synced  atomic.Bool
	leader  atomic.Bool
	// dirty holds one pending "something changed".
	dirty chan struct{}

	// mu guards the problem bookkeeping, shared between the rebuild loop
	// and SetLeader.
	mu       sync.Mutex
	recorder record.EventRecorder // set by Run
	problems []Problem            // of the last build
	logged   map[problemKey]struct{}
	reported map[problemKey]struct{} // recorded as Events while leader

	// w is set by Run before the first build.
	w *watcher
	// inc is used by the rebuild loop alone.
	inc incremental
}

// New returns a Controller for cfg. istio and dyn may be nil: the
// controller then builds no policies (nil istio) or ignores waypoints (nil
// dyn). Metrics are registered on reg when it is not nil.
func New(cfg Config, kube kubernetes.Interface, istio istioclient.Interface, dyn dynamic.Interface, sink Sink, reg prometheus.Registerer, log *slog.Logger) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("controller config: %w", err)
	}
	if kube == nil {
		return nil, errors.New("controller: nil Kubernetes client")
	}
	if sink == nil {
		return nil, errors.New("controller: nil sink")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Controller{
		cfg:      cfg,
		kube:     kube,
		istio:    istio,
		dyn:      dyn,
		sink:     sink,
		log:      log.With("component", "controller"),
		m:        m,
		crdRetry: crdRetryInterval,
		dirty:    make(chan struct{}, 1),
	}, nil
}

// Run watches the cluster until ctx is done. In order: it finds which of
// the optional CRDs exist (retrying while discovery fails), starts the
// informers, waits for them to sync, pushes a first build to the sink,
// and from then on rebuilds after every change (debounced), while
// retrying discovery of missing CRDs in the background. Until the caches
// have synced nothing reaches the sink, so that agents never see a partial
// policy set. It returns nil once ctx is done; calling it a second time is
// an error. Objects the controller may not list (RBAC) keep it from
// syncing, with client-go logging the failures through klog.
func (c *Controller) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("controller: Run called twice")
	}
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.kube.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	c.mu.Lock()
	c.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: eventComponent})
	c.mu.Unlock()

	w := newWatcher(c)
	c.w = w
	// Cancelled before the informers are shut down (defers run last
	// first): Shutdown waits for informers that only stop on this context.
	defer w.shutdown()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if err := w.start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	c.rebuild()
	c.synced.Store(true)
	c.log.Info("synced and built; watching for changes")

	go w.retryMissing(ctx)
	c.loop(ctx)
	return nil
}

// Synced reports whether the first build has reached the sink.
func (c *Controller) Synced() bool { return c.synced.Load() }

// SetLeader tells the controller whether this replica leads. Only the
// leader records Events, so that replicas do not repeat each other; on
// becoming leader it records the current problems once.
func (c *Controller) SetLeader(isLeader bool) {
	c.leader.Store(isLeader)
	c.m.setLeader(isLeader)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !isLeader {
		c.reported = nil
		return
	}
	c.recordEventsLocked()
}

// trigger notes that something changed; it never blocks.
func (c *Controller) trigger() {
	select {
	case c.dirty <- struct{}{}:
	default:
	}
}

// loop rebuilds once the cluster has been quiet for Debounce after a
// change, or maxDelayFactor*Debounce after the first change of a burst.
func (c *Controller) loop(ctx context.Context) {
	maxDelay := maxDelayFactor * c.cfg.Debounce
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.dirty:
		}
		first := time.Now()
		timer := time.NewTimer(c.cfg.Debounce)
	quiet:
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-c.dirty:
				left := maxDelay - time.Since(first)
				if left <= 0 {
					break quiet
				}
				timer.Reset(min(c.cfg.Debounce, left))
			case <-timer.C:
				break quiet
			}
		}
		timer.Stop()
		c.rebuild()
	}
}

// rebuild builds from the informers' caches and hands the result to the
// sink, policies first: a workload should name a policy only once the
// agents can have it.
func (c *Controller) rebuild() {
	start := time.Now()
	in := c.w.inputs()
	out := c.inc.build(in)
	authzUpdated, authzRemoved := c.sink.Replace(authorizationTypeURL, out.Authorizations)
	addrUpdated, addrRemoved := c.sink.Replace(addressTypeURL, out.Addresses)
	took := time.Since(start)

	workloads := 0
	for _, r := range out.Addresses {
		if _, ok := r.(*workloadapi.Address).GetType().(*workloadapi.Address_Workload); ok {
			workloads++
		}
	}
	c.m.built(took, workloads, len(out.Addresses)-workloads, len(out.Authorizations), len(out.Problems))
	c.log.Debug("rebuilt", "duration", took, "workloads", workloads, "services", len(out.Addresses)-workloads,
		"authorizations", len(out.Authorizations), "addresses_updated", addrUpdated, "addresses_removed", addrRemoved,
		"authorizations_updated", authzUpdated, "authorizations_removed", authzRemoved)
	c.report(out.Problems)
}
