package xds

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
)

// recorder is a Handler that keeps each type's resources as name -> first
// address, logs every call, and rejects the names in reject.
type recorder struct {
	mu     sync.Mutex
	state  map[string]map[string]string
	calls  []call
	reject map[string]bool
}

type call struct {
	Type             string
	Upserts, Removed []string
}

func newRecorder(reject ...string) *recorder {
	r := &recorder{state: map[string]map[string]string{}, reject: map[string]bool{}}
	for _, n := range reject {
		r.reject[n] = true
	}
	return r
}

func (r *recorder) Apply(typ string, upserts []*discoveryv3.Resource, removed []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call{typ, sorted(names(upserts)), sorted(removed)})
	st := r.state[typ]
	if st == nil {
		st = map[string]string{}
		r.state[typ] = st
	}
	for _, n := range removed {
		delete(st, n)
	}
	rej := &RejectedError{Rejected: map[string]error{}}
	for _, u := range upserts {
		if r.reject[u.GetName()] {
			rej.Rejected[u.GetName()] = errors.New("rejected by test")
			continue
		}
		var a workloadapi.Address
		if err := proto.Unmarshal(u.GetResource().GetValue(), &a); err != nil {
			rej.Rejected[u.GetName()] = err
			continue
		}
		ip, _ := netip.AddrFromSlice(a.GetWorkload().GetAddresses()[0])
		st[u.GetName()] = ip.String()
	}
	if len(rej.Rejected) > 0 {
		return rej
	}
	return nil
}

func (r *recorder) addresses() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]string{}
	for k, v := range r.state[TypeAddress] {
		out[k] = v
	}
	return out
}

// callsSince returns the Address calls after the first n calls of any type.
func (r *recorder) callsSince(n int) []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []call
	for _, c := range r.calls[n:] {
		if c.Type == TypeAddress {
			out = append(out, c)
		}
	}
	return out
}

func (r *recorder) ncalls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

type runningClient struct {
	c   *Client
	reg *prometheus.Registry
}

// startClient runs a client for addr until the test ends.
func startClient(t *testing.T, p *pki, addr string, h Handler, token func(context.Context) (string, error)) *runningClient {
	t.Helper()
	cfg := DefaultClientConfig()
	cfg.Address = "passthrough:///" + addr
	cfg.NodeID = "ztunnel~10.0.0.1~agent-x.warren-system~warren-system.svc.cluster.local"
	cfg.Dial = p.dial()
	cfg.Token = token
	cfg.MinBackoff, cfg.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
	reg := prometheus.NewRegistry()
	c, err := NewClient(cfg, h, reg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return &runningClient{c: c, reg: reg}
}

func staticToken(context.Context) (string, error) { return testToken, nil }

func wantAddresses(t *testing.T, r *recorder, want map[string]string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("client state %v", want), func() bool { return cmp.Equal(r.addresses(), want) })
}

func TestClientSyncsAndFollows(t *testing.T) {
	p := newPKI(t)
	cache := NewCache()
	cache.Replace(TypeAddress, addresses("a", "10.0.0.1", "b", "10.0.0.2"))
	srv := serve(t, p, "127.0.0.1:0", cache, testAuth, DefaultServerConfig())
	r := newRecorder()
	rc := startClient(t, p, srv.addr, r, staticToken)
	waitFor(t, "sync", rc.c.Synced)
	if !rc.c.Connected() {
		t.Error("synced but not connected")
	}
	wantAddresses(t, r, map[string]string{"a": "10.0.0.1", "b": "10.0.0.2"})
	n := r.ncalls()
	cache.Replace(TypeAddress, addresses("a", "10.0.0.1", "c", "10.0.0.3"))
	wantAddresses(t, r, map[string]string{"a": "10.0.0.1", "c": "10.0.0.3"})
	if d := cmp.Diff([]call{{TypeAddress, []string{"c"}, []string{"b"}}}, r.callsSince(n)); d != "" {
		t.Errorf("calls after the update (-want +got):\n%s", d)
	}
	waitFor(t, "ACKs counted", func() bool {
		return testutil.ToFloat64(rc.c.metrics.updates.WithLabelValues(TypeAddress, resultACK)) == 2
	})
	if got := testutil.ToFloat64(rc.c.metrics.resources.WithLabelValues(TypeAddress)); got != 2 {
		t.Errorf("client resources gauge = %v, want 2", got)
	}
	if got := testutil.ToFloat64(rc.c.metrics.connected); got != 1 {
		t.Errorf("connected gauge = %v, want 1", got)
	}
	waitFor(t, "server ACKs", func() bool {
		return testutil.ToFloat64(srv.srv.metrics.acks.WithLabelValues(TypeAddress)) == 2 &&
			testutil.ToFloat64(srv.srv.metrics.acks.WithLabelValues(TypeAuthorization)) == 1
	})
}

// TestClientServerRestart: after the controller restarts with a different
// set, the client holds exactly the new set, and is sent only what differs
// from what it held.
func TestClientServerRestart(t *testing.T) {
	p := newPKI(t)
	cache := NewCache()
	cache.Replace(TypeAddress, addresses("same", "10.0.0.1", "changed", "10.0.0.2", "gone", "10.0.0.3"))
	srv := serve(t, p, "127.0.0.1:0", cache, testAuth, DefaultServerConfig())
	r := newRecorder()
	rc := startClient(t, p, srv.addr, r, staticToken)
	wantAddresses(t, r, map[string]string{"same": "10.0.0.1", "changed": "10.0.0.2", "gone": "10.0.0.3"})
	n := r.ncalls()

	srv.stop()
	waitFor(t, "disconnect", func() bool { return !rc.c.Connected() })
	cache2 := NewCache()
	cache2.Replace(TypeAddress, addresses("same", "10.0.0.1", "changed", "10.0.0.20", "new", "10.0.0.4"))
	serve(t, p, srv.addr, cache2, testAuth, DefaultServerConfig())

	wantAddresses(t, r, map[string]string{"same": "10.0.0.1", "changed": "10.0.0.20", "new": "10.0.0.4"})
	waitFor(t, "reconnect", rc.c.Connected)
	if d := cmp.Diff([]call{{TypeAddress, []string{"changed", "new"}, []string{"gone"}}}, r.callsSince(n)); d != "" {
		t.Errorf("calls after the restart (-want +got):\n%s", d)
	}
	if got := testutil.ToFloat64(rc.c.metrics.reconnects); got < 1 {
		t.Errorf("reconnects = %v, want >= 1", got)
	}
}

// TestClientKeepsStateWhileUnreachable: with the controller gone the client
// keeps retrying and the handler's state is left alone.
func TestClientKeepsStateWhileUnreachable(t *testing.T) {
	p := newPKI(t)
	cache := NewCache()
	cache.Replace(TypeAddress, addresses("a", "10.0.0.1"))
	srv := serve(t, p, "127.0.0.1:0", cache, testAuth, DefaultServerConfig())
	r := newRecorder()
	rc := startClient(t, p, srv.addr, r, staticToken)
	wantAddresses(t, r, map[string]string{"a": "10.0.0.1"})
	waitFor(t, "sync", rc.c.Synced)
	n := r.ncalls()
	srv.stop()
	waitFor(t, "several retries", func() bool { return testutil.ToFloat64(rc.c.metrics.reconnects) >= 4 })
	if rc.c.Connected() {
		t.Error("Connected() with the server down")
	}
	if !rc.c.Synced() {
		t.Error("Synced() turned false with the server down")
	}
	if got := r.ncalls(); got != n {
		t.Errorf("handler called %d times while the server was down", got-n)
	}
	if got := r.addresses(); !cmp.Equal(got, map[string]string{"a": "10.0.0.1"}) {
		t.Errorf("state changed while the server was down: %v", got)
	}
	serve(t, p, srv.addr, cache, testAuth, DefaultServerConfig())
	waitFor(t, "reconnect", rc.c.Connected)
}

// TestClientRejected: a rejected resource NACKs the response, the rest
// applies, and the rejected one is not held: a reconnect asks for it
// again but not for the accepted one.
func TestClientRejected(t *testing.T) {
	p := newPKI(t)
	cache := NewCache()
	cache.Replace(TypeAddress, addresses("good", "10.0.0.1", "bad", "10.0.0.2"))
	srv := serve(t, p, "127.0.0.1:0", cache, testAuth, DefaultServerConfig())
	r := newRecorder("bad")
	rc := startClient(t, p, srv.addr, r, staticToken)
	wantAddresses(t, r, map[string]string{"good": "10.0.0.1"})
	waitFor(t, "server counts the NACK", func() bool {
		return testutil.ToFloat64(srv.srv.metrics.nacks.WithLabelValues(TypeAddress)) == 1
	})
	if got := testutil.ToFloat64(rc.c.metrics.updates.WithLabelValues(TypeAddress, resultNACK)); got != 1 {
		t.Errorf("client nacks = %v, want 1", got)
	}
	if got := testutil.ToFloat64(rc.c.metrics.resources.WithLabelValues(TypeAddress)); got != 1 {
		t.Errorf("client holds %v resources, want 1 (the rejected one is not held)", got)
	}
	n := r.ncalls()
	srv.stop()
	serve(t, p, srv.addr, cache, testAuth, DefaultServerConfig())
	waitFor(t, "the resend", func() bool { return len(r.callsSince(n)) > 0 })
	if d := cmp.Diff(call{TypeAddress, []string{"bad"}, nil}, r.callsSince(n)[0]); d != "" {
		t.Errorf("after reconnect (-want +got):\n%s", d)
	}
}

// TestClientHandlerFailure: a plain error leaves the held versions alone,
// removals included, so that a reconnect repeats the whole response.
func TestClientHandlerFailure(t *testing.T) {
	p := newPKI(t)
	cache := NewCache()
	cache.Replace(TypeAddress, addresses("a", "10.0.0.1", "b", "10.0.0.2"))
	srv := serve(t, p, "127.0.0.1:0", cache, testAuth, DefaultServerConfig())
	h := &failing{recorder: newRecorder()}
	rc := startClient(t, p, srv.addr, h, staticToken)
	wantAddresses(t, h.recorder, map[string]string{"a": "10.0.0.1", "b": "10.0.0.2"})
	h.fail.Store(true)
	cache.Replace(TypeAddress, addresses("a", "10.0.0.9"))
	waitFor(t, "the NACK", func() bool {
		return testutil.ToFloat64(rc.c.metrics.updates.WithLabelValues(TypeAddress, resultNACK)) == 1
	})
	h.fail.Store(false)
	n := h.ncalls()
	srv.stop()
	serve(t, p, srv.addr, cache, testAuth, DefaultServerConfig())
	wantAddresses(t, h.recorder, map[string]string{"a": "10.0.0.9"})
	if d := cmp.Diff([]call{{TypeAddress, []string{"a"}, []string{"b"}}}, h.callsSince(n)); d != "" {
		t.Errorf("after reconnect (-want +got):\n%s", d)
	}
}

// failing fails every Apply while fail is set, applying nothing.
type failing struct {
	*recorder
	fail atomic.Bool
}

func (f *failing) Apply(typ string, upserts []*discoveryv3.Resource, removed []string) error {
	if f.fail.Load() {
		f.mu.Lock()
		f.calls = append(f.calls, call{typ, sorted(names(upserts)), sorted(removed)})
		f.mu.Unlock()
		return errors.New("store unavailable")
	}
	return f.recorder.Apply(typ, upserts, removed)
}

// TestClientToken: the token is asked for per stream, and a failure to get
// one is retried like a failed stream.
func TestClientToken(t *testing.T) {
	p := newPKI(t)
	cache := NewCache()
	cache.Replace(TypeAddress, addresses("a", "10.0.0.1"))
	srv := serve(t, p, "127.0.0.1:0", cache, testAuth, DefaultServerConfig())
	var calls atomic.Int32
	token := func(context.Context) (string, error) {
		switch calls.Add(1) {
		case 1:
			return "", errors.New("token file not there yet")
		case 2:
			return "wrong", nil
		}
		return testToken, nil
	}
	r := newRecorder()
	rc := startClient(t, p, srv.addr, r, token)
	wantAddresses(t, r, map[string]string{"a": "10.0.0.1"})
	if got := calls.Load(); got != 3 {
		t.Errorf("token asked for %d times, want 3", got)
	}
	if got := testutil.ToFloat64(rc.c.metrics.reconnects); got != 2 {
		t.Errorf("reconnects = %v, want 2", got)
	}
}

func TestClientConfigValidate(t *testing.T) {
	good := DefaultClientConfig()
	good.Address, good.NodeID = "x:1", "n"
	cases := []struct {
		name string
		edit func(*ClientConfig)
		want string
	}{
		{"good", func(*ClientConfig) {}, ""},
		{"no address", func(c *ClientConfig) { c.Address = "" }, "address"},
		{"no node", func(c *ClientConfig) { c.NodeID = "" }, "node ID"},
		{"no types", func(c *ClientConfig) { c.TypeURLs = nil }, "type URLs"},
		{"repeated type", func(c *ClientConfig) { c.TypeURLs = []string{TypeAddress, TypeAddress} }, "repeated"},
		{"backoff", func(c *ClientConfig) { c.MaxBackoff = c.MinBackoff / 2 }, "backoff"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			c.TypeURLs = slices.Clone(good.TypeURLs)
			tc.edit(&c)
			err := c.Validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate() = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}
