package cluster

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
)

// The node components' configuration files, rendered from the plan. Paths
// inside them are the ones the node's processes see (see nodeMounts), so
// they read like a real node's; the PKI stays at its host path, which the
// node sees unchanged.

// inNodeSocket is containerd's socket as the node's processes see it.
const inNodeSocket = "/run/containerd/containerd.sock"

// pauseRef is the sandbox image: the test app in pause mode, imported at
// Start; containerd would otherwise pull registry.k8s.io/pause.
const pauseRef = "warren.test/pause:1"

// containerdConfig is containerd's config.toml (v2 format, read by the
// Debian 1.6 and migrated by 2.x).
func containerdConfig(runc string) string {
	return fmt.Sprintf(`version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
# containerd 2.x: no NRI socket (/run/nri) either.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = %[1]q
[ttrpc]
  address = "%[1]s.ttrpc"
[metrics]
  address = ""

# The default is /opt/containerd.
[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[2]q
  enable_selinux = false
  disable_apparmor = true
  # Sandboxes get oom_score_adj -998, which needs CAP_SYS_RESOURCE; VMs
  # (and containers) without it fail every sandbox with "can't get final
  # child's PID from pipe: EOF". This clamps to containerd's own score.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = %[3]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
`, inNodeSocket, pauseRef, runc)
}

// cniConfName is the node's CNI network config file in /etc/cni/net.d.
const cniConfName = "10-bridge.conflist"

// cniConflist is the node's CNI network: a bridge with host-local IPAM over
// the node's pod CIDR. ipMasq is off: pod traffic never leaves the node
// namespaces, and masquerading would hide the source pod IP the tests check.
func cniConflist(n node) string {
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "warren-cluster",
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": n.podCIDR.String()}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	b, _ := json.MarshalIndent(conf, "", "  ") // maps of plain values always encode
	return string(b) + "\n"
}

// kubeletConfig is the node's KubeletConfiguration.
func kubeletConfig(n node, p *pki) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host is cgroup v1 (hybrid); kubelet 1.37 refuses v1 unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
# Each node's own cgroup root, created before the kubelet starts: with a
# shared one each kubelet kills the other's pods as orphans.
cgroupRoot: /%[1]s
# Check the kernel tunables instead of setting them: the node's mount
# namespace shows the kubelet files with the values it wants, and a check
# that fails means a new tunable to fake, never a changed host.
protectKernelDefaults: true
containerRuntimeEndpoint: unix://%[2]s
address: %[3]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: %[4]s
tlsPrivateKeyFile: %[5]s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[6]s}
authorization: {mode: AlwaysAllow}
# The default, /usr/libexec/kubernetes/..., is created on the host.
volumePluginDir: /var/lib/kubelet/volume-plugins
podLogsDir: /var/log/pods
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
failSwapOn: false
registerNode: true
rotateCertificates: false
serverTLSBootstrap: false
# Shared CI disks run full-ish; evicting the tests' pods would only confuse.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
# Imported images cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
syncFrequency: 10s
nodeStatusReportFrequency: 10s
`, n.cgroup, inNodeSocket, n.addr, p.cert("kubelet-serving-"+n.name), p.key("kubelet-serving-"+n.name), p.cert("ca"))
}

// kubeProxyConfig is the node's KubeProxyConfiguration.
func kubeProxyConfig(n node, kubeconfig string) string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %[1]s}
mode: iptables
hostnameOverride: %[2]s
clusterCIDR: %[3]s
bindAddress: %[4]s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Zero leaves the conntrack sysctls alone: nf_conntrack_max and the hash
# size are global, so kube-proxy would change the host's.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
`, kubeconfig, n.name, clusterCIDR, n.addr)
}

// kernelTunables are the sysctls the kubelet insists on (its
// setupKernelTunables), with the values it wants. The node's mount
// namespace shows them as files over /proc/sys, so the kubelet is content
// and the host keeps its own (kernel.panic_on_oops=1 would turn any oops
// into a VM reboot).
var kernelTunables = []struct{ name, value string }{
	{"vm/overcommit_memory", "1"},
	{"vm/panic_on_oom", "0"},
	{"kernel/panic", "10"},
	{"kernel/panic_on_oops", "1"},
	{"kernel/keys/root_maxkeys", "1000000"},
	{"kernel/keys/root_maxbytes", "25000000"},
}

// tunableFile is the file node n shows at /proc/sys/<name>.
func (n node) tunableFile(name string) string {
	return filepath.Join(n.dir, "sysctl", strings.ReplaceAll(name, "/", "."))
}

// holderScript builds node n's mount namespace and then holds it (and the
// UTS namespace) open as long as it runs. It runs in the node's network
// namespace, in fresh mount and UTS namespaces whose mounts are slaves of
// the host's, so nothing it mounts reaches the host. In order: overlays
// over /etc, /opt, /var and /run (writes land in <node dir>/overlay), the
// node's own directories bound over their standard paths, the kernel
// tunable files bound over /proc/sys, the hostname, shared propagation
// within the node (the kubelet's mount propagation needs it), a line on fd
// 3 to say it is ready, then sleep.
func holderScript(n node) string {
	var b strings.Builder
	b.WriteString("set -e\n")
	for _, o := range overlaid {
		upper := filepath.Join(n.dir, "overlay", "upper"+o)
		work := filepath.Join(n.dir, "overlay", "work"+o)
		fmt.Fprintf(&b, "mkdir -p %s %s\n", shQuote(upper), shQuote(work))
		fmt.Fprintf(&b, "mount -t overlay overlay -o %s %s\n",
			shQuote("lowerdir="+o+",upperdir="+upper+",workdir="+work), o)
	}
	for _, m := range nodeMounts {
		fmt.Fprintf(&b, "mkdir -p %s %s\n", shQuote(filepath.Join(n.dir, m.Dir)), m.Path)
		fmt.Fprintf(&b, "mount --bind %s %s\n", shQuote(filepath.Join(n.dir, m.Dir)), m.Path)
	}
	for _, t := range kernelTunables {
		fmt.Fprintf(&b, "mount --bind %s /proc/sys/%s\n", shQuote(n.tunableFile(t.name)), t.name)
	}
	fmt.Fprintf(&b, "hostname %s\n", n.name)
	b.WriteString("mount --make-rshared /\n")
	b.WriteString("echo ready >&3\nexec 3>&-\nexec sleep infinity\n")
	return b.String()
}

// shQuote quotes s for sh.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
