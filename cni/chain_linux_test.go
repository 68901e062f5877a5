package cni

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/warren-mesh/warren/netns"
	"github.com/warren-mesh/warren/test/testbed"
)

// debianCNIBin is where Debian's containernetworking-plugins installs the
// reference plugins.
const debianCNIBin = "/usr/lib/cni"

// newNetNS creates a network namespace pinned at dir/name and removes it
// when the test ends.
func newNetNS(t *testing.T, dir, name string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := testbed.PinNewNS(path); err != nil {
		t.Fatalf("creating netns %s: %v", path, err)
	}
	t.Cleanup(func() { testbed.RemoveNamedNS(path) })
	return path
}

func randomName(prefix string) string {
	var b [3]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// buildPlugin builds cmd/warren-cni into a fresh directory.
func buildPlugin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, PluginType), "github.com/warren-mesh/warren/cmd/warren-cni").CombinedOutput()
	if err != nil {
		t.Fatalf("building warren-cni: %v\n%s", err, out)
	}
	return dir
}

// TestChain runs the real chain (bridge + host-local, then warren-cni) with
// libcni, as a container runtime does, inside a node namespace made for the
// test, against pod namespaces made for the test.
func TestChain(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces and run CNI plugins; CI runs as root")
	}
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(debianCNIBin, p)); err != nil {
			t.Skipf("needs the reference CNI plugins in %s (apt-get install -y containernetworking-plugins): %v", debianCNIBin, err)
		}
	}
	binDir := buildPlugin(t)
	work := t.TempDir()
	nsDir := filepath.Join(work, "netns")
	os.Mkdir(nsDir, 0o755)
	prefix := randomName("wc")
	node, err := netns.Open(newNetNS(t, nsDir, prefix+"-node"))
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()

	socket := socketPath(t)
	logFile := filepath.Join(work, "cni.log")
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [
    {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]], "dataDir": %q}},
    {"type": "warren-cni", "agentSocket": %q, "logFile": %q, "timeout": "10s"}
  ]
}`, prefix, prefix+"br", filepath.Join(work, "ipam"), socket, logFile)
	list, err := libcni.NetworkConfFromBytes([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	cninet := libcni.NewCNIConfigWithCacheDir([]string{binDir, debianCNIBin}, filepath.Join(work, "cache"), nil)

	// inNode runs fn with the calling thread in the node namespace, so the
	// plugins libcni starts from it run there.
	inNode := func(fn func() error) error { return node.Do(fn) }
	if err := inNode(func() error {
		_, err := cninet.ValidateNetworkList(t.Context(), list)
		return err
	}); err != nil {
		t.Fatalf("validating the conflist (plugins' VERSION): %v", err)
	}

	runtimeConf := func(name, podNS string) *libcni.RuntimeConf {
		return &libcni.RuntimeConf{
			ContainerID: name,
			NetNS:       podNS,
			IfName:      "eth0",
			Args: [][2]string{
				{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "shop"}, {"K8S_POD_NAME", name}, {"K8S_POD_UID", "uid-" + name},
			},
		}
	}
	add := func(rt *libcni.RuntimeConf) (netip.Prefix, error) {
		var res *types100.Result
		err := inNode(func() error {
			r, err := cninet.AddNetworkList(t.Context(), list, rt)
			if err != nil {
				return err
			}
			res, err = types100.NewResultFromResult(r)
			return err
		})
		if err != nil {
			return netip.Prefix{}, err
		}
		got := podIPs(res)
		if len(got) != 1 {
			return netip.Prefix{}, fmt.Errorf("result has pod IPs %v, want one", got)
		}
		return got[0], nil
	}
	del := func(t *testing.T, rt *libcni.RuntimeConf) {
		t.Helper()
		if err := inNode(func() error { return cninet.DelNetworkList(context.Background(), list, rt) }); err != nil {
			t.Errorf("DEL: %v", err)
		}
	}
	// eth0IP reads the address the bridge plugin gave the pod.
	eth0IP := func(t *testing.T, podNS string) netip.Prefix {
		t.Helper()
		var out netip.Prefix
		err := netns.Do(podNS, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
			if err != nil || len(addrs) != 1 {
				return fmt.Errorf("eth0 addresses %v, %v", addrs, err)
			}
			a, _ := netip.AddrFromSlice(addrs[0].IP)
			ones, _ := addrs[0].Mask.Size()
			out = netip.PrefixFrom(a.Unmap(), ones)
			return nil
		})
		if err != nil {
			t.Fatalf("reading the pod's eth0: %v", err)
		}
		return out
	}

	t.Run("agent captures", func(t *testing.T) {
		agent := &fakeAgent{}
		startAgent(t, Config{Socket: socket}, agent)
		name := randomName("web")
		podNS := newNetNS(t, nsDir, prefix+"-"+name)
		rt := runtimeConf(name, podNS)
		ip, err := add(rt)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		if got := eth0IP(t, podNS); got != ip {
			t.Errorf("pod's eth0 has %v, result says %v", got, ip)
		}
		got := agent.added()
		if len(got) != 1 {
			t.Fatalf("agent got %d ADDs, want 1", len(got))
		}
		want := AddRequest{PodName: name, PodNamespace: "shop", PodUID: "uid-" + name, ContainerID: name, NetNS: podNS, IfName: "eth0", IPs: []netip.Prefix{ip}}
		if g := got[0]; g.NetNS != want.NetNS || g.PodName != want.PodName || g.PodUID != want.PodUID || !slices.Equal(g.IPs, want.IPs) || g.ContainerID != want.ContainerID {
			t.Errorf("agent got %+v, want %+v", g, want)
		}
		if err := inNode(func() error { return cninet.CheckNetworkList(t.Context(), list, rt) }); err != nil {
			t.Errorf("CHECK: %v", err)
		}
		del(t, rt)
		if dels := agent.deleted(); len(dels) != 1 || dels[0].ContainerID != name || dels[0].NetNS != podNS {
			t.Errorf("agent got DELs %+v, want one for %s in %s", dels, name, podNS)
		}
	})

	t.Run("agent error fails the ADD", func(t *testing.T) {
		agent := &fakeAgent{addFn: func(context.Context, AddRequest) (bool, error) {
			return false, errors.New("identity for shop/web not available")
		}}
		startAgent(t, Config{Socket: socket}, agent)
		name := randomName("web")
		rt := runtimeConf(name, newNetNS(t, nsDir, prefix+"-"+name))
		_, err := add(rt)
		if err == nil || !strings.Contains(err.Error(), "identity for shop/web not available") {
			t.Fatalf("ADD = %v, want the agent's error", err)
		}
		// The runtime cleans up a failed ADD with DEL, which frees the IP.
		del(t, rt)
	})

	t.Run("no agent passes through", func(t *testing.T) {
		name := randomName("web")
		podNS := newNetNS(t, nsDir, prefix+"-"+name)
		rt := runtimeConf(name, podNS)
		ip, err := add(rt)
		if err != nil {
			t.Fatalf("ADD without an agent: %v", err)
		}
		if got := eth0IP(t, podNS); got != ip {
			t.Errorf("pod's eth0 has %v, result says %v", got, ip)
		}
		b, _ := os.ReadFile(logFile)
		if !strings.Contains(string(b), "warren agent not running") || !strings.Contains(string(b), name) {
			t.Errorf("plugin log lacks the pass-through of %s:\n%s", name, b)
		}
		del(t, rt)
	})
}

// TestBinaryCommands runs the built binary directly for the commands
// libcni's chain does not exercise.
func TestBinaryCommands(t *testing.T) {
	bin := filepath.Join(buildPlugin(t), PluginType)
	run := func(t *testing.T, command, stdin string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin)
		cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_PATH=/nonexistent"}
		cmd.Stdin = strings.NewReader(stdin)
		var out bytes.Buffer
		cmd.Stdout = &out
		err := cmd.Run()
		return out.String(), err
	}
	t.Run("VERSION", func(t *testing.T) {
		out, err := run(t, "VERSION", `{"cniVersion":"1.0.0"}`)
		if err != nil {
			t.Fatalf("VERSION: %v: %s", err, out)
		}
		for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
			if !strings.Contains(out, `"`+v+`"`) {
				t.Errorf("VERSION output %s lacks %s", out, v)
			}
		}
	})
	t.Run("STATUS", func(t *testing.T) {
		out, err := run(t, "STATUS", `{"cniVersion":"1.1.0","name":"k8s","type":"warren-cni"}`)
		if err != nil {
			t.Fatalf("STATUS: %v: %s", err, out)
		}
	})
	t.Run("STATUS needs 1.1.0", func(t *testing.T) {
		if out, err := run(t, "STATUS", `{"cniVersion":"1.0.0","name":"k8s","type":"warren-cni"}`); err == nil {
			t.Fatalf("STATUS with a 1.0.0 config succeeded: %s", out)
		}
	})
}
