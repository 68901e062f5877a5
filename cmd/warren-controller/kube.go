package main

import (
	"bytes"
	"context"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/server"
	"github.com/warren-mesh/warren/controller"
	"github.com/warren-mesh/warren/xds"
)

// kubeOptions are the flags of Kubernetes mode beyond the CA's.
type kubeOptions struct {
	caSecret        string // Secret holding the root, filled once by the leader
	caRootConfigMap string // ConfigMap the leader publishes root-cert.pem to
	leaderElect     bool
	leaseName       string
	namespace       string // the controller's own namespace
	podName         string
	discovery       controller.Config
}

// kubeClients are the API clients the controller uses.
type kubeClients struct {
	kube  kubernetes.Interface
	istio istioclient.Interface
	dyn   dynamic.Interface
}

func newKubeClients(rc *rest.Config) (*kubeClients, error) {
	rc = rest.CopyConfig(rc)
	rc.UserAgent = "warren-controller"
	// Informers list every pod and service at start; the default 5 QPS
	// would throttle events and leader-election renewals behind them.
	rc.QPS, rc.Burst = 50, 100
	k, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	i, err := istioclient.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("istio client: %w", err)
	}
	d, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("dynamic client: %w", err)
	}
	return &kubeClients{kube: k, istio: i, dyn: d}, nil
}

// leadership runs leader election (when enabled) and tells the parts that
// act once — filling the CA Secret, publishing roots, recording events —
// whether this replica leads.
type leadership struct {
	mu     sync.Mutex // guards change
	leader atomic.Bool
	onLead []func(ctx context.Context)
	change []func(bool)
}

func (l *leadership) run(ctx context.Context, cl *kubeClients, o kubeOptions, log *slog.Logger) {
	lead := func(ctx context.Context) {
		for _, f := range l.onLead {
			go f(ctx)
		}
	}
	changed := func(is bool) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.leader.Store(is)
		for _, f := range l.change {
			f(is)
		}
	}
	if !o.leaderElect {
		changed(true)
		lead(ctx)
		return
	}
	id := o.podName
	if id == "" {
		id, _ = os.Hostname()
	}
	controller.RunLeaderElection(ctx, cl.kube, o.namespace, o.leaseName, id, lead, changed, log)
}

// loadCA waits for the CA Secret to be filled (by the leader, or by an
// operator with Istio's plugged-in layout) and loads it from a private copy:
// every replica signs with the same root.
func loadCA(ctx context.Context, cl *kubeClients, o kubeOptions, caCfg ca.Config, log *slog.Logger) (*ca.CA, func(), error) {
	data, err := controller.WaitCASecret(ctx, cl.kube, o.namespace, o.caSecret)
	if err != nil {
		return nil, nil, fmt.Errorf("waiting for CA secret %s/%s: %w", o.namespace, o.caSecret, err)
	}
	dir, err := os.MkdirTemp("", "warren-ca-")
	if err != nil {
		return nil, nil, fmt.Errorf("CA dir: %w", err)
	}
	cleanup := func() { os.RemoveAll(dir) }
	for name, b := range data {
		if filepath.Base(name) != name {
			cleanup()
			return nil, nil, fmt.Errorf("CA secret key %q is not a file name", name)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("CA dir: %w", err)
		}
	}
	caCfg.Dir = dir
	c, err := ca.New(caCfg, log)
	if err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("CA secret %s/%s: %w", o.namespace, o.caSecret, err)
	}
	return c, cleanup, nil
}

// generateRoot creates a new root with the CA package's own generator and
// returns its files for the Secret.
func generateRoot(caCfg ca.Config, log *slog.Logger) func() (map[string][]byte, error) {
	return func() (map[string][]byte, error) {
		dir, err := os.MkdirTemp("", "warren-ca-gen-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		caCfg.Dir = dir
		if _, err := ca.New(caCfg, log); err != nil {
			return nil, fmt.Errorf("generating root: %w", err)
		}
		out := map[string][]byte{}
		for _, name := range []string{ca.RootCertFile, ca.RootKeyFile} {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				return nil, fmt.Errorf("generating root: %w", err)
			}
			out[name] = b
		}
		log.Info("generated a new mesh root CA")
		return out, nil
	}
}

// rootsPEM is the trust bundle the server announces, as PEM.
func rootsPEM(srv *server.Server) ([]byte, error) {
	roots, err := srv.Roots()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	for _, r := range roots {
		if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: r.Raw}); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// startDiscovery registers xDS on the CA's gRPC server and starts the
// controller that fills it. Agents authenticate as for the CA and must be
// trusted node agents: the workload state names every pod in the mesh.
func startDiscovery(ctx context.Context, cl *kubeClients, srv *server.Server, authn server.Authenticator, o kubeOptions, reg prometheus.Registerer, log *slog.Logger) (*controller.Controller, error) {
	cache := xds.NewCache()
	allow := func(c *server.Caller) error {
		if !c.MayImpersonate {
			return fmt.Errorf("%w: %s is not a trusted node agent", server.ErrPermissionDenied, c.Name)
		}
		return nil
	}
	xsrv, err := xds.NewServer(xds.DefaultServerConfig(), cache, xds.CAAuthenticator(authn, allow), reg, log)
	if err != nil {
		return nil, err
	}
	xsrv.Register(srv.GRPC())
	ctrl, err := controller.New(o.discovery, cl.kube, cl.istio, cl.dyn, cache, reg, log)
	if err != nil {
		return nil, err
	}
	go func() {
		if err := ctrl.Run(ctx); err != nil && ctx.Err() == nil {
			log.Error("discovery controller stopped", "error", err)
		}
	}()
	return ctrl, nil
}

// subscribe calls f with the current leadership now and on every change.
func (l *leadership) subscribe(f func(bool)) {
	l.mu.Lock()
	l.change = append(l.change, f)
	is := l.leader.Load()
	l.mu.Unlock()
	f(is)
}

// publishRoots keeps the roots ConfigMap equal to the server's bundle while
// this replica leads; the bundle file may change at run time (rotation).
func publishRoots(ctx context.Context, cl *kubeClients, srv *server.Server, o kubeOptions, log *slog.Logger) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		pemRoots, err := rootsPEM(srv)
		if err == nil {
			err = controller.PublishRoot(ctx, cl.kube, o.namespace, o.caRootConfigMap, pemRoots)
		}
		if err != nil && ctx.Err() == nil {
			log.Error("publishing trust roots", "configmap", o.namespace+"/"+o.caRootConfigMap, "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
