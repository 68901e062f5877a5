package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
)

const benchChunk = 1 << 20

// BenchmarkStreamThroughput moves b.N MiB one way over loopback: plain TCP,
// plain TLS 1.3 with the same certificates and settings, one HBONE stream
// through Pool and Server, and one CONNECT stream through the stock
// golang.org/x/net/http2 client and server ("naive"), so the hand-written
// framing is measured against the library in the same run. The receiver
// discards; the clock stops when it has seen everything.
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

	b.Run("naive", func(b *testing.B) { benchNaive(b) })
}

// benchNaive tunnels one CONNECT stream through http2.Transport and an
// http.Server configured for HTTP/2, with the same certificates and TLS
// settings as HBONE and the libraries' default windows and buffers. The
// handler mirrors the hbone sub-benchmark's: it accepts, copies the request
// body to its sink (a discarding counter) and the source (empty) back to
// the response, and ends the response after the client's END_STREAM.
func benchNaive(b *testing.B) {
	ca := newTestCA(b, "cluster.local")
	srvID := ca.leaf(b, "server", "backend", time.Time{}, time.Time{})
	cli := ca.leaf(b, "client", "frontend", time.Time{}, time.Time{})
	recv := make(chan int64, 1)
	srv := &http.Server{
		TLSConfig: serverTLSConfig(ServerIdentity{SVID: srvID, Bundle: ca.bundle, TrustDomain: ca.td}),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodConnect {
				http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
				return
			}
			w.WriteHeader(http.StatusOK)
			http.NewResponseController(w).Flush()
			up := make(chan struct{})
			go func() {
				// The downstream direction: the benchmark's source sends nothing.
				io.Copy(w, eofReader{})
				close(up)
			}()
			n, _ := io.Copy(io.Discard, r.Body)
			<-up
			recv <- n
		}),
	}
	if err := http2.ConfigureServer(srv, &http2.Server{}); err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	defer func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			b.Errorf("serve: %v", err)
		}
	}()

	tr := &http2.Transport{TLSClientConfig: clientTLSConfig(&Request{SVID: cli, Bundle: ca.bundle, Expected: []spiffeid.ID{srvID.ID}})}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	req := &http.Request{
		Method:        http.MethodConnect,
		URL:           &url.URL{Scheme: "https", Host: ln.Addr().String()},
		Host:          "10.0.0.2:8080",
		Header:        http.Header{},
		Body:          pr,
		ContentLength: -1,
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("CONNECT: %s", resp.Status)
	}
	runThroughput(b, pw, func() { pw.Close() }, recv)
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		b.Fatalf("reading response: %v", err)
	}
}

// eofReader is an empty source.
type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

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

// BenchmarkRoundTrip measures per-message overhead: one stream through Pool
// and Server over loopback to an echo handler, each op writing one byte and
// reading it back, so the cost is framing, flushing and wake-ups rather than
// bytes.
func BenchmarkRoundTrip(b *testing.B) {
	h := HandlerFunc(func(_ context.Context, in *Inbound) {
		s, err := in.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		var buf [1]byte
		for {
			if _, err := s.Read(buf[:]); err != nil {
				return
			}
			if _, err := s.Write(buf[:]); err != nil {
				return
			}
		}
	})
	e := newBenchEnv(b, h)
	s, err := e.pool.Connect(context.Background(), e.request())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var buf [1]byte
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := s.Write(buf[:]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(s, buf[:]); err != nil {
			b.Fatal(err)
		}
	}
}
