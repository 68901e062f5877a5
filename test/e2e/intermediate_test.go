package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/warren-mesh/warren/ca/catest"
	"github.com/warren-mesh/warren/test/harness"
)

// TestPluggedIntermediate runs the agents on Istio's plugged-in CA layout
// (root -> intermediate, generated here) and checks that HBONE works
// across and within nodes and that port 15008 presents the leaf with the
// intermediate, which verifies against the root alone.
func TestPluggedIntermediate(t *testing.T) {
	requireRoot(t)
	start := time.Now()
	bin := agentBin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m, err := harness.Start(ctx, harness.Options{AgentBin: bin, Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatalf("starting mesh: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range m.TB.Nodes {
				b, _ := os.ReadFile(m.LogPath(n.Name))
				t.Logf("agent log %s (last 4 KiB):\n%s", n.Name, lastBytes(b, 4096))
			}
		}
		if err := m.Close(); err != nil {
			t.Errorf("tearing down mesh: %v", err)
		}
	})
	h := catest.New(t, catest.Options{})
	if err := m.UseLocalCAFiles(ctx, h.Files(t)); err != nil {
		t.Fatalf("switching the agents to the plugged-in CA: %v", err)
	}
	for _, name := range []string{harness.Local, harness.Remote} {
		stop, err := m.Pod(name).ListenEcho(context.Background(), 8080)
		if err != nil {
			t.Fatalf("echo server in %s: %v", name, err)
		}
		t.Cleanup(stop)
	}

	for _, server := range []string{harness.Remote, harness.Local} {
		c := dial(t, m.Pod(harness.Client), dst(m.Pod(server), 8080))
		if err := echoOnce(c); err != nil {
			t.Errorf("echo %s -> %s: %v", harness.Client, server, err)
		}
		c.Close()
	}

	roots := x509.NewCertPool()
	roots.AddCert(h.Root)
	for _, pod := range []string{harness.Remote, harness.Local} {
		chain := presentedChain(t, m, pod)
		if len(chain) != 2 || !chain[1].Equal(h.Intermediate) {
			t.Errorf("%s presents %d certificates (%s), want leaf and the intermediate", pod, len(chain), issuers(chain))
			continue
		}
		inter := x509.NewCertPool()
		inter.AddCert(chain[1])
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("%s's certificate does not verify through the intermediate: %v", pod, err)
		}
		if got, want := chain[0].URIs[0].String(), "spiffe://cluster.local/ns/backend/sa/api"; got != want {
			t.Errorf("%s presents %s, want %s", pod, got, want)
		}
	}
	t.Logf("took %v", time.Since(start).Round(time.Millisecond))
}

// presentedChain returns every certificate the agent presents for pod on
// its HBONE port, read by a TLS handshake from the other node's namespace
// (as peerCert does): from inside a captured pod the dial would itself be
// tunneled, and the handshake would never reach port 15008.
func presentedChain(t *testing.T, m *harness.Mesh, pod string) []*x509.Certificate {
	t.Helper()
	p := m.Pod(pod)
	from := m.TB.Nodes[0]
	if p.Node == from {
		from = m.TB.Nodes[1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, dst(p, 15008).String())
	if err != nil {
		t.Fatalf("dialing %s's HBONE port: %v", pod, err)
	}
	defer c.Close()
	var chain []*x509.Certificate
	tc := tls.Client(c, &tls.Config{
		// Only reading what is presented; the test verifies it itself.
		InsecureSkipVerify: true,
		NextProtos:         []string{"h2"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			chain = cs.PeerCertificates
			return nil
		},
	})
	tc.SetDeadline(time.Now().Add(2 * time.Second))
	// The agent turns down the missing client certificate after the
	// client side has seen the server's.
	tc.Handshake()
	if chain == nil {
		t.Fatalf("%s's HBONE port presented no certificate", pod)
	}
	return chain
}

func issuers(chain []*x509.Certificate) string {
	var s string
	for i, c := range chain {
		s += fmt.Sprintf("[%d] subject %q issuer %q ", i, c.Subject, c.Issuer)
	}
	return s
}
