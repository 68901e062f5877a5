package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warren-mesh/warren/admin"
	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/test/harness"
)

// Lifecycle timings: certificates live 20 s (the figure), so they
// are renewed about every 10 s; agents re-read the trust bundle every 2 s.
const (
	lifecycleTTL    = 20 * time.Second
	refreshInterval = lifecycleTTL / 2
)

// controllerBin finds warren-controller like agentBin finds the agent.
func controllerBin(t *testing.T) string {
	t.Helper()
	// `make build` may not build the controller yet: fall back to
	// building it here.
	if dir := os.Getenv("WARREN_BIN"); dir != "" {
		if p := filepath.Join(dir, "warren-controller"); fileExists(p) {
			return p
		}
	}
	ctlOnce.Do(func() {
		dir, err := os.MkdirTemp("", "warren-e2e-ctl-")
		if err != nil {
			ctlErr = err
			return
		}
		ctlBin = filepath.Join(dir, "warren-controller")
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-o", ctlBin, "./cmd/warren-controller")
		cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			ctlErr = fmt.Errorf("building warren-controller: %v\n%s", err, out)
		}
	})
	if ctlErr != nil {
		t.Fatal(ctlErr)
	}
	return ctlBin
}

var (
	ctlOnce sync.Once
	ctlBin  string
	ctlErr  error
)

// TestCALifecycle runs agents against a warren-controller CA on node1 and
// takes it through rotation, an outage, a restart and a root rotation
// while connections are held open and new ones made all along: none may
// fail.
func TestCALifecycle(t *testing.T) {
	requireRoot(t)
	agent, ctl := agentBin(t), controllerBin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	m, err := harness.Start(ctx, harness.Options{AgentBin: agent, Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		CA: &harness.CAOptions{ControllerBin: ctl, CertTTL: lifecycleTTL, BundleRefresh: 2 * time.Second}})
	cancel()
	if err != nil {
		t.Fatalf("starting mesh: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range m.TB.Nodes {
				b, _ := os.ReadFile(m.LogPath(n.Name))
				t.Logf("agent log %s (last 4 KiB):\n%s", n.Name, lastBytes(b, 4096))
			}
			b, _ := os.ReadFile(m.CALogPath())
			t.Logf("controller log (last 4 KiB):\n%s", lastBytes(b, 4096))
		}
		if err := m.Close(); err != nil {
			t.Errorf("tearing down mesh: %v", err)
		}
	})
	for _, name := range []string{harness.Local, harness.Remote} {
		stop, err := m.Pod(name).ListenEcho(context.Background(), 8080)
		if err != nil {
			t.Fatalf("echo server in %s: %v", name, err)
		}
		t.Cleanup(stop)
	}
	rootA := readCert(t, filepath.Join(m.CADir(), ca.RootCertFile))

	// Held open across every step, and checked after each.
	held := dial(t, m.Pod(harness.Client), dst(m.Pod(harness.Remote), 8080))
	defer held.Close()
	checkHeld := func(t *testing.T) {
		t.Helper()
		if err := echoOnce(held); err != nil {
			t.Fatalf("held connection: %v", err)
		}
	}
	checkHeld(t)
	p := startProber(m)
	defer func() {
		if n, total, last := p.stop(); n > 0 {
			t.Errorf("%d of %d new connections failed; last: %v", n, total, last)
		} else {
			t.Logf("%d new connections made during the lifecycle, none failed", total)
		}
	}()

	t.Run("certificates rotate, new connections use the new one", func(t *testing.T) {
		first := peerCert(t, m, harness.Remote)
		deadline := time.Now().Add(refreshInterval + 5*time.Second)
		for {
			next := peerCert(t, m, harness.Remote)
			if next.SerialNumber.Cmp(first.SerialNumber) != 0 {
				if !next.NotBefore.After(first.NotBefore) {
					t.Fatalf("new certificate (not before %v) is not newer than the old (%v)", next.NotBefore, first.NotBefore)
				}
				if life := next.NotAfter.Sub(time.Now()); life > lifecycleTTL {
					t.Fatalf("certificate lives %v more, want at most %v", life, lifecycleTTL)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("certificate %x not rotated within %v", first.SerialNumber, refreshInterval+5*time.Second)
			}
			time.Sleep(200 * time.Millisecond)
		}
		checkHeld(t)
	})

	t.Run("CA down longer than a refresh interval", func(t *testing.T) {
		// Stop right after a round of renewals, so that every certificate
		// outlives the outage: the claim is that nothing breaks while
		// certificates are valid.
		waitFreshCerts(t, m, lifecycleTTL-7*time.Second, 12*time.Second)
		if err := m.StopCA(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(refreshInterval + time.Second)
		checkHeld(t)
		// Certificates now due have not been renewed; readiness still
		// reports ready because they are valid.
		if err := m.WaitReady(context.Background(), "node1", time.Second); err != nil {
			t.Errorf("agent not ready during the outage: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := m.StartCA(ctx); err != nil {
			t.Fatal(err)
		}
		// Restarted with its persisted root, it is still trusted: the next
		// certificate chains to the same root.
		before := peerCert(t, m, harness.Remote)
		waitCert(t, m, harness.Remote, refreshInterval+5*time.Second, func(c *x509.Certificate) bool {
			return c.SerialNumber.Cmp(before.SerialNumber) != 0 && c.CheckSignatureFrom(rootA) == nil
		})
		checkHeld(t)
	})

	t.Run("root rotation", func(t *testing.T) {
		nextCfg := ca.DefaultConfig()
		nextCfg.Dir = filepath.Join(m.Dir, "ca-next")
		if _, err := ca.New(nextCfg, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
		rootB := readCert(t, filepath.Join(nextCfg.Dir, ca.RootCertFile))

		// 1. Announce the new root: CA bundle and agents' trust file.
		writePEM(t, m.CABundlePath(), rootB)
		writePEM(t, m.CARootsPath(), rootA, rootB)
		waitRoots(t, m, []*x509.Certificate{rootA, rootB}, 5*time.Second)

		// 2. Sign with the new root; the old one stays announced.
		if err := m.StopCA(); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{ca.RootCertFile, ca.RootKeyFile} {
			b, err := os.ReadFile(filepath.Join(nextCfg.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(m.CADir(), f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		writePEM(t, m.CABundlePath(), rootA)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := m.StartCA(ctx); err != nil {
			t.Fatal(err)
		}
		waitAllSignedBy(t, m, rootB, refreshInterval+5*time.Second)
		waitCert(t, m, harness.Remote, time.Second, func(c *x509.Certificate) bool { return c.CheckSignatureFrom(rootB) == nil })
		checkHeld(t)

		// 3. Retire the old root everywhere.
		writePEM(t, m.CABundlePath(), rootB)
		writePEM(t, m.CARootsPath(), rootB)
		waitRoots(t, m, []*x509.Certificate{rootB}, refreshInterval+5*time.Second)
		checkHeld(t)
		c := dial(t, m.Pod(harness.Client), dst(m.Pod(harness.Local), 8080))
		defer c.Close()
		if err := echoOnce(c); err != nil {
			t.Fatalf("new connection after the old root was retired: %v", err)
		}
	})
}

// prober dials a new connection and echoes through it every 200 ms,
// alternating between the remote and the local backend, counting failures.
type prober struct {
	stopc  chan struct{}
	done   chan struct{}
	failed atomic.Int64
	total  atomic.Int64
	mu     sync.Mutex
	last   error
}

func startProber(m *harness.Mesh) *prober {
	p := &prober{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-p.stopc:
				return
			case <-tick.C:
			}
			server := harness.Remote
			if i%2 == 1 {
				server = harness.Local
			}
			p.total.Add(1)
			if err := probeOnce(m, server); err != nil {
				p.failed.Add(1)
				p.mu.Lock()
				p.last = fmt.Errorf("%s at %s: %w", server, time.Now().Format("15:04:05.000"), err)
				p.mu.Unlock()
			}
		}
	}()
	return p
}

func (p *prober) stop() (failed, total int64, last error) {
	close(p.stopc)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed.Load(), p.total.Load(), p.last
}

func probeOnce(m *harness.Mesh, server string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := m.Pod(harness.Client).Dial(ctx, dst(m.Pod(server), 8080).String())
	if err != nil {
		return err
	}
	defer c.Close()
	return echoOnce(c)
}

func echoOnce(c net.Conn) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	defer c.SetDeadline(time.Time{})
	msg := []byte("ping\n")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return fmt.Errorf("echoed %q, want %q", got, msg)
	}
	return nil
}

// peerCert returns the certificate the agent presents for pod on its HBONE
// port: a TLS handshake from the other node's namespace, which completes on
// the client side before the agent turns down the missing client
// certificate.
func peerCert(t *testing.T, m *harness.Mesh, pod string) *x509.Certificate {
	t.Helper()
	p := m.Pod(pod)
	from := m.TB.Nodes[0]
	if p.Node == from {
		from = m.TB.Nodes[1]
	}
	var last error
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := from.Dial(ctx, dst(p, 15008).String())
		cancel()
		if err != nil {
			last = err
			time.Sleep(100 * time.Millisecond)
			continue
		}
		var leaf *x509.Certificate
		tc := tls.Client(c, &tls.Config{
			// Only reading what is presented; the agents verify each other.
			InsecureSkipVerify: true,
			NextProtos:         []string{"h2"},
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) > 0 {
					leaf = cs.PeerCertificates[0]
				}
				return nil
			},
		})
		tc.SetDeadline(time.Now().Add(2 * time.Second))
		tc.Handshake()
		tc.Close()
		if leaf != nil {
			return leaf
		}
		last = fmt.Errorf("no certificate presented")
	}
	t.Fatalf("reading the certificate of %s: %v", pod, last)
	return nil
}

func waitCert(t *testing.T, m *harness.Mesh, pod string, timeout time.Duration, ok func(*x509.Certificate) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := peerCert(t, m, pod)
		if ok(c) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still presents certificate %x (issuer %q) after %v", pod, c.SerialNumber, c.Issuer, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// dumps returns every agent's certificates from /config_dump.
func certDumps(t *testing.T, m *harness.Mesh) map[string][]admin.Certificate {
	t.Helper()
	out := map[string][]admin.Certificate{}
	for _, n := range m.TB.Nodes {
		_, body, err := m.Get(context.Background(), n.Name, 15000, "/config_dump")
		if err != nil {
			t.Fatalf("config dump of %s: %v", n.Name, err)
		}
		var d admin.Dump
		if err := json.Unmarshal(body, &d); err != nil {
			t.Fatalf("config dump of %s: %v", n.Name, err)
		}
		out[n.Name] = d.Certificates
	}
	return out
}

// waitFreshCerts waits until every identity's certificate has at least
// remaining life left.
func waitFreshCerts(t *testing.T, m *harness.Mesh, remaining, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		least := time.Duration(1<<63 - 1)
		for _, certs := range certDumps(t, m) {
			for _, c := range certs {
				if len(c.CertChain) == 0 {
					least = 0
					continue
				}
				exp, err := time.Parse(time.RFC3339, c.CertChain[0].ExpirationTime)
				if err != nil {
					t.Fatal(err)
				}
				least = min(least, time.Until(exp))
			}
		}
		if least >= remaining {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no moment within %v when every certificate had %v left (least %v)", timeout, remaining, least)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitAllSignedBy waits until every identity on every agent is signed by root.
func waitAllSignedBy(t *testing.T, m *harness.Mesh, root *x509.Certificate, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		pending := 0
		for _, certs := range certDumps(t, m) {
			for _, c := range certs {
				if len(c.CertChain) == 0 || parsePEM(t, c.CertChain[0].PEM).CheckSignatureFrom(root) != nil {
					pending++
				}
			}
		}
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d certificates not re-issued under the new root within %v", pending, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitRoots waits until every agent's trust bundle is exactly want.
func waitRoots(t *testing.T, m *harness.Mesh, want []*x509.Certificate, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var bad string
		for node, certs := range certDumps(t, m) {
			for _, c := range certs {
				if !sameRoots(t, c.RootCerts, want) {
					bad = fmt.Sprintf("%s %s has %d roots", node, c.Identity, len(c.RootCerts))
				}
			}
		}
		if bad == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("trust bundles not updated within %v: %s, want %d", timeout, bad, len(want))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func sameRoots(t *testing.T, got []admin.Cert, want []*x509.Certificate) bool {
	if len(got) != len(want) {
		return false
	}
	for _, g := range got {
		c := parsePEM(t, g.PEM)
		found := false
		for _, w := range want {
			found = found || c.Equal(w)
		}
		if !found {
			return false
		}
	}
	return true
}

func parsePEM(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatalf("no PEM in %q", s)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parsePEM(t, string(b))
}

// writePEM replaces path atomically, as an operator's tool would.
func writePEM(t *testing.T, path string, certs ...*x509.Certificate) {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
