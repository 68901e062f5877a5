package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	pb "istio.io/api/security/v1alpha1"

	"github.com/warren-mesh/warren/ca"
)

// ImpersonatedIdentity is the request metadata key with which a node agent
// names the SPIFFE ID it asks for on behalf of a local workload (Istio's
// key, COMPAT.md "Identity and CA").
const ImpersonatedIdentity = "ImpersonatedIdentity"

// Server is the CA's gRPC service. It is safe for concurrent use.
type Server struct {
	// The embedded stub only satisfies gRPC's registration check; the
	// method is served by handle.
	pb.UnimplementedIstioCertificateServiceServer

	cfg     Config
	ca      *ca.CA
	authn   Authenticator
	authz   Authorizer
	log     *slog.Logger
	metrics *serverMetrics
	extra   *fileRoots
	grpc    *grpc.Server

	// key is the serving key, kept for the life of the Server; the
	// certificate over it is renewed.
	key       *ecdsa.PrivateKey
	servingMu sync.Mutex
	serving   *tls.Certificate
	renewAt   time.Time
}

// New returns a server for c. It creates the serving key and first server
// certificate and registers the metrics on reg; it does not listen.
func New(cfg Config, c *ca.CA, authn Authenticator, authz Authorizer, reg prometheus.Registerer, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("CA server config: %w", err)
	}
	if c == nil || authn == nil || authz == nil {
		return nil, errors.New("CA server: CA, authenticator and authorizer must be set")
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, ca: c, authn: authn, authz: authz, log: log.With("component", "caserver"), metrics: m, extra: &fileRoots{path: cfg.BundleFile}}
	if s.key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, fmt.Errorf("generating serving key: %w", err)
	}
	if _, err := s.servingCert(); err != nil {
		return nil, err
	}
	if _, err := s.extra.load(); err != nil {
		return nil, err
	}
	tlsCfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.servingCert() },
	}
	if cfg.ClientCAFile != "" {
		pemData, err := os.ReadFile(cfg.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("reading client CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("client CA file %s: no PEM certificate", cfg.ClientCAFile)
		}
		tlsCfg.ClientCAs = pool
		tlsCfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	desc := pb.IstioCertificateService_ServiceDesc
	// Our own method handler, so that a message over the size limit is
	// answered and counted like every other refusal.
	desc.Methods = []grpc.MethodDesc{{MethodName: "CreateCertificate", Handler: s.handle}}
	maxMsg := cfg.MaxMessageBytes
	if maxMsg == 0 {
		maxMsg = 2 * cfg.MaxRequestBytes
	}
	s.grpc = grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.MaxRecvMsgSize(maxMsg),
		// Long-lived discovery streams share this server: ping idle
		// clients so a vanished node is noticed, and let clients ping as
		// often as every 10s for the same reason.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// A certificate request is one small message; a handful of
		// concurrent streams per connection is plenty.
		grpc.MaxConcurrentStreams(100),
		grpc.ConnectionTimeout(10*time.Second),
	)
	s.grpc.RegisterService(&desc, s)
	return s, nil
}

// Serve answers requests on ln until Stop; it returns nil after Stop.
func (s *Server) Serve(ln net.Listener) error {
	s.log.Info("CA serving", "addr", ln.Addr().String(), "trust_domain", s.ca.TrustDomain().Name())
	if err := s.grpc.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serving CA on %s: %w", ln.Addr(), err)
	}
	return nil
}

// GRPC is the server's gRPC server, so that other services sharing the CA's
// port and TLS (xDS discovery on :15012, as istiod does) register on it
// before Serve.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Stop closes the listeners and open connections; requests in flight fail.
func (s *Server) Stop() { s.grpc.Stop() }

// GracefulStop stops accepting and waits for requests in flight.
func (s *Server) GracefulStop() { s.grpc.GracefulStop() }

// Roots returns the trust bundle the server announces: the CA's roots, then
// the extra roots of Config.BundleFile, without duplicates.
func (s *Server) Roots() ([]*x509.Certificate, error) {
	extra, err := s.extra.load()
	if err != nil {
		return nil, err
	}
	out := s.ca.Roots()
	for _, r := range extra {
		if !containsCert(out, r) {
			out = append(out, r)
		}
	}
	return out, nil
}

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	for _, l := range list {
		if bytes.Equal(l.Raw, c.Raw) {
			return true
		}
	}
	return false
}

// servingCert returns the server certificate, issuing a new one from the CA
// once the current one is past half its life.
func (s *Server) servingCert() (*tls.Certificate, error) {
	s.servingMu.Lock()
	defer s.servingMu.Unlock()
	now := time.Now()
	if s.serving != nil && now.Before(s.renewAt) {
		return s.serving, nil
	}
	chain, err := s.ca.SignServing(&s.key.PublicKey, s.cfg.DNSNames, s.cfg.IPs, s.cfg.ServingTTL)
	if err != nil {
		if s.serving != nil && now.Before(s.serving.Leaf.NotAfter) {
			s.log.Warn("renewing server certificate failed; keeping the current one", "error", err)
			return s.serving, nil
		}
		return nil, fmt.Errorf("issuing server certificate: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: s.key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	s.serving = cert
	s.renewAt = now.Add(chain[0].NotAfter.Sub(now) / 2)
	return cert, nil
}

// handle is the CreateCertificate method handler: it decodes the request,
// refuses one over the size limit and answers the rest.
//
// The limit is enforced twice. gRPC refuses a message over twice
// MaxRequestBytes before buffering it, answering ResourceExhausted itself;
// between the two, handle answers InvalidArgument with a message naming the
// limit. Both are counted and logged here.
func (s *Server) handle(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	req := new(pb.IstioCertificateRequest)
	if err := dec(req); err != nil {
		return nil, s.refuse(ctx, nil, status.Code(err), ResultInvalidArgument, fmt.Errorf("decoding request: %w", err))
	}
	if n := proto.Size(req); n > s.cfg.MaxRequestBytes {
		return nil, s.refuse(ctx, nil, codes.InvalidArgument, ResultInvalidArgument, fmt.Errorf("request is %d bytes, larger than the limit of %d", n, s.cfg.MaxRequestBytes))
	}
	return s.CreateCertificate(ctx, req)
}

// CreateCertificate authenticates the caller, works out the identity asked
// for, checks that the caller may have it and signs the CSR. Refusals carry
// the gRPC code of their cause and a message that says why; each is logged
// and counted, and nothing is issued on any error path.
func (s *Server) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	caller, err := s.authenticate(ctx)
	if err != nil {
		if errors.Is(err, ErrUnauthenticated) {
			return nil, s.refuse(ctx, nil, codes.Unauthenticated, ResultUnauthenticated, err)
		}
		return nil, s.refuse(ctx, nil, codes.Internal, ResultInternal, fmt.Errorf("authenticating: %w", err))
	}
	id, ttl, err := s.requested(caller, req)
	if err != nil {
		if errors.Is(err, ErrPermissionDenied) {
			return nil, s.refuse(ctx, caller, codes.PermissionDenied, ResultPermissionDenied, err)
		}
		return nil, s.refuse(ctx, caller, codes.InvalidArgument, ResultInvalidArgument, err)
	}
	if id != caller.Identity {
		if err := s.authz.Authorize(ctx, caller, id); err != nil {
			if errors.Is(err, ErrPermissionDenied) {
				return nil, s.refuse(ctx, caller, codes.PermissionDenied, ResultPermissionDenied, err)
			}
			return nil, s.refuse(ctx, caller, codes.Internal, ResultInternal, fmt.Errorf("authorizing %s: %w", id, err))
		}
	}
	block, _ := pem.Decode([]byte(req.GetCsr())) // checked by requested
	chain, err := s.ca.SignFor(block.Bytes, id, ttl)
	if err != nil {
		if errors.Is(err, ca.ErrInvalidCSR) {
			return nil, s.refuse(ctx, caller, codes.InvalidArgument, ResultInvalidArgument, err)
		}
		return nil, s.refuse(ctx, caller, codes.Internal, ResultInternal, err)
	}
	roots, err := s.Roots()
	if err != nil {
		return nil, s.refuse(ctx, caller, codes.Internal, ResultInternal, err)
	}
	resp := &pb.IstioCertificateResponse{}
	// Leaf and intermediates one per element; the roots, all of them, in
	// the last element, as istiod answers (COMPAT.md "Identity and CA").
	for _, c := range chain[:len(chain)-1] {
		resp.CertChain = append(resp.CertChain, string(pemCert(c)))
	}
	var rootsPEM []byte
	for _, r := range roots {
		rootsPEM = append(rootsPEM, pemCert(r)...)
	}
	resp.CertChain = append(resp.CertChain, string(rootsPEM))
	s.metrics.requests.WithLabelValues(ResultIssued).Inc()
	leaf := chain[0]
	s.log.Info("certificate issued", "caller", caller.Name, "node", caller.Node, "id", id.String(),
		"serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter)
	return resp, nil
}

// authenticate reads the bearer token and the verified client certificate
// chain and hands them to the Authenticator.
func (s *Server) authenticate(ctx context.Context) (*Caller, error) {
	var token string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if vals := md.Get("authorization"); len(vals) > 0 {
			if len(vals) > 1 {
				return nil, fmt.Errorf("%w: %d authorization headers, want one", ErrUnauthenticated, len(vals))
			}
			// The scheme is case-insensitive (RFC 9110 11.1).
			scheme, tok, ok := strings.Cut(vals[0], " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
				return nil, fmt.Errorf("%w: authorization header is not \"Bearer <token>\"", ErrUnauthenticated)
			}
			token = strings.TrimSpace(tok)
		}
	}
	var certs []*x509.Certificate
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			certs = ti.State.VerifiedChains[0]
		}
	}
	if token == "" && certs == nil {
		return nil, fmt.Errorf("%w: no bearer token and no client certificate", ErrUnauthenticated)
	}
	caller, err := s.authn.Authenticate(ctx, token, certs)
	if err != nil {
		return nil, err
	}
	if caller == nil {
		return nil, fmt.Errorf("authenticator returned no caller")
	}
	return caller, nil
}

// requested works out the identity a request asks for and its lifetime,
// and whether the caller may ask for it at all. It parses the CSR only as
// far as needed to find the identity; the CA checks it fully when signing.
// Errors wrap ErrPermissionDenied or are the caller's fault (invalid
// argument).
func (s *Server) requested(caller *Caller, req *pb.IstioCertificateRequest) (spiffeid.ID, time.Duration, error) {
	block, rest := pem.Decode([]byte(req.GetCsr()))
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return spiffeid.ID{}, 0, errors.New("csr: want one PEM CERTIFICATE REQUEST block")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return spiffeid.ID{}, 0, errors.New("csr: data after the PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return spiffeid.ID{}, 0, fmt.Errorf("%w: parsing: %w", ca.ErrInvalidCSR, err)
	}
	if len(csr.URIs) != 1 {
		return spiffeid.ID{}, 0, fmt.Errorf("%w: has %d URI SANs, want exactly one", ca.ErrInvalidCSR, len(csr.URIs))
	}
	id, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return spiffeid.ID{}, 0, fmt.Errorf("%w: URI SAN %q is not a SPIFFE ID: %w", ca.ErrInvalidCSR, csr.URIs[0], err)
	}
	if td := s.ca.TrustDomain(); !id.MemberOf(td) {
		return spiffeid.ID{}, 0, fmt.Errorf("%w: %s is not in trust domain %q", ca.ErrInvalidCSR, id, td.Name())
	}
	if req.GetValidityDuration() < 0 {
		return spiffeid.ID{}, 0, fmt.Errorf("validity duration %d s: must not be negative", req.GetValidityDuration())
	}
	// Seconds, as in Istio; zero means the CA's default lifetime. Anything
	// over the cap is shortened to it (which also keeps the multiplication
	// below from overflowing).
	var ttl time.Duration
	switch v := req.GetValidityDuration(); {
	case v == 0:
	case v >= int64(s.cfg.MaxTTL/time.Second):
		ttl = s.cfg.MaxTTL
	default:
		ttl = time.Duration(v) * time.Second
	}

	imp, present := req.GetMetadata().GetFields()[ImpersonatedIdentity]
	switch {
	case !present:
		if caller.Identity.IsZero() {
			return spiffeid.ID{}, 0, fmt.Errorf("%w: %s %s has no identity of its own and sent no %s", ErrPermissionDenied, caller.Kind, caller.Name, ImpersonatedIdentity)
		}
		if id != caller.Identity {
			return spiffeid.ID{}, 0, fmt.Errorf("%w: %s %s may obtain only its own identity %s, CSR asks for %s", ErrPermissionDenied, caller.Kind, caller.Name, caller.Identity, id)
		}
	case imp.GetStringValue() != id.String():
		return spiffeid.ID{}, 0, fmt.Errorf("metadata %s %q differs from the CSR's identity %s", ImpersonatedIdentity, imp.GetStringValue(), id)
	case id != caller.Identity && !caller.MayImpersonate:
		return spiffeid.ID{}, 0, fmt.Errorf("%w: %s %s is not a trusted node agent and may not obtain %s", ErrPermissionDenied, caller.Kind, caller.Name, id)
	}
	return id, ttl, nil
}

// refuse counts and logs a refused request and returns its gRPC status.
// caller is nil when the refusal came before authentication.
func (s *Server) refuse(ctx context.Context, caller *Caller, code codes.Code, result string, err error) error {
	s.metrics.requests.WithLabelValues(result).Inc()
	attrs := []any{"code", code.String(), "reason", err.Error()}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		attrs = append(attrs, "peer", p.Addr.String())
	}
	if caller != nil {
		attrs = append(attrs, "caller", caller.Name, "node", caller.Node)
	}
	if code == codes.Internal {
		s.log.Error("certificate request failed", attrs...)
	} else {
		s.log.Warn("certificate request refused", attrs...)
	}
	return status.Error(code, err.Error())
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
