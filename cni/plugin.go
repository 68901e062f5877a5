package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// PluginType is the plugin's binary name and its "type" in a conflist.
const PluginType = "warren-cni"

const (
	// DefaultLogFile is where the plugin logs: the runtime keeps only its
	// error output, and only on failure.
	DefaultLogFile = "/var/run/warren/cni.log"
	// DefaultPluginTimeout bounds one ADD call to the agent. It exceeds the
	// agent's own ADD timeout (DefaultConfig().AddTimeout) by a margin so
	// that a slow capture fails with the agent's reason.
	DefaultPluginTimeout = 40 * time.Second
	// maxLogSize: past it the log file is moved to <file>.1 (one old
	// generation kept). The plugin logs one line per pod event.
	maxLogSize = 1 << 20
)

// supportedVersions: chaining (prevResult) exists from 0.3.0 on; results
// are converted to and from types/100 by the library. 1.1.0 adds STATUS.
var supportedVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// PluginConf is the plugin's entry in the node's conflist, e.g.
//
//	{"type": "warren-cni", "agentSocket": "/var/run/warren/cni.sock", "timeout": "40s"}
type PluginConf struct {
	types.PluginConf
	// AgentSocket is the agent's unix socket (default DefaultSocket).
	AgentSocket string `json:"agentSocket,omitempty"`
	// Timeout is a Go duration bounding the ADD call to the agent
	// (default DefaultPluginTimeout).
	Timeout string `json:"timeout,omitempty"`
	// LogFile is where the plugin logs (default DefaultLogFile).
	LogFile string `json:"logFile,omitempty"`

	timeout time.Duration
}

// parseConf decodes the plugin's stdin, fills defaults and parses the
// previous plugin's result (in the configuration's CNI version).
func parseConf(data []byte) (*PluginConf, error) {
	conf := &PluginConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, fmt.Errorf("decoding warren-cni configuration: %w", err)
	}
	if conf.AgentSocket == "" {
		conf.AgentSocket = DefaultSocket
	}
	if conf.LogFile == "" {
		conf.LogFile = DefaultLogFile
	}
	conf.timeout = DefaultPluginTimeout
	if conf.Timeout != "" {
		d, err := time.ParseDuration(conf.Timeout)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("warren-cni configuration: timeout %q is not a positive Go duration", conf.Timeout)
		}
		conf.timeout = d
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, fmt.Errorf("warren-cni configuration: %w", err)
	}
	return conf, nil
}

// Run is the plugin's main: it reads the CNI command from the environment
// and stdin, acts, prints the result or a CNI error to stdout and exits.
func Run() {
	p := &plugin{stdout: os.Stdout, stderr: os.Stderr}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    p.add,
		Del:    p.del,
		Check:  p.check,
		Status: p.status,
	}, supportedVersions, "warren-cni: chained CNI plugin that hands new pods to the Warren node agent")
}

// plugin is one invocation; its writers are swapped in tests.
type plugin struct {
	stdout io.Writer
	stderr io.Writer
}

// add tells the agent about the pod and passes the previous result through.
// Outcomes: agent not running -> pass through (fail open: the agent
// captures running pods when it starts); agent answers an error or does not
// answer in time -> fail with "try again later" (the kubelet retries the
// sandbox); not a Kubernetes pod -> pass through without asking.
func (p *plugin) add(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid warren-cni configuration", err.Error())
	}
	log, closeLog := p.openLog(conf.LogFile)
	defer closeLog()
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig,
			"warren-cni must be chained after the plugin that assigns the pod's addresses", "no prevResult in the configuration")
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "converting the previous plugin's result", err.Error())
	}
	kargs := parseArgs(args.Args)
	log = log.With("command", "ADD", "container", args.ContainerID, "netns", args.Netns)
	if kargs.name == "" || kargs.namespace == "" {
		log.Info("not a Kubernetes pod (no K8S_POD_NAME/K8S_POD_NAMESPACE in CNI_ARGS); passing through")
		return p.printResult(conf)
	}
	req := AddRequest{
		PodName:      kargs.name,
		PodNamespace: kargs.namespace,
		PodUID:       kargs.uid,
		ContainerID:  args.ContainerID,
		NetNS:        args.Netns,
		IfName:       args.IfName,
		IPs:          podIPs(prev),
	}
	log = log.With("pod", req.PodNamespace+"/"+req.PodName, "ips", req.IPs)
	ctx, cancel := context.WithTimeout(context.Background(), conf.timeout)
	defer cancel()
	start := time.Now()
	captured, err := newClient(conf.AgentSocket).add(ctx, req)
	switch {
	case errors.Is(err, ErrAgentUnavailable):
		log.Warn("warren agent not running; pod starts uncaptured until the agent starts", "error", err)
	case err != nil:
		log.Error("warren agent did not take the pod; failing ADD", "error", err, "took", time.Since(start))
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("warren agent did not capture pod %s/%s", req.PodNamespace, req.PodName), err.Error())
	default:
		log.Info("pod handed to warren agent", "captured", captured, "took", time.Since(start))
	}
	return p.printResult(conf)
}

// del tells the agent the sandbox is going; it never fails, since a
// failed DEL blocks the sandbox's removal and the agent also learns of the
// pod's deletion from the API.
func (p *plugin) del(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		fmt.Fprintf(p.stderr, "warren-cni DEL: ignoring invalid configuration: %v\n", err)
		return nil
	}
	log, closeLog := p.openLog(conf.LogFile)
	defer closeLog()
	kargs := parseArgs(args.Args)
	if kargs.name == "" || kargs.namespace == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), delTimeout)
	defer cancel()
	err = newClient(conf.AgentSocket).del(ctx, DelRequest{
		PodName:      kargs.name,
		PodNamespace: kargs.namespace,
		ContainerID:  args.ContainerID,
		NetNS:        args.Netns,
	})
	if err != nil && !errors.Is(err, ErrAgentUnavailable) {
		log.Warn("telling warren agent about DEL", "command", "DEL", "pod", kargs.namespace+"/"+kargs.name, "container", args.ContainerID, "error", err)
	}
	return nil
}

// check passes: the plugin changes nothing in the pod that could drift.
func (p *plugin) check(*skel.CmdArgs) error { return nil }

// status is always ready: ADD works (fails open) whether or not the agent
// runs.
func (p *plugin) status(*skel.CmdArgs) error { return nil }

// printResult writes the previous result, unchanged, in the configuration's
// CNI version.
func (p *plugin) printResult(conf *PluginConf) error {
	res, err := conf.PrevResult.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "converting the previous result", err.Error())
	}
	return res.PrintTo(p.stdout)
}

// openLog opens the log file for appending (rotating it when large). When
// it cannot, the plugin logs to stderr, which the runtime shows on errors.
func (p *plugin) openLog(path string) (*slog.Logger, func()) {
	f, err := openLogFile(path)
	if err != nil {
		fmt.Fprintf(p.stderr, "warren-cni: %v; logging to stderr\n", err)
		return slog.New(slog.NewTextHandler(p.stderr, nil)), func() {}
	}
	return slog.New(slog.NewTextHandler(f, nil)).With("pid", os.Getpid()), func() { f.Close() }
}

func openLogFile(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating log dir: %w", err)
	}
	if fi, err := os.Stat(path); err == nil && fi.Size() > maxLogSize {
		// Two plugins rotating at once lose at most one generation.
		os.Rename(path, path+".1")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening log file: %w", err)
	}
	return f, nil
}

// podArgs are the Kubernetes keys of CNI_ARGS.
type podArgs struct{ name, namespace, uid string }

// parseArgs reads CNI_ARGS ("K1=V1;K2=V2"). It is parsed by hand because
// the library's loader refuses unknown keys unless IgnoreUnknown is set,
// and runtimes differ in what they pass.
func parseArgs(s string) podArgs {
	var a podArgs
	for kv := range strings.SplitSeq(s, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "K8S_POD_NAME":
			a.name = v
		case "K8S_POD_NAMESPACE":
			a.namespace = v
		case "K8S_POD_UID":
			a.uid = v
		}
	}
	return a
}

// podIPs are the addresses of the result that belong to the sandbox:
// those on an interface inside it, or with no interface named. Addresses
// a plugin put on host-side interfaces (a bridge's gateway) are not the pod's.
func podIPs(res *types100.Result) []netip.Prefix {
	var out []netip.Prefix
	for _, ip := range res.IPs {
		if ip.Interface != nil {
			i := *ip.Interface
			if i >= 0 && i < len(res.Interfaces) && res.Interfaces[i].Sandbox == "" {
				continue
			}
		}
		addr, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			continue
		}
		ones, _ := ip.Address.Mask.Size()
		out = append(out, netip.PrefixFrom(addr.Unmap(), ones))
	}
	return out
}
