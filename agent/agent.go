package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/admin"
	"github.com/warren-mesh/warren/classify"
	"github.com/warren-mesh/warren/discovery"
	"github.com/warren-mesh/warren/hbone"
	"github.com/warren-mesh/warren/identity"
	"github.com/warren-mesh/warren/logging"
	"github.com/warren-mesh/warren/metrics"
	"github.com/warren-mesh/warren/proxy"
	"github.com/warren-mesh/warren/redirect"
	"github.com/warren-mesh/warren/state"
)

// Agent is one node's Warren data plane.
type Agent struct {
	cfg         Config
	log         *slog.Logger
	trustDomain spiffeid.TrustDomain

	store    *state.Store
	source   source
	kube     *kubeAgent // nil in local (state file) mode
	ids      *identity.Manager
	capture  redirect.Redirector
	pool     *hbone.Pool
	tunnels  *hbone.Server
	conns    *proxy.Tracker
	outbound *proxy.Outbound
	inbound  *proxy.Inbound
	pods     *podSet
	admin    *admin.Server
	quit     chan struct{} // closed by /quitquitquit
	quitOnce sync.Once
	registry *prometheus.Registry
	metrics  *metrics.Metrics
	promSrv  *http.Server

	ctx    context.Context // lives from Start to Stop; parent of every connection
	cancel context.CancelFunc
	kick   chan struct{}
	wg     sync.WaitGroup

	// closeIssuer releases the CA client's connection after ids stops.
	closeIssuer func() error
}

// New builds an agent from cfg without touching the system; Start does.
// log must be built on levels' handler, so that the admin endpoint's
// /logging changes what it writes.
func New(cfg Config, log *slog.Logger, levels *logging.Levels) (_ *Agent, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("agent config: trust domain %q: %w", cfg.TrustDomain, err)
	}
	var kube *kubeAgent
	if cfg.kubeMode() {
		if kube, err = newKube(&cfg, log); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				os.RemoveAll(kube.rootDir)
			}
		}()
	}
	a := &Agent{cfg: cfg, log: log.With("component", "agent"), trustDomain: td, kick: make(chan struct{}, 1), quit: make(chan struct{}), kube: kube}
	a.store = state.NewStore()
	a.pods = newPodSet(a)

	iss, closeIssuer, err := cfg.issuer(log)
	if err != nil {
		return nil, err
	}
	a.closeIssuer = closeIssuer
	defer func() {
		if err != nil {
			closeIssuer()
		}
	}()
	if a.ids, err = identity.NewManager(cfg.identityConfig(), iss, log); err != nil {
		return nil, err
	}

	switch cfg.Redirect {
	case BackendIPTables:
		a.capture, err = redirect.NewIPTables(cfg.Capture, log)
	default:
		a.capture, err = redirect.NewNFTables(cfg.Capture, log)
	}
	if err != nil {
		return nil, fmt.Errorf("capture backend %s: %w", cfg.Redirect, err)
	}

	cls, err := classify.New(cfg.classify(), nil)
	if err != nil {
		return nil, err
	}
	a.pool = hbone.NewPool(cfg.HBONE, log)
	a.registry = metrics.NewRegistry()
	mcfg := metrics.DefaultConfig()
	mcfg.ClusterID, mcfg.TrustDomain = cfg.ClusterID, cfg.TrustDomain
	if a.metrics, err = metrics.New(mcfg, a.registry); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	a.metrics.WatchPool(a.pool.Stats)
	a.metrics.WatchCertificates(a.ids.Identities)

	a.conns = proxy.NewTracker()
	env := proxy.Env{Store: a.store, Tracker: a.conns, Observer: a.metrics, OrigDst: redirect.OriginalDst, Log: log}
	a.outbound = proxy.NewOutbound(cfg.proxy(), env, cls, poolTunnel{a.pool}, a.ids.Bundle())
	a.inbound = proxy.NewInbound(cfg.proxy(), env, a.pods)
	a.tunnels = hbone.NewServer(cfg.HBONE, a.inbound, log)

	if kube != nil {
		if err := kube.build(a, a.registry); err != nil {
			return nil, err
		}
		kube.xds.Report(func(ok bool) { a.metrics.ConfigUpdate("xds", ok) })
		a.source = kube.xds
	} else {
		fileCfg := discovery.DefaultFileConfig()
		fileCfg.Path = cfg.ConfigFile
		file := discovery.NewFile(fileCfg, a.store, log)
		file.Report(func(ok bool) { a.metrics.ConfigUpdate("file", ok) })
		a.source = file
	}

	adminCfg := admin.DefaultConfig()
	adminCfg.AdminAddr, adminCfg.ReadinessAddr, adminCfg.Node, adminCfg.Version = cfg.AdminAddr, cfg.ReadinessAddr, cfg.Node, Version
	adminCfg.Settings = cfg
	quit := func() { a.quitOnce.Do(func() { close(a.quit) }) }
	if a.admin, err = admin.New(adminCfg, (*adminSource)(a), levels, quit, log); err != nil {
		return nil, err
	}
	return a, nil
}

// Start brings the agent up, in order: identities, readiness endpoint, the
// state source (whose first read must succeed), then the pod reconciler,
// which enrols every local pod. It returns once the first reconcile has run;
// pods that failed to enrol are retried in the background and reported by
// readiness.
func (a *Agent) Start(ctx context.Context) error {
	a.ctx, a.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if a.kube != nil {
		// The CA client verifies the controller with these roots.
		if err := a.kube.startRoots(ctx); err != nil {
			return err
		}
	}
	if err := a.ids.Start(ctx); err != nil {
		return fmt.Errorf("starting identity manager: %w", err)
	}
	if err := a.admin.Start(); err != nil {
		return fmt.Errorf("starting admin and readiness servers: %w", err)
	}
	if err := a.startMetrics(); err != nil {
		return err
	}
	a.store.Subscribe(func(_, next *state.Snapshot) {
		// Policies may have changed: connections they now deny are closed
		// at once, before the next decision is made.
		if n := a.inbound.Reauthorize(next); n > 0 {
			a.log.Info("closed connections denied by new policy", "count", n, "version", next.Version)
		}
		select {
		case a.kick <- struct{}{}:
		default:
		}
	})
	if a.kube != nil {
		if err := a.kube.start(ctx); err != nil {
			return err
		}
	} else if err := a.source.Start(ctx); err != nil {
		return fmt.Errorf("reading state: %w", err)
	}
	a.pods.reconcile(ctx, a.store.Load())
	a.wg.Add(1)
	go a.reconcileLoop()
	a.log.Info("agent started", "node", a.cfg.Node, "pods", len(a.store.Load().LocalWorkloads(a.cfg.Node)), "redirect", a.cfg.Redirect)
	return nil
}

// reconcileLoop re-reconciles on every state change, and periodically while
// some pod is pending.
func (a *Agent) reconcileLoop() {
	defer a.wg.Done()
	t := time.NewTicker(a.cfg.RetryInterval)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-a.kick:
		case <-t.C:
			if len(a.pods.Pending()) == 0 {
				continue
			}
		}
		a.pods.reconcile(a.ctx, a.store.Load())
	}
}

// Stop shuts the agent down, in order: stop watching state, release every
// pod (capture rules removed, listeners closed), drain open tunnels for up to
// DrainTimeout, close pooled tunnels, stop identities and readiness. Errors
// are logged and the shutdown continues.
func (a *Agent) Stop(ctx context.Context) error {
	if a.kube != nil {
		// Releases or detaches the pods itself (uninstall or restart).
		a.kube.stop(ctx)
		a.cancel()
		a.wg.Wait()
	} else {
		a.source.Stop()
		a.cancel()
		a.wg.Wait()
		a.pods.releaseAll(ctx)
	}
	dctx, cancel := context.WithTimeout(ctx, a.cfg.DrainTimeout)
	defer cancel()
	var errs []error
	if err := a.tunnels.Shutdown(dctx); err != nil {
		errs = append(errs, fmt.Errorf("draining tunnels: %w", err))
	}
	if err := a.pool.Close(); err != nil {
		errs = append(errs, fmt.Errorf("closing tunnel pool: %w", err))
	}
	a.ids.Stop()
	if err := a.closeIssuer(); err != nil {
		errs = append(errs, fmt.Errorf("closing CA client: %w", err))
	}
	if err := a.admin.Stop(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stopping admin server: %w", err))
	}
	if a.promSrv != nil {
		a.promSrv.Close()
	}
	a.log.Info("agent stopped")
	return errors.Join(errs...)
}

// source is where the agent's state comes from: the local state file, or
// the controller over xDS.
type source interface {
	Start(ctx context.Context) error
	Stop()
	Ready() bool
	LastError() error
}

// Quit is closed when an operator asks the agent to exit
// (POST /quitquitquit); the caller then calls Stop.
func (a *Agent) Quit() <-chan struct{} { return a.quit }

// Pending lists what keeps the agent from being ready; empty means ready.
func (a *Agent) Pending() []string {
	var out []string
	if !a.source.Ready() {
		out = append(out, "state: "+errString(a.source.LastError(), "not loaded"))
	}
	for uid, err := range a.pods.Pending() {
		out = append(out, fmt.Sprintf("pod %s: %v", uid, err))
	}
	for _, id := range a.ids.Pending() {
		out = append(out, "certificate "+id.String())
	}
	sort.Strings(out)
	return out
}

// startMetrics serves Prometheus metrics on MetricsAddr, at both paths
// Istio's tooling scrapes.
func (a *Agent) startMetrics() error {
	if a.cfg.MetricsAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics listener %s: %w", a.cfg.MetricsAddr, err)
	}
	mux := http.NewServeMux()
	h := metrics.Handler(a.registry)
	mux.Handle("GET /metrics", h)
	mux.Handle("GET /stats/prometheus", h)
	a.promSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go a.promSrv.Serve(ln)
	return nil
}

func errString(err error, none string) string {
	if err == nil {
		return none
	}
	return err.Error()
}

// poolTunnel adapts *hbone.Pool to proxy.Tunnel.
type poolTunnel struct{ p *hbone.Pool }

func (t poolTunnel) Connect(ctx context.Context, req *hbone.Request) (proxy.Duplex, error) {
	st, err := t.p.Connect(ctx, req)
	if err != nil {
		return nil, err
	}
	return st, nil
}
