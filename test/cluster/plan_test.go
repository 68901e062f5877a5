package cluster

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"
)

func TestOptions(t *testing.T) {
	tmp := t.TempDir()
	for _, tc := range []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"defaults", Options{}, ""},
		{"one node", Options{Nodes: 1, Prefix: "a1"}, ""},
		{"three nodes", Options{Nodes: 3}, "nodes 3"},
		{"prefix with a dash", Options{Prefix: "a-b"}, "prefix"},
		{"prefix starting with a digit", Options{Prefix: "1a"}, "prefix"},
		{"prefix too long", Options{Prefix: "abcdefghijklm"}, "prefix"},
		{"relative dir", Options{Dir: "tmp"}, "must be absolute"},
		{"missing dir", Options{Dir: filepath.Join(tmp, "nope")}, "no such file"},
		{"dir in an overlaid tree", Options{Dir: "/var/tmp"}, "overlay"},
		{"dir is an overlaid tree", Options{Dir: "/run"}, "overlay"},
		{"dir beside an overlaid tree", Options{Dir: tmp}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.opts.withDefaults()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got.Nodes == 0 || got.Prefix == "" || got.Dir == "" || got.Log == nil {
					t.Errorf("defaults not filled in: %+v", got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
	// Two default prefixes in one process differ (with probability 255/256
	// each time; ten tries make a false failure vanishingly rare).
	a, _ := Options{}.withDefaults()
	for range 10 {
		if b, _ := (Options{}).withDefaults(); b.Prefix != a.Prefix {
			return
		}
	}
	t.Errorf("default prefix %q never changes", a.Prefix)
}

func TestOptionsOverlayDirErr(t *testing.T) {
	_, err := Options{Dir: "/etc"}.withDefaults()
	if !errors.Is(err, errBadDir) {
		t.Fatalf("err = %v, want errBadDir", err)
	}
}

func TestPlanNodes(t *testing.T) {
	nodes := planNodes("p1", "/tmp/run", 2)
	type plan struct{ Name, NetNS, Cgroup, Addr, Peer, PodCIDR, Dir string }
	var got []plan
	for _, n := range nodes {
		got = append(got, plan{n.name, n.netns, n.cgroup, n.addr.String(), n.peer.String(), n.podCIDR.String(), n.dir})
	}
	want := []plan{
		{"p1-node1", "/run/netns/p1-n1", "p1-n1", "10.250.0.1", "10.250.0.2", "10.244.1.0/24", "/tmp/run/node1"},
		{"p1-node2", "/run/netns/p1-n2", "p1-n2", "10.250.0.2", "10.250.0.1", "10.244.2.0/24", "/tmp/run/node2"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("plan (-want +got):\n%s", diff)
	}
}

func TestHostPath(t *testing.T) {
	dir := t.TempDir()
	n := planNodes("p", dir, 1)[0]
	// A file the node wrote into its /etc overlay.
	upper := filepath.Join(n.dir, "overlay", "upper", "etc", "written")
	if err := os.MkdirAll(filepath.Dir(upper), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(upper, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ in, want string }{
		{"/etc/cni/net.d", filepath.Join(n.dir, "cni-conf")},
		{"/etc/cni/net.d/10-bridge.conflist", filepath.Join(n.dir, "cni-conf", "10-bridge.conflist")},
		{"/opt/cni/bin/bridge", filepath.Join(n.dir, "cni-bin", "bridge")},
		{"/var/run/warren/agent.sock", filepath.Join(n.dir, "warren", "agent.sock")},
		{"/run/warren/../netns/x", filepath.Join(n.dir, "netns", "x")},
		{"/var/lib/kubelet/pods", filepath.Join(n.dir, "kubelet", "pods")},
		{"/var/lib/kubeletx", "/var/lib/kubeletx"},
		{"/etc/written", upper},
		{"/etc/hostname", "/etc/hostname"},
		{"/usr/bin/env", "/usr/bin/env"},
	} {
		if got := n.hostPath(tc.in); got != tc.want {
			t.Errorf("hostPath(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestPKI(t *testing.T) {
	nodes := planNodes("p", "/run-dir", 2)
	p, err := newPKI(t.TempDir(), certSpecs(nodes))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.caPEM)
	for _, tc := range []struct {
		name    string
		usage   x509.ExtKeyUsage
		dnsName string // verified as the server name when set
		ip      string // must be in the IP SANs when set
		cn      string
		orgs    []string
	}{
		{name: "apiserver", usage: x509.ExtKeyUsageServerAuth, dnsName: "kubernetes.default.svc", ip: "10.96.0.1", cn: "kube-apiserver"},
		{name: "apiserver", usage: x509.ExtKeyUsageServerAuth, ip: "10.250.0.1", cn: "kube-apiserver"},
		{name: "apiserver", usage: x509.ExtKeyUsageServerAuth, ip: "127.0.0.1", cn: "kube-apiserver"},
		{name: "admin", usage: x509.ExtKeyUsageClientAuth, cn: "warren-cluster-admin", orgs: []string{"system:masters"}},
		{name: "kube-controller-manager", usage: x509.ExtKeyUsageClientAuth, cn: "system:kube-controller-manager"},
		{name: "kube-scheduler", usage: x509.ExtKeyUsageClientAuth, cn: "system:kube-scheduler"},
		{name: "kube-proxy", usage: x509.ExtKeyUsageClientAuth, cn: "system:kube-proxy"},
		{name: "kubelet-p-node2", usage: x509.ExtKeyUsageClientAuth, cn: "system:node:p-node2", orgs: []string{"system:nodes"}},
		{name: "kubelet-serving-p-node2", usage: x509.ExtKeyUsageServerAuth, ip: "10.250.0.2", cn: "p-node2"},
	} {
		t.Run(tc.name+tc.ip, func(t *testing.T) {
			b, err := os.ReadFile(p.cert(tc.name))
			if err != nil {
				t.Fatal(err)
			}
			block, _ := pem.Decode(b)
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{tc.usage}, DNSName: tc.dnsName}); err != nil {
				t.Errorf("verify: %v", err)
			}
			if tc.ip != "" {
				if err := cert.VerifyHostname(tc.ip); err != nil {
					t.Errorf("not valid for %s: %v", tc.ip, err)
				}
			}
			if cert.Subject.CommonName != tc.cn || !cmp.Equal(cert.Subject.Organization, tc.orgs, cmp.Comparer(func(a, b []string) bool { return strings.Join(a, ",") == strings.Join(b, ",") })) {
				t.Errorf("subject %v, want CN=%s O=%v", cert.Subject, tc.cn, tc.orgs)
			}
		})
	}
	path, err := p.kubeconfig("admin", "https://10.250.0.1:6443")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://10.250.0.1:6443" || len(cfg.CAData) == 0 || len(cfg.CertData) == 0 || len(cfg.KeyData) == 0 {
		t.Errorf("admin kubeconfig: host %s, %d/%d/%d bytes of CA/cert/key, want all embedded", cfg.Host, len(cfg.CAData), len(cfg.CertData), len(cfg.KeyData))
	}
}

func TestCNIConflist(t *testing.T) {
	n := planNodes("p", "/run-dir", 2)[1]
	var conf struct {
		Plugins []struct {
			Type   string
			IPMasq *bool `json:"ipMasq"`
			IPAM   struct {
				Type   string
				Ranges [][]struct{ Subnet string }
			}
		}
	}
	if err := json.Unmarshal([]byte(cniConflist(n)), &conf); err != nil {
		t.Fatal(err)
	}
	br := conf.Plugins[0]
	if br.Type != "bridge" || br.IPMasq == nil || *br.IPMasq || br.IPAM.Type != "host-local" || br.IPAM.Ranges[0][0].Subnet != "10.244.2.0/24" {
		t.Errorf("bridge plugin %+v: want bridge, ipMasq false, host-local over 10.244.2.0/24", br)
	}
}

// TestComponentConfigs checks the settings each workaround of this host
// depends on; the YAML must parse for the components to start at all.
func TestComponentConfigs(t *testing.T) {
	n := planNodes("p", "/run-dir", 2)[0]
	p := &pki{dir: "/pki"}
	var kubelet map[string]any
	if err := yaml.Unmarshal([]byte(kubeletConfig(n, p)), &kubelet); err != nil {
		t.Fatal(err)
	}
	var proxy map[string]any
	if err := yaml.Unmarshal([]byte(kubeProxyConfig(n, "/pki/kube-proxy.kubeconfig")), &proxy); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		got  any
		want any
	}{
		{"kubelet failCgroupV1", kubelet["failCgroupV1"], false},
		{"kubelet cgroupRoot", kubelet["cgroupRoot"], "/p-n1"},
		{"kubelet protectKernelDefaults", kubelet["protectKernelDefaults"], true},
		{"kubelet address", kubelet["address"], "10.250.0.1"},
		{"kubelet runtime", kubelet["containerRuntimeEndpoint"], "unix:///run/containerd/containerd.sock"},
		{"kubelet volumePluginDir", kubelet["volumePluginDir"], "/var/lib/kubelet/volume-plugins"},
		{"kubelet tlsCertFile", kubelet["tlsCertFile"], "/pki/kubelet-serving-p-node1.crt"},
		{"kube-proxy mode", proxy["mode"], "iptables"},
		{"kube-proxy clusterCIDR", proxy["clusterCIDR"], "10.244.0.0/16"},
		{"kube-proxy hostname", proxy["hostnameOverride"], "p-node1"},
		{"kube-proxy conntrack", proxy["conntrack"].(map[string]any)["maxPerCore"], float64(0)},
	} {
		if !cmp.Equal(tc.got, tc.want) {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	cd := containerdConfig("/usr/sbin/runc")
	for _, want := range []string{
		"restrict_oom_score_adj = true",
		`sandbox_image = "` + pauseRef + `"`,
		`BinaryName = "/usr/sbin/runc"`,
		`address = "/run/containerd/containerd.sock"`,
		`path = "/var/lib/containerd/opt"`,
	} {
		if !strings.Contains(cd, want) {
			t.Errorf("containerd config lacks %q", want)
		}
	}
	// Top-level keys must come before the first table, or TOML puts them
	// in that table.
	if strings.Index(cd, "disabled_plugins") > strings.Index(cd, "[") {
		t.Error("containerd config: disabled_plugins is inside a table")
	}
}

func TestHolderScript(t *testing.T) {
	n := planNodes("p", "/run dir's", 1)[0]
	s := holderScript(n)
	for _, want := range []string{
		`mount -t overlay overlay -o 'lowerdir=/etc,upperdir=/run dir'\''s/node1/overlay/upper/etc,workdir=/run dir'\''s/node1/overlay/work/etc' /etc`,
		`mount --bind '/run dir'\''s/node1/cni-conf' /etc/cni/net.d`,
		`mount --bind '/run dir'\''s/node1/sysctl/kernel.panic_on_oops' /proc/sys/kernel/panic_on_oops`,
		"hostname p-node1\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("holder script lacks %q:\n%s", want, s)
		}
	}
	// Every mount happens before the namespace is made shared and the
	// holder reports ready.
	if strings.LastIndex(s, "mount --bind") > strings.Index(s, "--make-rshared") || strings.Index(s, "--make-rshared") > strings.Index(s, "echo ready") {
		t.Errorf("holder script out of order:\n%s", s)
	}
}
