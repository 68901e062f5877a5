package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pkg/kube"
	"istio.io/istio/pkg/kube/multicluster"
	"istio.io/istio/pkg/security"
	"istio.io/istio/pkg/util/sets"
	istioca "istio.io/istio/security/pkg/pki/ca"
	caserver "istio.io/istio/security/pkg/server/ca"

	"github.com/warren-mesh/warren/ca"
)

// The node agent as istiod sees it: the pod and service account a verified
// token names. Istio installs ztunnel with
// CA_TRUSTED_NODE_ACCOUNTS=istio-system/ztunnel; Warren's agent needs the
// same entry for its own account.
var (
	agentID   = spiffeid.RequireFromString("spiffe://cluster.local/ns/warren-system/sa/warren-agent")
	agentInfo = security.KubernetesInfo{PodName: "warren-agent-x", PodNamespace: "warren-system", PodUID: "uid-agent", PodServiceAccount: "warren-agent"}
)

// istioClusterID is the cluster name istiod uses when none is configured;
// its node authorizer is looked up by the ClusterID header.
const istioClusterID = "Kubernetes"

// tokenAuthenticator stands in for istiod's Kubernetes JWT authenticator
// (TokenReview is not what these tests are about): one bearer token names
// one caller.
type tokenAuthenticator struct {
	token  string
	caller security.Caller
}

var _ security.Authenticator = (*tokenAuthenticator)(nil)

func (a *tokenAuthenticator) Authenticate(ctx security.AuthContext) (*security.Caller, error) {
	tok, err := security.ExtractBearerToken(ctx.GrpcContext)
	if err != nil {
		return nil, err
	}
	if tok != a.token {
		return nil, errors.New("unknown token")
	}
	c := a.caller
	return &c, nil
}

func (a *tokenAuthenticator) AuthenticatorType() string { return "WarrenTestToken" }

// istioCA is Istio's CA service (security/pkg/server/ca) with a self-signed
// Istio CA, served on loopback over TLS the way istiod serves port 15012.
type istioCA struct {
	addr     string
	rootFile string
	token    string
	root     *x509.Certificate
}

// serverName is the name in istiod's serving certificate.
const serverName = "istiod.istio-system.svc"

// startIstioCA serves Istio's CA. trusted lists the node accounts allowed to
// impersonate (CA_TRUSTED_NODE_ACCOUNTS); pods are the cluster's pods the
// node authorizer indexes.
func startIstioCA(t *testing.T, trusted sets.Set[types.NamespacedName], pods ...runtime.Object) *istioCA {
	t.Helper()
	// istiod reads CA_TRUSTED_NODE_ACCOUNTS into this variable at start;
	// caserver.New consults it, so set it only around the call.
	saved := features.CATrustedNodeAccounts
	features.CATrustedNodeAccounts = trusted
	defer func() { features.CATrustedNodeAccounts = saved }()

	// RSA 2048 is istiod's default self-signed root key size.
	opts, err := istioca.NewSelfSignedDebugIstioCAOptions("", 24*time.Hour, time.Hour, 48*time.Hour, "cluster.local", 2048)
	if err != nil {
		t.Fatal(err)
	}
	ica, err := istioca.NewIstioCA(opts)
	if err != nil {
		t.Fatal(err)
	}
	// istiod signs its own serving certificate with the same CA, so the
	// root file (the istio-ca-root-cert ConfigMap) verifies the server too.
	certPEM, keyPEM, err := ica.GenKeyCert([]string{serverName}, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	servingCert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	tc := &istioCA{rootFile: filepath.Join(dir, "root-cert.pem"), token: filepath.Join(dir, "istio-token")}
	rootPEM := ica.GetCAKeyCertBundle().GetRootCertPem()
	writeFile(t, tc.rootFile, string(rootPEM))
	writeFile(t, tc.token, "agent-token\n")
	roots, err := ca.ParseCertificates(rootPEM)
	if err != nil {
		t.Fatal(err)
	}
	tc.root = roots[0]

	authn := &tokenAuthenticator{token: "agent-token", caller: security.Caller{
		AuthSource:     security.AuthSourceIDToken,
		Identities:     []string{agentID.String()},
		KubernetesInfo: agentInfo,
	}}
	clusters := multicluster.NewFakeController()
	srv, err := caserver.New(ica, time.Hour, []security.Authenticator{authn}, clusters)
	if err != nil {
		t.Fatal(err)
	}
	// Adding the cluster builds its node authorizer's pod informer;
	// RunAndWait then starts it and waits for the initial list.
	kc := kube.NewFakeClient(pods...)
	stop := make(chan struct{})
	clusters.Add(istioClusterID, kc, stop)
	kc.RunAndWait(stop)

	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{servingCert},
		MinVersion:   tls.VersionTLS12,
	})))
	srv.Register(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tc.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- gs.Serve(ln) }()
	t.Cleanup(func() {
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("istio CA server: %v", err)
		}
		close(stop)
		kc.Shutdown()
	})
	return tc
}

func (tc *istioCA) client(t *testing.T, mod func(*Config)) *Client {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Address, cfg.ServerName, cfg.RootFile, cfg.TokenFile = tc.addr, serverName, tc.rootFile, tc.token
	cfg.ClusterID = istioClusterID
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

func testPod(name, ns, sa, uid, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID(uid)},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: sa},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
}

// TestInteropIstioCA: Warren's client against Istio's CA service with its
// node authorizer, as an ambient node agent uses istiod. The agent runs on
// node-a beside backend/api; legacy/db runs only on node-b.
func TestInteropIstioCA(t *testing.T) {
	trusted := sets.New(types.NamespacedName{Namespace: agentInfo.PodNamespace, Name: agentInfo.PodServiceAccount})
	tc := startIstioCA(t, trusted,
		testPod(agentInfo.PodName, agentInfo.PodNamespace, agentInfo.PodServiceAccount, agentInfo.PodUID, "node-a"),
		testPod("api-1", "backend", "api", "uid-api", "node-a"),
		testPod("db-1", "legacy", "db", "uid-db", "node-b"),
	)
	tests := []struct {
		name     string
		mod      func(*Config)
		token    string
		id       spiffeid.ID
		wantCode codes.Code
		wantErr  string
	}{
		// The client always names the identity in ImpersonatedIdentity,
		// also its own: istiod accepts that because the agent's own pod
		// runs on its node.
		{name: "own identity", id: agentID},
		{name: "pod on the agent's node", id: apiID},
		{name: "pod on another node", id: dbID, wantCode: codes.Unauthenticated, wantErr: "impersonation authentication failure"},
		{name: "wrong token", token: "stolen\n", id: apiID, wantCode: codes.Unauthenticated, wantErr: "request authenticate failure"},
		// istiod finds the node authorizer by the ClusterID header; without
		// it no cluster matches and every impersonation is refused.
		{name: "no cluster ID", mod: func(c *Config) { c.ClusterID = "" }, id: apiID, wantCode: codes.Unauthenticated, wantErr: "impersonation authentication failure"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tc.client(t, tt.mod)
			if tt.token != "" {
				writeFile(t, tc.token, tt.token)
				defer writeFile(t, tc.token, "agent-token\n")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			const ttl = 2 * time.Hour
			chain, err := c.Issue(ctx, tt.id, csrFor(t, tt.id), ttl)
			if tt.wantErr != "" {
				if status.Code(err) != tt.wantCode || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v (%v), want %v containing %q", err, status.Code(err), tt.wantCode, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkIstioLeaf(t, c, tc.root, chain, tt.id, ttl)
		})
	}
}

// checkIstioLeaf checks an answer of Istio's CA as Warren uses it: one leaf
// with the SPIFFE ID as its only URI SAN, the requested lifetime, verifying
// for mTLS against the client's Roots, which hold Istio's root.
func checkIstioLeaf(t *testing.T, c *Client, root *x509.Certificate, chain []*x509.Certificate, id spiffeid.ID, ttl time.Duration) {
	t.Helper()
	if len(chain) != 1 {
		t.Fatalf("got %d certificates, want the leaf only (a self-signed Istio CA has no intermediates)", len(chain))
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Fatalf("leaf URI SANs %v, want [%s]", leaf.URIs, id)
	}
	// The requested lifetime counts from now: Istio backdates NotBefore
	// (two minutes, for clock skew), not NotAfter.
	if left := time.Until(leaf.NotAfter); left < ttl-time.Minute || left > ttl {
		t.Errorf("leaf expires in %v, want about %v", left, ttl)
	}
	roots, err := c.Roots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) != 1 || !roots[0].Equal(root) {
		t.Fatalf("Roots() = %d certificates, want Istio's root only (file and answer agree)", len(roots))
	}
	pool := x509.NewCertPool()
	pool.AddCert(roots[0])
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("leaf does not verify for %v: %v", usage, err)
		}
	}
}

// TestInteropIstioCAWithoutNodeAuthorizer: istiod without
// CA_TRUSTED_NODE_ACCOUNTS refuses any ImpersonatedIdentity, and Warren's
// client sends one with every request, even for the caller's own identity.
// So Warren needs its agent account in CA_TRUSTED_NODE_ACCOUNTS, as ztunnel
// does.
func TestInteropIstioCAWithoutNodeAuthorizer(t *testing.T) {
	tc := startIstioCA(t, sets.New[types.NamespacedName]())
	c := tc.client(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Issue(ctx, agentID, csrFor(t, agentID), time.Hour)
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "impersonation authentication failure") {
		t.Fatalf("got %v, want Unauthenticated for impersonation", err)
	}
}
