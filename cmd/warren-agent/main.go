// Command warren-agent is Warren's node agent: it captures the traffic of the
// node's enrolled pods and carries it in HBONE tunnels.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/warren-mesh/warren/agent"
	"github.com/warren-mesh/warren/logging"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "warren-agent:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg := agent.DefaultConfig()
	host, _ := os.Hostname()
	nodeDefault := os.Getenv("NODE_NAME")
	if nodeDefault == "" {
		nodeDefault = host
	}
	flag.StringVar(&cfg.ConfigFile, "config", "", "local state file (YAML: workloads, services, policies); watched for changes. Without it the agent runs in Kubernetes mode")
	k := &cfg.Kube
	flag.StringVar(&k.Kubeconfig, "kubeconfig", "", "Kubernetes mode: kubeconfig path (empty: in-cluster)")
	flag.StringVar(&k.ControllerService, "controller-service", k.ControllerService, `Kubernetes mode: the controller's Service, "name" (in the agent's namespace) or "namespace/name"; dialled at its ClusterIP`)
	flag.StringVar(&k.XDSAddress, "xds-address", "", "Kubernetes mode: discovery server host:port instead of --controller-service (e.g. istiod.istio-system.svc:15012)")
	flag.StringVar(&k.XDSServerName, "xds-server-name", "", "Kubernetes mode: name expected in the discovery server's certificate (default: the Service's name.namespace.svc, or the host of --xds-address)")
	flag.StringVar(&k.CARootConfigMap, "ca-root-configmap", k.CARootConfigMap, "Kubernetes mode: ConfigMap in the agent's namespace whose root-cert.pem holds the mesh roots (empty: use --ca-root-file)")
	flag.StringVar(&k.EnrollLabel, "enroll-label", k.EnrollLabel, "Kubernetes mode: key=value label that enrols a namespace or pod (key=none on a pod opts it out)")
	flag.StringVar(&k.CNIConfDir, "cni-conf-dir", k.CNIConfDir, "Kubernetes mode: the node's CNI configuration directory, as mounted in the agent")
	flag.StringVar(&k.CNIBinDir, "cni-bin-dir", k.CNIBinDir, "Kubernetes mode: the node's CNI plugin directory, as mounted in the agent")
	flag.StringVar(&k.CNIPlugin, "cni-plugin", k.CNIPlugin, "Kubernetes mode: the warren-cni binary copied into --cni-bin-dir")
	flag.StringVar(&k.CNISocket, "cni-socket", k.CNISocket, "Kubernetes mode: unix socket warren-cni reaches the agent on")
	flag.DurationVar(&k.CNITimeout, "cni-timeout", k.CNITimeout, "Kubernetes mode: how long a new pod's sandbox waits to be captured")
	flag.StringVar(&k.NetNSDir, "netns-dir", k.NetNSDir, "Kubernetes mode: where the node pins pod network namespaces")
	flag.StringVar(&k.PodName, "pod-name", os.Getenv("POD_NAME"), "Kubernetes mode: the agent's own pod (default $POD_NAME)")
	flag.StringVar(&k.PodNamespace, "pod-namespace", os.Getenv("POD_NAMESPACE"), "Kubernetes mode: the agent's namespace (default $POD_NAMESPACE)")
	flag.StringVar(&k.NodeIP, "node-ip", os.Getenv("INSTANCE_IP"), "Kubernetes mode: this node's IP for the xDS node id (default $INSTANCE_IP)")
	flag.StringVar(&cfg.Node, "node", nodeDefault, "this node's name (default $NODE_NAME, else the hostname)")
	flag.StringVar(&cfg.CADir, "ca-dir", "", "directory of the local CA: a root (root.pem, root-key.pem; generated if missing) or Istio's plugged-in layout (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)")
	flag.StringVar(&cfg.CA.Address, "ca-address", "", "CA service host:port (Warren's controller or istiod, e.g. istiod.istio-system.svc:15012); replaces --ca-dir")
	flag.StringVar(&cfg.CA.ServerName, "ca-server-name", "", "name expected in the CA's certificate (default: the host of --ca-address)")
	flag.StringVar(&cfg.CA.RootFile, "ca-root-file", "", "PEM roots that verify the CA and seed the trust bundle (e.g. the mounted istio-ca-root-cert ConfigMap)")
	flag.StringVar(&cfg.CA.TokenFile, "ca-token-file", "", "bearer token for the CA, read on every request (projected service-account token, audience istio-ca, or node bootstrap token)")
	flag.DurationVar(&cfg.BundleRefresh, "bundle-refresh", 0, "how often the trust bundle is read again (0: 5m)")
	flag.StringVar(&cfg.TrustDomain, "trust-domain", cfg.TrustDomain, "SPIFFE trust domain")
	flag.DurationVar(&cfg.CertTTL, "cert-ttl", cfg.CertTTL, "workload certificate lifetime")
	flag.StringVar(&cfg.Redirect, "redirect", cfg.Redirect, "capture backend: nftables or iptables")
	flag.StringVar(&cfg.AdminAddr, "admin-addr", cfg.AdminAddr, "admin address (/config_dump, /logging, /quitquitquit, pprof); keep it on loopback")
	flag.StringVar(&cfg.ReadinessAddr, "readiness-addr", cfg.ReadinessAddr, "readiness endpoint address (GET /healthz/ready)")
	flag.StringVar(&cfg.MetricsAddr, "metrics-addr", cfg.MetricsAddr, "Prometheus metrics address (/metrics, /stats/prometheus)")
	flag.StringVar(&cfg.ClusterID, "cluster-id", cfg.ClusterID, "cluster name for metric labels of workloads that do not name theirs")
	logLevel := flag.String("log-level", "info", `log levels: "info", or per component "info,hbone:debug,proxy=warn"`)
	logFormat := flag.String("log-format", "json", "log format: json or text")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}

	// Every record reaches the level filter, which decides per component;
	// POST /logging changes it at run time.
	h, err := logging.NewFormatHandler(*logFormat, os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug})
	if err != nil {
		return fmt.Errorf("--log-format: %w", err)
	}
	levels := logging.New(h, slog.LevelInfo)
	if err := levels.Init(*logLevel); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(levels.Handler())

	a, err := agent.New(cfg, log, levels)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := a.Start(ctx); err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.Stop(sctx)
		return err
	}
	select {
	case <-ctx.Done():
		log.Info("signal received, shutting down")
	case <-a.Quit():
		log.Info("quit requested, shutting down")
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return a.Stop(sctx)
}
