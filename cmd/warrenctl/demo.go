package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/warren-mesh/warren/test/harness"
	"github.com/warren-mesh/warren/test/testbed"
)

// runDemo builds the two-node testbed, starts an agent per node, sends
// traffic along every path Warren knows and prints what the agents logged
// for each connection. Everything is torn down at the end, on error and on
// Ctrl-C.
func runDemo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	agentBin := fs.String("agent", "", "warren-agent binary (default: next to warrenctl)")
	redirect := fs.String("redirect", "nftables", "capture backend: nftables or iptables")
	keep := fs.Bool("keep", false, "keep the cluster running until Ctrl-C")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("demo needs root: it creates network namespaces, veth links and capture rules")
	}
	if *agentBin == "" {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		*agentBin = filepath.Join(filepath.Dir(self), "warren-agent")
	}
	if _, err := exec.LookPath(*agentBin); err != nil {
		return fmt.Errorf("agent binary %s: %w (run `make build`)", *agentBin, err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	step("building a two-node cluster from network namespaces")
	m, err := harness.Start(ctx, harness.Options{AgentBin: *agentBin, Redirect: *redirect, Log: log})
	if err != nil {
		if m != nil {
			m.Close()
		}
		return err
	}
	defer func() {
		step("tearing down (agents stopped, namespaces removed)")
		if err := m.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "teardown:", err)
		}
	}()
	printTopology(m)

	// Echo servers: the two api pods and the legacy pod listen on 8080.
	for _, name := range []string{harness.Local, harness.Remote, harness.Plain} {
		stopEcho, err := m.Pod(name).ListenEcho(ctx, 8080)
		if err != nil {
			return fmt.Errorf("echo server in %s: %w", name, err)
		}
		defer stopEcho()
	}

	step("sending traffic")
	vip := netip.AddrPortFrom(harness.ServiceVIP, 80)
	flows := []struct {
		from *testbed.Pod
		to   netip.AddrPort
		what string
	}{
		{m.Pod(harness.Client), netip.AddrPortFrom(m.Pod(harness.Remote).IP, 8080), "pod -> pod, across nodes (HBONE)"},
		{m.Pod(harness.Client), netip.AddrPortFrom(m.Pod(harness.Local).IP, 8080), "pod -> pod, same node (HBONE)"},
		{m.Pod(harness.Client), vip, "pod -> service VIP (HBONE to a chosen endpoint)"},
		{m.Pod(harness.Client), vip, "pod -> service VIP again"},
		{m.Pod(harness.Client), netip.AddrPortFrom(m.Pod(harness.Plain).IP, 8080), "pod -> pod outside the mesh (passthrough)"},
		{m.Pod(harness.Plain), netip.AddrPortFrom(m.Pod(harness.Remote).IP, 8080), "non-mesh pod -> mesh pod (plaintext inbound)"},
	}
	for _, f := range flows {
		msg := []byte(fmt.Sprintf("hello from %s to %s", f.from.Name, f.to))
		got, err := exchange(ctx, f.from, f.to, msg)
		status := "ok"
		if err != nil {
			status = "FAILED: " + err.Error()
		} else if !bytes.Equal(got, msg) {
			status = fmt.Sprintf("FAILED: echo mismatch (%q)", got)
		}
		fmt.Printf("  %-48s %s -> %-16s %s\n", f.what, f.from.Name, f.to, status)
		if err != nil {
			return fmt.Errorf("%s: %w", f.what, err)
		}
	}

	// Access-log records are written when connections close; give the
	// agents a moment to flush the last ones.
	time.Sleep(300 * time.Millisecond)
	step("what the agents saw (one access-log record per connection and side)")
	recs, err := m.Records()
	if err != nil {
		return err
	}
	printRecords(recs)

	if *keep {
		step(fmt.Sprintf("cluster kept running (state file %s); Ctrl-C to tear down", m.ConfigPath))
		<-ctx.Done()
	}
	return nil
}

// exchange sends msg from pod to dst, half-closes, and reads the echo.
func exchange(ctx context.Context, pod *testbed.Pod, dst netip.AddrPort, msg []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := pod.Dial(ctx, dst.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return nil, err
	}
	return io.ReadAll(c)
}

func step(s string) { fmt.Printf("\n== %s\n", s) }

func printTopology(m *harness.Mesh) {
	step("cluster")
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  POD\tNODE\tIP\tROLE")
	roles := map[string]string{
		harness.Client: "frontend/web, enrolled (HBONE)",
		harness.Local:  "backend/api, enrolled (HBONE), behind api.backend",
		harness.Remote: "backend/api, enrolled (HBONE), behind api.backend",
		harness.Plain:  "legacy/db, not enrolled (TCP)",
	}
	for _, p := range m.TB.Pods {
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", p.Name, p.Node.Name, p.IP, roles[p.Name])
	}
	fmt.Fprintf(w, "  service api.backend.svc.cluster.local\t\t%s:80\t-> pods :8080\n", harness.ServiceVIP)
	w.Flush()
}

func printRecords(recs []harness.Record) {
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  AGENT\tSIDE\tSOURCE\tDESTINATION\tPATH\tSRC IDENTITY\tDST IDENTITY\tSENT\tRECV\tNOTE")
	for _, r := range recs {
		note := r.Reason
		if r.DstService != "" {
			note = strings.TrimSpace("via " + r.DstService + " " + note)
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", r.Node, r.Direction,
			orDash(r.SrcWorkload, r.SrcAddr), orDash(r.DstWorkload, r.DstAddr), r.Path,
			short(r.SrcIdentity), short(r.DstIdentity), r.BytesSent, r.BytesReceived, note)
	}
	w.Flush()
}

func orDash(workload, addr string) string {
	if workload == "" {
		return addr
	}
	return workload + " (" + addr + ")"
}

// short drops the scheme and trust domain to keep the table narrow.
func short(id string) string {
	if id == "" {
		return "-"
	}
	return strings.TrimPrefix(id, "spiffe://cluster.local")
}
