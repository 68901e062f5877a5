package redirect

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// backends are the two constructors every namespaced test runs against.
var backends = []struct {
	name string
	new  func(Config, *slog.Logger) (Redirector, error)
}{
	{"nftables", func(c Config, l *slog.Logger) (Redirector, error) { return NewNFTables(c, l) }},
	{"iptables", func(c Config, l *slog.Logger) (Redirector, error) { return NewIPTables(c, l) }},
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces and program netfilter; run as root (CI does)")
	}
	for _, bin := range []string{"ip", "nft", "iptables-save", "ip6tables-save", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not installed (apt-get install -y iptables nftables iproute2): %v", bin, err)
		}
	}
}

// runPrefix makes names unique per test run: "w" and 4 random hex digits.
func runPrefix(t *testing.T) string {
	t.Helper()
	b := make([]byte, 2)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "w" + hex.EncodeToString(b)
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNS runs a command inside the named netns.
func inNS(t *testing.T, ns string, args ...string) string {
	t.Helper()
	return sh(t, append([]string{"ip", "netns", "exec", ns}, args...)...)
}

// newNetNS creates a netns with lo up, removed again when the test ends,
// and returns its path.
func newNetNS(t *testing.T, name string) string {
	t.Helper()
	sh(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting netns %s: %v\n%s", name, err, out)
		}
	})
	sh(t, "ip", "-n", name, "link", "set", "lo", "up")
	return "/run/netns/" + name
}

var saveComment = regexp.MustCompile(`(?m)^#.*\n`)

// snapshot is everything Warren could touch in a netns, as the standard
// tools print it.
func snapshot(t *testing.T, ns string) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range [][]string{
		{"nft", "list", "ruleset"},
		{"iptables-save"},
		{"ip6tables-save"},
		{"ip", "-4", "rule"},
		{"ip", "-6", "rule"},
		{"ip", "-4", "route", "show", "table", "all"},
		{"ip", "-6", "route", "show", "table", "all"},
	} {
		fmt.Fprintf(&b, "### %s\n%s", strings.Join(cmd, " "), saveComment.ReplaceAllString(inNS(t, ns, cmd...), ""))
	}
	return b.String()
}

// seedForeign gives the netns state that is not Warren's: rules in every
// built-in chain Warren jumps from, an nftables table and a policy rule.
// They must survive Apply and Remove untouched.
func seedForeign(t *testing.T, ns string) {
	t.Helper()
	for _, ipt := range []string{"iptables", "ip6tables"} {
		for _, tc := range [][2]string{{"mangle", "PREROUTING"}, {"mangle", "OUTPUT"}, {"nat", "PREROUTING"}, {"nat", "OUTPUT"}} {
			inNS(t, ns, ipt, "-t", tc[0], "-A", tc[1], "-p", "udp", "--dport", "9", "-j", "ACCEPT")
		}
	}
	inNS(t, ns, "nft", "add table inet foreign; add chain inet foreign out { type filter hook output priority 0; }; add rule inet foreign out udp dport 9 accept")
	inNS(t, ns, "ip", "rule", "add", "fwmark", "0x5", "lookup", "200", "priority", "1000")
}

// logSink records the backend's debug log; Apply and Remove log only when
// they change something, so an empty sink proves a no-op.
type logSink struct{ bytes.Buffer }

func (s *logSink) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(&s.Buffer, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestApplyRemoveNamespaced(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	for _, be := range backends {
		for _, fc := range famCases {
			t.Run(be.name+"/"+fc.name, func(t *testing.T) {
				var sink logSink
				r, err := be.new(DefaultConfig(), sink.logger())
				if err != nil {
					t.Fatal(err)
				}
				name := runPrefix(t)
				pod := Pod{NetNS: newNetNS(t, name), IPs: fc.ips}
				seedForeign(t, name)
				before := snapshot(t, name)

				if err := r.Apply(ctx, pod); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				applied := snapshot(t, name)
				if applied == before {
					t.Fatal("Apply changed nothing")
				}
				checkLive(t, DefaultConfig(), be.name, name, FamiliesOf(fc.ips))

				sink.Reset()
				if err := r.Apply(ctx, pod); err != nil {
					t.Fatalf("second Apply: %v", err)
				}
				if diff := cmp.Diff(applied, snapshot(t, name)); diff != "" {
					t.Errorf("second Apply changed the netns (-first +second):\n%s", diff)
				}
				if sink.Len() != 0 {
					t.Errorf("second Apply reported changes:\n%s", sink.String())
				}

				if err := r.Remove(ctx, pod); err != nil {
					t.Fatalf("Remove: %v", err)
				}
				if diff := cmp.Diff(before, snapshot(t, name)); diff != "" {
					t.Errorf("Remove did not restore the netns (-before +after):\n%s", diff)
				}
				sink.Reset()
				if err := r.Remove(ctx, pod); err != nil {
					t.Fatalf("second Remove: %v", err)
				}
				if sink.Len() != 0 {
					t.Errorf("second Remove reported changes:\n%s", sink.String())
				}
			})
		}
	}
}

// checkLive compares what the kernel holds with the renderers' output, which
// is what ties the golden files to the programmed rules.
func checkLive(t *testing.T, cfg Config, backend, ns string, fams []Family) {
	t.Helper()
	for _, f := range fams {
		if backend == "nftables" {
			got := inNS(t, ns, "nft", "list", "table", nftFamily(f), nftTableName)
			// nft prints standard priority names and folds the set-xmark
			// bitwise differently; map both back to the rendered spelling.
			got = strings.NewReplacer("priority mangle;", "priority -150;", "priority dstnat;", "priority -100;").Replace(got)
			if diff := cmp.Diff(renderNFTTable(cfg, f), got); diff != "" {
				t.Errorf("nft list table %s %s differs from RenderNFTables (-want +got):\n%s", nftFamily(f), nftTableName, diff)
			}
			continue
		}
		save := "iptables-save"
		if f == IPv6 {
			save = "ip6tables-save"
		}
		st := parseIPTablesSave([]byte(inNS(t, ns, save)))
		for _, cr := range desiredRules(cfg, f) {
			tbl := st[cr.chain.iptTable]
			var want []string
			for _, r := range cr.rules {
				want = append(want, iptRuleSpec(f, r))
			}
			if diff := cmp.Diff(want, tbl.chainRules(cr.chain.iptChain)); diff != "" {
				t.Errorf("%s %s/%s differs from RenderIPTables (-want +got):\n%s", save, cr.chain.iptTable, cr.chain.iptChain, diff)
			}
			if n := tbl.count(iptJumpSpec(cr.chain)); n != 1 {
				t.Errorf("%s %s: %d jumps %q, want 1", save, cr.chain.iptTable, n, iptJumpSpec(cr.chain))
			}
		}
	}
}

// TestFamilyChange checks Apply is declarative across families: going from
// dual-stack to IPv4-only removes the IPv6 state.
func TestFamilyChange(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			r, err := be.new(DefaultConfig(), slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			name := runPrefix(t)
			path := newNetNS(t, name)
			seedForeign(t, name)
			before := snapshot(t, name)

			v4 := Pod{NetNS: path, IPs: []netip.Addr{netip.MustParseAddr("10.1.2.3")}}
			if err := r.Apply(ctx, v4); err != nil {
				t.Fatal(err)
			}
			v4Only := snapshot(t, name)
			dual := Pod{NetNS: path, IPs: append(v4.IPs, netip.MustParseAddr("fd00::3"))}
			if err := r.Apply(ctx, dual); err != nil {
				t.Fatal(err)
			}
			if err := r.Apply(ctx, v4); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(v4Only, snapshot(t, name)); diff != "" {
				t.Errorf("dual -> v4 left IPv6 state (-v4 only +after):\n%s", diff)
			}
			if err := r.Remove(ctx, v4); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(before, snapshot(t, name)); diff != "" {
				t.Errorf("Remove did not restore the netns (-before +after):\n%s", diff)
			}
		})
	}
}

// TestNFTablesEmptyNetNS checks that on a pristine netns the nftables
// backend leaves no trace at all. (iptables cannot: the built-in chains it
// creates stay behind, empty.)
func TestNFTablesEmptyNetNS(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	r, err := NewNFTables(DefaultConfig(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	name := runPrefix(t)
	pod := Pod{NetNS: newNetNS(t, name), IPs: famCases[2].ips}
	before := snapshot(t, name)
	if err := r.Apply(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if err := r.Remove(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, snapshot(t, name)); diff != "" {
		t.Errorf("Remove did not restore the netns (-before +after):\n%s", diff)
	}
}

func TestApplyErrors(t *testing.T) {
	ctx := context.Background()
	r, err := NewNFTables(DefaultConfig(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Apply(ctx, Pod{NetNS: "/nonexistent"}); !errors.Is(err, ErrNoPodIPs) {
		t.Errorf("Apply without IPs = %v, want ErrNoPodIPs", err)
	}
	if err := r.Remove(ctx, Pod{NetNS: "/nonexistent/netns"}); err != nil {
		t.Errorf("Remove of a vanished netns = %v, want nil", err)
	}
	if _, err := NewNFTables(Config{}, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("NewNFTables(Config{}) succeeded, want a validation error")
	}
}

// TestConfigChange checks that applying with a new config (as after an
// agent upgrade) converges to what a fresh Apply of that config gives,
// including the policy rule at its new priority.
func TestConfigChange(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	newCfg := DefaultConfig()
	newCfg.OutboundPort = 15002
	newCfg.RulePriority = 32000
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			oldR, err := be.new(DefaultConfig(), slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			newR, err := be.new(newCfg, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			name := runPrefix(t)
			pod := Pod{NetNS: newNetNS(t, name), IPs: famCases[2].ips}
			seedForeign(t, name)
			if err := newR.Apply(ctx, pod); err != nil {
				t.Fatal(err)
			}
			fresh := snapshot(t, name)
			if err := newR.Remove(ctx, pod); err != nil {
				t.Fatal(err)
			}

			if err := oldR.Apply(ctx, pod); err != nil {
				t.Fatal(err)
			}
			if err := newR.Apply(ctx, pod); err != nil {
				t.Fatal(err)
			}
			checkLive(t, newCfg, be.name, name, FamiliesOf(pod.IPs))
			if diff := cmp.Diff(fresh, snapshot(t, name)); diff != "" {
				t.Errorf("old then new config differs from new only (-fresh +upgraded):\n%s", diff)
			}
		})
	}
}

func TestNewIPTablesMissingBinaries(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := NewIPTables(DefaultConfig(), slog.New(slog.DiscardHandler))
	if !errors.Is(err, ErrNotSupported) {
		t.Errorf("NewIPTables without binaries = %v, want ErrNotSupported", err)
	}
}

// TestRepairsTampering checks Apply restores the desired state after
// someone edited Warren's rules or routes.
func TestRepairsTampering(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	tamper := map[string][][]string{
		"nftables": {
			{"nft", "flush chain ip warren nat_output"},
			{"nft", "add rule ip6 warren nat_prerouting accept"},
		},
		"iptables": {
			{"iptables", "-t", "nat", "-A", "OUTPUT", "-j", "WARREN_OUTPUT"},
			{"iptables", "-t", "mangle", "-F", "WARREN_PRERT"},
			{"ip6tables", "-t", "nat", "-D", "PREROUTING", "-j", "WARREN_PRERT"},
		},
	}
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			r, err := be.new(DefaultConfig(), slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			name := runPrefix(t)
			pod := Pod{NetNS: newNetNS(t, name), IPs: famCases[2].ips}
			if err := r.Apply(ctx, pod); err != nil {
				t.Fatal(err)
			}
			want := snapshot(t, name)
			for _, cmd := range append(tamper[be.name],
				[]string{"ip", "route", "del", "local", "default", "dev", "lo", "table", "100"},
				[]string{"ip", "-6", "rule", "add", "fwmark", "0x111/0xfff", "lookup", "100", "priority", "30000"},
			) {
				inNS(t, name, cmd...)
			}
			if err := r.Apply(ctx, pod); err != nil {
				t.Fatal(err)
			}
			checkLive(t, DefaultConfig(), be.name, name, FamiliesOf(pod.IPs))
			if diff := cmp.Diff(want, snapshot(t, name)); diff != "" {
				t.Errorf("Apply did not repair the netns (-want +got):\n%s", diff)
			}
		})
	}
}
