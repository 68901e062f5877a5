package redirect

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// famCases are the pod shapes every golden and namespaced test covers.
var famCases = []struct {
	name string
	ips  []netip.Addr
}{
	{"ipv4", []netip.Addr{netip.MustParseAddr("10.1.2.3")}},
	{"ipv6", []netip.Addr{netip.MustParseAddr("fd00::3")}},
	{"dual", []netip.Addr{netip.MustParseAddr("fd00::3"), netip.MustParseAddr("10.1.2.3")}},
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}

func TestRenderGolden(t *testing.T) {
	cfg := DefaultConfig()
	for _, fc := range famCases {
		fams := FamiliesOf(fc.ips)
		t.Run("nftables_"+fc.name, func(t *testing.T) {
			checkGolden(t, "nftables_"+fc.name, RenderNFTables(cfg, fams))
		})
		t.Run("iptables_"+fc.name, func(t *testing.T) {
			checkGolden(t, "iptables_"+fc.name, RenderIPTables(cfg, fams))
		})
	}
}

func TestFamiliesOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		ips  []string
		want []Family
	}{
		{"none", nil, nil},
		{"v4", []string{"10.0.0.1"}, []Family{IPv4}},
		{"v4 twice", []string{"10.0.0.1", "10.0.0.2"}, []Family{IPv4}},
		{"v4 mapped", []string{"::ffff:10.0.0.1"}, []Family{IPv4}},
		{"v6", []string{"fd00::1"}, []Family{IPv6}},
		{"v6 first", []string{"fd00::1", "10.0.0.1"}, []Family{IPv4, IPv6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ips []netip.Addr
			for _, s := range tc.ips {
				ips = append(ips, netip.MustParseAddr(s))
			}
			if diff := cmp.Diff(tc.want, FamiliesOf(ips)); diff != "" {
				t.Errorf("FamiliesOf(%v) (-want +got):\n%s", tc.ips, diff)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mod     func(*Config)
		wantErr bool
	}{
		{"default", func(*Config) {}, false},
		{"zero port", func(c *Config) { c.OutboundPort = 0 }, true},
		{"same ports", func(c *Config) { c.InboundPlaintextPort = c.OutboundPort }, true},
		{"zero mask", func(c *Config) { c.MarkMask = 0 }, true},
		{"mark outside mask", func(c *Config) { c.AgentMark = 0x1539 }, true},
		{"zero mark", func(c *Config) { c.ReplyMark = 0 }, true},
		{"same marks", func(c *Config) { c.ReplyMark = c.AgentMark }, true},
		{"main table", func(c *Config) { c.RouteTable = 254 }, true},
		{"zero table", func(c *Config) { c.RouteTable = 0 }, true},
		{"priority after main", func(c *Config) { c.RulePriority = 32766 }, true},
		{"v6 probe in v4 slot", func(c *Config) { c.ProbeSNATv4 = netip.MustParseAddr("fd00::1") }, true},
		{"v4 probe in v6 slot", func(c *Config) { c.ProbeSNATv6 = netip.MustParseAddr("10.0.0.1") }, true},
		{"unset probe", func(c *Config) { c.ProbeSNATv6 = netip.Addr{} }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.mod(&cfg)
			err := cfg.Validate()
			if (err != nil) != tc.wantErr {
				t.Errorf("Validate() = %v, want error %v", err, tc.wantErr)
			}
		})
	}
}
