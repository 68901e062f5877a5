package xds

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"

	"github.com/warren-mesh/warren/ca"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testLog() *slog.Logger {
	if testing.Verbose() && os.Getenv("XDS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// pki is a test CA whose root the clients trust and which issues the
// servers' certificates for 127.0.0.1.
type pki struct {
	ca    *ca.CA
	roots *x509.CertPool
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	c, err := ca.New(ca.DefaultConfig(), testLog())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, r := range c.Roots() {
		pool.AddCert(r)
	}
	return &pki{ca: c, roots: pool}
}

func (p *pki) serverCreds(t testing.TB) credentials.TransportCredentials {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := p.ca.SignServing(&key.PublicKey, nil, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return credentials.NewTLS(&tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    p.roots,
		ClientAuth:   tls.VerifyClientCertIfGiven,
	})
}

func (p *pki) dial() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: p.roots, ServerName: "127.0.0.1"}))}
}

// tokenAuth accepts the authorization values it maps to peer names.
type tokenAuth map[string]string

func (a tokenAuth) Authenticate(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if who, ok := a[v]; ok {
			return who, nil
		}
	}
	return "", status.Error(codes.Unauthenticated, "no known token")
}

const testToken = "agent-token"

var testAuth = tokenAuth{"Bearer " + testToken: "agent"}

// running is a Server serving on a TLS loopback listener.
type running struct {
	srv  *Server
	reg  *prometheus.Registry
	addr string
	stop func()
}

// serve serves cache on addr ("127.0.0.1:0" for a new port) until the test
// ends or stop is called.
func serve(t testing.TB, p *pki, addr string, cache *Cache, authn Authenticator, cfg ServerConfig) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	srv, err := NewServer(cfg, cache, authn, reg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	// The port of a stopped server is free again at once; the retry covers
	// a slow close.
	for i := 0; ; i++ {
		ln, err = net.Listen("tcp", addr)
		if err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(p.serverCreds(t)))
	srv.Register(g)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(ln)
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			g.Stop()
			<-done
		}
	}
	t.Cleanup(stop)
	return &running{srv: srv, reg: reg, addr: ln.Addr().String(), stop: stop}
}

// rawStream opens a delta ADS stream by hand, for tests of the server's
// protocol; token "" sends none.
func rawStream(t testing.TB, p *pki, addr, token string) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, p.dial()...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		conn.Close()
	})
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// recvResult is one Recv's outcome.
type recvResult struct {
	resp *discoveryv3.DeltaDiscoveryResponse
	err  error
}

// receiver reads a stream in the background so that tests can wait for a
// response with a deadline, or check that none comes.
type receiver struct {
	ch chan recvResult
}

func receive(st discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient) *receiver {
	r := &receiver{ch: make(chan recvResult, 16)}
	go func() {
		for {
			resp, err := st.Recv()
			r.ch <- recvResult{resp, err}
			if err != nil {
				return
			}
		}
	}()
	return r
}

func (r *receiver) next(t testing.TB) *discoveryv3.DeltaDiscoveryResponse {
	t.Helper()
	select {
	case res := <-r.ch:
		if res.err != nil {
			t.Fatalf("Recv: %v", res.err)
		}
		return res.resp
	case <-time.After(10 * time.Second):
		t.Fatal("no response within 10s")
	}
	return nil
}

// none fails if a response arrives within d.
func (r *receiver) none(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case res := <-r.ch:
		if res.err != nil {
			t.Fatalf("Recv: %v", res.err)
		}
		t.Fatalf("unexpected response: resources %v, removed %v", names(res.resp.GetResources()), res.resp.GetRemovedResources())
	case <-time.After(d):
	}
}

func names(rs []*discoveryv3.Resource) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.GetName())
	}
	return out
}

// workload builds an Address resource for a workload named uid with ip.
func workload(uid, ip string) *workloadapi.Address {
	a := net.ParseIP(ip).To4()
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
		Uid: uid, Name: uid, Namespace: "ns", Addresses: [][]byte{a}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
	}}}
}

func addresses(kv ...string) map[string]proto.Message {
	m := map[string]proto.Message{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = workload(kv[i], kv[i+1])
	}
	return m
}

func ack(resp *discoveryv3.DeltaDiscoveryResponse) *discoveryv3.DeltaDiscoveryRequest {
	return &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
}

// waitFor polls cond until it holds or 10s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
