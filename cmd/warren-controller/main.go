// Command warren-controller is Warren's control plane: the mesh CA (Istio's
// certificate API over gRPC and TLS, for agents in Kubernetes with
// service-account tokens or on plain hosts with static node credentials)
// and, in Kubernetes, workload discovery over delta xDS on the same port,
// built from the cluster's pods, services and policies.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/kube"
	"github.com/warren-mesh/warren/ca/server"
	"github.com/warren-mesh/warren/controller"
	"github.com/warren-mesh/warren/logging"
	"github.com/warren-mesh/warren/metrics"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "warren-controller:", err)
		os.Exit(1)
	}
}

// Authentication modes.
const (
	authKubernetes = "kubernetes"
	authStatic     = "static"
)

func run() error {
	caCfg := ca.DefaultConfig()
	srvCfg := server.DefaultConfig()
	flag.StringVar(&caCfg.Dir, "ca-dir", "", "directory of the CA (in Kubernetes a mounted Secret): a root (root.pem, root-key.pem; generated and persisted if both are missing) or Istio's plugged-in intermediate layout (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)")
	flag.StringVar(&caCfg.TrustDomain, "trust-domain", caCfg.TrustDomain, "SPIFFE trust domain")
	flag.DurationVar(&caCfg.LeafTTL, "cert-ttl", caCfg.LeafTTL, "workload certificate lifetime when a request names none")
	flag.DurationVar(&srvCfg.MaxTTL, "max-cert-ttl", srvCfg.MaxTTL, "longest workload certificate lifetime; longer requests are shortened")
	flag.StringVar(&srvCfg.Addr, "listen", srvCfg.Addr, "CA gRPC address (istiod uses :15012)")
	dnsNames := flag.String("server-dns-names", strings.Join(srvCfg.DNSNames, ","), "comma-separated DNS names in the CA's server certificate")
	ipSANs := flag.String("server-ips", "", "comma-separated IP addresses in the CA's server certificate (default: the listen address, when it names one)")
	flag.StringVar(&srvCfg.BundleFile, "bundle-file", "", "PEM file of extra trusted roots announced beside the CA's own (root rotation); re-read when it changes")
	flag.StringVar(&srvCfg.ClientCAFile, "client-ca-file", "", "PEM roots of node client certificates (static mode, mTLS node credentials)")
	flag.IntVar(&srvCfg.MaxRequestBytes, "max-request-bytes", srvCfg.MaxRequestBytes, "largest certificate request accepted")
	auth := flag.String("auth", authStatic, "caller authentication: kubernetes (TokenReview) or static (--nodes-file)")
	nodesFile := flag.String("nodes-file", "", "static mode: YAML of node credentials and the identities each may obtain")
	kubeconfig := flag.String("kubeconfig", "", "kubernetes mode: kubeconfig path (empty: in-cluster)")
	kdef := kube.DefaultConfig()
	audiences := flag.String("token-audiences", strings.Join(kdef.Audiences, ","), "kubernetes mode: comma-separated audiences a caller's token must carry")
	nodeAgents := flag.String("node-agents", strings.Join(kdef.NodeAgents, ","), "kubernetes mode: comma-separated namespace/serviceaccount of trusted node agents")
	metricsAddr := flag.String("metrics-addr", ":15014", "Prometheus metrics (/metrics) and readiness (/ready) address (istiod's monitoring port)")
	logFormat := flag.String("log-format", "json", "log format: json or text")
	logLevel := flag.String("log-level", "info", `log levels: "info", or per component "info,xds:debug"`)
	ko := kubeOptions{discovery: controller.DefaultConfig()}
	flag.StringVar(&ko.caSecret, "ca-secret", "", "kubernetes mode: Secret (in the controller's namespace) holding the CA; the leader fills it once with a new root when empty, every replica signs with it (replaces --ca-dir)")
	flag.StringVar(&ko.caRootConfigMap, "ca-root-configmap", "", "kubernetes mode: ConfigMap (in the controller's namespace) the leader publishes the trust roots to, as root-cert.pem")
	flag.BoolVar(&ko.leaderElect, "leader-elect", true, "kubernetes mode: elect one replica (Lease) to do what must happen once: fill the CA Secret, publish roots, record events")
	flag.StringVar(&ko.leaseName, "lease-name", "warren-controller", "kubernetes mode: leader-election Lease name")
	flag.StringVar(&ko.namespace, "namespace", os.Getenv("POD_NAMESPACE"), "kubernetes mode: the controller's namespace (default $POD_NAMESPACE)")
	flag.StringVar(&ko.podName, "pod-name", os.Getenv("POD_NAME"), "kubernetes mode: this replica's name, its leader-election identity (default $POD_NAME)")
	discovery := flag.Bool("discovery", true, "kubernetes mode: serve workload discovery (delta xDS) on the CA's port")
	flag.StringVar(&ko.discovery.ClusterID, "cluster-id", ko.discovery.ClusterID, "cluster name in workload UIDs and identities' metadata")
	flag.StringVar(&ko.discovery.RootNamespace, "root-namespace", ko.discovery.RootNamespace, "namespace whose AuthorizationPolicies apply mesh-wide")
	flag.StringVar(&ko.discovery.DomainSuffix, "domain-suffix", ko.discovery.DomainSuffix, "cluster DNS suffix of service hostnames")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	h, err := logging.NewFormatHandler(*logFormat, os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug})
	if err != nil {
		return fmt.Errorf("--log-format: %w", err)
	}
	levels := logging.New(h, slog.LevelInfo)
	if err := levels.Init(*logLevel); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(levels.Handler())
	ko.discovery.TrustDomain = caCfg.TrustDomain

	// The CA never signs past the server's cap, whatever a request or its
	// own default says.
	caCfg.MaxTTL = srvCfg.MaxTTL
	caCfg.LeafTTL = min(caCfg.LeafTTL, caCfg.MaxTTL)
	srvCfg.DNSNames = splitList(*dnsNames)
	for _, s := range splitList(*ipSANs) {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("--server-ips: %q is not an IP address", s)
		}
		srvCfg.IPs = append(srvCfg.IPs, ip)
	}
	if host, _, err := net.SplitHostPort(srvCfg.Addr); err == nil && len(srvCfg.IPs) == 0 {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			srvCfg.IPs = []net.IP{ip}
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var (
		authn server.Authenticator
		authz server.Authorizer
		cl    *kubeClients
	)
	switch *auth {
	case authStatic:
		if *nodesFile == "" {
			return errors.New("--auth=static needs --nodes-file")
		}
		if ko.caSecret != "" {
			return errors.New("--ca-secret needs --auth=kubernetes")
		}
		s, err := server.LoadStatic(*nodesFile, spiffeid.RequireTrustDomainFromString(caCfg.TrustDomain))
		if err != nil {
			return err
		}
		authn, authz = s, s
	case authKubernetes:
		rc, err := restConfig(*kubeconfig)
		if err != nil {
			return err
		}
		if cl, err = newKubeClients(rc); err != nil {
			return err
		}
		cfg := kube.DefaultConfig()
		cfg.TrustDomain, cfg.Audiences, cfg.NodeAgents = caCfg.TrustDomain, splitList(*audiences), splitList(*nodeAgents)
		k, err := kube.New(cfg, cl.kube, log)
		if err != nil {
			return err
		}
		authn, authz = k, k
		if ko.caSecret != "" && ko.namespace == "" {
			return errors.New("--ca-secret needs --namespace (or $POD_NAMESPACE)")
		}
		if err := ko.discovery.Validate(); err != nil && *discovery {
			return fmt.Errorf("discovery: %w", err)
		}
	default:
		return fmt.Errorf("--auth: %q is not %s or %s", *auth, authKubernetes, authStatic)
	}

	// Leadership: only the leader fills the CA Secret, publishes the roots
	// and records events; every replica signs and serves discovery.
	lead := &leadership{}
	srvReady := make(chan *server.Server)
	if cl != nil {
		lead.onLead = append(lead.onLead, func(ctx context.Context) {
			if ko.caSecret != "" {
				// Every replica waits for this Secret, so keep trying
				// while leading.
				for {
					err := controller.EnsureCASecret(ctx, cl.kube, ko.namespace, ko.caSecret, generateRoot(caCfg, log))
					if err == nil || ctx.Err() != nil {
						break
					}
					log.Error("filling the CA secret; retrying", "secret", ko.namespace+"/"+ko.caSecret, "error", err)
					select {
					case <-ctx.Done():
						return
					case <-time.After(5 * time.Second):
					}
				}
			}
			if ko.caRootConfigMap == "" {
				return
			}
			var srv *server.Server
			select {
			case srv = <-srvReady:
			case <-ctx.Done():
				return
			}
			publishRoots(ctx, cl, srv, ko, log)
		})
		go lead.run(ctx, cl, ko, log)
	}

	var c *ca.CA
	if ko.caSecret != "" {
		var cleanup func()
		if c, cleanup, err = loadCA(ctx, cl, ko, caCfg, log); err != nil {
			return err
		}
		defer cleanup()
	} else if c, err = ca.New(caCfg, log); err != nil {
		return err
	}

	if cl != nil && *discovery {
		srvCfg.MaxMessageBytes = 64 << 20
	}
	reg := metrics.NewRegistry()
	srv, err := server.New(srvCfg, c, authn, authz, reg, log)
	if err != nil {
		return err
	}
	go func() {
		// Hand the server to the leader's root publisher, whenever (if
		// ever) this replica leads.
		for {
			select {
			case srvReady <- srv:
			case <-ctx.Done():
				return
			}
		}
	}()
	var ctrl *controller.Controller
	if cl != nil && *discovery {
		if ctrl, err = startDiscovery(ctx, cl, srv, authn, ko, reg, log); err != nil {
			return err
		}
		lead.subscribe(ctrl.SetLeader)
	}
	ready := func() error {
		if ctrl != nil && !ctrl.Synced() {
			return errors.New("discovery: informers not synced")
		}
		return nil
	}
	ln, err := net.Listen("tcp", srvCfg.Addr)
	if err != nil {
		return fmt.Errorf("CA listener: %w", err)
	}
	if *metricsAddr != "" {
		mln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", metrics.Handler(reg))
		mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
			if err := ready(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ready")
		})
		msrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go msrv.Serve(mln)
		defer msrv.Close()
	}

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		log.Info("signal received, shutting down")
	}
	// Requests are small; a few seconds lets those in flight finish.
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		srv.Stop()
	}
	return <-errc
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// restConfig is the client configuration of kubeconfig, or in-cluster.
func restConfig(kubeconfig string) (*rest.Config, error) {
	var (
		rc  *rest.Config
		err error
	)
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	return rc, nil
}
