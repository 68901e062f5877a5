package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/go-cmp/cmp"
)

// prevResult100 is what a bridge plugin returns: the bridge and the host
// veth in the host namespace, eth0 in the sandbox; the bridge's own address
// is listed too and is not the pod's.
const prevResult100 = `{
  "cniVersion": "1.0.0",
  "interfaces": [
    {"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
    {"name": "veth1234", "mac": "aa:bb:cc:00:00:02"},
    {"name": "eth0", "mac": "aa:bb:cc:00:00:03", "sandbox": "/var/run/netns/cni-1234"}
  ],
  "ips": [
    {"address": "10.244.1.1/24", "interface": 0},
    {"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 2},
    {"address": "fd00::7/64", "gateway": "fd00::1", "interface": 2}
  ],
  "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]
}`

// prevResult040 is the same in the 0.4.0 format (IPs carry a version).
const prevResult040 = `{
  "cniVersion": "0.4.0",
  "interfaces": [
    {"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
    {"name": "eth0", "mac": "aa:bb:cc:00:00:03", "sandbox": "/var/run/netns/cni-1234"}
  ],
  "ips": [{"version": "4", "address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 1}],
  "dns": {}
}`

const podArgsEnv = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=0f6c-uid"

// netConf is the plugin's stdin as a runtime builds it from a conflist
// entry plus the previous result.
func netConf(t *testing.T, version, socket, logFile, prev string, extra map[string]any) []byte {
	t.Helper()
	m := map[string]any{"cniVersion": version, "name": "k8s-pod-network", "type": PluginType, "agentSocket": socket, "logFile": logFile}
	if prev != "" {
		m["prevResult"] = json.RawMessage(prev)
	}
	for k, v := range extra {
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func cmdArgs(stdin []byte, args string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "abc123", Netns: "/var/run/netns/cni-1234", IfName: "eth0", Args: args, StdinData: stdin}
}

// jsonEqual reports whether two JSON documents hold the same values.
func jsonEqual(t *testing.T, want, got []byte) {
	t.Helper()
	var w, g any
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("want: %v", err)
	}
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("output is not JSON: %v: %s", err, got)
	}
	if diff := cmp.Diff(w, g); diff != "" {
		t.Errorf("output (-want +got):\n%s", diff)
	}
}

func TestPluginAdd(t *testing.T) {
	agentErr := func(context.Context, AddRequest) (bool, error) { return false, errors.New("pod has no identity yet") }
	tests := []struct {
		name    string
		version string
		prev    string
		args    string
		agent   func(context.Context, AddRequest) (bool, error) // nil: captured
		noAgent bool
		// wantCode is the CNI error code, 0 for success with prev passed
		// through.
		wantCode uint
		wantMsg  string
		wantReq  *AddRequest
		wantLog  string
	}{
		{
			name: "captured, 1.0.0", version: "1.0.0", prev: prevResult100, args: podArgsEnv,
			wantReq: &AddRequest{
				PodName: "web-0", PodNamespace: "shop", PodUID: "0f6c-uid", ContainerID: "abc123",
				NetNS: "/var/run/netns/cni-1234", IfName: "eth0",
				IPs: []netip.Prefix{netip.MustParsePrefix("10.244.1.7/24"), netip.MustParsePrefix("fd00::7/64")},
			},
			wantLog: "captured=true",
		},
		{
			name: "captured, 0.4.0 converted", version: "0.4.0", prev: prevResult040, args: podArgsEnv,
			wantReq: &AddRequest{
				PodName: "web-0", PodNamespace: "shop", PodUID: "0f6c-uid", ContainerID: "abc123",
				NetNS: "/var/run/netns/cni-1234", IfName: "eth0",
				IPs: []netip.Prefix{netip.MustParsePrefix("10.244.1.7/24")},
			},
		},
		{
			name: "not captured passes through", version: "1.0.0", prev: prevResult100, args: podArgsEnv,
			agent:   func(context.Context, AddRequest) (bool, error) { return false, nil },
			wantLog: "captured=false",
		},
		{
			name: "agent error fails the ADD", version: "1.0.0", prev: prevResult100, args: podArgsEnv,
			agent: agentErr, wantCode: types.ErrTryAgainLater, wantMsg: "pod has no identity yet",
			wantLog: "failing ADD",
		},
		{
			name: "agent not running passes through", version: "1.0.0", prev: prevResult100, args: podArgsEnv,
			noAgent: true, wantLog: "warren agent not running",
		},
		{
			name: "no prevResult", version: "1.0.0", args: podArgsEnv,
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "no prevResult",
		},
		{
			name: "not a kubernetes pod", version: "1.0.0", prev: prevResult100, args: "IgnoreUnknown=1",
			agent:   agentErr, // never asked
			wantLog: "not a Kubernetes pod",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			socket := socketPath(t)
			agent := &fakeAgent{addFn: tt.agent}
			if !tt.noAgent {
				startAgent(t, Config{Socket: socket}, agent)
			}
			logFile := filepath.Join(t.TempDir(), "log", "cni.log")
			var stdout, stderr bytes.Buffer
			p := &plugin{stdout: &stdout, stderr: &stderr}
			err := p.add(cmdArgs(netConf(t, tt.version, socket, logFile, tt.prev, nil), tt.args))
			if tt.wantCode != 0 {
				var ce *types.Error
				if !errors.As(err, &ce) || ce.Code != tt.wantCode || !strings.Contains(ce.Error(), tt.wantMsg) {
					t.Fatalf("add = %v, want CNI error %d containing %q", err, tt.wantCode, tt.wantMsg)
				}
				if stdout.Len() != 0 {
					t.Errorf("failed ADD printed a result: %s", stdout.Bytes())
				}
			} else {
				if err != nil {
					t.Fatalf("add: %v", err)
				}
				jsonEqual(t, []byte(tt.prev), stdout.Bytes())
			}
			if tt.wantReq != nil {
				got := agent.added()
				if len(got) != 1 {
					t.Fatalf("agent got %d requests, want 1", len(got))
				}
				if diff := cmp.Diff(*tt.wantReq, got[0], cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
					t.Errorf("request (-want +got):\n%s", diff)
				}
			}
			if tt.name == "not a kubernetes pod" && len(agent.added()) != 0 {
				t.Errorf("agent was asked about a non-Kubernetes sandbox")
			}
			if tt.wantLog != "" {
				b, _ := os.ReadFile(logFile)
				if !strings.Contains(string(b), tt.wantLog) {
					t.Errorf("log file lacks %q:\n%s\nstderr: %s", tt.wantLog, b, stderr.Bytes())
				}
			}
		})
	}
}

func TestPluginAddInvalidTimeout(t *testing.T) {
	p := &plugin{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	conf := netConf(t, "1.0.0", socketPath(t), filepath.Join(t.TempDir(), "cni.log"), prevResult100, map[string]any{"timeout": "soon"})
	err := p.add(cmdArgs(conf, podArgsEnv))
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != types.ErrInvalidNetworkConfig || !strings.Contains(ce.Error(), `"soon"`) {
		t.Fatalf("add = %v, want an invalid-config error naming the timeout", err)
	}
}

func TestPluginDel(t *testing.T) {
	tests := []struct {
		name    string
		noAgent bool
		stdin   func(socket, log string) []byte
		wantDel bool
	}{
		{name: "tells the agent", wantDel: true, stdin: func(s, l string) []byte { return netConf(t, "1.0.0", s, l, "", nil) }},
		{name: "agent not running", noAgent: true, stdin: func(s, l string) []byte { return netConf(t, "1.0.0", s, l, "", nil) }},
		{name: "invalid config", stdin: func(string, string) []byte { return []byte("{not json") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			socket := socketPath(t)
			agent := &fakeAgent{}
			if !tt.noAgent {
				startAgent(t, Config{Socket: socket}, agent)
			}
			p := &plugin{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
			args := cmdArgs(tt.stdin(socket, filepath.Join(t.TempDir(), "cni.log")), podArgsEnv)
			if err := p.del(args); err != nil {
				t.Fatalf("del must never fail, got %v", err)
			}
			var want []DelRequest
			if tt.wantDel {
				want = []DelRequest{{PodName: "web-0", PodNamespace: "shop", ContainerID: "abc123", NetNS: "/var/run/netns/cni-1234"}}
			}
			if diff := cmp.Diff(want, agent.deleted()); diff != "" {
				t.Errorf("agent got (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseArgs(t *testing.T) {
	tests := []struct {
		in   string
		want podArgs
	}{
		{podArgsEnv, podArgs{name: "web-0", namespace: "shop", uid: "0f6c-uid"}},
		{"K8S_POD_NAME=a;K8S_POD_NAMESPACE=b", podArgs{name: "a", namespace: "b"}},
		{"", podArgs{}},
		{"garbage;=x;K8S_POD_NAME", podArgs{}},
	}
	for _, tt := range tests {
		if got := parseArgs(tt.in); got != tt.want {
			t.Errorf("parseArgs(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestPodIPs(t *testing.T) {
	tests := []struct {
		name string
		res  string
		want []netip.Prefix
	}{
		{"host-side addresses skipped", prevResult100, []netip.Prefix{netip.MustParsePrefix("10.244.1.7/24"), netip.MustParsePrefix("fd00::7/64")}},
		{"no interface named", `{"cniVersion":"1.0.0","ips":[{"address":"10.1.2.3/16"}]}`, []netip.Prefix{netip.MustParsePrefix("10.1.2.3/16")}},
		{"no ips", `{"cniVersion":"1.0.0"}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := types100.NewResult([]byte(tt.res))
			if err != nil {
				t.Fatal(err)
			}
			got := podIPs(r.(*types100.Result))
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
