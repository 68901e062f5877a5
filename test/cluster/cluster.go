package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/warren-mesh/warren/netns"
)

// Cluster is a running cluster. Stop it when done.
type Cluster struct {
	log   *slog.Logger
	dir   string
	nodes []node
	rec   record
	pki   *pki
	tools tools

	// holders keep each node's mount and UTS namespaces (index = node).
	holders []*process
	// procs are the daemons, in start order.
	procs []*process
	// ns are open handles on the node network namespaces, for dialing.
	ns []*netns.NS

	kubeconfig string
	restCfg    *rest.Config
	client     kubernetes.Interface

	stopOnce sync.Once
	stopErr  error
}

// Errors a caller can act on.
var (
	// ErrNotRoot: network namespaces, mounts and cgroups need root.
	ErrNotRoot = errors.New("a real cluster needs root")
	// ErrNodeIndex: a node index out of range.
	ErrNodeIndex = errors.New("no such node")
)

// MissingError says which program is missing and which Debian package
// provides it.
type MissingError struct {
	Program string
	Package string
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("%s not found: install the Debian package %s", e.Program, e.Package)
}

// Client returns a clientset authenticated as cluster admin.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// RESTConfig returns a copy of the admin configuration. Its Dial connects
// from inside node 1's network namespace, where the apiserver's address
// is, so it works from the test process as is.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restCfg) }

// Kubeconfig is the path of an admin kubeconfig with everything embedded.
// Its server, https://10.250.0.1:6443, is reachable only inside the node
// namespaces: use it with RunInNode (which sets KUBECONFIG to it).
func (c *Cluster) Kubeconfig() string { return c.kubeconfig }

// Nodes is the number of nodes.
func (c *Cluster) Nodes() int { return len(c.nodes) }

// NodeName is the Kubernetes name (and hostname) of node i, counted from 0:
// <prefix>-node1 for i = 0.
func (c *Cluster) NodeName(i int) string { return c.node(i).name }

// NodeNetNS is the path of node i's network namespace, for packet capture
// or netns.Open.
func (c *Cluster) NodeNetNS(i int) string { return c.node(i).netns }

// NodeIP is node i's address on the node link, its InternalIP.
func (c *Cluster) NodeIP(i int) string { return c.node(i).addr.String() }

// PodCIDR is node i's pod CIDR, also set as the Node's spec.podCIDR.
func (c *Cluster) PodCIDR(i int) string { return c.node(i).podCIDR.String() }

// LinkName is node i's interface to the other node, inside NodeNetNS(i).
func (c *Cluster) LinkName(i int) string {
	c.node(i)
	return linkName
}

// NodePath is the host path holding what node i's processes see at p: a
// node directory (the package doc lists them) under the run dir, a file the
// node wrote into its overlay of /etc, /opt, /var or /run, or else the
// host's own p.
func (c *Cluster) NodePath(i int, p string) string { return c.node(i).hostPath(p) }

// Dir is the run dir: PKI, configs, logs (logs/<component>.log) and the
// nodes' directories.
func (c *Cluster) Dir() string { return c.dir }

// node panics on a bad index, like a slice would: a test bug.
func (c *Cluster) node(i int) node {
	if i < 0 || i >= len(c.nodes) {
		panic(fmt.Errorf("node %d of %d: %w", i, len(c.nodes), ErrNodeIndex))
	}
	return c.nodes[i]
}

// RunInNode runs name with args in node i's network, mount and UTS
// namespaces, as the node's own processes would, and returns its standard
// output. KUBECONFIG is the admin kubeconfig and HOME a directory in the
// run dir (helm keeps its cache and config there). An exit error carries the
// end of the standard error.
func (c *Cluster) RunInNode(ctx context.Context, i int, name string, args ...string) ([]byte, error) {
	n := c.node(i)
	if i >= len(c.holders) || c.holders[i] == nil || c.holders[i].exited() {
		return nil, fmt.Errorf("running %s in %s: node namespaces are gone", name, n.name)
	}
	cmd := exec.CommandContext(ctx, c.tools.nsenter, c.nsenterArgs(i, name, args...)...)
	cmd.Env = append(childEnv(filepath.Join(c.dir, "home")), "KUBECONFIG="+c.kubeconfig)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("running %s %s in %s: %w: %s", name, strings.Join(args, " "), n.name, err, tail(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// nsenterArgs enters the holder's namespaces. -F: nsenter execs the command
// itself rather than forking, so the PID is the command's.
func (c *Cluster) nsenterArgs(i int, name string, args ...string) []string {
	return append([]string{"-F", "-t", strconv.Itoa(c.holders[i].pid), "-m", "-u", "-n", "--", name}, args...)
}

func tail(s string) string {
	const n = 2000
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

// ImportImage imports a docker-archive or OCI tarball into containerd's
// k8s.io namespace on every node, in parallel. Pods using it must say
// imagePullPolicy: Never.
func (c *Cluster) ImportImage(ctx context.Context, tarPath string) error {
	abs, err := filepath.Abs(tarPath)
	if err != nil {
		return fmt.Errorf("importing %s: %w", tarPath, err)
	}
	var g errgroup.Group
	for i := range c.nodes {
		g.Go(func() error {
			_, err := c.RunInNode(ctx, i, c.tools.ctr, "-a", inNodeSocket, "-n", "k8s.io", "images", "import", abs)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("importing image %s: %w", tarPath, err)
	}
	return nil
}

// dialTimeout bounds one connection attempt from a node namespace.
const dialTimeout = 10 * time.Second

// dialer dials from inside node i's network namespace.
func (c *Cluster) dialer(i int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	ns := c.ns[i]
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return ns.Dial(ctx, &net.Dialer{Timeout: dialTimeout}, network, addr)
	}
}

// HTTPClient returns a client whose connections start in node i's network
// namespace, which routes to every pod IP, ClusterIP and node address.
func (c *Cluster) HTTPClient(i int) *http.Client {
	c.node(i)
	return &http.Client{
		Transport: &http.Transport{DialContext: c.dialer(i), DisableKeepAlives: true},
		Timeout:   30 * time.Second,
	}
}
