package hbone

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// testCA is a tiny in-test certificate authority: an ECDSA P-256 root that
// signs SPIFFE leaf certificates.
type testCA struct {
	td     spiffeid.TrustDomain
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	bundle *x509bundle.Bundle
}

func newTestCA(t testing.TB, trustDomain string) *testCA {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"warren test"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{td: td, cert: cert, key: key, bundle: x509bundle.FromX509Authorities(td, []*x509.Certificate{cert})}
}

// leaf issues an SVID for spiffe://<td>/ns/<ns>/sa/<sa>, valid from notBefore
// to notAfter (zero: an hour around now).
func (ca *testCA) leaf(t testing.TB, ns, sa string, notBefore, notAfter time.Time) *x509svid.SVID {
	t.Helper()
	id := spiffeid.RequireFromPath(ca.td, "/ns/"+ns+"/sa/"+sa)
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-time.Hour)
	}
	if notAfter.IsZero() {
		notAfter = time.Now().Add(time.Hour)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// logCounter is a slog handler counting records whose message contains a
// substring, so tests can check "logged once".
type logCounter struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCounter) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	l.mu.Lock()
	l.msgs = append(l.msgs, b.String())
	l.mu.Unlock()
	return nil
}
func (l *logCounter) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCounter) WithGroup(string) slog.Handler      { return l }

func (l *logCounter) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}

func (l *logCounter) all() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.msgs, "\n")
}

// env is a Server on loopback and a Pool set up to reach it.
type env struct {
	ca        *testCA
	server    *Server
	serverLog *logCounter
	pool      *Pool
	addr      netip.AddrPort
	serverID  spiffeid.ID
	client    *x509svid.SVID
	serveErr  chan error
}

func newEnv(t *testing.T, cfg Config, h Handler) *env {
	t.Helper()
	return newEnvWith(t, cfg, h, func(*env, *ServerIdentity) {})
}

// newBenchEnv is newEnv for benchmarks.
func newBenchEnv(b *testing.B, h Handler) *env {
	return newEnvTB(b, DefaultConfig(), h, func(*env, *ServerIdentity) {})
}

func newEnvWith(t *testing.T, cfg Config, h Handler, tweak func(*env, *ServerIdentity)) *env {
	return newEnvTB(t, cfg, h, tweak)
}

func newEnvTB(t testing.TB, cfg Config, h Handler, tweak func(*env, *ServerIdentity)) *env {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ca := newTestCA(t, "cluster.local")
	e := &env{ca: ca, serverLog: &logCounter{}, serveErr: make(chan error, 1)}
	srvSVID := ca.leaf(t, "server", "backend", time.Time{}, time.Time{})
	e.serverID = srvSVID.ID
	e.client = ca.leaf(t, "client", "frontend", time.Time{}, time.Time{})
	e.server = NewServer(cfg, h, slog.New(e.serverLog))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().(*net.TCPAddr).AddrPort()
	id := ServerIdentity{SVID: srvSVID, Bundle: ca.bundle, TrustDomain: ca.td}
	tweak(e, &id)
	go func() { e.serveErr <- e.server.Serve(ln, id) }()
	e.pool = NewPool(cfg, slog.New(slog.DiscardHandler))
	t.Cleanup(func() {
		e.pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.server.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-e.serveErr; err != ErrServerClosed {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return e
}

// request targets the server, with an authority on the server's own IP.
func (e *env) request() *Request {
	return &Request{
		SourceID:  e.client.ID,
		SVID:      e.client,
		Bundle:    e.ca.bundle,
		Expected:  []spiffeid.ID{e.serverID},
		Target:    e.addr,
		SourceIP:  netip.MustParseAddr("127.0.0.1"),
		Authority: netip.AddrPortFrom(e.addr.Addr(), 8080),
		Forwarded: netip.MustParseAddrPort("10.0.0.1:4242"),
	}
}

func (e *env) connect(t testing.TB) *Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.pool.Connect(ctx, e.request())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	return s
}

// echo accepts and copies the stream back to itself, half-closing after the
// client's FIN.
func echo() Handler {
	return HandlerFunc(func(ctx context.Context, in *Inbound) {
		s, err := in.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		if _, err := io.Copy(s, s); err != nil {
			return
		}
		s.CloseWrite()
	})
}

func (p *Pool) connCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, e := range p.entries {
		n += len(e.conns)
	}
	return n
}

func (s *Server) connCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var traceParentRE = regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-00$`)

func defaultDial(ctx context.Context, t netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", t.String())
}

func (p *Pool) streams() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, e := range p.entries {
		for _, c := range e.conns {
			n += c.streamCount()
		}
	}
	return n
}

func (p *Pool) firstConn() *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.entries {
		for _, c := range e.conns {
			return c
		}
	}
	return nil
}

func slogDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func (s *Server) streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.conns {
		if c != nil {
			n += c.streamCount()
		}
	}
	return n
}
