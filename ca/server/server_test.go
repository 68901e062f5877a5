package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/warren-mesh/warren/ca"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	td      = spiffeid.RequireTrustDomainFromString("cluster.local")
	apiID   = spiffeid.RequireFromString("spiffe://cluster.local/ns/backend/sa/api")
	webID   = spiffeid.RequireFromString("spiffe://cluster.local/ns/frontend/sa/web")
	dbID    = spiffeid.RequireFromString("spiffe://cluster.local/ns/legacy/sa/db")
	otherID = spiffeid.RequireFromString("spiffe://other.org/ns/backend/sa/api")
)

const nodesYAML = `
nodes:
- name: node1
  token: node1-secret
  identities: ["spiffe://cluster.local/ns/backend/sa/api", "spiffe://cluster.local/ns/frontend/*"]
- name: node2
  tokenSHA256: 94f69bb626c367dc646336bd2f388748a6b9250c8b46029297f8b5c07111efd6
  identities: ["spiffe://cluster.local/ns/legacy/sa/db"]
`

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// fakeKube stands in for the Kubernetes authenticator and authorizer:
// tokens name callers, and podsOn lists the identities running per node.
type fakeKube struct {
	callers map[string]*Caller
	podsOn  map[string][]spiffeid.ID
	authErr error
}

func (f *fakeKube) Authenticate(_ context.Context, token string, _ []*x509.Certificate) (*Caller, error) {
	if c, ok := f.callers[token]; ok {
		return c, nil
	}
	return nil, errors.New("token expired" + ": " + ErrUnauthenticated.Error()) // not wrapped: becomes Internal
}

func (f *fakeKube) Authorize(_ context.Context, c *Caller, id spiffeid.ID) error {
	if f.authErr != nil {
		return f.authErr
	}
	for _, have := range f.podsOn[c.Node] {
		if have == id {
			return nil
		}
	}
	return errors.Join(ErrPermissionDenied, errors.New("no pod with that service account on node "+c.Node))
}

// env is a running server and a gRPC client to it.
type env struct {
	ca      *ca.CA
	srv     *Server
	reg     *prometheus.Registry
	client  pb.IstioCertificateServiceClient
	rootPEM []byte
}

func startServer(t testing.TB, cfg Config, authn Authenticator, authz Authorizer) *env {
	t.Helper()
	caCfg := ca.DefaultConfig()
	c, err := ca.New(caCfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	return startServerWith(t, c, cfg, authn, authz)
}

// startServerWith serves c; the test client trusts c.Roots().
func startServerWith(t testing.TB, c *ca.CA, cfg Config, authn Authenticator, authz Authorizer) *env {
	t.Helper()
	reg := prometheus.NewRegistry()
	if cfg.IPs == nil {
		cfg.IPs = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	srv, err := New(cfg, c, authn, authz, reg, discard())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	pool := x509.NewCertPool()
	var rootPEM []byte
	for _, r := range c.Roots() {
		pool.AddCert(r)
		rootPEM = append(rootPEM, pemCert(r)...)
	}
	conn, err := grpc.NewClient("passthrough:///"+ln.Addr().String(),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &env{ca: c, srv: srv, reg: reg, client: pb.NewIstioCertificateServiceClient(conn), rootPEM: rootPEM}
}

func staticEnv(t testing.TB) *env {
	t.Helper()
	s, err := ParseStatic([]byte(nodesYAML), td)
	if err != nil {
		t.Fatal(err)
	}
	return startServer(t, DefaultConfig(), s, s)
}

func kubeEnv(t *testing.T, f *fakeKube) *env {
	t.Helper()
	return startServer(t, DefaultConfig(), f, f)
}

func newFakeKube() *fakeKube {
	return &fakeKube{
		callers: map[string]*Caller{
			"web-token":    {Kind: KindKubernetes, Name: "frontend/web", Identity: webID, Node: "node1"},
			"agent1-token": {Kind: KindKubernetes, Name: "warren-system/warren-agent", Identity: spiffeid.RequireFromString("spiffe://cluster.local/ns/warren-system/sa/warren-agent"), Node: "node1", MayImpersonate: true},
		},
		podsOn: map[string][]spiffeid.ID{"node1": {webID}, "node2": {apiID}},
	}
}

// csrFor makes a PEM CSR with the given URI SANs and key.
func csrFor(t testing.TB, key any, uris ...string) string {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	if key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func impersonate(id string) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{ImpersonatedIdentity: structpb.NewStringValue(id)}}
}

func withToken(tok string) context.Context {
	ctx := context.Background()
	if tok != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	return ctx
}

func (e *env) count(result string) float64 {
	return testutil.ToFloat64(e.srv.metrics.requests.WithLabelValues(result))
}

func TestRefusals(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tampered := func() string {
		p := csrFor(t, nil, apiID.String())
		block, _ := pem.Decode([]byte(p))
		block.Bytes[len(block.Bytes)-3] ^= 0xff // inside the signature
		return string(pem.EncodeToMemory(block))
	}()
	tests := []struct {
		name     string
		kube     bool // fake Kubernetes authenticator instead of the static file
		ctx      context.Context
		csr      string
		meta     *structpb.Struct
		authzErr error
		code     codes.Code
		result   string
		msg      string
	}{
		{name: "no credential", ctx: context.Background(), csr: csrFor(t, nil, apiID.String()), meta: impersonate(apiID.String()),
			code: codes.Unauthenticated, result: ResultUnauthenticated, msg: "no bearer token and no client certificate"},
		{name: "unknown token", ctx: withToken("guess"), csr: csrFor(t, nil, apiID.String()), meta: impersonate(apiID.String()),
			code: codes.Unauthenticated, result: ResultUnauthenticated, msg: "bearer token matches no node"},
		{name: "not a bearer header", ctx: metadata.AppendToOutgoingContext(context.Background(), "authorization", "Basic bm9kZTE="),
			csr: csrFor(t, nil, apiID.String()), meta: impersonate(apiID.String()),
			code: codes.Unauthenticated, result: ResultUnauthenticated, msg: `not "Bearer <token>"`},
		{name: "identity of another node", ctx: withToken("node1-secret"), csr: csrFor(t, nil, dbID.String()), meta: impersonate(dbID.String()),
			code: codes.PermissionDenied, result: ResultPermissionDenied, msg: "node node1 may not obtain spiffe://cluster.local/ns/legacy/sa/db"},
		{name: "pod on another node", kube: true, ctx: withToken("agent1-token"), csr: csrFor(t, nil, apiID.String()), meta: impersonate(apiID.String()),
			code: codes.PermissionDenied, result: ResultPermissionDenied, msg: "no pod with that service account on node node1"},
		{name: "another trust domain", ctx: withToken("node1-secret"), csr: csrFor(t, nil, otherID.String()), meta: impersonate(otherID.String()),
			code: codes.InvalidArgument, result: ResultInvalidArgument, msg: `not in trust domain "cluster.local"`},
		{name: "two SANs", ctx: withToken("node1-secret"), csr: csrFor(t, nil, apiID.String(), webID.String()), meta: impersonate(apiID.String()),
			code: codes.InvalidArgument, result: ResultInvalidArgument, msg: "has 2 URI SANs, want exactly one"},
		{name: "no SAN", ctx: withToken("node1-secret"), csr: csrFor(t, nil), meta: impersonate(apiID.String()),
			code: codes.InvalidArgument, result: ResultInvalidArgument, msg: "has 0 URI SANs"},
		{name: "garbage bytes", ctx: withToken("node1-secret"), csr: "garbage, not a CSR", meta: impersonate(apiID.String()),
			code: codes.InvalidArgument, result: ResultInvalidArgument, msg: "want one PEM CERTIFICATE REQUEST block"},
		{name: "garbage in PEM", ctx: withToken("node1-secret"), csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("garbage")})),
			meta: impersonate(apiID.String()), code: codes.InvalidArgument, result: ResultInvalidArgument, msg: "invalid certificate signing request: parsing"},
		{name: "bad signature", ctx: withToken("node1-secret"), csr: tampered, meta: impersonate(apiID.String()),
			code: codes.InvalidArgument, result: ResultInvalidArgument, msg: "signature"},
		{name: "RSA key", ctx: withToken("node1-secret"), csr: csrFor(t, rsaKey, apiID.String()), meta: impersonate(apiID.String()),
			code: codes.InvalidArgument, result: ResultInvalidArgument, msg: "want ECDSA P-256"},
		{name: "oversized request", ctx: withToken("node1-secret"), csr: csrFor(t, nil, apiID.String()) + strings.Repeat("A", 80<<10), meta: impersonate(apiID.String()),
			code: codes.InvalidArgument, result: ResultInvalidArgument, msg: "larger than the limit of 65536"},
		{name: "far oversized request", ctx: withToken("node1-secret"), csr: csrFor(t, nil, apiID.String()) + strings.Repeat("A", 200<<10), meta: impersonate(apiID.String()),
			code: codes.ResourceExhausted, result: ResultInvalidArgument, msg: "received message larger than max"},
		{name: "impersonation without permission", kube: true, ctx: withToken("web-token"), csr: csrFor(t, nil, apiID.String()), meta: impersonate(apiID.String()),
			code: codes.PermissionDenied, result: ResultPermissionDenied, msg: "kubernetes frontend/web is not a trusted node agent and may not obtain spiffe://cluster.local/ns/backend/sa/api"},
		{name: "another identity without impersonation", kube: true, ctx: withToken("web-token"), csr: csrFor(t, nil, apiID.String()),
			code: codes.PermissionDenied, result: ResultPermissionDenied, msg: "may obtain only its own identity spiffe://cluster.local/ns/frontend/sa/web"},
		{name: "node without impersonation metadata", ctx: withToken("node1-secret"), csr: csrFor(t, nil, apiID.String()),
			code: codes.PermissionDenied, result: ResultPermissionDenied, msg: "has no identity of its own and sent no ImpersonatedIdentity"},
		{name: "impersonation mismatch", ctx: withToken("node1-secret"), csr: csrFor(t, nil, apiID.String()), meta: impersonate(webID.String()),
			code: codes.InvalidArgument, result: ResultInvalidArgument, msg: "differs from the CSR's identity"},
		{name: "negative lifetime", ctx: withToken("node1-secret"), csr: csrFor(t, nil, apiID.String()), meta: impersonate(apiID.String()),
			code: codes.InvalidArgument, result: ResultInvalidArgument, msg: "must not be negative"},
		{name: "authenticator failure", kube: true, ctx: withToken("expired"), csr: csrFor(t, nil, webID.String()),
			code: codes.Internal, result: ResultInternal, msg: "authenticating"},
		{name: "authorizer failure", kube: true, ctx: withToken("agent1-token"), csr: csrFor(t, nil, webID.String()), meta: impersonate(webID.String()),
			authzErr: errors.New("kubernetes API unreachable"), code: codes.Internal, result: ResultInternal, msg: "kubernetes API unreachable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e *env
			if tt.kube {
				f := newFakeKube()
				f.authErr = tt.authzErr
				e = kubeEnv(t, f)
			} else {
				e = staticEnv(t)
			}
			req := &pb.IstioCertificateRequest{Csr: tt.csr, ValidityDuration: 3600, Metadata: tt.meta}
			if tt.name == "negative lifetime" {
				req.ValidityDuration = -1
			}
			ctx, cancel := context.WithTimeout(tt.ctx, 10*time.Second)
			defer cancel()
			resp, err := e.client.CreateCertificate(ctx, req)
			if resp != nil {
				t.Errorf("got an answer with %d certificates, want none", len(resp.GetCertChain()))
			}
			st, _ := status.FromError(err)
			if st.Code() != tt.code || !strings.Contains(st.Message(), tt.msg) {
				t.Fatalf("got %v %q, want %v containing %q", st.Code(), st.Message(), tt.code, tt.msg)
			}
			for _, r := range results {
				want := 0.0
				if r == tt.result {
					want = 1
				}
				if got := e.count(r); got != want {
					t.Errorf("warren_ca_requests_total{result=%q} = %v, want %v", r, got, want)
				}
			}
		})
	}
}

func TestIssue(t *testing.T) {
	tests := []struct {
		name    string
		kube    bool
		token   string
		id      spiffeid.ID
		meta    bool
		ttl     int64
		wantTTL time.Duration
	}{
		{name: "node, exact identity", token: "node1-secret", id: apiID, meta: true, ttl: 3600, wantTTL: time.Hour},
		{name: "node, wildcard namespace", token: "node1-secret", id: webID, meta: true, ttl: 60, wantTTL: time.Minute},
		{name: "node by token hash", token: "s3cret-node2", id: dbID, meta: true, ttl: 60, wantTTL: time.Minute},
		{name: "lifetime capped", token: "node1-secret", id: apiID, meta: true, ttl: 7 * 24 * 3600, wantTTL: 24 * time.Hour},
		{name: "default lifetime", token: "node1-secret", id: apiID, meta: true, wantTTL: 24 * time.Hour},
		{name: "own identity", kube: true, token: "web-token", id: webID, ttl: 60, wantTTL: time.Minute},
		{name: "own identity named in metadata", kube: true, token: "web-token", id: webID, meta: true, ttl: 60, wantTTL: time.Minute},
		{name: "node agent for a local pod", kube: true, token: "agent1-token", id: webID, meta: true, ttl: 60, wantTTL: time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e *env
			if tt.kube {
				e = kubeEnv(t, newFakeKube())
			} else {
				e = staticEnv(t)
			}
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			req := &pb.IstioCertificateRequest{Csr: csrFor(t, key, tt.id.String()), ValidityDuration: tt.ttl}
			if tt.meta {
				req.Metadata = impersonate(tt.id.String())
			}
			resp, err := e.client.CreateCertificate(withToken(tt.token), req)
			if err != nil {
				t.Fatal(err)
			}
			if n := len(resp.CertChain); n != 2 {
				t.Fatalf("answer has %d elements, want leaf and root", n)
			}
			leaf, err := ca.ParseCertificates([]byte(resp.CertChain[0]))
			if err != nil {
				t.Fatal(err)
			}
			if resp.CertChain[1] != string(e.rootPEM) {
				t.Errorf("last element is not the root bundle")
			}
			if got := leaf[0].URIs[0].String(); got != tt.id.String() {
				t.Errorf("leaf is for %s, want %s", got, tt.id)
			}
			if !key.PublicKey.Equal(leaf[0].PublicKey) {
				t.Error("leaf is not for the CSR's key")
			}
			// NotBefore is backdated; NotAfter counts from signing.
			if life := time.Until(leaf[0].NotAfter); life > tt.wantTTL || life < tt.wantTTL-time.Minute {
				t.Errorf("leaf lives %v more, want about %v", life, tt.wantTTL)
			}
			if got := e.count(ResultIssued); got != 1 {
				t.Errorf("issued count %v, want 1", got)
			}
		})
	}
}

func TestBundleFile(t *testing.T) {
	dir := t.TempDir()
	other, err := ca.New(ca.DefaultConfig(), discard())
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "bundle.pem")
	cfg := DefaultConfig()
	cfg.BundleFile = bundle
	s, err := ParseStatic([]byte(nodesYAML), td)
	if err != nil {
		t.Fatal(err)
	}
	e := startServer(t, cfg, s, s)
	roots := func() int {
		t.Helper()
		resp, err := e.client.CreateCertificate(withToken("node1-secret"), &pb.IstioCertificateRequest{Csr: csrFor(t, nil, apiID.String()), Metadata: impersonate(apiID.String())})
		if err != nil {
			t.Fatal(err)
		}
		certs, err := ca.ParseCertificates([]byte(resp.CertChain[len(resp.CertChain)-1]))
		if err != nil {
			t.Fatal(err)
		}
		return len(certs)
	}
	if n := roots(); n != 1 {
		t.Fatalf("without bundle file: %d roots, want 1", n)
	}
	if err := os.WriteFile(bundle, pemCert(other.Roots()[0]), 0o644); err != nil {
		t.Fatal(err)
	}
	if n := roots(); n != 2 {
		t.Fatalf("with a second root: %d roots, want 2", n)
	}
	// The CA's own root listed again is not duplicated; a changed size
	// makes the server read the file again even within the same mtime tick.
	both := append(pemCert(other.Roots()[0]), e.rootPEM...)
	if err := os.WriteFile(bundle, both, 0o644); err != nil {
		t.Fatal(err)
	}
	if n := roots(); n != 2 {
		t.Fatalf("with the own root repeated: %d roots, want 2", n)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{name: "default", mod: func(*Config) {}},
		{name: "zero ttl", mod: func(c *Config) { c.MaxTTL = 0 }, want: "max TTL"},
		{name: "tiny limit", mod: func(c *Config) { c.MaxRequestBytes = 100 }, want: "max request bytes"},
		{name: "message limit under request limit", mod: func(c *Config) { c.MaxMessageBytes = 1000 }, want: "max message bytes"},
		{name: "no names", mod: func(c *Config) { c.DNSNames = nil }, want: "at least one DNS name"},
		{name: "short serving ttl", mod: func(c *Config) { c.ServingTTL = time.Second }, want: "serving TTL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mod(&c)
			err := c.Validate()
			if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}
