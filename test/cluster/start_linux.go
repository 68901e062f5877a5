package cluster

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/warren-mesh/warren/netns"
	"github.com/warren-mesh/warren/test/kube"
	"github.com/warren-mesh/warren/test/testbed"
)

// startTimeout bounds Start once the binaries are built: ~10-15 s on two
// idle cores; the margin is for loaded CI runners.
const startTimeout = 3 * time.Minute

// Start starts a cluster. Side effects, in order: builds (or finds in
// ~/.cache/warren) the Kubernetes binaries; tears down clusters under
// opts.Dir left behind by test processes that died without Stop; creates
// the run dir (opts.Dir/warren-cluster-<prefix>-*) with PKI, configs and
// the nodes' directories; builds the test app for the sandbox image;
// creates network namespaces <prefix>-nN with the node link and routes,
// and cgroups /<prefix>-nN in every hierarchy; starts each node's mount
// namespace holder, etcd and kube-apiserver on node 1, containerd on every
// node (and imports the sandbox image), then kube-controller-manager,
// kube-scheduler, and kubelet and kube-proxy on every node; waits until
// every node is Ready and the default ServiceAccount exists. Every process
// dies with the test process. On error everything is torn down (as by
// Stop); Start may be retried.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("cluster options: %w", err)
	}
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	tl, err := findTools()
	if err != nil {
		return nil, err
	}
	log := opts.Log.With("component", "cluster", "prefix", opts.Prefix)
	kcfg := kube.DefaultConfig()
	bins, err := kube.Build(ctx, kcfg, log)
	if err != nil {
		return nil, err
	}
	nbins, err := kube.BuildNode(ctx, kcfg, log)
	if err != nil {
		return nil, err
	}
	sweep(opts.Dir, log)

	begin := time.Now()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	dir, err := os.MkdirTemp(opts.Dir, "warren-cluster-"+opts.Prefix+"-")
	if err != nil {
		return nil, fmt.Errorf("creating run dir: %w", err)
	}
	c := &Cluster{log: log, dir: dir, tools: tl, nodes: planNodes(opts.Prefix, dir, opts.Nodes)}
	ownerStart, err := processStart(os.Getpid())
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	c.rec = record{Prefix: opts.Prefix, Dir: dir, Owner: os.Getpid(), OwnerStart: ownerStart}
	if err := c.rec.save(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// The sandbox image is built while the rest starts.
	pauseTar := filepath.Join(dir, "images", "pause.tar")
	pauseErr := make(chan error, 1)
	buildCtx, cancelBuild := context.WithCancel(ctx)
	defer cancelBuild()
	buildDone := make(chan struct{})
	go func() {
		defer close(buildDone)
		pauseErr <- buildPauseImage(buildCtx, pauseTar)
	}()
	defer func() {
		if err != nil {
			// The build writes into the run dir: stop it before removing
			// that.
			cancelBuild()
			<-buildDone
			if serr := c.Stop(); serr != nil {
				log.Error("cleaning up after a failed start", "err", serr)
			}
		}
	}()

	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"pki", c.makePKI},
		{"node files", c.writeNodeFiles},
		{"network", c.makeNetwork},
		{"cgroups", c.makeCgroups},
		{"node namespaces", c.startHolders},
		{"etcd and containerd", func(ctx context.Context) error { return c.startEtcdContainerd(bins) }},
		{"kube-apiserver", func(ctx context.Context) error { return c.startAPIServer(ctx, bins) }},
		// The controller manager takes seconds to start its controllers:
		// start it before importing the sandbox image, which no pod needs
		// before Start returns.
		{"components", func(ctx context.Context) error { return c.startComponents(nbins) }},
		{"sandbox image", func(ctx context.Context) error { return c.importPause(ctx, pauseTar, pauseErr) }},
		{"ready", c.waitReady},
	}
	last := begin
	for _, s := range steps {
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("starting cluster: %s: %w", s.name, err)
		}
		log.Debug("step done", "step", s.name, "duration", time.Since(last).Round(time.Millisecond))
		last = time.Now()
		if opts.afterStep != nil {
			if err := opts.afterStep(s.name, c.rec); err != nil {
				return nil, fmt.Errorf("starting cluster: after %s: %w", s.name, err)
			}
		}
	}
	log.Info("cluster ready", "nodes", len(c.nodes), "duration", time.Since(begin).Round(time.Millisecond), "dir", dir)
	return c, nil
}

// Stop kills every process the cluster started (its daemons by the PIDs it
// holds, then every process left in the nodes' cgroups and mount
// namespaces: pods, containerd shims, RunInNode commands), which takes the
// nodes' mounts with it, then removes the network namespaces, the cgroups
// and the run dir. The host's sysctls and files were never changed. Stop is
// idempotent, works after a failed Start, and reports everything it could
// not remove.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		begin := time.Now()
		// Kubelets first, so no container is restarted; everything else
		// in reverse start order.
		for i := len(c.procs) - 1; i >= 0; i-- {
			if strings.HasPrefix(c.procs[i].name, "kubelet") {
				c.procs[i].kill()
			}
		}
		for i := len(c.procs) - 1; i >= 0; i-- {
			c.procs[i].kill()
		}
		for _, h := range c.holders {
			if h != nil {
				h.kill()
			}
		}
		for _, ns := range c.ns {
			ns.Close()
		}
		c.stopErr = teardown(&c.rec)
		c.log.Info("cluster stopped", "duration", time.Since(begin).Round(time.Millisecond), "err", c.stopErr)
	})
	return c.stopErr
}

func (c *Cluster) makePKI(context.Context) error {
	p, err := newPKI(filepath.Join(c.dir, "pki"), certSpecs(c.nodes))
	if err != nil {
		return err
	}
	c.pki = p
	server := "https://" + nodeAddr(0).String() + ":" + strconv.Itoa(apiserverPort)
	local := "https://127.0.0.1:" + strconv.Itoa(apiserverPort)
	for _, kc := range []struct{ name, server string }{
		{"admin", server},
		// On node 1 with the apiserver: loopback, like kubeadm's.
		{"kube-controller-manager", local},
		{"kube-scheduler", local},
		{"kube-proxy", server},
	} {
		path, err := p.kubeconfig(kc.name, kc.server)
		if err != nil {
			return err
		}
		if kc.name == "admin" {
			c.kubeconfig = path
		}
	}
	for _, n := range c.nodes {
		if _, err := p.kubeconfig("kubelet-"+n.name, server); err != nil {
			return err
		}
	}
	c.restCfg = p.adminREST(server)
	return nil
}

// writeNodeFiles writes each node's directories and configuration: the
// CNI network and plugins, containerd's, the kubelet's and kube-proxy's
// configs, and the kernel tunable files.
func (c *Cluster) writeNodeFiles(context.Context) error {
	if err := os.MkdirAll(filepath.Join(c.dir, "logs"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(c.dir, "home"), 0o700); err != nil {
		return err
	}
	for _, n := range c.nodes {
		for _, m := range nodeMounts {
			if err := os.MkdirAll(filepath.Join(n.dir, m.Dir), 0o755); err != nil {
				return err
			}
		}
		for _, d := range []string{"config", "sysctl"} {
			if err := os.MkdirAll(filepath.Join(n.dir, d), 0o755); err != nil {
				return err
			}
		}
		if err := copyDir(c.tools.cniDir, filepath.Join(n.dir, "cni-bin")); err != nil {
			return fmt.Errorf("copying CNI plugins: %w", err)
		}
		files := map[string]string{
			filepath.Join(n.dir, "cni-conf", cniConfName):     cniConflist(n),
			filepath.Join(n.dir, "config", "containerd.toml"): containerdConfig(c.tools.runc),
			filepath.Join(n.dir, "config", "kubelet.yaml"):    kubeletConfig(n, c.pki),
			filepath.Join(n.dir, "config", "kube-proxy.yaml"): kubeProxyConfig(n, c.pki.file("kube-proxy.kubeconfig")),
			filepath.Join(n.dir, "config", "holder.sh"):       holderScript(n),
		}
		for _, t := range kernelTunables {
			files[n.tunableFile(t.name)] = t.value + "\n"
		}
		for path, content := range files {
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

// copyDir copies the regular files of src into dst: each node gets its own
// CNI plugins, which a CNI installer under test may add to or replace.
func copyDir(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (c *Cluster) makeNetwork(context.Context) error {
	if err := testbed.PrepareNetnsDir(); err != nil {
		return err
	}
	for _, n := range c.nodes {
		// Recorded first: a crash right after creating it still names it.
		c.rec.Netns = append(c.rec.Netns, n.netns)
		if err := c.rec.save(); err != nil {
			return err
		}
		if err := createNetns(n.netns); err != nil {
			c.rec.Netns = c.rec.Netns[:len(c.rec.Netns)-1]
			return fmt.Errorf("node %s: %w", n.name, err)
		}
		ns, err := netns.Open(n.netns)
		if err != nil {
			return err
		}
		c.ns = append(c.ns, ns)
	}
	c.restCfg.Dial = c.dialer(0)
	return wireNodes(c.nodes)
}

func (c *Cluster) makeCgroups(context.Context) error {
	for _, n := range c.nodes {
		c.rec.Cgroups = append(c.rec.Cgroups, n.cgroup)
		if err := c.rec.save(); err != nil {
			return err
		}
		if err := createCgroup(n.cgroup); err != nil {
			return fmt.Errorf("node %s: %w", n.name, err)
		}
	}
	return nil
}

// startHolders starts each node's namespace holder (see holderScript) and
// waits for them to report ready on a pipe; EOF instead means the script
// failed, and its log says why.
func (c *Cluster) startHolders(ctx context.Context) error {
	ready := make([]chan string, len(c.nodes))
	for i, n := range c.nodes {
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		argv := []string{c.tools.nsenter, "-F", "--net=" + n.netns, "--",
			c.tools.unshare, "-m", "-u", "--propagation", "slave", "--",
			"/bin/sh", filepath.Join(n.dir, "config", "holder.sh")}
		p, err := startProcess("holder-"+n.name, c.logPath("holder-"+n.name), c.dir, childEnv("/"), argv, w)
		w.Close()
		if err != nil {
			r.Close()
			return err
		}
		c.holders = append(c.holders, p)
		ready[i] = make(chan string, 1)
		go func() {
			b, _ := io.ReadAll(io.LimitReader(r, 64))
			r.Close()
			ready[i] <- string(b)
		}()
	}
	for i, n := range c.nodes {
		p := c.holders[i]
		select {
		case s := <-ready[i]:
			if strings.TrimSpace(s) != "ready" {
				return fmt.Errorf("node %s namespaces: %s", n.name, logTail(p.logPath))
			}
		case <-ctx.Done():
			return fmt.Errorf("node %s namespaces: %w", n.name, ctx.Err())
		}
		ino, err := nsInode(fmt.Sprintf("/proc/%d/ns/mnt", p.pid))
		if err != nil {
			return fmt.Errorf("node %s mount namespace: %w", n.name, err)
		}
		c.rec.MountNS = append(c.rec.MountNS, ino)
		if err := c.rec.save(); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) logPath(name string) string { return filepath.Join(c.dir, "logs", name+".log") }

// startInNode starts a daemon in node i's namespaces.
func (c *Cluster) startInNode(i int, name string, argv ...string) (*process, error) {
	full := append([]string{c.tools.nsenter}, c.nsenterArgs(i, argv[0], argv[1:]...)...)
	p, err := startProcess(name, c.logPath(name), c.dir, childEnv("/root"), full)
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return p, nil
}

// Fixed ports inside node 1's namespace, which nothing else uses.
const (
	etcdClientURL = "http://127.0.0.1:2379"
	etcdPeerURL   = "http://127.0.0.1:2380"
)

func (c *Cluster) startEtcdContainerd(bins kube.Binaries) error {
	if _, err := c.startInNode(0, "etcd", bins.Etcd,
		"--name=warren", "--data-dir="+filepath.Join(c.dir, "etcd"),
		"--listen-client-urls="+etcdClientURL, "--advertise-client-urls="+etcdClientURL,
		"--listen-peer-urls="+etcdPeerURL, "--initial-advertise-peer-urls="+etcdPeerURL,
		"--initial-cluster=warren="+etcdPeerURL,
		// Throw-away data: fsync buys nothing and costs seconds on slow disks.
		"--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return err
	}
	for _, n := range c.nodes {
		if _, err := c.startInNode(n.index, "containerd-"+n.name, c.tools.containerd,
			"--config", filepath.Join(n.dir, "config", "containerd.toml")); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) startAPIServer(ctx context.Context, bins kube.Binaries) error {
	etcd := c.proc("etcd")
	hc := c.HTTPClient(0)
	if err := c.waitFor(ctx, "etcd", func(ctx context.Context) error {
		return httpOK(ctx, hc, etcdClientURL+"/health")
	}, etcd); err != nil {
		return err
	}
	p := c.pki
	api, err := c.startInNode(0, "kube-apiserver", bins.APIServer,
		"--etcd-servers="+etcdClientURL,
		"--bind-address=0.0.0.0", "--advertise-address="+nodeAddr(0).String(),
		"--secure-port="+strconv.Itoa(apiserverPort),
		"--cert-dir="+p.dir,
		"--tls-cert-file="+p.cert("apiserver"), "--tls-private-key-file="+p.key("apiserver"),
		"--client-ca-file="+p.cert("ca"),
		// Published in kube-system/extension-apiserver-authentication; the
		// controller manager and scheduler log an error every few seconds
		// without it.
		"--requestheader-client-ca-file="+p.cert("ca"),
		"--requestheader-allowed-names=front-proxy-client",
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--kubelet-client-certificate="+p.cert("apiserver-kubelet-client"),
		"--kubelet-client-key="+p.key("apiserver-kubelet-client"),
		"--kubelet-certificate-authority="+p.cert("ca"),
		// There is no DNS for node names; the serving certificates carry
		// the InternalIP.
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer="+kube.Issuer,
		"--api-audiences="+kube.Issuer,
		"--service-account-key-file="+p.file("sa.pub"),
		"--service-account-signing-key-file="+p.file("sa.key"),
		"--service-cluster-ip-range="+serviceCIDR.String(),
		// Mesh agents run privileged.
		"--allow-privileged=true",
		"--profiling=false")
	if err != nil {
		return err
	}
	c.client, err = kubernetes.NewForConfig(c.restCfg)
	if err != nil {
		return fmt.Errorf("creating admin client: %w", err)
	}
	return c.waitFor(ctx, "kube-apiserver", func(ctx context.Context) error {
		_, err := c.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	}, api, etcd)
}

// importPause waits for every containerd and imports the sandbox image.
func (c *Cluster) importPause(ctx context.Context, tarPath string, built <-chan error) error {
	for _, n := range c.nodes {
		cd := c.proc("containerd-" + n.name)
		if err := c.waitFor(ctx, "containerd on "+n.name, func(ctx context.Context) error {
			_, err := c.RunInNode(ctx, n.index, c.tools.ctr, "-a", inNodeSocket, "version")
			return err
		}, cd); err != nil {
			return err
		}
	}
	select {
	case err := <-built:
		if err != nil {
			return err
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	return c.ImportImage(ctx, tarPath)
}

func buildPauseImage(ctx context.Context, tarPath string) error {
	if err := os.MkdirAll(filepath.Dir(tarPath), 0o755); err != nil {
		return err
	}
	bin := filepath.Join(filepath.Dir(tarPath), "testapp")
	if err := buildTestApp(ctx, bin); err != nil {
		return err
	}
	return writeAppImage(tarPath, pauseRef, bin, "pause")
}

func (c *Cluster) startComponents(nb kube.NodeBinaries) error {
	p := c.pki
	if _, err := c.startInNode(0, "kube-controller-manager", nb.ControllerManager,
		"--kubeconfig="+p.file("kube-controller-manager.kubeconfig"),
		"--authentication-kubeconfig="+p.file("kube-controller-manager.kubeconfig"),
		"--authorization-kubeconfig="+p.file("kube-controller-manager.kubeconfig"),
		"--bind-address=127.0.0.1", "--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+p.file("sa.key"),
		// Published as the kube-root-ca.crt ConfigMap, which every
		// projected service-account volume needs.
		"--root-ca-file="+p.cert("ca"),
		"--cluster-signing-cert-file="+p.cert("ca"), "--cluster-signing-key-file="+p.key("ca"),
		"--service-cluster-ip-range="+serviceCIDR.String(),
		// Pod CIDRs are fixed per node (the CNI config); Start sets them
		// on the Node objects itself.
		"--allocate-node-cidrs=false",
		// The default, /usr/libexec/kubernetes/..., is created on the host.
		"--flex-volume-plugin-dir=/var/lib/kubelet/volume-plugins",
		"--profiling=false"); err != nil {
		return err
	}
	if _, err := c.startInNode(0, "kube-scheduler", nb.Scheduler,
		"--kubeconfig="+p.file("kube-scheduler.kubeconfig"),
		"--authentication-kubeconfig="+p.file("kube-scheduler.kubeconfig"),
		"--authorization-kubeconfig="+p.file("kube-scheduler.kubeconfig"),
		"--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false"); err != nil {
		return err
	}
	for _, n := range c.nodes {
		if _, err := c.startInNode(n.index, "kubelet-"+n.name, nb.Kubelet,
			"--config="+filepath.Join(n.dir, "config", "kubelet.yaml"),
			"--kubeconfig="+p.file("kubelet-"+n.name+".kubeconfig"),
			"--hostname-override="+n.name, "--node-ip="+n.addr.String(), "--v=2"); err != nil {
			return err
		}
		if _, err := c.startInNode(n.index, "kube-proxy-"+n.name, nb.Proxy,
			"--config="+filepath.Join(n.dir, "config", "kube-proxy.yaml")); err != nil {
			return err
		}
	}
	return nil
}

// waitReady waits until every node is Ready, sets each Node's pod CIDR to
// the one its CNI config uses, and waits for what every pod needs from the
// controller manager: the default ServiceAccount and the kube-root-ca.crt
// ConfigMap.
func (c *Cluster) waitReady(ctx context.Context) error {
	patched := map[string]bool{}
	if err := c.waitFor(ctx, "nodes Ready", func(ctx context.Context) error {
		var notReady []string
		for _, n := range c.nodes {
			node, err := c.client.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !patched[n.name] && node.Spec.PodCIDR == "" {
				patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`, n.podCIDR, n.podCIDR)
				if _, err := c.client.CoreV1().Nodes().Patch(ctx, n.name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
					return fmt.Errorf("setting pod CIDR of %s: %w", n.name, err)
				}
			}
			patched[n.name] = true
			if !nodeReady(node) {
				notReady = append(notReady, n.name)
			}
		}
		if len(notReady) > 0 {
			return fmt.Errorf("not Ready: %v", notReady)
		}
		return nil
	}, c.procs...); err != nil {
		return err
	}
	return c.waitFor(ctx, "default ServiceAccount", func(ctx context.Context) error {
		if _, err := c.client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return err
		}
		_, err := c.client.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err
	}, c.procs...)
}

func nodeReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// proc finds a started daemon by name.
func (c *Cluster) proc(name string) *process {
	for _, p := range c.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

// waitFor polls check every 100 ms until it succeeds, one of procs exits
// (its log tail is the error), or ctx is done.
func (c *Cluster) waitFor(ctx context.Context, what string, check func(context.Context) error, procs ...*process) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last := check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		for _, p := range procs {
			if p != nil && p.exited() {
				return fmt.Errorf("waiting for %s: %w", what, p.exitError())
			}
		}
		for _, h := range c.holders {
			if h.exited() {
				return fmt.Errorf("waiting for %s: %w", what, h.exitError())
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last check: %v)", what, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func httpOK(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
