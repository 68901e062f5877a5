package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/server"
	"github.com/warren-mesh/warren/identity"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	td    = spiffeid.RequireTrustDomainFromString("cluster.local")
	apiID = spiffeid.RequireFromString("spiffe://cluster.local/ns/backend/sa/api")
	dbID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/legacy/sa/db")
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

const nodesYAML = `
nodes:
- name: node1
  token: node1-secret
  identities: ["spiffe://cluster.local/ns/backend/*"]
`

type testCA struct {
	ca       *ca.CA
	addr     string
	dir      string
	rootFile string
	token    string
	bundle   string
}

func startCA(t *testing.T) *testCA {
	t.Helper()
	c, err := ca.New(ca.DefaultConfig(), discard())
	if err != nil {
		t.Fatal(err)
	}
	return startCAWith(t, c)
}

// startCAWith serves c; the client's root file holds c.Roots().
func startCAWith(t *testing.T, c *ca.CA) *testCA {
	t.Helper()
	dir := t.TempDir()
	static, err := server.ParseStatic([]byte(nodesYAML), td)
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.DefaultConfig()
	cfg.DNSNames = []string{"warren-ca.test"}
	cfg.IPs = []net.IP{net.IPv4(127, 0, 0, 1)}
	cfg.BundleFile = filepath.Join(dir, "ca-bundle.pem")
	srv, err := server.New(cfg, c, static, static, nil, discard())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	tc := &testCA{ca: c, addr: ln.Addr().String(), dir: dir, rootFile: filepath.Join(dir, "roots.pem"), token: filepath.Join(dir, "token"), bundle: cfg.BundleFile}
	writeFile(t, tc.rootFile, pemOf(c.Roots()...))
	writeFile(t, tc.token, "node1-secret\n")
	return tc
}

func (tc *testCA) client(t *testing.T, mod func(*Config)) *Client {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Address, cfg.RootFile, cfg.TokenFile = tc.addr, tc.rootFile, tc.token
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func pemOf(certs ...*x509.Certificate) string {
	var b strings.Builder
	for _, c := range certs {
		b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return b.String()
}

func csrFor(t *testing.T, id spiffeid.ID) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestIssue(t *testing.T) {
	tc := startCA(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tests := []struct {
		name     string
		mod      func(*Config)
		token    string
		id       spiffeid.ID
		wantCode codes.Code
		wantErr  string
	}{
		{name: "issued", id: apiID},
		{name: "issued by server name", mod: func(c *Config) { c.ServerName = "warren-ca.test" }, id: apiID},
		{name: "not allowed", id: dbID, wantCode: codes.PermissionDenied, wantErr: "node node1 may not obtain"},
		{name: "token re-read", token: "wrong\n", id: apiID, wantCode: codes.Unauthenticated, wantErr: "matches no node"},
		{name: "wrong server name", mod: func(c *Config) { c.ServerName = "istiod.istio-system.svc" }, id: apiID, wantCode: codes.DeadlineExceeded, wantErr: "verifying CA certificate"},
		{name: "untrusted CA", mod: func(c *Config) {
			other, _ := ca.New(ca.DefaultConfig(), discard())
			c.RootFile = filepath.Join(t.TempDir(), "other.pem")
			writeFile(t, c.RootFile, pemOf(other.Roots()...))
		}, id: apiID, wantCode: codes.DeadlineExceeded, wantErr: "certificate signed by unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tc.client(t, tt.mod)
			if tt.token != "" {
				writeFile(t, tc.token, tt.token)
				defer writeFile(t, tc.token, "node1-secret")
			}
			// A CA that fails the handshake is waited for until the
			// deadline; the error still names the cause.
			ctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			chain, err := c.Issue(ctx, tt.id, csrFor(t, tt.id), time.Hour)
			if tt.wantErr != "" {
				if status.Code(err) != tt.wantCode || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v (%v), want %v containing %q", err, status.Code(err), tt.wantCode, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(chain) != 1 || chain[0].URIs[0].String() != tt.id.String() {
				t.Fatalf("got chain %v, want the leaf for %s", chain, tt.id)
			}
		})
	}
}

// TestRoots checks the bundle as the union of the root file and the CA's
// latest answer, through the steps of a root rotation.
func TestRoots(t *testing.T) {
	tc := startCA(t)
	c := tc.client(t, nil)
	ctx := context.Background()
	newRoot, err := ca.New(ca.DefaultConfig(), discard())
	if err != nil {
		t.Fatal(err)
	}
	old := tc.ca.Roots()[0]
	nw := newRoot.Roots()[0]
	serials := func() []string {
		t.Helper()
		roots, err := c.Roots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range roots {
			out = append(out, map[bool]string{true: "old", false: "new"}[r.Equal(old)])
		}
		return out
	}
	issue := func() {
		t.Helper()
		if _, err := c.Issue(ctx, apiID, csrFor(t, apiID), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Join(serials(), ","); got != "old" {
		t.Fatalf("from the file: %s, want old", got)
	}
	// The CA announces the new root: it is trusted after the next answer,
	// before the file lists it.
	writeFile(t, tc.bundle, pemOf(nw))
	issue()
	if got := strings.Join(serials(), ","); got != "old,new" {
		t.Fatalf("after the CA announced a new root: %s, want old,new", got)
	}
	// The file names only the new root, but the CA still lists the old.
	writeFile(t, tc.rootFile, pemOf(nw))
	if got := strings.Join(serials(), ","); got != "new,old" {
		t.Fatalf("file rotated, CA not yet: %s, want new,old", got)
	}
	// Once the CA's bundle drops the old root... which this CA cannot do
	// while it signs with it; a missing file is an error rather than an
	// empty bundle.
	os.Remove(tc.rootFile)
	if _, err := c.Roots(ctx); err == nil || !strings.Contains(err.Error(), "reading CA root file") {
		t.Fatalf("without a root file: %v, want a read error", err)
	}
}

func TestManager(t *testing.T) {
	tc := startCA(t)
	c := tc.client(t, nil)
	cfg := identity.DefaultConfig()
	cfg.TTL = time.Minute
	m, err := identity.NewManager(cfg, c, discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
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
	if svid.ID != apiID {
		t.Fatalf("got %s, want %s", svid.ID, apiID)
	}
	if life := svid.Certificates[0].NotAfter.Sub(svid.Certificates[0].NotBefore); life > 7*time.Minute {
		t.Errorf("lifetime %v (with backdating), want about a minute", life)
	}
	// The manager retries a refusal until the context ends; its last error
	// says why.
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancelShort()
	if _, _, err := m.Acquire(short, dbID); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("acquiring a forbidden identity: %v, want PermissionDenied", err)
	}
}

func TestParseAnswer(t *testing.T) {
	root1, root2 := selfSigned(t, "root1", true), selfSigned(t, "root2", true)
	leaf, inter := selfSigned(t, "leaf", false), selfSigned(t, "inter", true)
	tests := []struct {
		name      string
		elems     []string
		wantChain []string
		wantRoots []string
		wantErr   string
	}{
		{name: "istiod: flattened chain, root bundle last", elems: []string{pemOf(leaf), pemOf(inter), pemOf(root1, root2)},
			wantChain: []string{"leaf", "inter"}, wantRoots: []string{"root1", "root2"}},
		{name: "unflattened chain", elems: []string{pemOf(leaf, inter), pemOf(root1)},
			wantChain: []string{"leaf", "inter"}, wantRoots: []string{"root1"}},
		{name: "leaf only", elems: []string{pemOf(leaf)}, wantChain: []string{"leaf"}},
		{name: "empty", wantErr: "no certificate"},
		{name: "garbage root", elems: []string{pemOf(leaf), "junk"}, wantErr: "root bundle: no PEM certificate"},
		{name: "leaf as root", elems: []string{pemOf(leaf), pemOf(leaf)}, wantErr: "non-CA"},
	}
	names := func(cs []*x509.Certificate) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Subject.CommonName)
		}
		return out
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, roots, err := parseAnswer(tt.elems)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, want := strings.Join(names(chain), ","), strings.Join(tt.wantChain, ","); got != want {
				t.Errorf("chain %s, want %s", got, want)
			}
			if got, want := strings.Join(names(roots), ","), strings.Join(tt.wantRoots, ","); got != want {
				t.Errorf("roots %s, want %s", got, want)
			}
		})
	}
}

func selfSigned(t *testing.T, cn string, isCA bool) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotAfter: time.Now().Add(time.Hour),
		BasicConstraintsValid: true, IsCA: isCA}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
