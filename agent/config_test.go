package agent

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/warren-mesh/warren/state"
)

func TestConfigValidate(t *testing.T) {
	valid := DefaultConfig()
	valid.Node, valid.ConfigFile = "node1", "/etc/warren/state.yaml"
	cases := []struct {
		name    string
		mutate  func(*Config)
		wantErr string // substring; "" = valid
	}{
		{"defaults with node and file", func(*Config) {}, ""},
		{"iptables backend", func(c *Config) { c.Redirect = BackendIPTables }, ""},
		{"no node", func(c *Config) { c.Node = "" }, "node: must be set"},
		{"kubernetes mode without pod namespace", func(c *Config) { c.ConfigFile = "" }, "pod namespace must be set"},
		{"kubernetes mode without token", func(c *Config) { c.ConfigFile = ""; c.Kube.PodNamespace = "warren-system" }, "ca token file: must be set in Kubernetes mode"},
		{"kubernetes mode with a bad enroll label", func(c *Config) { c.ConfigFile = ""; c.Kube.EnrollLabel = "novalue" }, "enroll label"},
		{"kubernetes mode with a local CA", func(c *Config) { c.ConfigFile = ""; c.CADir = "/tmp/ca" }, "ca dir: Kubernetes mode"},
		{"unknown backend", func(c *Config) { c.Redirect = "ebpf" }, `redirect: "ebpf"`},
		{"tiny cert ttl", func(c *Config) { c.CertTTL = 1 }, "cert ttl"},
		{"no capture mark", func(c *Config) { c.Capture.AgentMark = 0 }, "mark"},
		{"remote CA", func(c *Config) { c.CA = RemoteCA{Address: "ca:15012", RootFile: "/r.pem", TokenFile: "/t"} }, ""},
		{"remote CA without root", func(c *Config) { c.CA = RemoteCA{Address: "ca:15012", TokenFile: "/t"} }, "ca root file"},
		{"remote CA without token", func(c *Config) { c.CA = RemoteCA{Address: "ca:15012", RootFile: "/r.pem"} }, "ca token file"},
		{"remote and local CA", func(c *Config) {
			c.CADir, c.CA = "/ca", RemoteCA{Address: "ca:15012", RootFile: "/r.pem", TokenFile: "/t"}
		}, "not both"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := valid
			tc.mutate(&c)
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

// The classifier's reserved ports and the proxy's mark come from the
// capture configuration, so the three can never disagree.
func TestDerivedConfig(t *testing.T) {
	c := DefaultConfig()
	c.Capture.OutboundPort, c.Capture.AgentMark = 25001, 0x777
	if got := c.classify().Reserved; !slices.Contains(got, 25001) || !slices.Contains(got, c.Capture.InboundTunnelPort) {
		t.Errorf("classify reserved ports %v do not follow the capture ports", got)
	}
	if got := c.proxy().Mark; got != 0x777 {
		t.Errorf("proxy mark %#x, want the capture mark 0x777", got)
	}
}

func TestFamilies(t *testing.T) {
	ip := netip.MustParseAddr
	cases := []struct {
		name string
		ips  []netip.Addr
		want []string
	}{
		{"v4", []netip.Addr{ip("10.0.0.1")}, []string{"tcp4"}},
		{"v6", []netip.Addr{ip("fd00::1")}, []string{"tcp6"}},
		{"dual", []netip.Addr{ip("fd00::1"), ip("10.0.0.1")}, []string{"tcp4", "tcp6"}},
		{"v4-mapped counts as v4", []netip.Addr{ip("::ffff:10.0.0.1")}, []string{"tcp4"}},
		{"none", nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, f := range families(tc.ips) {
				got = append(got, f.network)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("families(%v) = %v, want %v", tc.ips, got, tc.want)
			}
		})
	}
}

func TestSameEnrolment(t *testing.T) {
	base := state.Workload{UID: "u", Namespace: "a", ServiceAccount: "x", NetNS: "/run/netns/p", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}
	cases := []struct {
		name   string
		mutate func(*state.Workload)
		same   bool
	}{
		{"unchanged", func(*state.Workload) {}, true},
		{"label-like change", func(w *state.Workload) { w.CanonicalRevision = "v2" }, true},
		{"new netns", func(w *state.Workload) { w.NetNS = "/run/netns/q" }, false},
		{"new IP", func(w *state.Workload) { w.IPs = []netip.Addr{netip.MustParseAddr("10.0.0.2")} }, false},
		{"new service account", func(w *state.Workload) { w.ServiceAccount = "y" }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := base, base
			tc.mutate(&b)
			if got := sameEnrolment(&a, &b); got != tc.same {
				t.Fatalf("sameEnrolment = %v, want %v", got, tc.same)
			}
		})
	}
}
