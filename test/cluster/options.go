package cluster

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Options say what to start. The zero value starts two nodes.
type Options struct {
	// Nodes is 1 or 2 (0 means 2).
	Nodes int
	// Prefix names everything the cluster creates outside its run dir:
	// network namespaces (<prefix>-n1), cgroups (/<prefix>-n1 in every
	// hierarchy) and Kubernetes node names (<prefix>-node1). Lowercase
	// letters and digits, starting with a letter, at most 12. Empty means
	// "c" + the pid in base 36 + 2 random hex digits, unique among
	// concurrent test processes.
	Prefix string
	// Dir is where the run dir (warren-cluster-<prefix>-*) is created.
	// Empty means os.TempDir(). It must not be under /etc, /opt, /var or
	// /run: those are overlaid inside the nodes.
	Dir string
	// Log receives progress records; nil discards them.
	Log *slog.Logger

	// afterStep, when set, is called after each step of Start with the
	// step's name and the record so far; an error fails Start there. The
	// test that proves a partial start is cleaned up uses it.
	afterStep func(step string, r record) error
}

// Addressing. All of it exists only inside the node namespaces, so it is
// fixed: two clusters never see each other's addresses.
var (
	// linkNet holds the nodes' addresses on the link between them:
	// node i (0-based) is .i+1.
	linkNet = netip.MustParsePrefix("10.250.0.0/24")
	// clusterCIDR holds every pod IP; node i gets 10.244.(i+1).0/24. kube-proxy
	// masquerades traffic to Services from outside it.
	clusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	// serviceCIDR is kube-apiserver's --service-cluster-ip-range; its first
	// address is the kubernetes Service.
	serviceCIDR         = netip.MustParsePrefix("10.96.0.0/16")
	kubernetesServiceIP = netip.MustParseAddr("10.96.0.1")
)

const (
	// apiserverPort is kube-apiserver's secure port on node 1.
	apiserverPort = 6443
	// maxNodes: one veth links the nodes, so two at most.
	maxNodes = 2
	// maxPrefix keeps node names, cgroup names and run dir paths short.
	maxPrefix = 12
	// skipEnv set to 1 skips the tests that need a real cluster.
	skipEnv = "WARREN_SKIP_CLUSTER"
)

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]*$`)

// overlaid are the host directories every node sees as an overlay (see the
// package doc); Dir must not be under one of them.
var overlaid = []string{"/etc", "/opt", "/var", "/run"}

// withDefaults fills in the defaults and validates the result.
func (o Options) withDefaults() (Options, error) {
	if o.Nodes == 0 {
		o.Nodes = maxNodes
	}
	if o.Prefix == "" {
		var b [1]byte
		rand.Read(b[:])
		o.Prefix = "c" + strconv.FormatInt(int64(os.Getpid()), 36) + fmt.Sprintf("%02x", b[0])
	}
	if o.Dir == "" {
		o.Dir = os.TempDir()
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o, o.validate()
}

func (o Options) validate() error {
	if o.Nodes < 1 || o.Nodes > maxNodes {
		return fmt.Errorf("nodes %d: want 1..%d", o.Nodes, maxNodes)
	}
	if !prefixRE.MatchString(o.Prefix) || len(o.Prefix) > maxPrefix {
		return fmt.Errorf("prefix %q: want up to %d lowercase letters and digits, starting with a letter", o.Prefix, maxPrefix)
	}
	if !filepath.IsAbs(o.Dir) {
		return fmt.Errorf("dir %q: must be absolute", o.Dir)
	}
	dir, err := filepath.EvalSymlinks(o.Dir)
	if err != nil {
		return fmt.Errorf("dir %q: %w", o.Dir, err)
	}
	for _, p := range overlaid {
		if dir == p || strings.HasPrefix(dir, p+"/") {
			return fmt.Errorf("dir %q is under %s, which the nodes overlay: %w", o.Dir, p, errBadDir)
		}
	}
	return nil
}

var errBadDir = errors.New("unusable run dir location")

// node is the plan of one node: names, addresses and where its files go.
// Index is 0-based, names and addresses count from 1.
type node struct {
	index   int
	name    string       // Kubernetes node name and hostname: <prefix>-node1
	netns   string       // /run/netns/<prefix>-n1
	cgroup  string       // kubelet cgroupRoot, without the leading slash: <prefix>-n1
	addr    netip.Addr   // 10.250.0.1
	peer    netip.Addr   // the other node's address: default gateway
	podCIDR netip.Prefix // 10.244.1.0/24
	dir     string       // <run dir>/node1
}

func planNodes(prefix, runDir string, n int) []node {
	nodes := make([]node, n)
	for i := range nodes {
		num := strconv.Itoa(i + 1)
		nodes[i] = node{
			index:   i,
			name:    prefix + "-node" + num,
			netns:   filepath.Join(netnsDir, prefix+"-n"+num),
			cgroup:  prefix + "-n" + num,
			addr:    nodeAddr(i),
			peer:    nodeAddr(1 - i),
			podCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 0}), 24),
			dir:     filepath.Join(runDir, "node"+num),
		}
	}
	return nodes
}

// nodeAddr is node i's address on the node link.
func nodeAddr(i int) netip.Addr {
	a := linkNet.Addr().As4()
	a[3] = byte(i + 1)
	return netip.AddrFrom4(a)
}

// netnsDir is where iproute2 keeps named namespaces, so `ip netns` lists
// the nodes.
const netnsDir = "/run/netns"

// linkName is each node's interface to the other node. Inside its own
// namespace the name cannot collide, so it is the name a real node's NIC
// would have.
const linkName = "eth0"

// nodeMount is a directory a node has to itself: the node's processes see
// Path, which is the host directory Dir under the node's dir.
type nodeMount struct {
	Path string
	Dir  string
}

// nodeMounts are the paths a node has to itself. /var/run is a symlink to
// /run, so /var/run/warren is /run/warren.
var nodeMounts = []nodeMount{
	{"/etc/cni/net.d", "cni-conf"},
	{"/opt/cni/bin", "cni-bin"},
	{"/var/lib/kubelet", "kubelet"},
	{"/var/lib/containerd", "containerd"},
	{"/var/lib/cni", "cni-data"},
	{"/var/log/pods", "pod-logs"},
	{"/var/log/containers", "container-logs"},
	{"/run/containerd", "containerd-state"},
	{"/run/netns", "netns"},
	{"/run/warren", "warren"},
}

// hostPath maps a path as node n's processes see it to the host path
// holding it: a node mount's directory, else the overlay's upper layer when
// the node wrote the file there, else the host's own file.
func (n node) hostPath(p string) string {
	p = filepath.Clean(p)
	if p == "/var/run" || strings.HasPrefix(p, "/var/run/") {
		p = "/run" + strings.TrimPrefix(p, "/var/run")
	}
	for _, m := range nodeMounts {
		if p == m.Path || strings.HasPrefix(p, m.Path+"/") {
			return filepath.Join(n.dir, m.Dir, strings.TrimPrefix(p, m.Path))
		}
	}
	for _, o := range overlaid {
		if p == o || strings.HasPrefix(p, o+"/") {
			upper := filepath.Join(n.dir, "overlay", "upper"+o, strings.TrimPrefix(p, o))
			if _, err := os.Lstat(upper); err == nil {
				return upper
			}
		}
	}
	return p
}
