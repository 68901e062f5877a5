package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Authenticator decides whether a stream may subscribe. It is called once
// per stream, before anything is sent, with the stream's context (incoming
// metadata and TLS peer). peer names the caller in logs. An error refuses
// the stream with the gRPC code the error carries (status.FromError);
// an error without one refuses it with codes.Unauthenticated.
type Authenticator interface {
	Authenticate(ctx context.Context) (peer string, err error)
}

// ServerConfig configures a Server.
type ServerConfig struct {
	// MaxStreams bounds the streams served at once; more are refused with
	// codes.ResourceExhausted. Each stream holds a copy of the versions its
	// client knows, so this bounds memory too. 0 means no limit.
	MaxStreams int
}

// DefaultServerConfig has no stream limit: there is one stream per agent,
// and the controller is sized for its nodes.
func DefaultServerConfig() ServerConfig { return ServerConfig{} }

// Validate checks the config.
func (c ServerConfig) Validate() error {
	if c.MaxStreams < 0 {
		return fmt.Errorf("max streams %d: must not be negative", c.MaxStreams)
	}
	return nil
}

// Server serves the Cache's resources over delta ADS
// (envoy.service.discovery.v3.AggregatedDiscoveryService/
// DeltaAggregatedResources), the only method Istio's ztunnel calls.
//
// The delta protocol is go-control-plane's (pkg/server/delta/v3 over one
// LinearCache per type): wildcard and explicit subscriptions, removals,
// initial_resource_versions on reconnect (a client is sent only what
// differs from the versions it names, and the removal of names it holds
// that are gone), and the next response for a type only after the client
// has answered the previous one. A NACK does not make the server resend:
// the client's copy is taken to be the version sent, as istiod does, and
// the next change brings the next version.
//
// Cost: each stream keeps the version of every resource its client holds,
// and each Replace compares every stream's versions with the cache, so
// memory and push CPU grow with streams x resources (about 150 bytes per
// pair). istiod avoids this for addresses by tracking no per-resource
// state on wildcard streams.
type Server struct {
	// Unimplemented answers the state-of-the-world method, which Istio's
	// data planes never call for these types.
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer

	cfg     ServerConfig
	cache   *Cache
	authn   Authenticator
	delta   delta.Server
	log     *slog.Logger
	metrics *serverMetrics

	mu      sync.Mutex
	streams int
	info    map[int64]streamInfo // by go-control-plane's stream ID
}

// streamInfo names a stream's client in logs.
type streamInfo struct {
	peer string // from the Authenticator
	node string // the xDS node ID, from the first request that has one
}

// NewServer returns a server for cache that authenticates each stream with
// authn and registers its metrics on reg (nil: unregistered). It does not
// listen; see Register.
func NewServer(cfg ServerConfig, cache *Cache, authn Authenticator, reg prometheus.Registerer, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("xds server config: %w", err)
	}
	if cache == nil || authn == nil {
		return nil, errors.New("xds server: cache and authenticator must be set")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:   cfg,
		cache: cache,
		authn: authn,
		log:   log.With("component", "xds.server"),
		info:  make(map[int64]streamInfo),
	}
	m, err := newServerMetrics(reg, cache)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	// The server's own context never ends: streams end with their gRPC
	// server (Stop) or their client.
	s.delta = delta.NewServer(context.Background(), watcher{cache}, callbacks{s}, delta.WithLogger(gcpLogger(s.log)))
	return s, nil
}

// Register adds the aggregated discovery service to g. The controller
// shares one gRPC server (and its TLS) between the CA and discovery; this
// adds nothing else to it.
func (s *Server) Register(g *grpc.Server) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s)
}

// DeltaAggregatedResources authenticates the stream, then serves it until
// the client goes away. A refused stream ends with its status before any
// response is sent.
func (s *Server) DeltaAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	ctx := stream.Context()
	who, err := s.authn.Authenticate(ctx)
	if err != nil {
		return s.refuse(ctx, err)
	}
	if !s.admit() {
		return s.refuse(ctx, status.Errorf(codes.ResourceExhausted, "server already serves %d streams", s.cfg.MaxStreams))
	}
	defer s.release()
	return s.delta.DeltaStreamHandler(&authedStream{stream, context.WithValue(ctx, peerKey{}, who)}, resource.AnyType)
}

func (s *Server) admit() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.MaxStreams > 0 && s.streams >= s.cfg.MaxStreams {
		return false
	}
	s.streams++
	return true
}

func (s *Server) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams--
}

// refuse logs and counts a refused stream and returns its status.
func (s *Server) refuse(ctx context.Context, err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() == codes.OK || st.Code() == codes.Unknown {
		// An authenticator error that says nothing about its kind is still
		// a refusal: fail closed.
		st = status.New(codes.Unauthenticated, err.Error())
	}
	s.metrics.refused.WithLabelValues(st.Code().String()).Inc()
	attrs := []any{"code", st.Code().String(), "reason", st.Message()}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		attrs = append(attrs, "addr", p.Addr.String())
	}
	s.log.Warn("xds stream refused", attrs...)
	return st.Err()
}

// peerKey carries the authenticated peer's name from
// DeltaAggregatedResources to the stream-open callback.
type peerKey struct{}

// authedStream is the stream with the authenticated peer in its context.
type authedStream struct {
	discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	ctx context.Context
}

func (a *authedStream) Context() context.Context { return a.ctx }

func (s *Server) stream(id int64) streamInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info[id]
}

// callbacks receive go-control-plane's stream events: they keep the
// metrics and log NACKs.
type callbacks struct{ s *Server }

var _ delta.Callbacks = callbacks{}

func (c callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	who, _ := ctx.Value(peerKey{}).(string)
	c.s.mu.Lock()
	c.s.info[id] = streamInfo{peer: who}
	c.s.mu.Unlock()
	c.s.metrics.streams.Inc()
	c.s.log.Info("xds stream opened", "stream", id, "peer", who)
	return nil
}

func (c callbacks) OnDeltaStreamClosed(id int64, node *core.Node) {
	info := c.s.stream(id)
	c.s.mu.Lock()
	delete(c.s.info, id)
	c.s.mu.Unlock()
	c.s.metrics.streams.Dec()
	c.s.log.Info("xds stream closed", "stream", id, "peer", info.peer, "node", node.GetId())
}

func (c callbacks) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	if n := req.GetNode().GetId(); n != "" {
		c.s.mu.Lock()
		info := c.s.info[id]
		info.node = n
		c.s.info[id] = info
		c.s.mu.Unlock()
	}
	if req.GetResponseNonce() == "" {
		// A first request for the type, or a change of subscription.
		return nil
	}
	typ := req.GetTypeUrl()
	if detail := req.GetErrorDetail(); detail != nil {
		c.s.metrics.nacks.WithLabelValues(typ).Inc()
		info := c.s.stream(id)
		c.s.log.Warn("xds response rejected by client", "stream", id, "peer", info.peer,
			"node", info.node, "type", typ, "nonce", req.GetResponseNonce(),
			"code", codes.Code(detail.GetCode()).String(), "error", detail.GetMessage())
		return nil
	}
	c.s.metrics.acks.WithLabelValues(typ).Inc()
	return nil
}

func (c callbacks) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	c.s.metrics.pushes.WithLabelValues(resp.GetTypeUrl()).Inc()
	c.s.log.Debug("xds push", "stream", id, "type", resp.GetTypeUrl(), "nonce", resp.GetNonce(),
		"resources", len(resp.GetResources()), "removed", len(resp.GetRemovedResources()))
}
