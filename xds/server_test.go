package xds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// quiet is how long a test waits to be sure that no response comes.
const quiet = 300 * time.Millisecond

func TestCacheReplace(t *testing.T) {
	c := NewCache()
	steps := []struct {
		name                 string
		set                  map[string]proto.Message
		wantUpdated, wantRem int
		wantLen              int
	}{
		{"first set", addresses("a", "10.0.0.1", "b", "10.0.0.2"), 2, 0, 2},
		{"same again", addresses("a", "10.0.0.1", "b", "10.0.0.2"), 0, 0, 2},
		{"one changed, one added, one removed", addresses("a", "10.0.0.9", "c", "10.0.0.3"), 2, 1, 2},
		{"wrong message type dropped", map[string]proto.Message{
			"a": workload("a", "10.0.0.9"),
			"c": workload("c", "10.0.0.3"),
			"w": &workloadapi.Workload{Uid: "w"},
		}, 0, 0, 2},
		{"nil dropped, held one removed", map[string]proto.Message{"a": workload("a", "10.0.0.9"), "c": nil}, 0, 1, 1},
		{"emptied", nil, 0, 1, 0},
	}
	for _, s := range steps {
		u, r := c.Replace(TypeAddress, s.set)
		if u != s.wantUpdated || r != s.wantRem || c.Len(TypeAddress) != s.wantLen {
			t.Errorf("%s: Replace = (%d, %d), Len %d; want (%d, %d), Len %d", s.name, u, r, c.Len(TypeAddress), s.wantUpdated, s.wantRem, s.wantLen)
		}
	}
	if n := c.Len("type.googleapis.com/unknown"); n != 0 {
		t.Errorf("Len(unknown type) = %d", n)
	}

	// The same message objects again (an incremental caller's unchanged
	// resources) are recognised without encoding; a new object with other
	// content under a held name is still an update.
	set := addresses("a", "10.0.0.1", "b", "10.0.0.2")
	c.Replace(TypeAddress, set)
	if u, r := c.Replace(TypeAddress, set); u != 0 || r != 0 {
		t.Errorf("same objects again: Replace = (%d, %d), want (0, 0)", u, r)
	}
	next := maps.Clone(set)
	next["b"] = addresses("b", "10.0.0.22")["b"]
	if u, r := c.Replace(TypeAddress, next); u != 1 || r != 0 {
		t.Errorf("one object replaced: Replace = (%d, %d), want (1, 0)", u, r)
	}
}

// TestServerDeltas: a wildcard subscriber gets everything, then per Replace
// exactly the changed and removed names, once, and nothing for a Replace
// that changes nothing.
func TestServerDeltas(t *testing.T) {
	p := newPKI(t)
	cache := NewCache()
	cache.Replace(TypeAddress, addresses("a", "10.0.0.1", "b", "10.0.0.2", "c", "10.0.0.3"))
	srv := serve(t, p, "127.0.0.1:0", cache, testAuth, DefaultServerConfig())
	st := rawStream(t, p, srv.addr, testToken)
	rcv := receive(st)
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeAddress}); err != nil {
		t.Fatal(err)
	}
	first := rcv.next(t)
	if got, want := sorted(names(first.GetResources())), []string{"a", "b", "c"}; !slices.Equal(got, want) {
		t.Fatalf("initial response names %v, want %v", got, want)
	}
	for _, r := range first.GetResources() {
		var a workloadapi.Address
		if r.GetResource().GetTypeUrl() != TypeAddress || proto.Unmarshal(r.GetResource().GetValue(), &a) != nil || a.GetWorkload().GetUid() != r.GetName() {
			t.Errorf("resource %s does not decode as its Address (type %q)", r.GetName(), r.GetResource().GetTypeUrl())
		}
		if r.GetVersion() == "" {
			t.Errorf("resource %s has no version", r.GetName())
		}
	}
	if err := st.Send(ack(first)); err != nil {
		t.Fatal(err)
	}

	cache.Replace(TypeAddress, addresses("a", "10.0.0.1", "b", "10.0.0.20", "d", "10.0.0.4"))
	next := rcv.next(t)
	if got, want := sorted(names(next.GetResources())), []string{"b", "d"}; !slices.Equal(got, want) {
		t.Errorf("update names %v, want %v (changed and added only)", got, want)
	}
	if got, want := next.GetRemovedResources(), []string{"c"}; !slices.Equal(got, want) {
		t.Errorf("removed %v, want %v", got, want)
	}
	if err := st.Send(ack(next)); err != nil {
		t.Fatal(err)
	}
	cache.Replace(TypeAddress, addresses("a", "10.0.0.1", "b", "10.0.0.20", "d", "10.0.0.4"))
	rcv.none(t, quiet)

	waitFor(t, "two ACKs counted", func() bool { return testutil.ToFloat64(srv.srv.metrics.acks.WithLabelValues(TypeAddress)) == 2 })
	if got := testutil.ToFloat64(srv.srv.metrics.pushes.WithLabelValues(TypeAddress)); got != 2 {
		t.Errorf("pushes = %v, want 2", got)
	}
	if got := testutil.ToFloat64(srv.srv.metrics.streams); got != 1 {
		t.Errorf("connected streams = %v, want 1", got)
	}
	if n, err := testutil.GatherAndCount(srv.reg, "warren_xds_resources"); err != nil || n != 2 {
		t.Errorf("warren_xds_resources series = %d, %v; want 2 (one per type)", n, err)
	}
}

// TestServerNACK: a NACK is counted and not answered with the same
// version; the next change brings only what changed since.
func TestServerNACK(t *testing.T) {
	p := newPKI(t)
	cache := NewCache()
	cache.Replace(TypeAddress, addresses("a", "10.0.0.1", "b", "10.0.0.2"))
	srv := serve(t, p, "127.0.0.1:0", cache, testAuth, DefaultServerConfig())
	st := rawStream(t, p, srv.addr, testToken)
	rcv := receive(st)
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeAddress}); err != nil {
		t.Fatal(err)
	}
	first := rcv.next(t)
	nack := ack(first)
	nack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "b: bad address"}
	if err := st.Send(nack); err != nil {
		t.Fatal(err)
	}
	rcv.none(t, quiet)
	if got := testutil.ToFloat64(srv.srv.metrics.nacks.WithLabelValues(TypeAddress)); got != 1 {
		t.Errorf("nacks = %v, want 1", got)
	}
	if got := testutil.ToFloat64(srv.srv.metrics.acks.WithLabelValues(TypeAddress)); got != 0 {
		t.Errorf("acks = %v, want 0", got)
	}
	cache.Replace(TypeAddress, addresses("a", "10.0.0.1", "b", "10.0.0.2", "c", "10.0.0.3"))
	if got := names(rcv.next(t).GetResources()); !slices.Equal(got, []string{"c"}) {
		t.Errorf("after NACK, update names %v, want [c]", got)
	}
}

// TestServerInitialVersions: a reconnecting client names what it holds and
// gets only the differences, including removals of names the server no
// longer has.
func TestServerInitialVersions(t *testing.T) {
	p := newPKI(t)
	cache := NewCache()
	cache.Replace(TypeAddress, addresses("same", "10.0.0.1", "changed", "10.0.0.2", "new", "10.0.0.3"))
	srv := serve(t, p, "127.0.0.1:0", cache, testAuth, DefaultServerConfig())

	// Learn the current version of "same" as a client would have.
	probe := rawStream(t, p, srv.addr, testToken)
	if err := probe.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeAddress}); err != nil {
		t.Fatal(err)
	}
	versions := map[string]string{}
	for _, r := range receive(probe).next(t).GetResources() {
		versions[r.GetName()] = r.GetVersion()
	}

	st := rawStream(t, p, srv.addr, testToken)
	rcv := receive(st)
	err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeAddress, InitialResourceVersions: map[string]string{
		"same":    versions["same"],
		"changed": "an-old-version",
		"gone":    "whatever",
	}})
	if err != nil {
		t.Fatal(err)
	}
	resp := rcv.next(t)
	if got, want := sorted(names(resp.GetResources())), []string{"changed", "new"}; !slices.Equal(got, want) {
		t.Errorf("resources %v, want %v", got, want)
	}
	if got, want := resp.GetRemovedResources(), []string{"gone"}; !slices.Equal(got, want) {
		t.Errorf("removed %v, want %v", got, want)
	}

	// ztunnel names what it holds without versions: everything it holds
	// is sent again, and what is gone is removed.
	zt := rawStream(t, p, srv.addr, testToken)
	err = zt.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeAddress, InitialResourceVersions: map[string]string{"same": "", "gone": ""}})
	if err != nil {
		t.Fatal(err)
	}
	resp = receive(zt).next(t)
	if got, want := sorted(names(resp.GetResources())), []string{"changed", "new", "same"}; !slices.Equal(got, want) {
		t.Errorf("ztunnel-style reconnect: resources %v, want %v", got, want)
	}
	if got, want := resp.GetRemovedResources(), []string{"gone"}; !slices.Equal(got, want) {
		t.Errorf("ztunnel-style reconnect: removed %v, want %v", got, want)
	}
}

// TestServerExplicitSubscription: a client that names resources gets only
// those, and is not told about changes to others.
func TestServerExplicitSubscription(t *testing.T) {
	p := newPKI(t)
	cache := NewCache()
	cache.Replace(TypeAddress, addresses("a", "10.0.0.1", "b", "10.0.0.2"))
	srv := serve(t, p, "127.0.0.1:0", cache, testAuth, DefaultServerConfig())
	st := rawStream(t, p, srv.addr, testToken)
	rcv := receive(st)
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeAddress, ResourceNamesSubscribe: []string{"a", "missing"}}); err != nil {
		t.Fatal(err)
	}
	first := rcv.next(t)
	if got := names(first.GetResources()); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("explicit subscription got %v, want [a]", got)
	}
	if err := st.Send(ack(first)); err != nil {
		t.Fatal(err)
	}
	cache.Replace(TypeAddress, addresses("a", "10.0.0.1", "b", "10.0.0.20", "c", "10.0.0.3"))
	rcv.none(t, quiet)
	cache.Replace(TypeAddress, addresses("b", "10.0.0.20", "c", "10.0.0.3", "missing", "10.0.0.4"))
	resp := rcv.next(t)
	if got := names(resp.GetResources()); !slices.Equal(got, []string{"missing"}) {
		t.Errorf("resources %v, want [missing]", got)
	}
	if got := resp.GetRemovedResources(); !slices.Equal(got, []string{"a"}) {
		t.Errorf("removed %v, want [a]", got)
	}
}

// TestServerManyStreams: concurrent subscribers each get the full set and
// then the same delta.
func TestServerManyStreams(t *testing.T) {
	const n = 40
	p := newPKI(t)
	cache := NewCache()
	cache.Replace(TypeAddress, addresses("a", "10.0.0.1", "b", "10.0.0.2"))
	cache.Replace(TypeAuthorization, map[string]proto.Message{"ns/p": &security.Authorization{Name: "p", Namespace: "ns"}})
	srv := serve(t, p, "127.0.0.1:0", cache, testAuth, DefaultServerConfig())
	type sub struct {
		st  discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
		rcv *receiver
	}
	subs := make([]sub, n)
	for i := range subs {
		st := rawStream(t, p, srv.addr, testToken)
		subs[i] = sub{st, receive(st)}
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	check := func(i int, want map[string][]string) {
		defer wg.Done()
		got := map[string][]string{}
		for range want {
			select {
			case res := <-subs[i].rcv.ch:
				if res.err != nil {
					errs <- res.err
					return
				}
				got[res.resp.GetTypeUrl()] = append(sorted(names(res.resp.GetResources())), res.resp.GetRemovedResources()...)
				if err := subs[i].st.Send(ack(res.resp)); err != nil {
					errs <- err
					return
				}
			case <-time.After(10 * time.Second):
				errs <- fmt.Errorf("stream %d: timed out", i)
				return
			}
		}
		if d := cmp.Diff(want, got); d != "" {
			errs <- fmt.Errorf("stream %d (-want +got):\n%s", i, d)
		}
	}
	for i := range subs {
		for _, typ := range []string{TypeAddress, TypeAuthorization} {
			if err := subs[i].st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ}); err != nil {
				t.Fatal(err)
			}
		}
		wg.Add(1)
		go check(i, map[string][]string{TypeAddress: {"a", "b"}, TypeAuthorization: {"ns/p"}})
	}
	wg.Wait()
	waitFor(t, "every ACK", func() bool {
		return testutil.ToFloat64(srv.srv.metrics.acks.WithLabelValues(TypeAddress)) == n
	})
	if got := testutil.ToFloat64(srv.srv.metrics.streams); got != n {
		t.Errorf("connected streams = %v, want %d", got, n)
	}
	cache.Replace(TypeAddress, addresses("b", "10.0.0.2", "c", "10.0.0.3"))
	for i := range subs {
		wg.Add(1)
		// "a" is the removal, listed after the resources.
		go check(i, map[string][]string{TypeAddress: {"c", "a"}})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

type errAuth struct{ err error }

func (a errAuth) Authenticate(context.Context) (string, error) { return "", a.err }

// TestServerRefuses: a refused stream ends with the authenticator's code
// before anything is sent.
func TestServerRefuses(t *testing.T) {
	p := newPKI(t)
	cache := NewCache()
	cache.Replace(TypeAddress, addresses("a", "10.0.0.1"))
	cases := []struct {
		name  string
		authn Authenticator
		token string
		want  codes.Code
	}{
		{"no token", testAuth, "", codes.Unauthenticated},
		{"unknown token", testAuth, "stolen", codes.Unauthenticated},
		{"permission denied", errAuth{status.Error(codes.PermissionDenied, "not a node agent")}, testToken, codes.PermissionDenied},
		{"error without a code", errAuth{errors.New("nope")}, testToken, codes.Unauthenticated},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := serve(t, p, "127.0.0.1:0", cache, tc.authn, DefaultServerConfig())
			st := rawStream(t, p, srv.addr, tc.token)
			// The request may or may not be written before the refusal
			// arrives; either way Recv must return the status, not data.
			_ = st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeAddress})
			resp, err := st.Recv()
			if resp != nil {
				t.Fatalf("refused stream received %v", names(resp.GetResources()))
			}
			if status.Code(err) != tc.want {
				t.Fatalf("Recv error %v, want code %v", err, tc.want)
			}
			if got := testutil.ToFloat64(srv.srv.metrics.refused.WithLabelValues(tc.want.String())); got != 1 {
				t.Errorf("refused{%s} = %v, want 1", tc.want, got)
			}
		})
	}
}

func TestServerMaxStreams(t *testing.T) {
	p := newPKI(t)
	cache := NewCache()
	srv := serve(t, p, "127.0.0.1:0", cache, testAuth, ServerConfig{MaxStreams: 1})
	first := rawStream(t, p, srv.addr, testToken)
	if err := first.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeAddress}); err != nil {
		t.Fatal(err)
	}
	receive(first).next(t)
	second := rawStream(t, p, srv.addr, testToken)
	_ = second.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeAddress})
	if _, err := second.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second stream: %v, want ResourceExhausted", err)
	}
}

func TestServerUnknownType(t *testing.T) {
	p := newPKI(t)
	srv := serve(t, p, "127.0.0.1:0", NewCache(), testAuth, DefaultServerConfig())
	st := rawStream(t, p, srv.addr, testToken)
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: "type.googleapis.com/made.Up"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Recv: %v, want InvalidArgument", err)
	}
}
