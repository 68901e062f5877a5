package testbed

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestDefaultConfig(t *testing.T) {
	a, b := DefaultConfig(), DefaultConfig()
	if err := a.Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
	}
	if !prefixRE.MatchString(a.Prefix) || len(a.Prefix) != 5 || a.Prefix[0] != 'w' {
		t.Errorf("Prefix = %q, want w + 4 hex digits", a.Prefix)
	}
	if o := a.Subnet.Addr().As4(); o[1] < 100 || o[1] > 250 {
		t.Errorf("Subnet = %v, want 10.100-250.0.0/16", a.Subnet)
	}
	if a.Prefix == b.Prefix {
		t.Logf("two default prefixes collided (1 in 65536): %q", a.Prefix)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string // substring; "" for valid
	}{
		{"default", func(*Config) {}, ""},
		{"no pods", func(c *Config) { c.PodsPerNode = 0 }, ""},
		{"max sizes with short prefix", func(c *Config) { c.Prefix = "w"; c.Nodes = maxNodes; c.PodsPerNode = maxPodsPerNode }, ""},
		{"longest prefix that fits 2x2", func(c *Config) { c.Prefix = "abcdefghijk" }, ""}, // + "n2p2" = 15
		{"prefix one too long", func(c *Config) { c.Prefix = "abcdefghijkl" }, "exceeds 15 bytes"},
		{"prefix too long for many pods", func(c *Config) { c.Prefix = "w1234567"; c.Nodes = 100; c.PodsPerNode = 100 }, "exceeds 15 bytes"},
		{"empty prefix", func(c *Config) { c.Prefix = "" }, "prefix"},
		{"uppercase prefix", func(c *Config) { c.Prefix = "W1" }, "prefix"},
		{"prefix with dash", func(c *Config) { c.Prefix = "w-1" }, "prefix"},
		{"prefix starting with digit", func(c *Config) { c.Prefix = "1w" }, "prefix"},
		{"zero nodes", func(c *Config) { c.Nodes = 0 }, "nodes 0"},
		{"too many nodes", func(c *Config) { c.Nodes = maxNodes + 1 }, "nodes 251"},
		{"negative pods", func(c *Config) { c.PodsPerNode = -1 }, "pods per node"},
		{"too many pods", func(c *Config) { c.PodsPerNode = maxPodsPerNode + 1 }, "pods per node"},
		{"no subnet", func(c *Config) { c.Subnet = netip.Prefix{} }, "subnet"},
		{"subnet /24", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.1.1.0/24") }, "/16"},
		{"subnet not masked", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.1.1.0/16") }, "/16"},
		{"subnet outside 10/8", func(c *Config) { c.Subnet = netip.MustParsePrefix("192.168.0.0/16") }, "10.0.0.0/8"},
		{"subnet ipv6", func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/16") }, "IPv4"},
		{"zero grace", func(c *Config) { c.StopGrace = 0 }, "grace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mutate(&c)
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestPlan pins the names and addresses a config implies.
func TestPlan(t *testing.T) {
	c := Config{Prefix: "wab12", Nodes: 2, PodsPerNode: 2, Subnet: netip.MustParsePrefix("10.123.0.0/16"), StopGrace: time.Second}
	type plan struct {
		NodeNS, PodNS, SwitchNS                string
		Underlay, HostVeth, SwitchPort, Bridge string
		UnderlayAddr, Gateway, PodIP           netip.Addr
		PodCIDR                                netip.Prefix
	}
	got := plan{
		NodeNS: c.nsName(nodeName(2)), PodNS: c.nsName(podName(2, 1)), SwitchNS: c.switchNS(),
		Underlay: c.underlayLink(2), HostVeth: c.hostVeth(2, 1), SwitchPort: c.switchPort(2), Bridge: c.bridgeName(),
		UnderlayAddr: c.underlayAddr(2), Gateway: c.gateway(2), PodIP: c.podIP(2, 1), PodCIDR: c.podCIDR(2),
	}
	want := plan{
		NodeNS: "wab12-node2", PodNS: "wab12-n2p1", SwitchNS: "wab12-sw",
		Underlay: "wab12u2", HostVeth: "wab12n2p1", SwitchPort: "wab12s2", Bridge: "wab12br",
		UnderlayAddr: netip.MustParseAddr("10.123.0.2"),
		Gateway:      netip.MustParseAddr("10.123.2.1"),
		PodIP:        netip.MustParseAddr("10.123.2.11"),
		PodCIDR:      netip.MustParsePrefix("10.123.2.0/24"),
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("plan mismatch (-want +got):\n%s", diff)
	}
}
