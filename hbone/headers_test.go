package hbone

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseAuthority(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: "10.0.0.1:80", want: "10.0.0.1:80"},
		{in: "[fd00::1]:8080", want: "[fd00::1]:8080"},
		{in: "example.com:80", wantErr: true},
		{in: "10.0.0.1", wantErr: true},
		{in: "10.0.0.1:0", wantErr: true},
		{in: "[fe80::1%eth0]:80", wantErr: true},
		{in: "", wantErr: true},
		{in: "fd00::1:80", wantErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseAuthority(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseAuthority(%q) error = %v, wantErr %v", tc.in, err, tc.wantErr)
			}
			if err == nil {
				if diff := cmp.Diff(tc.want, got.String()); diff != "" {
					t.Errorf("(-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestForwardedValue(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client string
		host   string
		want   string
	}{
		{"v4", "10.0.0.1:4242", "", `for="10.0.0.1:4242"`},
		{"v6 with host", "[fd00::1]:4242", "svc.ns.svc.cluster.local", `for="[fd00::1]:4242";host=svc.ns.svc.cluster.local`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := forwardedValue(netip.MustParseAddrPort(tc.client), tc.host)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestSameIP(t *testing.T) {
	if !sameIP(netip.MustParseAddr("::ffff:10.0.0.1"), netip.MustParseAddr("10.0.0.1")) {
		t.Error("v4-mapped address not equal to v4")
	}
	if sameIP(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")) {
		t.Error("different addresses equal")
	}
}

func TestTraceParent(t *testing.T) {
	a, b := newTraceParent(), newTraceParent()
	if !traceParentRE.MatchString(a) {
		t.Errorf("traceparent %q malformed", a)
	}
	if a == b {
		t.Error("two traceparents are equal")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mod     func(*Config)
		wantErr bool
	}{
		{"default", func(*Config) {}, false},
		{"small stream window", func(c *Config) { c.StreamWindow = 1000 }, true},
		{"huge frame", func(c *Config) { c.MaxFrameSize = 1 << 24 }, true},
		{"no streams", func(c *Config) { c.MaxConcurrentStreams = 0 }, true},
		{"no client streams", func(c *Config) { c.ClientStreamLimit = 0 }, true},
		{"no ping interval", func(c *Config) { c.PingInterval = 0 }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			if err := c.Validate(); (err != nil) != tc.wantErr {
				t.Errorf("Validate() = %v, wantErr %v", err, tc.wantErr)
			}
		})
	}
}

func TestParseForwardedFor(t *testing.T) {
	cases := []struct {
		in   string
		want string // "" = not ok
	}{
		{`for="10.1.1.11:4242"`, "10.1.1.11:4242"},
		{`for="10.1.1.11:4242";host=echo.b.svc.cluster.local`, "10.1.1.11:4242"},
		{`host=x;for="[fd00::1]:80"`, "[fd00::1]:80"},
		{`For="10.0.0.1:1", for="10.0.0.2:2"`, "10.0.0.1:1"},
		{`for="[::ffff:10.0.0.3]:3"`, "10.0.0.3:3"},
		{`for=_hidden`, ""},
		{`for="10.0.0.1"`, ""},
		{`host=x`, ""},
		{``, ""},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, ok := parseForwardedFor(tc.in)
			if tc.want == "" {
				if ok {
					t.Fatalf("parseForwardedFor(%q) = %v, want none", tc.in, got)
				}
				return
			}
			if !ok || got.String() != tc.want {
				t.Fatalf("parseForwardedFor(%q) = %v, %v; want %s", tc.in, got, ok, tc.want)
			}
		})
	}
}
