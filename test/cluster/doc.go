// Package cluster starts a real Kubernetes cluster on this machine for
// end-to-end tests: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, and per node containerd, runc, the CNI bridge, kubelet and
// kube-proxy, each node in its own network, mount and UTS namespace.
//
// # Topology
//
//	netns <prefix>-n1: eth0 10.250.0.1/24  <-- veth -->  netns <prefix>-n2: eth0 10.250.0.2/24
//	  etcd 127.0.0.1:2379, kube-apiserver :6443 (advertised 10.250.0.1), KCM, scheduler
//	  containerd, kubelet (:10250), kube-proxy (iptables)  containerd, kubelet, kube-proxy
//	  cni0 10.244.1.1/24, pods 10.244.1.0/24              cni0 10.244.2.1/24, pods 10.244.2.0/24
//	  route 10.244.2.0/24 via 10.250.0.2                  route 10.244.1.0/24 via 10.250.0.1
//	Services 10.96.0.0/16; the kubernetes Service 10.96.0.1:443 -> 10.250.0.1:6443.
//
// Every address lives inside the node namespaces, so parallel clusters never
// collide and the host's network is untouched. The CNI bridge does not
// masquerade, so pods see each other's real IPs, across nodes and through
// ClusterIPs. There is no cluster DNS: address Services by ClusterIP (or the
// <NAME>_SERVICE_HOST variables). Nothing is ever pulled: images come in
// with Cluster.ImportImage and pods must say imagePullPolicy: Never. The pod
// sandbox image is the test app (test/cluster/testapp) in pause mode.
//
// # Node filesystems
//
// Each node's processes (containerd, kubelet, kube-proxy, pods' hostPath
// volumes, Cluster.RunInNode commands) share a mount namespace in which
// /etc/cni/net.d, /opt/cni/bin, /var/lib/kubelet, /var/lib/containerd,
// /var/lib/cni, /var/log/pods, /var/log/containers, /run/containerd,
// /run/netns and /run/warren (= /var/run/warren) are the node's own
// directories in the run dir (Cluster.NodePath maps them), and /etc, /opt,
// /var and /run are overlays whose writes land in the run dir, so the host's
// files are never written. The kernel tunables the kubelet insists on
// (vm.overcommit_memory, kernel.panic_on_oops, ...) are files in that
// namespace holding the values it wants, so the host's sysctls never change.
//
// # Reaching the cluster
//
// Cluster.Client and Cluster.RESTConfig dial from inside node 1's network
// namespace, so the test process needs no route. Pod IPs and ClusterIPs are
// reachable the same way through Cluster.HTTPClient, and Cluster.Fetch and
// Cluster.Echo make a test app pod (AppDeployment, TestAppImage) connect
// somewhere on the test's behalf. Cluster.Kubeconfig names
// https://10.250.0.1:6443, which exists only inside the node namespaces:
// run helm or kubectl there with Cluster.RunInNode, which sets KUBECONFIG to
// it and HOME to a directory in the run dir:
//
//	out, err := c.RunInNode(ctx, 0, "helm", "install", "warren", chartDir, "--namespace", "istio-system")
//
// # Tests
//
// One cluster per test binary: call Require in each test and Main from
// TestMain. The first start builds the Kubernetes binaries into
// ~/.cache/warren (test/kube's Build and BuildNode, minutes when cold);
// after that two nodes are Ready in about 12 s and Stop takes about 1 s.
// Tests need root and the Debian packages containerd, runc,
// containernetworking-plugins, conntrack, iptables, util-linux and mount;
// they are skipped when not root or when WARREN_SKIP_CLUSTER=1, and fail
// when a package is missing. A cluster whose test process died without Stop
// is removed by the next Start.
package cluster
