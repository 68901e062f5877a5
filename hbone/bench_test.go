package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const benchChunk = 1 << 20

// BenchmarkStreamThroughput moves b.N MiB one way over loopback: plain TCP,
// plain TLS 1.3 with the same certificates and settings, and one HBONE stream
// through Pool and Server. The receiver discards; the clock stops when it has
// seen everything.
func BenchmarkStreamThroughput(b *testing.B) {
	b.Run("tcp", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		recv := make(chan int64, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				recv <- -1
				return
			}
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			recv <- n
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		runThroughput(b, c, func() { c.(*net.TCPConn).CloseWrite() }, recv)
	})

	b.Run("tls", func(b *testing.B) {
		ca := newTestCA(b, "cluster.local")
		srv := ca.leaf(b, "server", "backend", time.Time{}, time.Time{})
		cli := ca.leaf(b, "client", "frontend", time.Time{}, time.Time{})
		ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLSConfig(ServerIdentity{SVID: srv, Bundle: ca.bundle, TrustDomain: ca.td}))
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		recv := make(chan int64, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				recv <- -1
				return
			}
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			recv <- n
		}()
		c, err := tls.Dial("tcp", ln.Addr().String(), clientTLSConfig(&Request{SVID: cli, Bundle: ca.bundle, Expected: []spiffeid.ID{srv.ID}}))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		runThroughput(b, c, func() { c.CloseWrite() }, recv)
	})

	b.Run("hbone", func(b *testing.B) {
		recv := make(chan int64, 1)
		h := HandlerFunc(func(_ context.Context, in *Inbound) {
			s, err := in.Accept()
			if err != nil {
				recv <- -1
				return
			}
			defer s.Close()
			n, _ := io.Copy(io.Discard, s)
			s.CloseWrite()
			recv <- n
		})
		e := newBenchEnv(b, h)
		s, err := e.pool.Connect(context.Background(), e.request())
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		runThroughput(b, s, func() { s.CloseWrite() }, recv)
	})
}

func runThroughput(b *testing.B, w io.Writer, closeWrite func(), recv <-chan int64) {
	buf := randomBytes(benchChunk, 3)
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := w.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	closeWrite()
	n := <-recv
	b.StopTimer()
	if n != int64(b.N)*benchChunk {
		b.Fatalf("receiver got %d bytes, want %d", n, int64(b.N)*benchChunk)
	}
}
