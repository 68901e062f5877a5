// Command warren-controller is Warren's control plane. For now it serves
// the CA alone: Istio's certificate API over gRPC and TLS, for agents in
// Kubernetes (service-account tokens) or on plain hosts (static node
// credentials).
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
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/kube"
	"github.com/warren-mesh/warren/ca/server"
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
	metricsAddr := flag.String("metrics-addr", ":15014", "Prometheus metrics address (istiod's monitoring port)")
	logFormat := flag.String("log-format", "json", "log format: json or text")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	h, err := logging.NewFormatHandler(*logFormat, os.Stdout, nil)
	if err != nil {
		return fmt.Errorf("--log-format: %w", err)
	}
	log := slog.New(h)

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

	c, err := ca.New(caCfg, log)
	if err != nil {
		return err
	}
	var (
		authn server.Authenticator
		authz server.Authorizer
	)
	switch *auth {
	case authStatic:
		if *nodesFile == "" {
			return errors.New("--auth=static needs --nodes-file")
		}
		s, err := server.LoadStatic(*nodesFile, spiffeid.RequireTrustDomainFromString(caCfg.TrustDomain))
		if err != nil {
			return err
		}
		authn, authz = s, s
	case authKubernetes:
		k, err := kubeAuth(*kubeconfig, caCfg.TrustDomain, splitList(*audiences), splitList(*nodeAgents), log)
		if err != nil {
			return err
		}
		authn, authz = k, k
	default:
		return fmt.Errorf("--auth: %q is not %s or %s", *auth, authKubernetes, authStatic)
	}

	reg := metrics.NewRegistry()
	srv, err := server.New(srvCfg, c, authn, authz, reg, log)
	if err != nil {
		return err
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
		msrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go msrv.Serve(mln)
		defer msrv.Close()
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
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

// kubeAuth builds the TokenReview authenticator and pod-on-node authorizer
// against the cluster of kubeconfig, or the one the controller runs in.
func kubeAuth(kubeconfig, trustDomain string, audiences, nodeAgents []string, log *slog.Logger) (*kube.Kube, error) {
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
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	cfg := kube.DefaultConfig()
	cfg.TrustDomain, cfg.Audiences, cfg.NodeAgents = trustDomain, audiences, nodeAgents
	return kube.New(cfg, cs, log)
}
