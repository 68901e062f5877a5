package client

import (
	"bytes"
	"context"
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

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/identity"
)

// impersonatedIdentity is the metadata key naming the identity asked for on
// behalf of a workload (Istio's key, COMPAT.md "Identity and CA").
const impersonatedIdentity = "ImpersonatedIdentity"

// Client asks a CA for workload certificates. It implements
// identity.Issuer and is safe for concurrent use.
//
// Its trust bundle (Roots) is the union of the roots in Config.RootFile and
// the roots the CA sent with its latest certificate: Istio's CA, and
// Warren's, answer with the chain leaf first and every trusted root in the
// last element. So a root the CA adds reaches the agent with the next
// certificate, even before the file is updated; a root is dropped once
// neither the file nor the CA's latest answer lists it.
type Client struct {
	cfg  Config
	log  *slog.Logger
	conn *grpc.ClientConn
	ca   pb.IstioCertificateServiceClient

	mu      sync.Mutex
	caRoots []*x509.Certificate // from the latest answer
}

var _ identity.Issuer = (*Client)(nil)

// New returns a client for cfg. It does not connect: the connection is
// made on the first request and re-made after failures.
func New(cfg Config, log *slog.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("CA client config: %w", err)
	}
	c := &Client{cfg: cfg, log: log.With("component", "caclient")}
	serverName := cfg.ServerName
	if serverName == "" {
		serverName, _, _ = net.SplitHostPort(cfg.Address) // checked by Validate
	}
	tlsCfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The roots are read from RootFile on every handshake (below), which
		// tls.Config.RootCAs cannot do; verification is not skipped.
		InsecureSkipVerify: true,
		VerifyConnection:   func(cs tls.ConnectionState) error { return c.verifyServer(cs, serverName) },
	}
	if cfg.CertFile != "" {
		tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("loading client certificate: %w", err)
			}
			return &cert, nil
		}
	}
	conn, err := grpc.NewClient("passthrough:///"+cfg.Address,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		// gRPC's default reconnect backoff grows to two minutes; the
		// identity manager has its own backoff, so keep the channel's short
		// and a restarted CA is reached on the manager's next retry.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 500 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("CA client for %s: %w", cfg.Address, err)
	}
	c.conn, c.ca = conn, pb.NewIstioCertificateServiceClient(conn)
	return c, nil
}

// Close closes the connection to the CA.
func (c *Client) Close() error { return c.conn.Close() }

// Issue sends csrDER to the CA for id, asking for ttl, and returns the leaf
// and any intermediates; the roots of the answer are kept for Roots. The
// token file is read for every request. Every error may be retried.
func (c *Client) Issue(ctx context.Context, id spiffeid.ID, csrDER []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	md := metadata.MD{}
	if c.cfg.TokenFile != "" {
		tok, err := os.ReadFile(c.cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA token: %w", err)
		}
		t := strings.TrimSpace(string(tok))
		if t == "" {
			return nil, fmt.Errorf("CA token file %s is empty", c.cfg.TokenFile)
		}
		md.Set("authorization", "Bearer "+t)
	}
	if c.cfg.ClusterID != "" {
		md.Set("ClusterID", c.cfg.ClusterID)
	}
	req := &pb.IstioCertificateRequest{
		Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
		ValidityDuration: int64(ttl / time.Second),
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			impersonatedIdentity: structpb.NewStringValue(id.String()),
		}},
	}
	// WaitForReady: while the CA is down the request waits (within ctx,
	// the Manager's per-request timeout) for the channel to reconnect, so
	// a CA that comes back is used at once rather than at the next retry.
	resp, err := c.ca.CreateCertificate(metadata.NewOutgoingContext(ctx, md), req, grpc.WaitForReady(true))
	if err != nil {
		return nil, fmt.Errorf("CA %s: %w", c.cfg.Address, err)
	}
	chain, roots, err := parseAnswer(resp.GetCertChain())
	if err != nil {
		return nil, fmt.Errorf("CA %s answer: %w", c.cfg.Address, err)
	}
	if len(roots) > 0 {
		c.mu.Lock()
		changed := !sameCerts(c.caRoots, roots)
		c.caRoots = roots
		c.mu.Unlock()
		if changed {
			c.log.Info("CA announced trust bundle", "addr", c.cfg.Address, "roots", len(roots))
		}
	}
	return chain, nil
}

// parseAnswer splits a CreateCertificate answer into the chain (leaf,
// intermediates) and the roots: every element but the last may hold several
// PEM certificates (istiod flattens them, older CAs may not); the last
// holds the root bundle. A one-element answer is a leaf without roots.
func parseAnswer(elems []string) (chain, roots []*x509.Certificate, err error) {
	if len(elems) == 0 {
		return nil, nil, errors.New("no certificate")
	}
	chainElems := elems
	if len(elems) > 1 {
		chainElems = elems[:len(elems)-1]
		if roots, err = ca.ParseCertificates([]byte(elems[len(elems)-1])); err != nil {
			return nil, nil, fmt.Errorf("root bundle: %w", err)
		}
		for _, r := range roots {
			if !r.IsCA {
				return nil, nil, fmt.Errorf("root bundle holds a non-CA certificate (serial %x)", r.SerialNumber)
			}
		}
	}
	for i, e := range chainElems {
		certs, err := ca.ParseCertificates([]byte(e))
		if err != nil {
			return nil, nil, fmt.Errorf("chain element %d: %w", i, err)
		}
		chain = append(chain, certs...)
	}
	return chain, roots, nil
}

// Roots returns the roots in RootFile together with those of the CA's
// latest answer, without duplicates.
func (c *Client) Roots(ctx context.Context) ([]*x509.Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	roots, err := c.fileRoots()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	fromCA := c.caRoots
	c.mu.Unlock()
	for _, r := range fromCA {
		if !containsCert(roots, r) {
			roots = append(roots, r)
		}
	}
	return roots, nil
}

func (c *Client) fileRoots() ([]*x509.Certificate, error) {
	data, err := os.ReadFile(c.cfg.RootFile)
	if err != nil {
		return nil, fmt.Errorf("reading CA root file: %w", err)
	}
	roots, err := ca.ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("CA root file %s: %w", c.cfg.RootFile, err)
	}
	return roots, nil
}

// verifyServer checks the CA's certificate against the roots as they are
// now, for serverName.
func (c *Client) verifyServer(cs tls.ConnectionState, serverName string) error {
	if len(cs.PeerCertificates) == 0 {
		// Refused as such, whether or not the roots can be read.
		return verifyPeer(cs, "CA", serverName, nil)
	}
	roots, err := c.Roots(context.Background())
	if err != nil {
		return err
	}
	return verifyPeer(cs, "CA", serverName, roots)
}

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	for _, l := range list {
		if bytes.Equal(l.Raw, c.Raw) {
			return true
		}
	}
	return false
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}
