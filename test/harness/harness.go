package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/warren-mesh/warren/test/testbed"
)

// Roles of the four pods of the standard two-node topology.
const (
	Client = "n1p1" // enrolled, node1: namespace frontend, service account web
	Local  = "n1p2" // enrolled, node1: backend/api, behind the api service
	Remote = "n2p1" // enrolled, node2: backend/api, behind the api service
	Plain  = "n2p2" // not enrolled (protocol TCP), node2: legacy/db
)

// ServiceVIP is the virtual IP of the api service (port 80 -> 8080).
var ServiceVIP = netip.MustParseAddr("10.96.0.20")

// Options configure a Mesh.
type Options struct {
	// AgentBin is the warren-agent binary.
	AgentBin string
	// Redirect is the agent's capture backend: nftables or iptables.
	Redirect string
	// Testbed shapes the namespaces; zero means testbed.DefaultConfig().
	Testbed testbed.Config
	// Log receives the harness's own progress messages.
	Log *slog.Logger
	// CA, when set, runs a warren-controller CA for the agents (ca.go).
	CA *CAOptions
}

// Mesh is a running testbed with one agent per node.
type Mesh struct {
	TB         *testbed.Testbed
	Dir        string // state file, CA root and agent logs
	ConfigPath string

	opts       Options
	mu         sync.Mutex
	agents     map[string]*testbed.Process // by node name
	controller *testbed.Process            // the CA, when Options.CA is set
}

// Start builds the testbed, writes the state file (see writeConfig) and a
// CA root shared by both agents, and starts an agent on every node, waiting
// until each reports ready. On failure everything is torn down.
func Start(ctx context.Context, opts Options) (m *Mesh, err error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Redirect == "" {
		opts.Redirect = "nftables"
	}
	if _, err := os.Stat(opts.AgentBin); err != nil {
		return nil, fmt.Errorf("agent binary: %w", err)
	}
	tbCfg := opts.Testbed
	if tbCfg.Prefix == "" {
		tbCfg = testbed.DefaultConfig()
	}
	dir, err := os.MkdirTemp("", tbCfg.Prefix+"-mesh-")
	if err != nil {
		return nil, fmt.Errorf("creating mesh dir: %w", err)
	}
	m = &Mesh{Dir: dir, ConfigPath: filepath.Join(dir, "config.yaml"), opts: opts, agents: map[string]*testbed.Process{}}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if m.TB, err = testbed.New(ctx, tbCfg, opts.Log); err != nil {
		return m, err
	}
	if err = m.prepareCA(ctx); err != nil {
		return m, err
	}
	if err = m.WriteConfig(m.Config()); err != nil {
		return m, err
	}
	for _, n := range m.TB.Nodes {
		if err = m.StartAgent(ctx, n.Name); err != nil {
			return m, err
		}
	}
	return m, nil
}

// Pod returns the testbed pod by name (Client, Local, Remote, Plain).
func (m *Mesh) Pod(name string) *testbed.Pod { return m.TB.Pod(name) }

// Config renders the standard state file: the four pods and the api service.
func (m *Mesh) Config() string {
	var b strings.Builder
	b.WriteString("workloads:\n")
	type wl struct{ pod, ns, sa, proto string }
	for _, w := range []wl{
		{Client, "frontend", "web", "HBONE"},
		{Local, "backend", "api", "HBONE"},
		{Remote, "backend", "api", "HBONE"},
		{Plain, "legacy", "db", "TCP"},
	} {
		p := m.Pod(w.pod)
		fmt.Fprintf(&b, `- uid: Kubernetes//Pod/%[2]s/%[1]s
  name: %[1]s
  namespace: %[2]s
  serviceAccount: %[3]s
  workloadIps: [%[4]s]
  node: %[5]s
  protocol: %[6]s
`, p.Name, w.ns, w.sa, p.IP, p.Node.Name, w.proto)
		if w.proto == "HBONE" {
			// Only captured pods name their network namespace.
			fmt.Fprintf(&b, "  netns: %s\n", p.NetNS)
		}
	}
	fmt.Fprintf(&b, `services:
- name: api
  namespace: backend
  vips: [%s]
  ports: {"80": 8080}
  endpoints:
  - workloadUid: Kubernetes//Pod/backend/%s
  - workloadUid: Kubernetes//Pod/backend/%s
`, ServiceVIP, Local, Remote)
	return b.String()
}

// WriteConfig replaces the state file atomically, as an operator's tool
// would; the agents pick the change up.
func (m *Mesh) WriteConfig(content string) error {
	tmp := m.ConfigPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return fmt.Errorf("writing state file: %w", err)
	}
	if err := os.Rename(tmp, m.ConfigPath); err != nil {
		return fmt.Errorf("replacing state file: %w", err)
	}
	return nil
}

// LogPath is where the agent of node writes its log (appended across
// restarts).
func (m *Mesh) LogPath(node string) string { return filepath.Join(m.Dir, "agent-"+node+".log") }

// StartAgent starts node's agent in the node's namespace and waits until it
// is ready.
func (m *Mesh) StartAgent(ctx context.Context, node string) error {
	n := m.node(node)
	if n == nil {
		return fmt.Errorf("no node %q", node)
	}
	logf, err := os.OpenFile(m.LogPath(node), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening agent log: %w", err)
	}
	// The process keeps its own copy of the descriptor.
	defer logf.Close()
	// The agent lives until StopAgent or Close, not until ctx (which only
	// bounds the start-up wait).
	p, err := m.TB.Start(context.WithoutCancel(ctx), n.NetNS, logf, logf, m.opts.AgentBin,
		append([]string{"--config", m.ConfigPath, "--node", node,
			"--redirect", m.opts.Redirect, "--readiness-addr", ":15021", "--log-level", "info"}, m.caArgs(node)...)...)
	if err != nil {
		return fmt.Errorf("starting agent on %s: %w", node, err)
	}
	m.mu.Lock()
	m.agents[node] = p
	m.mu.Unlock()
	if err := m.WaitReady(ctx, node, 20*time.Second); err != nil {
		return fmt.Errorf("agent on %s: %w (log: %s)", node, err, tail(m.LogPath(node), 2000))
	}
	m.opts.Log.Info("agent ready", "node", node)
	return nil
}

// StopAgent stops node's agent (SIGTERM, as the kubelet would) and waits.
func (m *Mesh) StopAgent(node string) error {
	m.mu.Lock()
	p := m.agents[node]
	delete(m.agents, node)
	m.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.Stop()
}

// AgentPID is the process id of node's running agent, or 0 when none runs;
// benchmarks read its CPU time and memory from /proc.
func (m *Mesh) AgentPID(node string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.agents[node]; p != nil {
		return p.Pid()
	}
	return 0
}

// WaitReady polls node's readiness endpoint until it answers 200.
func (m *Mesh) WaitReady(ctx context.Context, node string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := errors.New("no answer")
	for time.Now().Before(deadline) {
		if err := ctx.Err(); err != nil {
			return err
		}
		code, body, err := m.Get(ctx, node, 15021, "/healthz/ready")
		switch {
		case err != nil:
			last = err
		case code == http.StatusOK:
			return nil
		default:
			last = fmt.Errorf("readiness %d: %s", code, strings.TrimSpace(string(body)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %v: %w", timeout, last)
}

// Close stops the agents and removes the testbed and the mesh directory.
// Safe to call more than once and after a failed Start.
func (m *Mesh) Close() error {
	var errs []error
	m.mu.Lock()
	nodes := make([]string, 0, len(m.agents))
	for n := range m.agents {
		nodes = append(nodes, n)
	}
	m.mu.Unlock()
	for _, n := range nodes {
		if err := m.StopAgent(n); err != nil {
			errs = append(errs, err)
		}
	}
	if err := m.StopCA(); err != nil {
		errs = append(errs, err)
	}
	// A race-enabled agent reports data races on its output and carries
	// on; make them fail the run.
	for _, n := range nodes {
		if b, err := os.ReadFile(m.LogPath(n)); err == nil && bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			errs = append(errs, fmt.Errorf("agent on %s reported a data race: %s", n, tail(m.LogPath(n), 4000)))
		}
	}
	if m.TB != nil {
		if err := m.TB.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if os.Getenv("WARREN_KEEP_LOGS") == "" {
		os.RemoveAll(m.Dir)
	}
	return errors.Join(errs...)
}

func (m *Mesh) node(name string) *testbed.Node {
	for _, n := range m.TB.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// tail returns the last n bytes of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
