package testbed

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"regexp"
	"strconv"
	"time"
)

// Config describes the cluster to build.
//
// Addressing inside Subnet (a 10.X.0.0/16):
//
//	node N underlay  10.X.0.N/24   (all nodes share one underlay segment)
//	node N podCIDR   10.X.N.0/24
//	node N gateway   10.X.N.1      (on every pod-facing veth of node N)
//	pod P of node N  10.X.N.(10+P)/32
type Config struct {
	// Prefix starts the name of every namespace and interface the testbed
	// creates, so parallel runs never share a name and leftovers can be
	// removed with CleanupPrefix. Lowercase letters and digits, starting with
	// a letter.
	Prefix string
	// Nodes is the number of node namespaces (1..250: node numbers are the
	// last octet of the underlay address and the third octet of the podCIDR).
	Nodes int
	// PodsPerNode is the number of pod namespaces on each node (0..240: pod
	// addresses are .11 to .250 of the podCIDR).
	PodsPerNode int
	// Subnet is the 10.X.0.0/16 all addresses are taken from. Every testbed
	// lives entirely in its own namespaces, so two testbeds may even share a
	// subnet; a random one only keeps logs and captures of parallel runs
	// apart.
	Subnet netip.Prefix
	// StopGrace is how long a started process gets between SIGTERM and
	// SIGKILL.
	StopGrace time.Duration

	// hook, when set, is called after each build step named in New; an error
	// aborts New there. Tests use it to prove a failed build leaves nothing.
	hook func(step string) error
}

// Limits from the addressing plan in Config.
const (
	maxNodes       = 250
	maxPodsPerNode = 240
	// podHostBase is added to the pod number to form the pod's last octet;
	// .1 is the gateway and .2-.10 stay free for tests that need spare
	// addresses in a podCIDR.
	podHostBase = 10
	// ifNameMax is IFNAMSIZ (16) minus the terminating NUL.
	ifNameMax = 15
)

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]*$`)

// DefaultConfig returns a two-node, two-pods-per-node cluster with a fresh
// random prefix ("w" + 4 hex digits) and subnet (10.100-250.0.0/16).
func DefaultConfig() Config {
	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("reading random bytes: %v", err)) // crypto/rand never fails on Linux
	}
	// 100-250 keeps clear of the low 10.x ranges that labs and CI runners
	// tend to use for real networks.
	x, err := rand.Int(rand.Reader, big.NewInt(151))
	if err != nil {
		panic(fmt.Sprintf("reading random number: %v", err))
	}
	return Config{
		Prefix:      "w" + hex.EncodeToString(b[:]),
		Nodes:       2,
		PodsPerNode: 2,
		Subnet:      netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + x.Int64()), 0, 0}), 16),
		// Long enough for an agent to drain its connections and exit cleanly.
		StopGrace: 5 * time.Second,
	}
}

// Validate checks the config, including that every interface name it implies
// fits in IFNAMSIZ.
func (c Config) Validate() error {
	if !prefixRE.MatchString(c.Prefix) {
		return fmt.Errorf("prefix %q: want lowercase letters and digits, starting with a letter", c.Prefix)
	}
	if c.Nodes < 1 || c.Nodes > maxNodes {
		return fmt.Errorf("nodes %d: want 1..%d", c.Nodes, maxNodes)
	}
	if c.PodsPerNode < 0 || c.PodsPerNode > maxPodsPerNode {
		return fmt.Errorf("pods per node %d: want 0..%d", c.PodsPerNode, maxPodsPerNode)
	}
	if !c.Subnet.IsValid() || !c.Subnet.Addr().Is4() || c.Subnet.Bits() != 16 || c.Subnet.Masked() != c.Subnet {
		return fmt.Errorf("subnet %v: want an IPv4 network with a /16 mask", c.Subnet)
	}
	if c.Subnet.Addr().As4()[0] != 10 {
		return fmt.Errorf("subnet %v: want one inside 10.0.0.0/8", c.Subnet)
	}
	if c.StopGrace <= 0 {
		return errors.New("stop grace must be positive")
	}
	if name := c.longestIfName(); len(name) > ifNameMax {
		return fmt.Errorf("prefix %q too long: interface name %q exceeds %d bytes", c.Prefix, name, ifNameMax)
	}
	return nil
}

// longestIfName returns the longest interface name the config creates.
func (c Config) longestIfName() string {
	names := []string{c.bridgeName(), c.underlayLink(c.Nodes), c.switchPort(c.Nodes)}
	if c.PodsPerNode > 0 {
		names = append(names, c.hostVeth(c.Nodes, c.PodsPerNode))
	}
	longest := ""
	for _, n := range names {
		if len(n) > len(longest) {
			longest = n
		}
	}
	return longest
}

// Names. Namespace names carry a dash after the prefix so CleanupPrefix can
// match "<prefix>-" without catching a longer prefix; interface names have no
// room for it.

func nodeName(n int) string                { return "node" + strconv.Itoa(n) }
func podName(n, p int) string              { return "n" + strconv.Itoa(n) + "p" + strconv.Itoa(p) }
func (c Config) nsName(name string) string { return c.Prefix + "-" + name }
func (c Config) switchNS() string          { return c.nsName("sw") }

// underlayLink is node n's underlay interface, inside the node namespace.
func (c Config) underlayLink(n int) string { return c.Prefix + "u" + strconv.Itoa(n) }

// switchPort is the switch-side end of node n's underlay veth (every cluster
// but a two-node one).
func (c Config) switchPort(n int) string { return c.Prefix + "s" + strconv.Itoa(n) }
func (c Config) bridgeName() string      { return c.Prefix + "br" }

// hostVeth is the node-side end of pod p's veth, inside node n.
func (c Config) hostVeth(n, p int) string { return c.Prefix + podName(n, p) }

// podLink is the pod-side end of its veth, named like a real pod's interface.
const podLink = "eth0"

// Addresses, per the plan in the Config comment.

func (c Config) octets() [4]byte { return c.Subnet.Addr().As4() }

func (c Config) addr(third, fourth int) netip.Addr {
	a := c.octets()
	return netip.AddrFrom4([4]byte{a[0], a[1], byte(third), byte(fourth)})
}

func (c Config) underlayAddr(n int) netip.Addr { return c.addr(0, n) }
func (c Config) gateway(n int) netip.Addr      { return c.addr(n, 1) }
func (c Config) podIP(n, p int) netip.Addr     { return c.addr(n, podHostBase+p) }
func (c Config) podCIDR(n int) netip.Prefix    { return netip.PrefixFrom(c.addr(n, 0), 24) }

// underlayBits is the mask of the shared underlay segment 10.X.0.0/24.
const underlayBits = 24
