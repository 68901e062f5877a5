package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/warren-mesh/warren/metrics"
	"github.com/warren-mesh/warren/state"
	"github.com/warren-mesh/warren/xds"
)

// XDSConfig configures the xDS source.
type XDSConfig struct {
	// Client is the connection to the control plane (Warren's controller
	// or istiod).
	Client xds.ClientConfig
	// ClusterID and TrustDomain describe local pods the control plane has
	// not sent yet (see SetLocal).
	ClusterID   string
	TrustDomain string
	// Debounce is how long after a change the snapshot is rebuilt; changes
	// within it are built together. 0 rebuilds at once.
	Debounce time.Duration
}

// DefaultXDSConfig subscribes to addresses and authorizations, in Istio's
// default cluster and trust domain. Address and NodeID must be set.
func DefaultXDSConfig() XDSConfig {
	return XDSConfig{
		Client:      xds.DefaultClientConfig(),
		ClusterID:   "Kubernetes",
		TrustDomain: state.DefaultTrustDomain,
		// A push often comes as several responses (addresses, then the
		// policies they name); 10ms joins them without a noticeable delay.
		Debounce: 10 * time.Millisecond,
	}
}

// Validate reports every problem at once.
func (c XDSConfig) Validate() error {
	var errs []error
	if err := c.Client.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.ClusterID == "" {
		errs = append(errs, errors.New("cluster ID: required"))
	}
	if c.TrustDomain == "" {
		errs = append(errs, errors.New("trust domain: required"))
	}
	if c.Debounce < 0 || c.Debounce > maxDebounce {
		errs = append(errs, fmt.Errorf("debounce: %s is not in 0-%s", c.Debounce, maxDebounce))
	}
	return errors.Join(errs...)
}

// LocalPod is a pod on this node that the agent captures, as the agent
// learns it from Kubernetes (or the CNI plugin) before or besides the
// control plane.
type LocalPod struct {
	// UID is the workload's xDS uid, "<cluster>//Pod/<namespace>/<name>";
	// empty derives it from the config's ClusterID, Namespace and Name.
	UID            string
	Name           string
	Namespace      string
	ServiceAccount string
	Node           string
	// NetNS is the path of the pod's network namespace.
	NetNS string
	IPs   []netip.Addr
}

func (p LocalPod) equal(o LocalPod) bool {
	return p.UID == o.UID && p.Name == o.Name && p.Namespace == o.Namespace &&
		p.ServiceAccount == o.ServiceAccount && p.Node == o.Node && p.NetNS == o.NetNS &&
		slices.Equal(p.IPs, o.IPs)
}

func (p LocalPod) uid(clusterID string) string {
	if p.UID != "" {
		return p.UID
	}
	return clusterID + "//Pod/" + p.Namespace + "/" + p.Name
}

// XDS keeps a state.Store in step with a control plane over delta xDS,
// overlaid with the pods this node captures (SetLocal). Every change
// rebuilds one Snapshot, debounced, and swaps it in; a snapshot that does
// not build is logged and counted, and the last good one stays.
//
// Nothing is swapped in until every subscribed type has had its first
// response: a snapshot with workloads but not yet the policies that guard
// them would let through connections those policies deny.
type XDS struct {
	cfg     XDSConfig
	store   *state.Store
	client  *xds.Client
	log     *slog.Logger
	metrics *xdsMetrics

	// mu guards what the client delivered and SetLocal set.
	mu        sync.Mutex
	workloads map[string]*xdsWorkload   // by resource name (uid)
	services  map[string]*state.Service // by resource name (key)
	policies  map[string]*state.Policy  // by resource name (key)
	local     []LocalPod                // sorted by uid
	seen      map[string]bool           // types with a first response
	applyErr  map[string]error          // of the latest response, by type
	buildErr  error                     // of the latest snapshot build

	kick chan struct{}

	// Touched by the build loop only.
	version uint64

	synced    chan struct{} // closed at the first swap after sync
	ready     atomic.Bool
	applied   atomic.Uint64
	errors    atomic.Uint64
	report    func(ok bool)
	startOnce sync.Once
	stopOnce  sync.Once
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	stopped   chan struct{}
}

var _ xds.Handler = (*XDS)(nil)

// NewXDS returns a source feeding store, with the client's and its own
// metrics registered on reg (nil: unregistered). It does not connect; call
// Start. A nil log discards.
func NewXDS(cfg XDSConfig, store *state.Store, reg prometheus.Registerer, log *slog.Logger) (*XDS, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("xds source config: %w", err)
	}
	if store == nil {
		return nil, errors.New("xds source: store must be set")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	x := &XDS{
		cfg:       cfg,
		store:     store,
		log:       log.With("component", "discovery.xds"),
		workloads: map[string]*xdsWorkload{},
		services:  map[string]*state.Service{},
		policies:  map[string]*state.Policy{},
		seen:      map[string]bool{},
		applyErr:  map[string]error{},
		kick:      make(chan struct{}, 1),
		synced:    make(chan struct{}),
		stopped:   make(chan struct{}),
	}
	m, err := newXDSMetrics(reg)
	if err != nil {
		return nil, err
	}
	x.metrics = m
	if x.client, err = xds.NewClient(cfg.Client, x, reg, log); err != nil {
		return nil, err
	}
	return x, nil
}

// Start runs the client and the snapshot builder in the background until
// ctx ends or Stop, and returns at once; see WaitSynced and Ready. It
// fails only when called again or after Stop.
func (x *XDS) Start(ctx context.Context) error {
	started := false
	x.startOnce.Do(func() { started = true })
	if !started {
		return errors.New("xds source: already started or stopped")
	}
	ctx, x.cancel = context.WithCancel(ctx)
	x.wg.Add(2)
	go func() {
		defer x.wg.Done()
		if err := x.client.Run(ctx); err != nil {
			x.log.Error("xds client stopped", "err", err)
		}
	}()
	go func() {
		defer x.wg.Done()
		x.loop(ctx)
	}()
	return nil
}

// Stop ends the client and the builder and waits for them. The store keeps
// the last good state. Safe to call more than once, and without Start, but
// not concurrently with Start.
func (x *XDS) Stop() {
	x.stopOnce.Do(func() {
		x.startOnce.Do(func() {})
		if x.cancel != nil {
			x.cancel()
		}
		x.wg.Wait()
		close(x.stopped)
	})
}

// WaitSynced blocks until the first snapshot with every subscribed type is
// in the store, ctx ends, or the source stops.
func (x *XDS) WaitSynced(ctx context.Context) error {
	select {
	case <-x.synced:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the xDS sync: %w", ctx.Err())
	case <-x.stopped:
		return errors.New("waiting for the xDS sync: source stopped")
	}
}

// Ready reports whether a synced state is in the store. It stays true
// while the control plane is unreachable or sends something rejected.
func (x *XDS) Ready() bool { return x.ready.Load() }

// Connected reports whether the control plane is answering now.
func (x *XDS) Connected() bool { return x.client.Connected() }

// Report registers fn to be told about every snapshot swapped in (true)
// and every rejected response or snapshot (false), for metrics. Call it
// before Start; fn may be called from two goroutines at once.
func (x *XDS) Report(fn func(ok bool)) { x.report = fn }

func (x *XDS) reported(ok bool) {
	if x.report != nil {
		x.report(ok)
	}
}

// Applied counts the snapshots swapped into the store.
func (x *XDS) Applied() uint64 { return x.applied.Load() }

// Errors counts rejected responses and snapshots that did not build.
func (x *XDS) Errors() uint64 { return x.errors.Load() }

// LastError joins the errors of the latest response of each type (the
// resources it rejected) and of the latest snapshot build; nil when all
// were good.
func (x *XDS) LastError() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	var errs []error
	for _, t := range slices.Sorted(maps.Keys(x.applyErr)) {
		errs = append(errs, x.applyErr[t])
	}
	return errors.Join(append(errs, x.buildErr)...)
}

// Apply is the xds.Handler: it converts each resource, keeps the good ones
// (a rejected resource keeps its previous version, if any) and schedules a
// rebuild. Rejections are returned as an *xds.RejectedError, which NACKs
// the response.
func (x *XDS) Apply(typeURL string, upserts []*discoveryv3.Resource, removed []string) error {
	rejected := map[string]error{}
	switch typeURL {
	case xds.TypeAddress:
		good := make(map[string]xdsAddress, len(upserts))
		for _, r := range upserts {
			a, err := decodeAddress(r)
			if err != nil {
				rejected[r.GetName()] = err
				continue
			}
			good[r.GetName()] = a
		}
		x.mu.Lock()
		for _, name := range removed {
			delete(x.workloads, name)
			delete(x.services, name)
		}
		for name, a := range good {
			// A name may change from workload to service.
			delete(x.workloads, name)
			delete(x.services, name)
			if a.workload != nil {
				x.workloads[name] = a.workload
			} else {
				x.services[name] = a.service
			}
		}
	case xds.TypeAuthorization:
		good := make(map[string]*state.Policy, len(upserts))
		for _, r := range upserts {
			p, err := decodeAuthorization(r)
			if err != nil {
				rejected[r.GetName()] = err
				continue
			}
			good[r.GetName()] = p
		}
		x.mu.Lock()
		for _, name := range removed {
			delete(x.policies, name)
		}
		maps.Copy(x.policies, good)
	default:
		return fmt.Errorf("xds source: type %q is not handled", typeURL)
	}
	// Still under x.mu.
	x.seen[typeURL] = true
	var err error
	if len(rejected) > 0 {
		err = &xds.RejectedError{Rejected: rejected}
	}
	x.applyErr[typeURL] = err
	x.mu.Unlock()
	x.rebuildSoon()
	if err != nil {
		x.metrics.rejected.WithLabelValues(typeURL).Add(float64(len(rejected)))
		x.errors.Add(1)
		x.reported(false)
	}
	return err
}

// SetLocal makes pods the pods this node captures, replacing the previous
// set, and schedules a rebuild when it changed. Each becomes a captured
// workload: the control plane's, when it has sent the pod, given the pod's
// network namespace, node and (if it has none) addresses; otherwise one
// built from the pod itself. A repeated UID keeps the first pod. Like
// everything else, local pods reach the store only once the first sync is
// complete.
func (x *XDS) SetLocal(pods []LocalPod) {
	next := make([]LocalPod, 0, len(pods))
	seen := map[string]bool{}
	for _, p := range pods {
		p.UID = p.uid(x.cfg.ClusterID)
		if seen[p.UID] {
			x.log.Warn("local pod listed twice; keeping the first", "uid", p.UID)
			continue
		}
		seen[p.UID] = true
		p.IPs = slices.Clone(p.IPs)
		next = append(next, p)
	}
	slices.SortFunc(next, func(a, b LocalPod) int { return strings.Compare(a.UID, b.UID) })
	x.mu.Lock()
	changed := !slices.EqualFunc(next, x.local, LocalPod.equal)
	x.local = next
	x.mu.Unlock()
	if changed {
		x.rebuildSoon()
	}
}

func (x *XDS) rebuildSoon() {
	select {
	case x.kick <- struct{}{}:
	default: // a rebuild is already pending
	}
}

// loop rebuilds the snapshot Debounce after the first change of a burst.
// Measuring from the first change, not the last, bounds the delay under a
// steady stream of changes.
func (x *XDS) loop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	pending := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-x.kick:
			if !pending {
				pending = true
				timer.Reset(x.cfg.Debounce)
			}
		case <-timer.C:
			pending = false
			x.rebuild()
		}
	}
}

// rebuild builds a snapshot from the current state and swaps it in, unless
// the first sync is not complete.
func (x *XDS) rebuild() {
	x.mu.Lock()
	for _, t := range x.cfg.Client.TypeURLs {
		if !x.seen[t] {
			x.mu.Unlock()
			return
		}
	}
	in := buildInput{
		clusterID:   x.cfg.ClusterID,
		trustDomain: x.cfg.TrustDomain,
		workloads:   maps.Clone(x.workloads),
		services:    maps.Clone(x.services),
		policies:    maps.Clone(x.policies),
		local:       x.local, // replaced, never modified
	}
	x.mu.Unlock()

	version := fmt.Sprintf("xds-%d", x.version+1)
	snap, err := buildSnapshot(version, in)
	x.mu.Lock()
	x.buildErr = err
	x.mu.Unlock()
	if err != nil {
		x.metrics.snapshots.WithLabelValues(resultFailed).Inc()
		x.errors.Add(1)
		x.reported(false)
		x.log.Error("xds state does not build; keeping the last good state", "kept_version", x.store.Load().Version, "err", err)
		return
	}
	x.version++
	x.store.Swap(snap)
	x.applied.Add(1)
	x.metrics.snapshots.WithLabelValues(resultApplied).Inc()
	x.reported(true)
	level := slog.LevelDebug
	if !x.ready.Swap(true) {
		close(x.synced)
		level = slog.LevelInfo
	}
	x.log.Log(context.Background(), level, "xds state applied", "version", version,
		"workloads", len(snap.Workloads()), "services", len(snap.Services()), "policies", len(snap.Policies()))
}

// buildInput is what one snapshot is built from.
type buildInput struct {
	clusterID, trustDomain string
	workloads              map[string]*xdsWorkload
	services               map[string]*state.Service
	policies               map[string]*state.Policy
	local                  []LocalPod
}

// buildSnapshot merges the control plane's view with the local pods and
// builds a snapshot. It has no side effects: workloads and services are
// copied, since NewSnapshot takes ownership of what it indexes and the
// previous snapshot may still be read.
func buildSnapshot(version string, in buildInput) (*state.Snapshot, error) {
	uids := slices.Sorted(maps.Keys(in.workloads))
	workloads := make([]*state.Workload, 0, len(uids)+len(in.local))
	byUID := make(map[string]*state.Workload, len(uids))
	for _, uid := range uids {
		w := *in.workloads[uid].w
		byUID[uid] = &w
		workloads = append(workloads, &w)
	}
	for _, p := range in.local {
		if w, ok := byUID[p.UID]; ok {
			w.NetNS = p.NetNS
			// The agent captures the pod now, whatever the control plane
			// has heard so far.
			w.Protocol = state.ProtocolHBONE
			if len(w.IPs) == 0 {
				w.IPs = p.IPs
			}
			if p.Node != "" {
				w.Node = p.Node
			}
			continue
		}
		workloads = append(workloads, &state.Workload{
			UID:            p.UID,
			Name:           p.Name,
			Namespace:      p.Namespace,
			ServiceAccount: p.ServiceAccount,
			TrustDomain:    in.trustDomain,
			IPs:            p.IPs,
			Node:           p.Node,
			Protocol:       state.ProtocolHBONE,
			ClusterID:      in.clusterID,
			NetNS:          p.NetNS,
		})
	}

	// Endpoints in workload order, so that a service's endpoint list does
	// not depend on the order of responses.
	endpoints := map[string][]state.Endpoint{}
	for _, uid := range uids {
		xw := in.workloads[uid]
		if !xw.healthy {
			continue
		}
		for _, key := range slices.Sorted(maps.Keys(xw.endpoints)) {
			endpoints[key] = append(endpoints[key], xw.endpoints[key])
		}
	}
	services := make([]*state.Service, 0, len(in.services))
	for _, key := range slices.Sorted(maps.Keys(in.services)) {
		s := *in.services[key]
		s.Endpoints = endpoints[key]
		services = append(services, &s)
	}
	policies := make([]*state.Policy, 0, len(in.policies))
	for _, key := range slices.Sorted(maps.Keys(in.policies)) {
		policies = append(policies, in.policies[key])
	}
	return state.NewSnapshot(version, workloads, services, policies)
}

// Values of the result label of warren_discovery_xds_snapshots_total.
const (
	resultApplied = "applied"
	resultFailed  = "failed"
)

type xdsMetrics struct {
	snapshots *prometheus.CounterVec
	rejected  *prometheus.CounterVec
}

func newXDSMetrics(reg prometheus.Registerer) (*xdsMetrics, error) {
	m := &xdsMetrics{
		snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_discovery_xds_snapshots_total",
			Help: "Snapshots built from xDS state: applied, or failed (the last good one kept).",
		}, []string{"result"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_discovery_xds_rejected_resources_total",
			Help: "xDS resources rejected as invalid, by type URL.",
		}, []string{"type"}),
	}
	m.snapshots.WithLabelValues(resultApplied)
	m.snapshots.WithLabelValues(resultFailed)
	m.rejected.WithLabelValues(xds.TypeAddress)
	m.rejected.WithLabelValues(xds.TypeAuthorization)
	if err := metrics.Register(reg, "xds source", m.snapshots, m.rejected); err != nil {
		return nil, err
	}
	return m, nil
}
