package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/classify"
	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/hbone"
	"github.com/warren-mesh/warren/identity"
	"github.com/warren-mesh/warren/state"
)

// recorder is an Observer that keeps closed records.
type recorder struct {
	mu     sync.Mutex
	opened int
	closed []flow.Record
	done   chan struct{}
}

func (r *recorder) Opened(*flow.Record) { r.mu.Lock(); r.opened++; r.mu.Unlock() }
func (r *recorder) Closed(rec *flow.Record) {
	r.mu.Lock()
	r.closed = append(r.closed, *rec)
	r.mu.Unlock()
	r.done <- struct{}{}
}

// waitClosed returns the next n closed records.
func (r *recorder) waitClosed(t *testing.T, n int) []flow.Record {
	t.Helper()
	for range n {
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			t.Fatal("connection records did not arrive")
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.closed
	r.closed = nil
	return out
}

type podMap map[netip.Addr]*Pod

func (m podMap) PodByIP(ip netip.Addr) (*Pod, bool) { p, ok := m[ip]; return p, ok }

type poolTunnel struct{ p *hbone.Pool }

func (t poolTunnel) Connect(ctx context.Context, req *hbone.Request) (Duplex, error) {
	return t.p.Connect(ctx, req)
}

// loopMesh is the whole data path in one process on loopback: a client
// "pod" at 127.0.0.11, a server "pod" at 127.0.0.12 with its HBONE listener
// and application, and fake capture (the test dials the outbound listener and
// origDst answers the destination it chose).
type loopMesh struct {
	outLn    net.Listener
	appLn    net.Listener
	appAddr  netip.AddrPort
	client   netip.Addr
	obs      *recorder
	tracker  *Tracker
	mu       sync.Mutex
	nextDest netip.AddrPort
}

func newLoopMesh(t *testing.T) *loopMesh {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.New(slog.DiscardHandler)
	clientIP, serverIP := netip.MustParseAddr("127.0.0.11"), netip.MustParseAddr("127.0.0.12")

	localCA, err := ca.New(ca.DefaultConfig(), log)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := identity.NewManager(identity.DefaultConfig(), identity.LocalIssuer(localCA), log)
	if err != nil {
		t.Fatal(err)
	}
	if err := ids.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ids.Stop)

	// The server pod's HBONE port must be free on 127.0.0.12: take one and
	// make it the classifier's tunnel port.
	tunLn, err := net.Listen("tcp", netip.AddrPortFrom(serverIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	tunPort := uint16(tunLn.Addr().(*net.TCPAddr).Port)
	appLn, err := net.Listen("tcp", netip.AddrPortFrom(serverIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { appLn.Close() })

	ws := []*state.Workload{
		{UID: "client", Name: "client", Namespace: "a", ServiceAccount: "web", IPs: []netip.Addr{clientIP}, Protocol: state.ProtocolHBONE},
		{UID: "server", Name: "server", Namespace: "b", ServiceAccount: "api", IPs: []netip.Addr{serverIP}, Protocol: state.ProtocolHBONE},
	}
	snap, err := state.NewSnapshot("t", ws, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	store := state.NewStore()
	store.Swap(snap)

	acquire := func(w *state.Workload) *Pod {
		src, release, err := ids.Acquire(ctx, w.Identity())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(release)
		// A pod's own sockets carry its address, as they would from inside
		// its network namespace.
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: w.IPs[0].AsSlice()}}
		return &Pod{UID: w.UID, IPs: w.IPs, SVID: src,
			Dial: func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
				return d.DialContext(ctx, "tcp", dst.String())
			},
			// Loopback addresses are local, so binding the client's address
			// needs no IP_TRANSPARENT here.
			DialFrom: func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
				d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
				return d.DialContext(ctx, "tcp", dst.String())
			}}
	}
	clientPod, serverPod := acquire(ws[0]), acquire(ws[1])

	m := &loopMesh{appLn: appLn, appAddr: appLn.Addr().(*net.TCPAddr).AddrPort(), client: clientIP,
		obs: &recorder{done: make(chan struct{}, 100)}, tracker: NewTracker()}
	env := Env{Store: store, Tracker: m.tracker, Observer: m.obs, Log: log,
		OrigDst: func(*net.TCPConn) (netip.AddrPort, error) {
			m.mu.Lock()
			defer m.mu.Unlock()
			return m.nextDest, nil
		}}
	cls, err := classify.New(classify.Config{HBONEPort: tunPort, Reserved: []uint16{tunPort, 15001}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pool := hbone.NewPool(hbone.DefaultConfig(), log)
	t.Cleanup(func() { pool.Close() })
	out := NewOutbound(DefaultConfig(), env, cls, poolTunnel{pool}, ids.Bundle())
	in := NewInbound(DefaultConfig(), env, podMap{serverIP: serverPod})
	srv := hbone.NewServer(hbone.DefaultConfig(), in, log)
	go srv.Serve(tunLn, hbone.ServerIdentity{SVID: serverPod.SVID, Bundle: ids.Bundle(), TrustDomain: localCA.TrustDomain()})
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	})

	if m.outLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.outLn.Close() })
	go out.Serve(ctx, m.outLn, clientPod)
	return m
}

// dial opens an application connection "to" dst from the client pod.
func (m *loopMesh) dial(t *testing.T, dst netip.AddrPort) *net.TCPConn {
	t.Helper()
	m.mu.Lock()
	m.nextDest = dst
	m.mu.Unlock()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: m.client.AsSlice()}}
	c, err := d.Dial("tcp", m.outLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c.(*net.TCPConn)
}

// waitTracked waits until n connections are tracked: the inbound side
// registers once its stream is accepted, which may be just after the
// application saw the connection.
func (m *loopMesh) waitTracked(n int) int {
	deadline := time.Now().Add(2 * time.Second)
	for len(m.tracker.Connections()) < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return len(m.tracker.Connections())
}

func (m *loopMesh) accept(t *testing.T) *net.TCPConn {
	t.Helper()
	m.appLn.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	c, err := m.appLn.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c.(*net.TCPConn)
}

func TestLoopbackThroughHBONE(t *testing.T) {
	m := newLoopMesh(t)
	c := m.dial(t, m.appAddr)
	app := m.accept(t)
	if got := app.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != m.client {
		t.Errorf("application sees source %s, want the client pod %s", got, m.client)
	}
	if n := m.waitTracked(2); n != 2 {
		t.Errorf("tracker lists %d live connections, want 2 (outbound and inbound)", n)
	}
	c.Write([]byte("hello"))
	c.CloseWrite()
	got, _ := io.ReadAll(app)
	app.Write(bytes.ToUpper(got))
	app.CloseWrite()
	reply, err := io.ReadAll(c)
	if err != nil || string(reply) != "HELLO" {
		t.Fatalf("reply %q, %v", reply, err)
	}
	c.Close()
	app.Close()
	recs := m.obs.waitClosed(t, 2)
	for _, r := range recs {
		if r.Path != flow.PathHBONE || r.Sent != 5 || r.Received != 5 || !r.MTLS || r.Reason != flow.ReasonNone ||
			r.SrcIdentity != "spiffe://cluster.local/ns/a/sa/web" || r.DstIdentity != "spiffe://cluster.local/ns/b/sa/api" {
			t.Errorf("%s record: %+v", r.Direction, r)
		}
	}
	if len(m.tracker.Connections()) != 0 {
		t.Error("closed connections are still tracked")
	}
}

func TestLoopbackSelfLoopRefused(t *testing.T) {
	m := newLoopMesh(t)
	m.mu.Lock()
	m.nextDest = netip.MustParseAddrPort("127.0.0.12:15001")
	m.mu.Unlock()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: m.client.AsSlice()}}
	// The reset may even beat connect(2)'s return.
	c, err := d.Dial("tcp", m.outLn.Addr().String())
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(c)
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("self-loop connection: %v, want a reset", err)
	}
	recs := m.obs.waitClosed(t, 1)
	if recs[0].Reason != flow.ReasonSelfLoop || recs[0].Path != flow.PathDenied {
		t.Errorf("record %+v, want denied self loop", recs[0])
	}
}

func TestTrackerCloseIf(t *testing.T) {
	m := newLoopMesh(t)
	c := m.dial(t, m.appAddr)
	app := m.accept(t)
	defer app.Close()
	m.waitTracked(2)
	n := m.tracker.CloseIf(func(r *flow.Record) bool { return r.Direction == flow.Inbound })
	if n != 1 {
		t.Fatalf("CloseIf closed %d connections, want 1", n)
	}
	// The inbound side was reset: both applications see the connection die.
	if _, err := io.ReadAll(app); err == nil {
		t.Error("application connection ended cleanly, want a reset")
	}
	if _, err := io.ReadAll(c); err == nil {
		t.Error("client connection ended cleanly, want a reset")
	}
	m.obs.waitClosed(t, 2)
}
