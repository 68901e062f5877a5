package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/catest"
)

// rootless drops the last certificate of every chain, as the CA client
// does with the root element of a CreateCertificate answer.
type rootless struct{ Issuer }

func (r rootless) Issue(ctx context.Context, id spiffeid.ID, csr []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	chain, err := r.Issuer.Issue(ctx, id, csr, ttl)
	if err != nil {
		return nil, err
	}
	return chain[:len(chain)-1], nil
}

// TestIntermediateServed checks that a manager on a CA signing with an
// intermediate serves leaf and intermediate, without the root, whether
// the issuer returns the root or not, and that go-spiffe peers verify it.
func TestIntermediateServed(t *testing.T) {
	h := catest.New(t, catest.Options{})
	dir := filepath.Join(t.TempDir(), "ca")
	h.Write(t, dir)
	cfg := ca.DefaultConfig()
	cfg.Dir = dir
	c, err := ca.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for name, iss := range map[string]Issuer{
		"issuer returns the root": LocalIssuer(c),
		"issuer omits the root":   rootless{LocalIssuer(c)},
	} {
		t.Run(name, func(t *testing.T) {
			m := startManager(t, DefaultConfig(), iss)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			client, releaseC, err := m.Acquire(ctx, webID)
			if err != nil {
				t.Fatal(err)
			}
			defer releaseC()
			server, releaseS, err := m.Acquire(ctx, dbID)
			if err != nil {
				t.Fatal(err)
			}
			defer releaseS()

			svid := mustSVID(t, server)
			if got, want := subjects(svid.Certificates[1:]), subjects([]*x509.Certificate{h.Intermediate}); !cmp.Equal(got, want) {
				t.Errorf("served after the leaf: %v, want %v", got, want)
			}
			for _, info := range m.Identities() {
				if len(info.Chain) != 2 {
					t.Errorf("%s: Identities chain has %d certificates, want leaf and intermediate", info.ID, len(info.Chain))
				}
			}

			cc, sc := net.Pipe()
			defer cc.Close()
			defer sc.Close()
			sconn := tls.Server(sc, tlsconfig.MTLSServerConfig(server, m.Bundle(), tlsconfig.AuthorizeID(webID)))
			errc := make(chan error, 1)
			go func() { errc <- sconn.HandshakeContext(ctx) }()
			cconn := tls.Client(cc, tlsconfig.MTLSClientConfig(client, m.Bundle(), tlsconfig.AuthorizeID(dbID)))
			if err := cconn.HandshakeContext(ctx); err != nil {
				t.Fatalf("client handshake: %v", err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("server handshake: %v", err)
			}
			for side, cs := range map[string]tls.ConnectionState{"client": cconn.ConnectionState(), "server": sconn.ConnectionState()} {
				if got := subjects(cs.PeerCertificates[1:]); !cmp.Equal(got, subjects([]*x509.Certificate{h.Intermediate})) {
					t.Errorf("%s received %v after the leaf, want the intermediate", side, got)
				}
			}
		})
	}
}

func subjects(certs []*x509.Certificate) []string {
	var out []string
	for _, c := range certs {
		out = append(out, c.Subject.CommonName)
	}
	return out
}

// TestPresented checks which certificates of an issued chain TLS presents.
func TestPresented(t *testing.T) {
	h := catest.New(t, catest.Options{})
	leaf := &x509.Certificate{Subject: pkix.Name{CommonName: "leaf"}, RawSubject: []byte("leaf"), RawIssuer: []byte("ca")}
	other := catest.New(t, catest.Options{})
	tests := []struct {
		name   string
		bundle []*x509.Certificate
		chain  []*x509.Certificate
		want   []*x509.Certificate
	}{
		{name: "leaf only", bundle: []*x509.Certificate{h.Root}, chain: []*x509.Certificate{leaf}, want: []*x509.Certificate{leaf}},
		{name: "self-signed root dropped", bundle: []*x509.Certificate{h.Root}, chain: []*x509.Certificate{leaf, h.Intermediate, h.Root}, want: []*x509.Certificate{leaf, h.Intermediate}},
		{name: "self-signed root not in the bundle dropped", bundle: []*x509.Certificate{other.Root}, chain: []*x509.Certificate{leaf, h.Intermediate, h.Root}, want: []*x509.Certificate{leaf, h.Intermediate}},
		{name: "no root", bundle: []*x509.Certificate{h.Root}, chain: []*x509.Certificate{leaf, h.Intermediate}, want: []*x509.Certificate{leaf, h.Intermediate}},
		// An operator may trust an intermediate directly (root-cert.pem
		// holding a CA that is not self-signed).
		{name: "bundle anchor dropped", bundle: []*x509.Certificate{h.Intermediate}, chain: []*x509.Certificate{leaf, h.Intermediate}, want: []*x509.Certificate{leaf}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewManager(DefaultConfig(), LocalIssuer(nil), discard())
			if err != nil {
				t.Fatal(err)
			}
			defer m.Stop()
			m.bundle.Store(x509bundle.FromX509Authorities(m.td, tt.bundle))
			if diff := cmp.Diff(subjects(tt.want), subjects(m.presented(tt.chain))); diff != "" {
				t.Errorf("presented (-want +got):\n%s", diff)
			}
		})
	}
}
