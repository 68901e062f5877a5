package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// Handler receives the client's responses, one type at a time.
type Handler interface {
	// Apply applies one response: upserts are new or changed resources,
	// removed the names of resources that are gone. Calls are serial. A nil
	// error ACKs the response; an error NACKs it with the error's text. A
	// *RejectedError says that only the resources it names were rejected and
	// the rest of the response applied; any other error says that nothing
	// was applied.
	Apply(typeURL string, upserts []*discoveryv3.Resource, removed []string) error
}

// RejectedError is returned by a Handler that applied a response except for
// some resources. The client does not record the rejected versions as held,
// so that a reconnect asks for them again.
type RejectedError struct {
	// Rejected maps each rejected resource name to why.
	Rejected map[string]error
}

func (e *RejectedError) Error() string {
	names := e.Names()
	parts := make([]string, 0, len(names))
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s: %v", n, e.Rejected[n]))
	}
	return fmt.Sprintf("rejected %d resources: %s", len(names), strings.Join(parts, "; "))
}

// Names lists the rejected resources, sorted.
func (e *RejectedError) Names() []string { return slices.Sorted(maps.Keys(e.Rejected)) }

// ClientConfig configures a Client.
type ClientConfig struct {
	// Address is the control plane's gRPC target, e.g.
	// "istiod.istio-system.svc:15012" (gRPC's name syntax; the default
	// scheme is dns).
	Address string
	// NodeID identifies the client to the control plane. istiod needs
	// ztunnel's form, ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local.
	NodeID string
	// Metadata is the node metadata (istiod reads NAME, NAMESPACE,
	// INSTANCE_IPS, NODE_NAME, CLUSTER_ID among others).
	Metadata *structpb.Struct
	// TypeURLs are the types subscribed to, each as a wildcard.
	TypeURLs []string
	// Dial are the gRPC dial options; they must set the transport
	// credentials (TLS to the control plane).
	Dial []grpc.DialOption
	// Token, when set, is asked for a token at the start of each stream,
	// sent as "authorization: Bearer <token>".
	Token func(ctx context.Context) (string, error)
	// MinBackoff and MaxBackoff bound the wait before reconnecting, which
	// doubles after each stream that ended unanswered and is jittered.
	MinBackoff, MaxBackoff time.Duration
}

// DefaultClientConfig subscribes to addresses and authorizations, like
// ztunnel. The backoff starts at 100ms, so that a fleet of agents does not
// reconnect in lockstep after a controller restart, and stops growing at
// ztunnel's 15s.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{
		TypeURLs:   []string{TypeAddress, TypeAuthorization},
		MinBackoff: 100 * time.Millisecond,
		MaxBackoff: 15 * time.Second,
	}
}

// Validate reports every problem at once.
func (c ClientConfig) Validate() error {
	var errs []error
	if c.Address == "" {
		errs = append(errs, errors.New("address: required"))
	}
	if c.NodeID == "" {
		errs = append(errs, errors.New("node ID: required"))
	}
	if len(c.TypeURLs) == 0 {
		errs = append(errs, errors.New("type URLs: need at least one"))
	}
	seen := map[string]bool{}
	for _, t := range c.TypeURLs {
		if t == "" || seen[t] {
			errs = append(errs, fmt.Errorf("type URL %q: empty or repeated", t))
		}
		seen[t] = true
	}
	if c.MinBackoff <= 0 || c.MaxBackoff < c.MinBackoff {
		errs = append(errs, fmt.Errorf("backoff %v-%v: want 0 < min <= max", c.MinBackoff, c.MaxBackoff))
	}
	return errors.Join(errs...)
}

// maxResponseBytes raises gRPC's 4 MiB default for received messages: the
// first response carries every workload of the mesh, and ztunnel accepts
// 200 MiB for the same reason.
const maxResponseBytes = 200 << 20

// maxNACKBytes bounds the error text sent back in a NACK; the server logs
// it, and a response with thousands of bad resources would otherwise make
// one enormous log line.
const maxNACKBytes = 4 << 10

// Client subscribes to a control plane over delta ADS and hands every
// response to a Handler. It holds the name and version of every resource
// the Handler accepted, and on reconnect sends them as
// initial_resource_versions, so that the server sends only what changed
// meanwhile, removals included.
type Client struct {
	cfg     ClientConfig
	h       Handler
	log     *slog.Logger
	metrics *clientMetrics

	running atomic.Bool
	// held is the accepted version of each resource, by type then name;
	// only the Run goroutine touches it.
	held map[string]map[string]string

	connected atomic.Bool
	mu        sync.Mutex
	answered  map[string]bool // types with a first response
}

// NewClient returns a client for cfg that hands responses to h and
// registers its metrics on reg (nil: unregistered). It does not connect;
// see Run.
func NewClient(cfg ClientConfig, h Handler, reg prometheus.Registerer, log *slog.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("xds client config: %w", err)
	}
	if h == nil {
		return nil, errors.New("xds client: handler must be set")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Building a connection checks the dial options (a missing transport
	// credential, say) now rather than in the background.
	conn, err := grpc.NewClient(cfg.Address, cfg.Dial...)
	if err != nil {
		return nil, fmt.Errorf("xds client for %s: %w", cfg.Address, err)
	}
	conn.Close()
	m, err := newClientMetrics(reg, cfg.TypeURLs)
	if err != nil {
		return nil, err
	}
	return &Client{
		cfg:      cfg,
		h:        h,
		log:      log.With("component", "xds.client", "addr", cfg.Address),
		metrics:  m,
		held:     make(map[string]map[string]string),
		answered: make(map[string]bool),
	}, nil
}

// Connected reports whether a stream is up and the server has answered on
// it (which proves that it accepted the client's credentials).
func (c *Client) Connected() bool { return c.connected.Load() }

// Synced reports whether every subscribed type has had a first response,
// on this or an earlier stream.
func (c *Client) Synced() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.answered) == len(c.cfg.TypeURLs)
}

func (c *Client) setConnected(up bool) {
	c.connected.Store(up)
	if up {
		c.metrics.connected.Set(1)
	} else {
		c.metrics.connected.Set(0)
	}
}

// Run keeps a stream to the control plane until ctx ends, then returns
// nil. When a stream ends or cannot be opened it waits (jittered
// exponential backoff, reset by a stream the server answered) and opens
// another; the Handler's state stays as it was meanwhile. It returns an
// error only when the client cannot be set up at all. Run may be called
// once.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("xds client: Run called more than once")
	}
	opts := append([]grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseBytes)),
		// gRPC backs off reconnecting a channel on its own, up to two
		// minutes by default; bounded by ours, a restarted controller is
		// back in the agents' view within MaxBackoff.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  c.cfg.MinBackoff,
				Multiplier: backoff.DefaultConfig.Multiplier,
				Jitter:     backoff.DefaultConfig.Jitter,
				MaxDelay:   c.cfg.MaxBackoff,
			},
			// Not gRPC's 20s default: while a controller pod goes away its
			// Service may still route to it for a moment, and a SYN into
			// a deleted pod is never answered; 5s bounds that wait.
			MinConnectTimeout: 5 * time.Second,
		}),
	}, c.cfg.Dial...)
	conn, err := grpc.NewClient(c.cfg.Address, opts...)
	if err != nil {
		return fmt.Errorf("xds client for %s: %w", c.cfg.Address, err)
	}
	defer conn.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	backoff := c.cfg.MinBackoff
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		answered, err := c.stream(ctx, ads)
		c.setConnected(false)
		if ctx.Err() != nil {
			return nil
		}
		c.metrics.reconnects.Inc()
		if answered {
			backoff = c.cfg.MinBackoff
		}
		// Full jitter over the upper half keeps some backoff while spreading
		// a fleet's reconnects.
		wait := backoff/2 + rand.N(backoff/2+1)
		c.log.Warn("xds stream ended; reconnecting", "err", err, "code", status.Code(err).String(), "retry_in", wait)
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

// stream runs one stream: it sends a wildcard request per type (with the
// versions held), then applies each response and answers it, until the
// stream fails. answered says whether the server sent anything.
func (c *Client) stream(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) (answered bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.cfg.Token != nil {
		tok, err := c.cfg.Token(ctx)
		if err != nil {
			return false, fmt.Errorf("getting token: %w", err)
		}
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	st, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return false, fmt.Errorf("opening stream: %w", err)
	}
	node := &core.Node{Id: c.cfg.NodeID, Metadata: c.cfg.Metadata}
	for _, t := range c.cfg.TypeURLs {
		// No names to subscribe to is a wildcard subscription, in istiod and
		// in go-control-plane alike; ztunnel subscribes so too.
		req := &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: t, InitialResourceVersions: maps.Clone(c.held[t])}
		if err := st.Send(req); err != nil {
			return false, fmt.Errorf("sending the initial request for %s: %w", t, sendErr(st, err))
		}
	}
	for {
		resp, err := st.Recv()
		if err == io.EOF {
			return answered, errors.New("stream closed by the server")
		}
		if err != nil {
			return answered, fmt.Errorf("receiving: %w", err)
		}
		if !answered {
			answered = true
			c.setConnected(true)
			c.log.Info("xds stream up", "node", c.cfg.NodeID)
		}
		if err := st.Send(c.handle(resp)); err != nil {
			return answered, fmt.Errorf("answering %s: %w", resp.GetTypeUrl(), sendErr(st, err))
		}
	}
}

// sendErr turns the io.EOF of a Send on a broken stream into the stream's
// status, which only Recv returns.
func sendErr(st discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, err error) error {
	if err != io.EOF {
		return err
	}
	for {
		if _, err := st.Recv(); err != nil {
			return err
		}
	}
}

// handle applies resp and returns its ACK or NACK. It updates the held
// versions as far as the Handler applied the response.
func (c *Client) handle(resp *discoveryv3.DeltaDiscoveryResponse) *discoveryv3.DeltaDiscoveryRequest {
	typ := resp.GetTypeUrl()
	answer := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: resp.GetNonce()}
	var err error
	if !slices.Contains(c.cfg.TypeURLs, typ) {
		err = fmt.Errorf("type %q was not subscribed to", typ)
	} else {
		err = c.h.Apply(typ, resp.GetResources(), resp.GetRemovedResources())
		c.record(typ, resp, err)
	}
	result := resultACK
	if err != nil {
		result = resultNACK
		msg := err.Error()
		if len(msg) > maxNACKBytes {
			msg = msg[:maxNACKBytes] + "..."
		}
		answer.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: msg}
		c.log.Warn("xds response rejected", "type", typ, "nonce", resp.GetNonce(),
			"resources", len(resp.GetResources()), "removed", len(resp.GetRemovedResources()), "err", err)
	}
	c.metrics.updates.WithLabelValues(typ, result).Inc()
	return answer
}

// record updates the held versions of typ after Apply returned err, and
// notes the type's first response.
func (c *Client) record(typ string, resp *discoveryv3.DeltaDiscoveryResponse, err error) {
	var rej *RejectedError
	if err == nil || errors.As(err, &rej) {
		held := c.held[typ]
		if held == nil {
			held = make(map[string]string)
			c.held[typ] = held
		}
		for _, name := range resp.GetRemovedResources() {
			delete(held, name)
		}
		for _, r := range resp.GetResources() {
			if rej != nil {
				if _, bad := rej.Rejected[r.GetName()]; bad {
					// The Handler kept what it had, and so does held: the
					// older version, or nothing.
					continue
				}
			}
			held[r.GetName()] = r.GetVersion()
		}
	}
	c.metrics.resources.WithLabelValues(typ).Set(float64(len(c.held[typ])))
	c.mu.Lock()
	c.answered[typ] = true
	c.mu.Unlock()
}
