package redirect

import (
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestRenderHostProbesGolden(t *testing.T) {
	cases := []struct {
		name string
		ips  []netip.Addr
	}{
		{"empty", nil},
		// Unsorted, duplicated and IPv4-mapped input renders the same
		// sorted sets Apply programs.
		{"unsorted", addrs("10.1.2.9", "fd00::3", "::ffff:10.1.2.3", "10.1.2.9", "fd00::1")},
	}
	for _, fc := range famCases {
		cases = append(cases, struct {
			name string
			ips  []netip.Addr
		}{fc.name, fc.ips})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RenderHostProbes(DefaultConfig(), tc.ips)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, "hostprobe_"+tc.name, got)
		})
	}
}

// TestRenderHostProbesConfig checks the probe addresses come from the
// config, and that changing one changes the rule comment Apply compares.
func TestRenderHostProbesConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ProbeSNATv4 = netip.MustParseAddr("169.254.7.1")
	cfg.ProbeSNATv6 = netip.MustParseAddr("fd16::1")
	got, err := RenderHostProbes(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"snat ip to 169.254.7.1 ", "snat ip6 to fd16::1 "} {
		if !strings.Contains(got, want) {
			t.Errorf("rendered table lacks %q:\n%s", want, got)
		}
	}
	def, other := probeFamilies(DefaultConfig()), probeFamilies(cfg)
	for i := range def {
		if def[i].ruleComment() == other[i].ruleComment() {
			t.Errorf("%s rule comment %q does not change with the probe address", def[i].f, def[i].ruleComment())
		}
	}
}

func TestProbeSets(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ips     []netip.Addr
		want    map[Family][]netip.Addr
		wantErr error
	}{
		{"none", nil, map[Family][]netip.Addr{}, nil},
		{"v4 sorted and deduplicated", addrs("10.0.0.2", "10.0.0.1", "10.0.0.2"),
			map[Family][]netip.Addr{IPv4: addrs("10.0.0.1", "10.0.0.2")}, nil},
		{"mapped counts as v4", addrs("::ffff:10.0.0.1", "10.0.0.1"),
			map[Family][]netip.Addr{IPv4: addrs("10.0.0.1")}, nil},
		{"zone dropped", addrs("fd00::1%eth0", "fd00::1"),
			map[Family][]netip.Addr{IPv6: addrs("fd00::1")}, nil},
		{"both families", addrs("fd00::2", "10.0.0.1", "fd00::1"),
			map[Family][]netip.Addr{IPv4: addrs("10.0.0.1"), IPv6: addrs("fd00::1", "fd00::2")}, nil},
		{"invalid", []netip.Addr{netip.MustParseAddr("10.0.0.1"), {}}, nil, ErrInvalidAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := probeSets(tc.ips)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("probeSets error = %v, want %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("probeSets(%v) (-want +got):\n%s", tc.ips, diff)
			}
		})
	}
}

func TestNewHostProbesRejectsBadConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ProbeSNATv4 = netip.Addr{}
	if _, err := NewHostProbes(cfg, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("NewHostProbes with an unset probe address succeeded, want a validation error")
	}
}
