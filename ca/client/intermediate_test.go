package client

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/catest"
	"github.com/warren-mesh/warren/identity"
)

// TestIntermediateRoundTrip runs a CA signing with an RSA intermediate (as
// plugged-in Istio CAs often are) behind the gRPC server: the client
// verifies the server through the intermediate, Issue returns leaf and
// intermediate, Roots the root, and an identity manager on the client
// serves leaf and intermediate that a peer verifies.
func TestIntermediateRoundTrip(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	h := catest.New(t, catest.Options{IntermediateKey: rsaKey})
	dir := t.TempDir()
	h.Write(t, dir)
	caCfg := ca.DefaultConfig()
	caCfg.Dir = dir
	c, err := ca.New(caCfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	tc := startCAWith(t, c)
	cl := tc.client(t, nil)
	names := func(cs []*x509.Certificate) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Subject.CommonName)
		}
		return out
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	chain, err := cl.Issue(ctx, apiID, csrFor(t, apiID), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"", h.Intermediate.Subject.CommonName}, names(chain)); diff != "" {
		t.Errorf("Issue chain (-want +got):\n%s", diff)
	}
	roots, err := cl.Roots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{h.Root.Subject.CommonName}, names(roots)); diff != "" {
		t.Errorf("Roots (-want +got):\n%s", diff)
	}

	idCfg := identity.DefaultConfig()
	idCfg.TTL = time.Minute
	m, err := identity.NewManager(idCfg, cl, discard())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	src, release, err := m.Acquire(ctx, apiID)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"", h.Intermediate.Subject.CommonName}, names(svid.Certificates)); diff != "" {
		t.Errorf("served chain (-want +got):\n%s", diff)
	}

	// A peer holding only the root accepts what the manager serves.
	cc, sc := net.Pipe()
	defer cc.Close()
	defer sc.Close()
	sconn := tls.Server(sc, tlsconfig.TLSServerConfig(src))
	errc := make(chan error, 1)
	go func() { errc <- sconn.HandshakeContext(ctx) }()
	cconn := tls.Client(cc, tlsconfig.TLSClientConfig(m.Bundle(), tlsconfig.AuthorizeID(apiID)))
	if err := cconn.HandshakeContext(ctx); err != nil {
		t.Fatalf("peer handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
}
