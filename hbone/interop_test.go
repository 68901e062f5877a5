package hbone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	istiohbone "istio.io/istio/pkg/hbone"
)

// echoServer is a plain TCP echo that half-closes after the client's FIN.
func echoServer(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// TestInteropPoolToIstioServer: Warren's Pool against Istio's Go HBONE
// server (net/http + x/net/http2) behind our server TLS settings.
func TestInteropPoolToIstioServer(t *testing.T) {
	checkLeaks(t)
	ca := newTestCA(t, "cluster.local")
	srvSVID := ca.leaf(t, "istio", "server", time.Time{}, time.Time{})
	client := ca.leaf(t, "client", "frontend", time.Time{}, time.Time{})
	upstream := echoServer(t)

	srv := istiohbone.NewServer()
	srv.TLSConfig = serverTLSConfig(ServerIdentity{SVID: srvSVID, Bundle: ca.bundle, TrustDomain: ca.td})
	srv.Protocols.SetHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	pool := NewPool(DefaultConfig(), slogDiscard())
	t.Cleanup(func() {
		pool.Close()
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("istio server: %v", err)
		}
	})

	req := &Request{
		SourceID:  client.ID,
		SVID:      client,
		Bundle:    ca.bundle,
		Expected:  []spiffeid.ID{srvSVID.ID},
		Target:    ln.Addr().(*net.TCPAddr).AddrPort(),
		Authority: upstream,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := pool.Connect(ctx, req)
	if err != nil {
		t.Fatalf("connect through istio server: %v", err)
	}
	defer s.Close()
	want := randomBytes(4<<20, 7)
	go func() {
		s.Write(want)
		s.CloseWrite() // our FIN must reach the upstream, whose FIN comes back
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("echo through istio server differs: %d bytes, want %d", len(got), len(want))
	}
}

// TestInteropIstioDialerToServer: Istio's HBONE dialer (x/net http2
// Transport) against Warren's Server.
func TestInteropIstioDialerToServer(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, DefaultConfig(), echo())
	clientTLS := clientTLSConfig(&Request{SVID: e.client, Bundle: e.ca.bundle, Expected: []spiffeid.ID{e.serverID}})
	d := istiohbone.NewDialer(istiohbone.Config{ProxyAddress: e.addr.String(), TLS: clientTLS})
	c, err := d.DialContext(context.Background(), "tcp", e.request().Authority.String())
	if err != nil {
		t.Fatalf("istio dial: %v", err)
	}
	defer c.Close()
	want := randomBytes(1<<20, 9)
	go c.Write(want)
	got := make([]byte, len(want))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("echo through istio dialer differs")
	}
	c.Close()
	// Istio's dialer owns an http2.Transport we cannot close; closing its
	// pipe ends the stream, then our Shutdown (in cleanup) closes the
	// connection under it and its goroutines exit.
	waitFor(t, "stream end", func() bool { return e.server.streams() == 0 })
}
