package harness

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/netns"
	"github.com/warren-mesh/warren/test/testbed"
)

// CAOptions make the agents obtain certificates from a warren-controller
// CA process on node1 (static node tokens) instead of each loading the
// shared root in-process.
type CAOptions struct {
	// ControllerBin is the warren-controller binary.
	ControllerBin string
	// CertTTL is the agents' certificate lifetime; zero keeps the agent's
	// default.
	CertTTL time.Duration
	// BundleRefresh is how often agents re-read the trust bundle; zero
	// keeps the agent's default.
	BundleRefresh time.Duration
}

// caPort is istiod's CA port, which the controller copies.
const caPort = 15012

// CAAddr is where the controller listens: node1's underlay address.
func (m *Mesh) CAAddr() netip.AddrPort {
	return netip.AddrPortFrom(m.TB.Nodes[0].Underlay, caPort)
}

// CADir holds the controller's root (root.pem, root-key.pem).
func (m *Mesh) CADir() string { return filepath.Join(m.Dir, "ca") }

// CARootsPath is the trust file the agents read (--ca-root-file): the
// operator's copy of the roots, which a rotation rewrites.
func (m *Mesh) CARootsPath() string { return filepath.Join(m.Dir, "ca-roots.pem") }

// CABundlePath is the controller's extra-roots file (--bundle-file).
func (m *Mesh) CABundlePath() string { return filepath.Join(m.Dir, "ca-bundle.pem") }

// CALogPath is the controller's log (appended across restarts).
func (m *Mesh) CALogPath() string { return filepath.Join(m.Dir, "controller.log") }

func (m *Mesh) tokenPath(node string) string { return filepath.Join(m.Dir, "token-"+node) }

// prepareCA writes what the CA needs before any agent starts: with a
// controller, the node tokens and the nodes file, the root (created here so
// that the agents' trust file can be written first) and that trust file;
// without, the shared local root.
func (m *Mesh) prepareCA(ctx context.Context) error {
	caCfg := ca.DefaultConfig()
	caCfg.Dir = m.CADir()
	if _, err := ca.New(caCfg, m.opts.Log); err != nil {
		return fmt.Errorf("creating CA root: %w", err)
	}
	if m.opts.CA == nil {
		return nil
	}
	root, err := os.ReadFile(filepath.Join(m.CADir(), ca.RootCertFile))
	if err != nil {
		return err
	}
	if err := os.WriteFile(m.CARootsPath(), root, 0o644); err != nil {
		return fmt.Errorf("writing agents' CA roots: %w", err)
	}
	// Each node may obtain the identities of the pods Config puts on it.
	nodes := `nodes:
- name: node1
  token: node1-token
  identities: ["spiffe://cluster.local/ns/frontend/*", "spiffe://cluster.local/ns/backend/sa/api"]
- name: node2
  token: node2-token
  identities: ["spiffe://cluster.local/ns/backend/sa/api", "spiffe://cluster.local/ns/legacy/*"]
`
	if err := os.WriteFile(filepath.Join(m.Dir, "nodes.yaml"), []byte(nodes), 0o600); err != nil {
		return fmt.Errorf("writing nodes file: %w", err)
	}
	for _, n := range m.TB.Nodes {
		if err := os.WriteFile(m.tokenPath(n.Name), []byte(n.Name+"-token\n"), 0o600); err != nil {
			return fmt.Errorf("writing token of %s: %w", n.Name, err)
		}
	}
	return m.StartCA(ctx)
}

// caArgs are the agent's flags for its certificate source.
func (m *Mesh) caArgs(node string) []string {
	if m.opts.CA == nil {
		return []string{"--ca-dir", m.CADir()}
	}
	args := []string{"--ca-address", m.CAAddr().String(), "--ca-root-file", m.CARootsPath(), "--ca-token-file", m.tokenPath(node)}
	if d := m.opts.CA.CertTTL; d > 0 {
		args = append(args, "--cert-ttl", d.String())
	}
	if d := m.opts.CA.BundleRefresh; d > 0 {
		args = append(args, "--bundle-refresh", d.String())
	}
	return args
}

// StartCA starts the controller in node1's namespace with the root in
// CADir and waits until it completes a TLS handshake.
func (m *Mesh) StartCA(ctx context.Context) error {
	if m.opts.CA == nil {
		return errors.New("mesh has no CA options")
	}
	logf, err := os.OpenFile(m.CALogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening controller log: %w", err)
	}
	defer logf.Close()
	n := m.TB.Nodes[0]
	maxTTL := "24h"
	if d := m.opts.CA.CertTTL; d > 0 {
		maxTTL = d.String()
	}
	p, err := m.TB.Start(context.WithoutCancel(ctx), n.NetNS, logf, logf, m.opts.CA.ControllerBin,
		"--ca-dir", m.CADir(), "--listen", m.CAAddr().String(), "--auth", "static",
		"--nodes-file", filepath.Join(m.Dir, "nodes.yaml"), "--bundle-file", m.CABundlePath(),
		"--max-cert-ttl", maxTTL, "--cert-ttl", maxTTL, "--metrics-addr", ":"+strconv.Itoa(15014), "--log-format", "text")
	if err != nil {
		return fmt.Errorf("starting controller: %w", err)
	}
	m.mu.Lock()
	m.controller = p
	m.mu.Unlock()
	if err := m.waitCA(ctx, n, p, 10*time.Second); err != nil {
		return fmt.Errorf("controller: %w (log: %s)", err, tail(m.CALogPath(), 2000))
	}
	m.opts.Log.Info("controller ready", "addr", m.CAAddr())
	return nil
}

// waitCA polls until the controller answers a TLS handshake.
func (m *Mesh) waitCA(ctx context.Context, n *testbed.Node, p *testbed.Process, timeout time.Duration) error {
	ns, err := netns.Open(n.NetNS)
	if err != nil {
		return err
	}
	defer ns.Close()
	deadline := time.Now().Add(timeout)
	last := errors.New("no answer")
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.Done():
			return fmt.Errorf("exited: %v", p.Wait())
		default:
		}
		c, err := ns.Dial(ctx, &net.Dialer{Timeout: time.Second}, "tcp", m.CAAddr().String())
		if err == nil {
			// Readiness only: the agents verify the certificate.
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
			tc.SetDeadline(time.Now().Add(time.Second))
			err = tc.Handshake()
			tc.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not serving after %v: %w", timeout, last)
}

// StopCA stops the controller (SIGTERM) and waits; agents keep their
// certificates and retry.
func (m *Mesh) StopCA() error {
	m.mu.Lock()
	p := m.controller
	m.controller = nil
	m.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.Stop()
}

// UseLocalCAFiles replaces the agents' local CA directory (CADir) with
// files, file name to content (for instance Istio's plugged-in CA layout),
// and restarts every agent so that it loads them. In order: stops every
// agent, removes CADir, writes the files (mode 0600), starts the agents and
// waits until each is ready. A failure may leave agents stopped; Close
// still tears everything down. Meshes with a controller CA
// are refused, since their agents do not read CADir.
func (m *Mesh) UseLocalCAFiles(ctx context.Context, files map[string][]byte) error {
	if m.opts.CA != nil {
		return errors.New("mesh runs a controller CA; its agents do not read the local CA directory")
	}
	for _, n := range m.TB.Nodes {
		if err := m.StopAgent(n.Name); err != nil {
			return fmt.Errorf("stopping agent on %s: %w", n.Name, err)
		}
	}
	if err := os.RemoveAll(m.CADir()); err != nil {
		return fmt.Errorf("clearing CA directory: %w", err)
	}
	if err := os.MkdirAll(m.CADir(), 0o700); err != nil {
		return fmt.Errorf("creating CA directory: %w", err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(m.CADir(), name), data, 0o600); err != nil {
			return fmt.Errorf("writing CA file: %w", err)
		}
	}
	for _, n := range m.TB.Nodes {
		if err := m.StartAgent(ctx, n.Name); err != nil {
			return err
		}
	}
	return nil
}
