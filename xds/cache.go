package xds

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	cachetypes "github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	gcplog "github.com/envoyproxy/go-control-plane/pkg/log"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Type URLs of the two resource types Istio's ambient data plane subscribes
// to (COMPAT.md "Workload discovery"). An Address is a workload or a service.
const (
	TypeAddress       = "type.googleapis.com/istio.workload.Address"
	TypeAuthorization = "type.googleapis.com/istio.security.Authorization"
)

// deterministic is the encoding that resources are compared in: map fields
// (a workload's services) in key order, so that equal messages encode
// equally. go-control-plane hashes the same encoding into the per-resource
// version, which is what makes versions survive a controller restart.
var deterministic = proto.MarshalOptions{Deterministic: true}

// Cache holds the resources the Server serves, per type URL. It is safe for
// concurrent use; each Replace is one consistent update that connected
// clients receive as one response per type.
type Cache struct {
	log *slog.Logger

	mu    sync.RWMutex
	types map[string]*typeCache
}

// typeCache is one type's resources: held is what Replace compares against,
// linear is go-control-plane's per-type cache that tracks each stream's
// versions and computes the deltas.
type typeCache struct {
	mu     sync.Mutex
	held   map[string]heldResource
	linear *cachev3.LinearCache
}

// CacheOption changes a Cache built by NewCache.
type CacheOption func(*Cache)

// WithCacheLogger logs resources that Replace drops (see Replace). The
// default discards.
func WithCacheLogger(log *slog.Logger) CacheOption {
	return func(c *Cache) { c.log = log.With("component", "xds.cache") }
}

// NewCache returns an empty cache serving TypeAddress and TypeAuthorization.
// Other types are served once Replace has been called for them.
func NewCache(opts ...CacheOption) *Cache {
	c := &Cache{log: slog.New(slog.DiscardHandler), types: make(map[string]*typeCache)}
	for _, o := range opts {
		o(c)
	}
	c.typeCache(TypeAddress)
	c.typeCache(TypeAuthorization)
	return c
}

// typeCache returns the cache for typeURL, creating it.
func (c *Cache) typeCache(typeURL string) *typeCache {
	c.mu.RLock()
	tc := c.types[typeURL]
	c.mu.RUnlock()
	if tc != nil {
		return tc
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if tc = c.types[typeURL]; tc == nil {
		tc = &typeCache{
			held:   map[string]heldResource{},
			linear: cachev3.NewLinearCache(typeURL, cachev3.WithLogger(gcpLogger(c.log))),
		}
		c.types[typeURL] = tc
	}
	return tc
}

// lookup returns the cache for typeURL, or nil when it is not served.
func (c *Cache) lookup(typeURL string) *typeCache {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.types[typeURL]
}

// heldResource is a resource as last served: the message and its
// deterministic encoding.
type heldResource struct {
	msg proto.Message
	enc []byte
}

// Replace makes resources, by name, the whole set of typeURL's resources.
// It compares each with the version held (by deterministic encoding), and
// hands only the new, changed and removed names to the streams, in one
// update: every subscribed stream gets at most one response for the call,
// and none when nothing changed. It returns how many names were added or
// changed and how many removed.
//
// A nil resource, one that does not encode, or one whose message type is
// not the one typeURL names is logged and treated as absent: serving it
// would break every stream that receives it. The messages become the
// cache's and must not be modified afterwards: a message that is the very
// one held under its name is known unchanged without encoding it again,
// which is most of them for a caller that rebuilds incrementally (the
// controller), and at 10,000 workloads most of Replace's cost.
func (c *Cache) Replace(typeURL string, resources map[string]proto.Message) (updated, removed int) {
	tc := c.typeCache(typeURL)
	want := typeURL[strings.LastIndexByte(typeURL, '/')+1:]
	tc.mu.Lock()
	defer tc.mu.Unlock()
	next := make(map[string]heldResource, len(resources))
	toUpdate := make(map[string]cachetypes.Resource)
	for name, msg := range resources {
		if msg == nil {
			c.log.Error("dropping nil resource", "type", typeURL, "name", name)
			continue
		}
		if old, ok := tc.held[name]; ok && old.msg == msg {
			next[name] = old
			continue
		}
		if got := string(proto.MessageName(msg)); got != want {
			c.log.Error("dropping resource of the wrong message type", "type", typeURL, "name", name, "message", got)
			continue
		}
		b, err := deterministic.Marshal(msg)
		if err != nil {
			c.log.Error("dropping resource that does not encode", "type", typeURL, "name", name, "err", err)
			continue
		}
		next[name] = heldResource{msg: msg, enc: b}
		if old, ok := tc.held[name]; !ok || !bytes.Equal(old.enc, b) {
			toUpdate[name] = msg
		}
	}
	var toDelete []string
	for name := range tc.held {
		if _, ok := next[name]; !ok {
			toDelete = append(toDelete, name)
		}
	}
	if len(toUpdate) == 0 && len(toDelete) == 0 {
		return 0, 0
	}
	slices.Sort(toDelete)
	tc.held = next
	// The only failure is a resource that does not encode, excluded above.
	if err := tc.linear.UpdateResources(toUpdate, toDelete); err != nil {
		c.log.Error("notifying streams", "type", typeURL, "err", err)
	}
	return len(toUpdate), len(toDelete)
}

// Len is the number of typeURL's resources.
func (c *Cache) Len(typeURL string) int {
	tc := c.lookup(typeURL)
	if tc == nil {
		return 0
	}
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return len(tc.held)
}

// typeURLs lists the served types, sorted.
func (c *Cache) typeURLs() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]string, 0, len(c.types))
	for t := range c.types {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

// watcher adapts Cache to go-control-plane's delta server: it routes each
// watch to the per-type cache.
type watcher struct{ c *Cache }

var _ cachev3.ConfigWatcher = watcher{}

func (w watcher) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	tc := w.c.lookup(req.GetTypeUrl())
	if tc == nil {
		// Creating caches on demand would let any client grow the server's
		// memory by asking for made-up types.
		return nil, status.Errorf(codes.InvalidArgument, "type %q is not served", req.GetTypeUrl())
	}
	return tc.linear.CreateDeltaWatch(req, sub, ch)
}

func (w watcher) CreateWatch(*cachev3.Request, cachev3.Subscription, chan cachev3.Response) (func(), error) {
	return nil, status.Error(codes.Unimplemented, "only delta xDS is served")
}

// gcpLogger routes go-control-plane's log lines to log. Its Info lines are
// per request (every ACK opens a watch), so they go to Debug.
func gcpLogger(log *slog.Logger) gcplog.Logger {
	at := func(level slog.Level) func(string, ...any) {
		return func(format string, args ...any) {
			if log.Enabled(context.Background(), level) {
				log.Log(context.Background(), level, fmt.Sprintf(format, args...))
			}
		}
	}
	return gcplog.LoggerFuncs{
		DebugFunc: at(slog.LevelDebug),
		InfoFunc:  at(slog.LevelDebug),
		WarnFunc:  at(slog.LevelWarn),
		ErrorFunc: at(slog.LevelError),
	}
}
