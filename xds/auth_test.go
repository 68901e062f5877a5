package xds

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/url"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/warren-mesh/warren/ca/server"
)

// fakeCA stands in for the CA's authenticator: tokens and certificate
// URIs name callers.
type fakeCA struct {
	byToken map[string]*server.Caller
	failAll error
	gotCert []*x509.Certificate
}

func (f *fakeCA) Authenticate(_ context.Context, token string, certs []*x509.Certificate) (*server.Caller, error) {
	if f.failAll != nil {
		return nil, f.failAll
	}
	f.gotCert = certs
	if c, ok := f.byToken[token]; ok {
		return c, nil
	}
	if len(certs) > 0 && len(certs[0].URIs) == 1 {
		id, err := spiffeid.FromURI(certs[0].URIs[0])
		if err == nil {
			return &server.Caller{Kind: server.KindNode, Name: id.String(), Identity: id, Node: "node9"}, nil
		}
	}
	return nil, errors.Join(server.ErrUnauthenticated, errors.New("unknown token"))
}

func TestCAAuthenticator(t *testing.T) {
	agent := &server.Caller{Kind: server.KindKubernetes, Name: "warren-system/warren-agent", Node: "node1", MayImpersonate: true}
	app := &server.Caller{Kind: server.KindKubernetes, Name: "default/app"}
	ca := &fakeCA{byToken: map[string]*server.Caller{"agent": agent, "app": app}}
	onlyAgents := func(c *server.Caller) error {
		if !c.MayImpersonate {
			return errors.New("not a node agent")
		}
		return nil
	}
	md := func(vals ...string) context.Context {
		var kv []string
		for _, v := range vals {
			kv = append(kv, "authorization", v)
		}
		return metadata.NewIncomingContext(context.Background(), metadata.Pairs(kv...))
	}
	cases := []struct {
		name     string
		ctx      context.Context
		ca       *fakeCA
		want     codes.Code
		wantPeer string
	}{
		{"agent", md("Bearer agent"), ca, codes.OK, "kubernetes warren-system/warren-agent on node node1"},
		{"scheme is case-insensitive", md("bearer agent"), ca, codes.OK, "kubernetes warren-system/warren-agent on node node1"},
		{"no credentials", context.Background(), ca, codes.Unauthenticated, ""},
		{"not bearer", md("Basic YWdlbnQ="), ca, codes.Unauthenticated, ""},
		{"empty token", md("Bearer "), ca, codes.Unauthenticated, ""},
		{"two headers", md("Bearer agent", "Bearer app"), ca, codes.Unauthenticated, ""},
		{"unknown token", md("Bearer nope"), ca, codes.Unauthenticated, ""},
		{"not allowed", md("Bearer app"), ca, codes.PermissionDenied, ""},
		{"check failed", md("Bearer agent"), &fakeCA{failAll: errors.New("TokenReview: connection refused")}, codes.Unavailable, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			who, err := CAAuthenticator(tc.ca, onlyAgents).Authenticate(tc.ctx)
			if status.Code(err) != tc.want {
				t.Fatalf("Authenticate: %v, want code %v", err, tc.want)
			}
			if who != tc.wantPeer {
				t.Errorf("peer = %q, want %q", who, tc.wantPeer)
			}
		})
	}
	t.Run("verified chain is passed on", func(t *testing.T) {
		leaf := &x509.Certificate{URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/x/sa/y"}}}
		ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{
			State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}},
		}})
		f := &fakeCA{}
		who, err := CAAuthenticator(f, nil).Authenticate(ctx)
		if err != nil || who != "node spiffe://cluster.local/ns/x/sa/y on node node9" {
			t.Fatalf("Authenticate = %q, %v", who, err)
		}
		if len(f.gotCert) != 1 || f.gotCert[0] != leaf {
			t.Errorf("authenticator got chain %v", f.gotCert)
		}
	})
}

// TestCAAuthenticatorOverTLS: a client certificate presented in the TLS
// handshake reaches the CA authenticator through a real stream.
func TestCAAuthenticatorOverTLS(t *testing.T) {
	p := newPKI(t)
	cache := NewCache()
	cache.Replace(TypeAddress, addresses("a", "10.0.0.1"))
	f := &fakeCA{}
	srv := serve(t, p, "127.0.0.1:0", cache, CAAuthenticator(f, nil), DefaultServerConfig())

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/warren-system/sa/warren-agent")
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := p.ca.Sign(csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: key}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	for _, tc := range []struct {
		name  string
		certs []tls.Certificate
		want  codes.Code
	}{
		{"with client certificate", []tls.Certificate{cert}, codes.OK},
		{"without", nil, codes.Unauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := grpc.NewClient("passthrough:///"+srv.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
				RootCAs: p.roots, ServerName: "127.0.0.1", Certificates: tc.certs,
			})))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_ = st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeAddress})
			resp, err := st.Recv()
			if status.Code(err) != tc.want {
				t.Fatalf("Recv: %v, want %v", err, tc.want)
			}
			if tc.want == codes.OK && len(resp.GetResources()) != 1 {
				t.Errorf("got %d resources, want 1", len(resp.GetResources()))
			}
		})
	}
}
