package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/structpb"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/warren-mesh/warren/ca/client"
	"github.com/warren-mesh/warren/cni"
	"github.com/warren-mesh/warren/cni/install"
	"github.com/warren-mesh/warren/discovery"
	"github.com/warren-mesh/warren/enroll"
	"github.com/warren-mesh/warren/redirect"
	"github.com/warren-mesh/warren/xds"
)

// KubeConfig configures Kubernetes mode (Config.ConfigFile empty): state
// comes from the controller over delta xDS, and the agent captures the pods
// of its node that enrolment selects, learning their network namespaces
// from warren-cni.
type KubeConfig struct {
	// Kubeconfig is a kubeconfig path; empty means in-cluster.
	Kubeconfig string
	// ControllerService is the controller's Service, "name" in
	// PodNamespace or "namespace/name"; the agent dials its ClusterIP on
	// port 15012 (no cluster DNS needed) and checks the certificate for
	// name.namespace.svc. XDSAddress, when set, is used instead.
	ControllerService string
	// XDSAddress is host:port of the discovery server (Warren's controller
	// or istiod.istio-system.svc:15012).
	XDSAddress string
	// XDSServerName is checked in the discovery server's certificate;
	// empty: the controller Service's DNS name, or XDSAddress's host.
	XDSServerName string
	// CARootConfigMap, in PodNamespace, holds root-cert.pem: the roots that
	// verify the controller and seed the trust bundle.
	CARootConfigMap string
	// EnrollLabel is the "key=value" label that enrols a namespace or pod.
	EnrollLabel string
	// CNIConfDir and CNIBinDir are the node's CNI directories as the agent
	// sees them; CNIPlugin is the warren-cni binary copied into CNIBinDir.
	CNIConfDir, CNIBinDir, CNIPlugin string
	// CNISocket is where warren-cni reaches the agent.
	CNISocket string
	// CNITimeout bounds how long a new pod's sandbox waits for capture.
	CNITimeout time.Duration
	// NetNSDir is where the node pins pod network namespaces.
	NetNSDir string
	// PodName and PodNamespace are the agent's own pod (never captured; its
	// DaemonSet tells an uninstall from a restart at shutdown).
	PodName, PodNamespace string
	// NodeIP goes into the xDS node id, as ztunnel sends it.
	NodeIP string
}

// DefaultKubeConfig returns the DaemonSet's defaults.
func DefaultKubeConfig() KubeConfig {
	return KubeConfig{
		ControllerService: "warren-controller",
		CARootConfigMap:   "warren-ca-root",
		EnrollLabel:       "istio.io/dataplane-mode=ambient",
		CNIConfDir:        "/host/etc/cni/net.d",
		CNIBinDir:         "/host/opt/cni/bin",
		CNIPlugin:         "/usr/local/bin/warren-cni",
		CNISocket:         "/var/run/warren/cni.sock",
		CNITimeout:        30 * time.Second,
		NetNSDir:          "/var/run/netns",
	}
}

// kubeMode reports whether the agent runs in Kubernetes mode.
func (c Config) kubeMode() bool { return c.ConfigFile == "" }

func (k KubeConfig) validate() []error {
	var errs []error
	if k.PodNamespace == "" {
		errs = append(errs, errors.New("kubernetes: pod namespace must be set ($POD_NAMESPACE)"))
	}
	if k.XDSAddress == "" && k.ControllerService == "" {
		errs = append(errs, errors.New("kubernetes: set the controller service or an xDS address"))
	}
	if _, err := enroll.ParseSelector(k.EnrollLabel); err != nil {
		errs = append(errs, fmt.Errorf("enroll label: %w", err))
	}
	if k.CNISocket == "" || k.NetNSDir == "" {
		errs = append(errs, errors.New("kubernetes: CNI socket and netns dir must be set"))
	}
	if k.CNITimeout <= 0 {
		errs = append(errs, fmt.Errorf("cni timeout: %v must be positive", k.CNITimeout))
	}
	return errs
}

// kubeAgent is the Kubernetes side of an agent.
type kubeAgent struct {
	a      *Agent
	cfg    KubeConfig
	log    *slog.Logger
	client kubernetes.Interface

	xds      *discovery.XDS
	watcher  *enroll.Watcher
	probes   *redirect.HostProbes // kubelet probes to captured pods, SNATed on the host
	cniSrv   *cni.Server
	cniCfg   install.Config
	rootFile string
	rootDir  string

	// dsGone is set when the agent's DaemonSet is seen deleted: an
	// uninstall, whatever the API says by the time the agent stops.
	dsGone atomic.Bool

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// newKube connects to the API server, finds the controller and points the
// CA client at it (cfg.CA is filled in); it changes nothing on the node.
func newKube(cfg *Config, log *slog.Logger) (*kubeAgent, error) {
	kc := cfg.Kube
	log = log.With("component", "kube")
	rc, err := restConfig(kc.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	k := &kubeAgent{cfg: kc, log: log, client: cs}

	addr, serverName := kc.XDSAddress, kc.XDSServerName
	if addr == "" {
		ns, name := kc.PodNamespace, kc.ControllerService
		if before, after, ok := strings.Cut(name, "/"); ok {
			ns, name = before, after
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		svc, err := cs.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("finding the controller service %s/%s: %w", ns, name, err)
		}
		if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
			return nil, fmt.Errorf("controller service %s/%s has no cluster IP", ns, name)
		}
		addr = net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(xdsPort(svc))))
		if serverName == "" {
			serverName = name + "." + ns + ".svc"
		}
	}
	if serverName == "" {
		serverName, _, _ = net.SplitHostPort(addr)
	}
	k.rootDir, err = os.MkdirTemp("", "warren-agent-roots-")
	if err != nil {
		return nil, fmt.Errorf("creating root file dir: %w", err)
	}
	k.rootFile = filepath.Join(k.rootDir, "root-cert.pem")
	if cfg.CA.Address == "" {
		cfg.CA.Address, cfg.CA.ServerName = addr, serverName
	}
	if cfg.CA.RootFile == "" {
		cfg.CA.RootFile = k.rootFile
	} else {
		k.rootFile = cfg.CA.RootFile
	}
	k.cfg.XDSAddress, k.cfg.XDSServerName = addr, serverName
	return k, nil
}

// xdsPort is the service's port named for xDS, else 15012.
func xdsPort(svc *corev1.Service) int32 {
	for _, p := range svc.Spec.Ports {
		if p.Name == "grpc-xds" || p.Port == 15012 {
			return p.Port
		}
	}
	return 15012
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	var (
		rc  *rest.Config
		err error
	)
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config (set --config to run from a state file instead): %w", err)
	}
	rc.UserAgent = "warren-agent"
	return rc, nil
}

// build creates the discovery source, the enrolment watcher and the CNI
// server once the agent's common parts exist.
func (k *kubeAgent) build(a *Agent, reg prometheus.Registerer) error {
	k.a = a
	cfg := a.cfg
	sel, err := enroll.ParseSelector(k.cfg.EnrollLabel)
	if err != nil {
		return err
	}
	sel.AgentNamespace, sel.AgentPodName = k.cfg.PodNamespace, k.cfg.PodName

	tokenFile := cfg.CA.TokenFile
	meta, err := structpb.NewStruct(map[string]any{
		"NAMESPACE":     k.cfg.PodNamespace,
		"NAME":          k.cfg.PodName,
		"NODE_NAME":     cfg.Node,
		"CLUSTER_ID":    cfg.ClusterID,
		"INSTANCE_IPS":  k.cfg.NodeIP,
		"ISTIO_VERSION": Version,
	})
	if err != nil {
		return fmt.Errorf("xds metadata: %w", err)
	}
	xcfg := discovery.DefaultXDSConfig()
	xcfg.ClusterID, xcfg.TrustDomain = cfg.ClusterID, cfg.TrustDomain
	xcfg.Client = xds.DefaultClientConfig()
	xc := &xcfg.Client
	xc.Address = k.cfg.XDSAddress
	// A controller restart (rollout, node drain) is routine: retry often
	// enough that agents catch up within seconds of its return.
	xc.MaxBackoff = 5 * time.Second
	// ztunnel's node id form, which istiod expects.
	xc.NodeID = fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", k.cfg.NodeIP, k.cfg.PodName, k.cfg.PodNamespace, k.cfg.PodNamespace)
	xc.Metadata = meta
	xc.TypeURLs = []string{xds.TypeAddress, xds.TypeAuthorization}
	xc.Dial = append(xc.Dial,
		grpc.WithTransportCredentials(credentials.NewTLS(client.FileRootsTLS(k.rootFile, k.cfg.XDSServerName))),
		// A dead controller connection is noticed within ~40s rather than
		// by TCP's own timers; the server permits pings every 10s.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	xc.Token = func(context.Context) (string, error) {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return "", fmt.Errorf("reading token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if k.xds, err = discovery.NewXDS(xcfg, a.store, reg, a.log); err != nil {
		return err
	}
	wcfg := enroll.DefaultConfig()
	wcfg.Node, wcfg.ClusterID, wcfg.Selector, wcfg.NetNSDir = cfg.Node, cfg.ClusterID, sel, k.cfg.NetNSDir
	if k.watcher, err = enroll.NewWatcher(wcfg, k.client, k.setLocal, a.log); err != nil {
		return err
	}
	k.cniCfg = install.Config{
		ConfDir:      k.cfg.CNIConfDir,
		BinDir:       k.cfg.CNIBinDir,
		PluginSource: k.cfg.CNIPlugin,
		AgentSocket:  k.cfg.CNISocket,
		LogFile:      filepath.Join(filepath.Dir(k.cfg.CNISocket), "cni.log"),
	}
	// The agent runs in the node's network namespace (hostNetwork), where
	// the kubelet's probes start.
	if k.probes, err = redirect.NewHostProbes(cfg.Capture, a.log); err != nil {
		return err
	}
	a.pods.reconciled = k.reconciled
	return nil
}

// setLocal hands enrolment's pods to the discovery source, which merges them
// with the controller's state into the next snapshot.
func (k *kubeAgent) setLocal(pods []enroll.Pod) {
	local := make([]discovery.LocalPod, len(pods))
	for i, p := range pods {
		local[i] = discovery.LocalPod{UID: p.UID, Name: p.Name, Namespace: p.Namespace, ServiceAccount: p.ServiceAccount, Node: p.Node, NetNS: p.NetNS, IPs: p.IPs}
	}
	k.xds.SetLocal(local)
}

// reconciled records capture on the pods (ambient.istio.io/redirection),
// which is also how the controller learns to announce them as HBONE.
func (k *kubeAgent) reconciled(captured, released []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Probes first: a pod just captured must keep passing its readiness
	// probe whatever its policy says, as in Istio.
	if err := k.probes.Apply(ctx, k.a.pods.capturedIPs()); err != nil {
		k.log.Error("updating the host's probe SNAT", "error", err)
	}
	for _, uid := range captured {
		if err := k.watcher.SetRedirection(ctx, uid, true); err != nil {
			k.log.Warn("recording capture on pod", "uid", uid, "error", err)
		}
	}
	// Released pods, and pods a previous agent left marked that this one
	// does not capture (their label went while no agent ran).
	stale := released
	if k.watcher.Synced() {
		for _, uid := range k.watcher.Redirected() {
			if !slices.Contains(captured, uid) && !slices.Contains(stale, uid) {
				stale = append(stale, uid)
			}
		}
	}
	for _, uid := range stale {
		if err := k.watcher.SetRedirection(ctx, uid, false); err != nil && !apierrors.IsNotFound(err) {
			k.log.Warn("recording release on pod", "uid", uid, "error", err)
		}
	}
}

// start runs, in order: the trust roots from the ConfigMap (waiting for the
// controller to publish them), discovery, chaining warren-cni into the
// node's CNI configuration, the pod watcher, and the CNI socket. It returns
// once the pod watcher has synced.
func (k *kubeAgent) startRoots(ctx context.Context) error {
	if k.cfg.CARootConfigMap == "" {
		return nil
	}
	if err := k.waitRoots(ctx); err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	k.cancel = cancel
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		k.watchRoots(rctx)
	}()
	return nil
}

func (k *kubeAgent) start(ctx context.Context) error {
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	prev := k.cancel
	k.cancel = func() {
		cancel()
		if prev != nil {
			prev()
		}
	}
	if err := k.xds.Start(rctx); err != nil {
		return fmt.Errorf("starting discovery: %w", err)
	}
	// Serving without the controller's state is possible (local pods are
	// captured from enrolment alone), so a slow controller only delays.
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	if err := k.xds.WaitSynced(sctx); err != nil {
		k.log.Warn("discovery not synced yet; continuing with local state", "address", k.cfg.XDSAddress, "error", err)
	}
	scancel()

	if changed, err := install.Install(k.cniCfg); err != nil {
		return fmt.Errorf("installing warren-cni: %w", err)
	} else if changed {
		k.log.Info("warren-cni chained into the node's CNI configuration", "dir", k.cniCfg.ConfDir)
	}
	k.wg.Add(3)
	go func() {
		defer k.wg.Done()
		k.watchDaemonSet(rctx)
	}()
	go func() {
		defer k.wg.Done()
		if err := install.Watch(rctx, k.cniCfg, k.log); err != nil && rctx.Err() == nil {
			k.log.Error("watching the CNI configuration", "error", err)
		}
	}()
	go func() {
		defer k.wg.Done()
		if err := k.watcher.Run(rctx); err != nil && rctx.Err() == nil {
			k.log.Error("pod watcher stopped", "error", err)
		}
	}()
	if !cache.WaitForCacheSync(ctx.Done(), k.watcher.Synced) {
		return fmt.Errorf("pod watcher: %w", ctx.Err())
	}

	// The watcher's handler answers warren-cni: a pod that enrolment
	// selects is captured (SetRedirection, from reconciled) before the call
	// returns, so its containers start captured.
	srv, err := cni.NewServer(cni.Config{Socket: k.cfg.CNISocket, AddTimeout: k.cfg.CNITimeout}, k.watcher.CNIHandler(), k.log)
	if err != nil {
		return fmt.Errorf("CNI socket: %w", err)
	}
	k.cniSrv = srv
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		if err := srv.Serve(); err != nil && rctx.Err() == nil {
			k.log.Error("CNI socket stopped", "error", err)
		}
	}()
	return nil
}

// stop shuts the Kubernetes side down. On an uninstall (the agent's
// DaemonSet is gone or being deleted) every pod is released, its
// annotation removed and warren-cni unchained, leaving nodes and pods as
// before; on a restart the capture rules and the CNI chain stay, so the next
// agent re-adopts the pods and no pod ever runs uncaptured.
func (k *kubeAgent) stop(ctx context.Context) {
	uninstall := k.uninstalling(ctx)
	if k.cniSrv != nil {
		k.cniSrv.Close()
	}
	if uninstall {
		k.log.Info("agent DaemonSet is gone: releasing every pod and unchaining warren-cni")
		if err := install.Uninstall(k.cniCfg); err != nil {
			k.log.Error("unchaining warren-cni", "error", err)
		}
		if err := k.probes.Remove(ctx); err != nil {
			k.log.Error("removing the host's probe SNAT", "error", err)
		}
		var uids []string
		for _, w := range k.a.store.Load().LocalWorkloads(k.a.cfg.Node) {
			uids = append(uids, w.UID)
		}
		k.a.pods.releaseAll(ctx)
		for _, uid := range uids {
			if err := k.watcher.SetRedirection(ctx, uid, false); err != nil && !apierrors.IsNotFound(err) {
				k.log.Warn("removing capture annotation", "uid", uid, "error", err)
			}
		}
	} else {
		k.a.pods.detachAll(ctx)
	}
	k.xds.Stop()
	if k.cancel != nil {
		k.cancel()
	}
	k.wg.Wait()
	os.RemoveAll(k.rootDir)
}

// uninstalling reports whether the agent's DaemonSet is gone or being
// deleted. When that cannot be told (no owner, API unreachable), it answers
// false: keeping pods captured is the safe side.
func (k *kubeAgent) uninstalling(ctx context.Context) bool {
	if k.dsGone.Load() {
		return true
	}
	if k.cfg.PodName == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	name, uid, err := k.ownDaemonSet(ctx)
	if err != nil {
		k.log.Warn("cannot read own pod at shutdown; keeping pods captured", "error", err)
		return false
	}
	if name == "" {
		return false
	}
	ds, err := k.client.AppsV1().DaemonSets(k.cfg.PodNamespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true
	case err != nil:
		k.log.Warn("cannot read own DaemonSet at shutdown; keeping pods captured", "error", err)
		return false
	}
	return ds.UID != uid || ds.DeletionTimestamp != nil
}

// ownDaemonSet is the DaemonSet that owns the agent's pod.
func (k *kubeAgent) ownDaemonSet(ctx context.Context) (name string, uid types.UID, err error) {
	pod, err := k.client.CoreV1().Pods(k.cfg.PodNamespace).Get(ctx, k.cfg.PodName, metav1.GetOptions{})
	if err != nil {
		return "", "", err
	}
	for _, o := range pod.OwnerReferences {
		if o.Kind == "DaemonSet" {
			return o.Name, o.UID, nil
		}
	}
	return "", "", nil
}

// watchDaemonSet records the deletion of the agent's DaemonSet as it
// happens: helm uninstall deletes the RBAC that would let the agent read it
// right after, long before the agent's pod is stopped.
func (k *kubeAgent) watchDaemonSet(ctx context.Context) {
	if k.cfg.PodName == "" {
		return
	}
	var (
		name string
		uid  types.UID
		err  error
	)
	for {
		if name, uid, err = k.ownDaemonSet(ctx); err == nil {
			break
		}
		k.log.Warn("finding the agent's DaemonSet; retrying", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
	if name == "" {
		k.log.Info("agent pod has no DaemonSet owner; capture is kept when it stops")
		return
	}
	inf := byName(k.client, k.cfg.PodNamespace, name).Apps().V1().DaemonSets().Informer()
	gone := func(why string) {
		if !k.dsGone.Swap(true) {
			k.log.Info("agent DaemonSet deleted: pods will be released when the agent stops", "daemonset", name, "seen", why)
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) {
			if ds, ok := obj.(*appsv1.DaemonSet); ok && (ds.DeletionTimestamp != nil || ds.UID != uid) {
				gone("deletion started")
			}
		},
		DeleteFunc: func(any) { gone("deleted") },
	})
	inf.Run(ctx.Done())
}

// waitRoots writes the ConfigMap's root-cert.pem to the root file, waiting
// until the controller has published it.
func (k *kubeAgent) waitRoots(ctx context.Context) error {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	warned := false
	for {
		ok, err := k.syncRoots(ctx)
		if ok {
			return nil
		}
		if !warned || err != nil {
			k.log.Info("waiting for the controller to publish the trust roots", "configmap", k.cfg.PodNamespace+"/"+k.cfg.CARootConfigMap, "error", err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("trust roots from configmap %s: %w", k.cfg.CARootConfigMap, ctx.Err())
		case <-t.C:
		}
	}
}

// syncRoots copies root-cert.pem from the ConfigMap into the root file when
// it differs; ok is false when the ConfigMap holds no roots yet.
func (k *kubeAgent) syncRoots(ctx context.Context) (ok bool, err error) {
	cm, err := k.client.CoreV1().ConfigMaps(k.cfg.PodNamespace).Get(ctx, k.cfg.CARootConfigMap, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	return k.writeRoots(cm)
}

func (k *kubeAgent) writeRoots(cm *corev1.ConfigMap) (bool, error) {
	pem := cm.Data["root-cert.pem"]
	if strings.TrimSpace(pem) == "" {
		return false, nil
	}
	if cur, err := os.ReadFile(k.rootFile); err == nil && string(cur) == pem {
		return true, nil
	}
	tmp := k.rootFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(pem), 0o644); err != nil {
		return false, fmt.Errorf("writing root file: %w", err)
	}
	if err := os.Rename(tmp, k.rootFile); err != nil {
		return false, fmt.Errorf("writing root file: %w", err)
	}
	k.log.Info("trust roots updated", "configmap", cm.Namespace+"/"+cm.Name)
	return true, nil
}

// watchRoots keeps the root file equal to the ConfigMap (root rotation).
func (k *kubeAgent) watchRoots(ctx context.Context) {
	inf := byName(k.client, k.cfg.PodNamespace, k.cfg.CARootConfigMap).Core().V1().ConfigMaps().Informer()
	update := func(obj any) {
		if cm, ok := obj.(*corev1.ConfigMap); ok {
			if _, err := k.writeRoots(cm); err != nil {
				k.log.Error("updating trust roots", "error", err)
			}
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    update,
		UpdateFunc: func(_, obj any) { update(obj) },
	})
	inf.Run(ctx.Done())
}

// byName is an informer factory for the one object named name in
// namespace: the agent's RBAC grants list and watch on its DaemonSet and
// roots ConfigMap by name only, which the API checks through this field
// selector.
func byName(client kubernetes.Interface, namespace, name string) informers.SharedInformerFactory {
	return informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}))
}
