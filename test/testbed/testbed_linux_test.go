package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/warren-mesh/warren/netns"
)

// echoPort is an arbitrary unprivileged port for the test servers.
const echoPort = 7777

func skipUnlessRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("testbed tests create network namespaces and need root (CI runs them as root)")
	}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// testConfig is DefaultConfig with a short grace so stop tests stay fast.
func testConfig(mutate func(*Config)) Config {
	c := DefaultConfig()
	c.StopGrace = 300 * time.Millisecond
	if mutate != nil {
		mutate(&c)
	}
	return c
}

// newTestbed builds a testbed and, at cleanup, closes it and checks that
// nothing with its prefix is left.
func newTestbed(t *testing.T, cfg Config) *Testbed {
	t.Helper()
	skipUnlessRoot(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	start := time.Now()
	tb, err := New(ctx, cfg, testLogger(t))
	if err != nil {
		CleanupPrefix(cfg.Prefix)
		t.Fatalf("New() = %v", err)
	}
	t.Logf("built %d nodes, %d pods in %v", len(tb.Nodes), len(tb.Pods), time.Since(start))
	t.Cleanup(func() {
		if err := tb.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
		if left := leftovers(t, cfg.Prefix); len(left) > 0 {
			t.Errorf("left after Close: %v", left)
			CleanupPrefix(cfg.Prefix)
		}
	})
	return tb
}

// leftovers lists everything named with prefix that is still visible: files
// in /run/netns, `ip netns list` entries and links in the test's namespace.
func leftovers(t *testing.T, prefix string) []string {
	t.Helper()
	var left []string
	entries, err := os.ReadDir(NetnsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("listing %s: %v", NetnsDir, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			left = append(left, "file "+e.Name())
		}
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, prefix) {
			// Drop the " (id: N)" that follows a namespace with a peer id.
			left = append(left, "ip netns "+strings.Fields(line)[0])
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatalf("listing links: %v", err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			left = append(left, "link "+l.Attrs().Name)
		}
	}
	return left
}

type dialer interface {
	Dial(ctx context.Context, addr string) (net.Conn, error)
}

// checkEcho sends a message through an echo server and checks it comes back.
func checkEcho(t *testing.T, from dialer, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	start := time.Now()
	c, err := from.Dial(ctx, addr)
	if err != nil {
		t.Fatalf("Dial(%s) = %v", addr, err)
	}
	defer c.Close()
	// A lost first SYN is retried after one second; a link that was not
	// ready when New returned shows up as a slow connect.
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("Dial(%s) took %v, want well under the 1 s SYN retry", addr, took)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := "hello " + addr
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("writing to %s: %v", addr, err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading from %s: %v", addr, err)
	}
	if string(got) != msg {
		t.Errorf("echo from %s = %q, want %q", addr, got, msg)
	}
}

func addrPort(a netip.Addr, port int) string {
	return netip.AddrPortFrom(a, uint16(port)).String()
}

// TestTopology builds the default 2x2 cluster and checks its connectivity
// and settings.
func TestTopology(t *testing.T) {
	tb := newTestbed(t, testConfig(nil))
	ctx := t.Context()

	names := func() (got []string) {
		for _, n := range tb.Nodes {
			got = append(got, n.Name+" "+n.Underlay.String()+" "+n.PodCIDR.String()+" "+filepath.Base(n.NetNS))
		}
		for _, p := range tb.Pods {
			got = append(got, p.Name+"@"+p.Node.Name+" "+p.IP.String()+" "+filepath.Base(p.NetNS)+" "+p.Link+" "+strings.TrimPrefix(p.HostLink, tb.Prefix()))
		}
		return got
	}()
	x := strconv.Itoa(int(tb.cfg.Subnet.Addr().As4()[1]))
	pre := tb.Prefix()
	want := []string{
		"node1 10." + x + ".0.1 10." + x + ".1.0/24 " + pre + "-node1",
		"node2 10." + x + ".0.2 10." + x + ".2.0/24 " + pre + "-node2",
		"n1p1@node1 10." + x + ".1.11 " + pre + "-n1p1 eth0 n1p1",
		"n1p2@node1 10." + x + ".1.12 " + pre + "-n1p2 eth0 n1p2",
		"n2p1@node2 10." + x + ".2.11 " + pre + "-n2p1 eth0 n2p1",
		"n2p2@node2 10." + x + ".2.12 " + pre + "-n2p2 eth0 n2p2",
	}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("topology mismatch (-want +got):\n%s", diff)
	}
	if tb.Pod("n2p1") != tb.Pods[2] || tb.Pod("nope") != nil || tb.Node("node2") != tb.Nodes[1] {
		t.Errorf("Pod/Node lookup by name broken")
	}

	for _, p := range tb.Pods {
		stop, err := p.ListenEcho(ctx, echoPort)
		if err != nil {
			t.Fatalf("%s.ListenEcho() = %v", p.Name, err)
		}
		defer stop()
	}
	node2Stop, err := tb.Nodes[1].ListenEcho(ctx, echoPort)
	if err != nil {
		t.Fatalf("node2.ListenEcho() = %v", err)
	}
	defer node2Stop()

	n1p1, n1p2, n2p1, n2p2 := tb.Pod("n1p1"), tb.Pod("n1p2"), tb.Pod("n2p1"), tb.Pod("n2p2")
	paths := []struct {
		name string
		from dialer
		to   netip.Addr
	}{
		{"pod to pod across nodes", n1p1, n2p1.IP},
		{"pod to pod across nodes, reverse", n2p2, n1p2.IP},
		{"pod to pod on the same node", n1p1, n1p2.IP},
		{"pod to itself", n1p1, n1p1.IP},
		{"node to node", tb.Nodes[0], tb.Nodes[1].Underlay},
		{"node to pod on another node", tb.Nodes[0], n2p2.IP},
		{"pod to node on another node", n1p2, tb.Nodes[1].Underlay},
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) { checkEcho(t, p.from, addrPort(p.to, echoPort)) })
	}

	t.Run("server sees the client pod IP", func(t *testing.T) {
		rec, err := n2p1.ListenRecorder(ctx, echoPort+1)
		if err != nil {
			t.Fatalf("ListenRecorder() = %v", err)
		}
		defer rec.Close()
		c, err := n1p1.Dial(ctx, addrPort(n2p1.IP, echoPort+1))
		if err != nil {
			t.Fatalf("Dial() = %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		answer, err := ReadPeer(c)
		if err != nil {
			t.Fatal(err)
		}
		seen, err := rec.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		local := netip.MustParseAddrPort(c.LocalAddr().String())
		if seen != local || answer != local {
			t.Errorf("server saw %v (answered %v), want the client's %v", seen, answer, local)
		}
		if seen.Addr() != n1p1.IP {
			t.Errorf("server saw %v, want pod IP %v", seen.Addr(), n1p1.IP)
		}
	})

	t.Run("sysctls", func(t *testing.T) {
		read := func(nsPath, key string) string {
			var v []byte
			if err := netns.Do(nsPath, func() error {
				var err error
				v, err = os.ReadFile("/proc/sys/" + key)
				return err
			}); err != nil {
				t.Fatalf("reading %s in %s: %v", key, nsPath, err)
			}
			return strings.Join(strings.Fields(string(v)), " ")
		}
		got := map[string]string{
			"node ip_forward":      read(tb.Nodes[0].NetNS, "net/ipv4/ip_forward"),
			"node tw_reuse":        read(tb.Nodes[0].NetNS, "net/ipv4/tcp_tw_reuse"),
			"pod port range":       read(n2p2.NetNS, "net/ipv4/ip_local_port_range"),
			"pod reserved ports":   read(n2p2.NetNS, "net/ipv4/ip_local_reserved_ports"),
			"pod tw_reuse":         read(n2p2.NetNS, "net/ipv4/tcp_tw_reuse"),
			"pod ip_forward (off)": read(n2p2.NetNS, "net/ipv4/ip_forward"),
		}
		want := map[string]string{
			"node ip_forward":      "1",
			"node tw_reuse":        "1",
			"pod port range":       "20000 65000",
			"pod reserved ports":   "15000-15100",
			"pod tw_reuse":         "1",
			"pod ip_forward (off)": "0",
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("sysctls mismatch (-want +got):\n%s", diff)
		}
	})

	t.Run("start runs in the namespace", func(t *testing.T) {
		var out bytes.Buffer
		p, err := tb.Start(ctx, n2p2.NetNS, &out, &out, "ip", "-o", "-4", "addr", "show", "dev", "eth0")
		if err != nil {
			t.Fatalf("Start() = %v", err)
		}
		if err := p.Wait(); err != nil {
			t.Fatalf("Wait() = %v, output %q", err, out.String())
		}
		if !strings.Contains(out.String(), " "+n2p2.IP.String()+"/32 ") {
			t.Errorf("ip addr in pod = %q, want %v/32", out.String(), n2p2.IP)
		}
	})

	t.Run("capture sees cross-node payload", func(t *testing.T) {
		stop, err := tb.Capture(ctx, tb.Nodes[0])
		if err != nil {
			t.Fatalf("Capture() = %v", err)
		}
		marker := fmt.Sprintf("plaintext-marker-%s", tb.Prefix())
		c, err := n1p1.Dial(ctx, addrPort(n2p1.IP, echoPort))
		if err != nil {
			t.Fatalf("Dial() = %v", err)
		}
		io.WriteString(c, marker)
		c.(*net.TCPConn).CloseWrite()
		io.ReadAll(c)
		c.Close()
		pcap, err := stop()
		if err != nil {
			t.Fatalf("stop() = %v", err)
		}
		frames, err := Frames(pcap)
		if err != nil {
			t.Fatal(err)
		}
		// The marker goes out and comes back: at least one frame each way,
		// read as Ethernet + IPv4 to check the link type is right.
		dirs := map[string]int{}
		for _, f := range frames {
			if !bytes.Contains(f, []byte(marker)) {
				continue
			}
			if len(f) < 34 || f[12] != 0x08 || f[13] != 0x00 {
				t.Fatalf("frame with the marker is not Ethernet+IPv4: % x", f[:min(len(f), 34)])
			}
			src, _ := netip.AddrFromSlice(f[26:30])
			dst, _ := netip.AddrFromSlice(f[30:34])
			dirs[src.String()+" > "+dst.String()]++
		}
		there, back := n1p1.IP.String()+" > "+n2p1.IP.String(), n2p1.IP.String()+" > "+n1p1.IP.String()
		if dirs[there] == 0 || dirs[back] == 0 {
			t.Errorf("frames with the marker by direction = %v, want both %q and %q", dirs, there, back)
		}
		if again, err := stop(); err != nil || !bytes.Equal(again, pcap) {
			t.Errorf("second stop() = %d bytes, %v; want the same capture", len(again), err)
		}
	})
}

// TestProcess checks how started processes are stopped.
func TestProcess(t *testing.T) {
	tb := newTestbed(t, testConfig(func(c *Config) { c.Nodes = 1; c.PodsPerNode = 1 }))
	pod := tb.Pods[0]
	grace := tb.cfg.StopGrace

	// startSh runs a shell script in the pod; the script's first output line
	// is a pid it reports (its background child).
	startSh := func(ctx context.Context, script string) (*Process, int) {
		t.Helper()
		r, w := io.Pipe()
		p, err := tb.Start(ctx, pod.NetNS, w, os.Stderr, "sh", "-c", script)
		if err != nil {
			t.Fatalf("Start() = %v", err)
		}
		go func() {
			p.Wait()
			w.Close() // exec does not close writers it was given
		}()
		var line [32]byte
		n, _ := r.Read(line[:])
		go io.Copy(io.Discard, r)
		child, err := strconv.Atoi(strings.TrimSpace(string(line[:n])))
		if err != nil {
			t.Fatalf("reading child pid: %q: %v", line[:n], err)
		}
		return p, child
	}

	t.Run("stop terminates group", func(t *testing.T) {
		p, child := startSh(t.Context(), "sleep 30 & echo $!; wait")
		start := time.Now()
		if err := p.Stop(); err != nil {
			t.Fatalf("Stop() = %v", err)
		}
		if took := time.Since(start); took >= grace {
			t.Errorf("Stop() took %v, want well under the %v grace for a process that honours SIGTERM", took, grace)
		}
		waitGone(t, child)
	})
	t.Run("stop kills after grace", func(t *testing.T) {
		// The child ignores SIGTERM too: trap "" is inherited.
		p, child := startSh(t.Context(), `trap "" TERM; sleep 30 & echo $!; wait`)
		start := time.Now()
		if err := p.Stop(); err != nil {
			t.Fatalf("Stop() = %v", err)
		}
		if took := time.Since(start); took < grace {
			t.Errorf("Stop() took %v, want at least the %v grace", took, grace)
		}
		waitGone(t, p.Pid())
		waitGone(t, child)
		if err := p.Stop(); err != nil {
			t.Errorf("second Stop() = %v", err)
		}
	})
	t.Run("leftovers killed at exit", func(t *testing.T) {
		p, child := startSh(t.Context(), "sleep 30 & echo $!")
		var ee *exec.ExitError
		if err := p.Wait(); err != nil && !errors.As(err, &ee) {
			t.Fatalf("Wait() = %v", err)
		}
		waitGone(t, child)
	})
	t.Run("context cancel stops", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		p, _ := startSh(ctx, "sleep 30 & echo $!; wait")
		cancel()
		select {
		case <-p.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("process still running 5 s after its context was cancelled")
		}
	})
	t.Run("missing tool", func(t *testing.T) {
		_, err := tb.Start(t.Context(), pod.NetNS, nil, nil, "warren-no-such-tool")
		if !errors.Is(err, ErrMissingTool) {
			t.Errorf("Start() = %v, want ErrMissingTool", err)
		}
	})
}

// waitGone waits until pid has exited (gone, or a zombie awaiting its new
// parent).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		// The state follows the parenthesised command name.
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("process %d still running", pid)
}

// TestShapes builds the other underlay shapes: a lone node (dummy underlay)
// and three nodes (bridge in a switch namespace).
func TestShapes(t *testing.T) {
	tests := []struct {
		name        string
		nodes, pods int
	}{
		{"one node", 1, 2},
		{"three nodes", 3, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := newTestbed(t, testConfig(func(c *Config) { c.Nodes = tt.nodes; c.PodsPerNode = tt.pods }))
			for _, p := range tb.Pods {
				stop, err := p.ListenEcho(t.Context(), echoPort)
				if err != nil {
					t.Fatalf("ListenEcho() = %v", err)
				}
				defer stop()
			}
			for _, n := range tb.Nodes {
				stop, err := n.ListenEcho(t.Context(), echoPort)
				if err != nil {
					t.Fatalf("ListenEcho() = %v", err)
				}
				defer stop()
			}
			for _, from := range tb.Pods {
				for _, to := range tb.Pods {
					checkEcho(t, from, addrPort(to.IP, echoPort))
				}
			}
			for _, from := range tb.Nodes {
				for _, to := range tb.Nodes {
					checkEcho(t, from, addrPort(to.Underlay, echoPort))
				}
			}
		})
	}
}

// TestCloseRemovesEverything checks Close removes namespaces and links and
// stops processes, even with servers and captures still open.
func TestCloseRemovesEverything(t *testing.T) {
	skipUnlessRoot(t)
	cfg := testConfig(nil)
	tb, err := New(t.Context(), cfg, testLogger(t))
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	t.Cleanup(func() { CleanupPrefix(cfg.Prefix) })
	if left := leftovers(t, cfg.Prefix); len(left) != 2*(2+4) {
		t.Errorf("while up: want 6 namespaces, each as a file and in ip netns list: %v", left)
	}
	if _, err := tb.Pods[0].ListenEcho(t.Context(), echoPort); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Capture(t.Context(), tb.Nodes[1]); err != nil {
		t.Fatal(err)
	}
	p, err := tb.Start(t.Context(), tb.Nodes[0].NetNS, nil, nil, "sleep", "30")
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if left := leftovers(t, cfg.Prefix); len(left) > 0 {
		t.Errorf("left after Close: %v", left)
	}
	select {
	case <-p.Done():
	default:
		t.Errorf("process still running after Close")
	}
	if err := tb.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
	if _, err := tb.Start(t.Context(), tb.Nodes[0].NetNS, nil, nil, "true"); err == nil {
		t.Errorf("Start() after Close succeeded")
	}
	if _, err := tb.Pods[0].ListenEcho(t.Context(), echoPort); err == nil {
		t.Errorf("ListenEcho() after Close succeeded")
	}
}

// TestNewFailureLeavesNothing fails New at each step and checks it cleans
// up, and that a name collision leaves the other owner's namespace alone.
func TestNewFailureLeavesNothing(t *testing.T) {
	skipUnlessRoot(t)
	injected := errors.New("injected failure")
	for _, step := range []string{"namespaces", "underlay", "pods", "configure"} {
		t.Run("after "+step, func(t *testing.T) {
			cfg := testConfig(func(c *Config) {
				c.Nodes = 3 // exercises the switch namespace too
				c.hook = func(s string) error {
					if s == step {
						return injected
					}
					return nil
				}
			})
			t.Cleanup(func() { CleanupPrefix(cfg.Prefix) })
			tb, err := New(t.Context(), cfg, testLogger(t))
			if !errors.Is(err, injected) {
				t.Fatalf("New() = %v, %v; want the injected error", tb, err)
			}
			if left := leftovers(t, cfg.Prefix); len(left) > 0 {
				t.Errorf("left after failed New: %v", left)
			}
		})
	}
	t.Run("name collision", func(t *testing.T) {
		cfg := testConfig(nil)
		t.Cleanup(func() { CleanupPrefix(cfg.Prefix) })
		taken, err := CreateNamedNS(cfg.nsName(podName(2, 1)))
		if err != nil {
			t.Fatal(err)
		}
		_, err = New(t.Context(), cfg, testLogger(t))
		if !errors.Is(err, fs.ErrExist) {
			t.Fatalf("New() = %v, want fs.ErrExist", err)
		}
		left := leftovers(t, cfg.Prefix)
		if diff := cmp.Diff([]string{"file " + filepath.Base(taken), "ip netns " + filepath.Base(taken)}, left); diff != "" {
			t.Errorf("after collision, want only the other owner's namespace (-want +got):\n%s", diff)
		}
	})
	t.Run("cancelled context", func(t *testing.T) {
		cfg := testConfig(nil)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := New(ctx, cfg, nil); !errors.Is(err, context.Canceled) {
			t.Errorf("New() = %v, want context.Canceled", err)
		}
	})
}

// TestConcurrent builds two testbeds at once, on the same subnet to show
// that only the prefix must differ, and uses both.
func TestConcurrent(t *testing.T) {
	skipUnlessRoot(t)
	a := testConfig(nil)
	b := testConfig(func(c *Config) { c.Subnet = a.Subnet })
	if a.Prefix == b.Prefix {
		b.Prefix = a.Prefix[:len(a.Prefix)-1] + "z" // not hex, so never generated
	}
	tbs := make([]*Testbed, 2)
	var wg sync.WaitGroup
	for i, cfg := range []Config{a, b} {
		wg.Go(func() {
			tb, err := New(t.Context(), cfg, testLogger(t))
			if err != nil {
				t.Errorf("New(%s) = %v", cfg.Prefix, err)
				return
			}
			tbs[i] = tb
		})
	}
	wg.Wait()
	for i, tb := range tbs {
		if tb == nil {
			continue
		}
		prefix := []string{a.Prefix, b.Prefix}[i]
		t.Cleanup(func() {
			if err := tb.Close(); err != nil {
				t.Errorf("Close() = %v", err)
			}
			if left := leftovers(t, prefix); len(left) > 0 {
				t.Errorf("left after Close: %v", left)
			}
		})
	}
	if t.Failed() {
		return
	}
	// Same addresses in both: each answers with its own recorder.
	for _, tb := range tbs {
		rec, err := tb.Pod("n2p2").ListenRecorder(t.Context(), echoPort)
		if err != nil {
			t.Fatal(err)
		}
		defer rec.Close()
	}
	for _, tb := range tbs {
		c, err := tb.Pod("n1p1").Dial(t.Context(), addrPort(tb.Pod("n2p2").IP, echoPort))
		if err != nil {
			t.Fatalf("Dial() in %s = %v", tb.Prefix(), err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := ReadPeer(c); err != nil {
			t.Errorf("testbed %s: %v", tb.Prefix(), err)
		}
		c.Close()
	}
}

func TestNotRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("checks the error for non-root callers; running as root")
	}
	if _, err := New(t.Context(), DefaultConfig(), nil); !errors.Is(err, ErrNotRoot) {
		t.Errorf("New() = %v, want ErrNotRoot", err)
	}
}

func TestCleanupPrefix(t *testing.T) {
	skipUnlessRoot(t)
	cfg := testConfig(nil)
	if err := PrepareNetnsDir(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"node1", "n1p1"} {
		if _, err := CreateNamedNS(cfg.nsName(name)); err != nil {
			t.Fatal(err)
		}
	}
	// A longer prefix sharing the start must survive.
	other, err := CreateNamedNS(cfg.Prefix + "x-node1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { RemoveNamedNS(other) })
	if err := CleanupPrefix(cfg.Prefix); err != nil {
		t.Fatalf("CleanupPrefix() = %v", err)
	}
	left := leftovers(t, cfg.Prefix)
	want := []string{"file " + filepath.Base(other), "ip netns " + filepath.Base(other)}
	if diff := cmp.Diff(want, left); diff != "" {
		t.Errorf("after CleanupPrefix (-want +got):\n%s", diff)
	}
	if err := CleanupPrefix("-"); err == nil {
		t.Errorf("CleanupPrefix(%q) = nil, want an error", "-")
	}
}
