package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/warren-mesh/warren/classify"
	"github.com/warren-mesh/warren/hbone"
	"github.com/warren-mesh/warren/proxy"
	"github.com/warren-mesh/warren/redirect"
)

// Redirect backends.
const (
	BackendNFTables = "nftables"
	BackendIPTables = "iptables"
)

// Config is everything the agent needs; cmd/warren-agent fills it from flags.
type Config struct {
	// Node is this agent's node name; it serves the workloads whose node
	// field matches.
	Node string
	// ConfigFile is the local state file (workloads, services, policies).
	ConfigFile string
	// CADir holds the local CA's root certificate and key; agents that
	// share it trust each other. Unused when CA.Address is set.
	CADir string
	// CA is the CA service to obtain certificates from instead of a local
	// CA (issuer.go).
	CA RemoteCA
	// BundleRefresh is how often the trust bundle is read again; zero
	// keeps the identity manager's default.
	BundleRefresh time.Duration
	// TrustDomain of the mesh.
	TrustDomain string
	// CertTTL is the lifetime of workload certificates.
	CertTTL time.Duration
	// Redirect selects the capture backend: "nftables" (default: needs no
	// binaries) or "iptables" (iptables-restore on the host).
	Redirect string
	// AdminAddr serves /config_dump, /logging, /quitquitquit and pprof
	// (Istio: 127.0.0.1:15000); it must stay on loopback.
	AdminAddr string
	// ReadinessAddr serves GET /healthz/ready (Istio: :15021).
	ReadinessAddr string
	// MetricsAddr serves Prometheus metrics at /metrics and
	// /stats/prometheus (Istio: :15020).
	MetricsAddr string
	// ClusterID labels metrics of workloads that do not name their cluster.
	ClusterID string
	// DrainTimeout bounds how long Stop waits for open tunnels.
	DrainTimeout time.Duration
	// RetryInterval is how often a pod that failed to enrol is retried.
	RetryInterval time.Duration

	// Capture holds the in-pod ports and marks (Istio's values; changing
	// them breaks interoperability). The proxy's socket mark and the
	// classifier's reserved ports are derived from it.
	Capture redirect.Config
	Proxy   proxy.Config
	HBONE   hbone.Config

	// Kube configures Kubernetes mode, used when ConfigFile is empty.
	Kube KubeConfig
}

// DefaultConfig returns Istio-compatible defaults; Node, and ConfigFile
// (local mode) or Kube's pod fields (Kubernetes mode) must still be set.
func DefaultConfig() Config {
	return Config{
		TrustDomain:   "cluster.local",
		CertTTL:       24 * time.Hour,
		Redirect:      BackendNFTables,
		AdminAddr:     "127.0.0.1:15000",
		ReadinessAddr: ":15021",
		MetricsAddr:   ":15020",
		ClusterID:     "Kubernetes",
		DrainTimeout:  5 * time.Second,
		RetryInterval: 2 * time.Second,
		Kube:          DefaultKubeConfig(),
		Capture:       redirect.DefaultConfig(),
		Proxy:         proxy.DefaultConfig(),
		HBONE:         hbone.DefaultConfig(),
	}
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.Node == "" {
		errs = append(errs, errors.New("node: must be set"))
	}
	if c.kubeMode() {
		errs = append(errs, c.Kube.validate()...)
		if c.CADir != "" {
			errs = append(errs, errors.New("ca dir: Kubernetes mode gets certificates from the controller; set a state file to use a local CA"))
		}
		if c.CA.TokenFile == "" {
			errs = append(errs, errors.New("ca token file: must be set in Kubernetes mode (projected token, audience istio-ca)"))
		}
	}
	if c.Redirect != BackendNFTables && c.Redirect != BackendIPTables {
		errs = append(errs, fmt.Errorf("redirect: %q is not %q or %q", c.Redirect, BackendNFTables, BackendIPTables))
	}
	if c.CertTTL < time.Minute/6 {
		errs = append(errs, fmt.Errorf("cert ttl: %v is shorter than 10s", c.CertTTL))
	}
	errs = append(errs, c.validateCA()...)
	for _, v := range []interface{ Validate() error }{c.Capture, c.Proxy, c.HBONE, c.classify()} {
		if err := v.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// classify derives the classifier's ports from the capture ports: a
// connection to any of the agent's own in-pod ports would loop.
func (c Config) classify() classify.Config {
	p := c.Capture
	return classify.Config{
		HBONEPort: p.InboundTunnelPort,
		Reserved:  []uint16{p.OutboundPort, p.InboundPlaintextPort, p.InboundTunnelPort},
	}
}

// proxy returns the proxy configuration with the capture's exemption mark.
func (c Config) proxy() proxy.Config {
	pc := c.Proxy
	pc.Mark = c.Capture.AgentMark
	return pc
}
