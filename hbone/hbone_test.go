package hbone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func TestEchoLarge(t *testing.T) {
	checkLeaks(t)
	size := 64 << 20
	if testing.Short() {
		size = 8 << 20
	}
	e := newEnv(t, DefaultConfig(), echo())
	s := e.connect(t)
	defer s.Close()
	want := randomBytes(size, 1)
	got := make(chan []byte, 1)
	go func() {
		b, err := io.ReadAll(s)
		if err != nil {
			t.Errorf("reading echo: %v", err)
		}
		got <- b
	}()
	// Odd-sized writes exercise frame and chunk boundaries.
	for p := want; len(p) > 0; {
		n := min(len(p), 777777)
		if _, err := s.Write(p[:n]); err != nil {
			t.Fatalf("write: %v", err)
		}
		p = p[n:]
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	b := <-got
	if !bytes.Equal(b, want) {
		t.Fatalf("echo differs: got %d bytes, want %d", len(b), len(want))
	}
}

func TestConcurrentStreamsOneKey(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, DefaultConfig(), echo())
	const streams = 200
	var wg sync.WaitGroup
	hold := make(chan struct{})
	var failed atomic.Int32
	opened := make(chan struct{}, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := e.pool.Connect(ctx, e.request())
			if err != nil {
				t.Errorf("connect %d: %v", i, err)
				failed.Add(1)
				opened <- struct{}{}
				return
			}
			defer s.Close()
			opened <- struct{}{}
			<-hold
			want := randomBytes(64<<10, uint64(i))
			go func() {
				s.Write(want)
				s.CloseWrite()
			}()
			got, err := io.ReadAll(s)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("stream %d: echo mismatch (%d bytes, err %v)", i, len(got), err)
			}
		}()
	}
	for range streams {
		<-opened
	}
	// All 200 open at once: the client limit of 100 per connection means two.
	if got := e.pool.connCount(); got != 2 && failed.Load() == 0 {
		t.Errorf("pool has %d connections for %d streams, want 2", got, streams)
	}
	close(hold)
	wg.Wait()
}

func TestNewConnectionAtStreamLimit(t *testing.T) {
	checkLeaks(t)
	for _, tc := range []struct {
		name        string
		clientLimit uint32
		serverLimit uint32
		streams     int
		wantConns   int
	}{
		{"client limit", 2, 200, 5, 3},
		{"server limit lower", 100, 1, 3, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.ClientStreamLimit = tc.clientLimit
			cfg.MaxConcurrentStreams = tc.serverLimit
			e := newEnv(t, cfg, echo())
			var ss []*Stream
			for range tc.streams {
				ss = append(ss, e.connect(t))
			}
			if got := e.pool.connCount(); got != tc.wantConns {
				t.Errorf("pool connections = %d, want %d", got, tc.wantConns)
			}
			for _, s := range ss {
				s.Close()
			}
		})
	}
}

func TestOneDialPerKey(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, DefaultConfig(), echo())
	var dials atomic.Int32
	req := e.request()
	req.Dial = func(ctx context.Context, target netip.AddrPort) (net.Conn, error) {
		dials.Add(1)
		time.Sleep(20 * time.Millisecond) // widen the race window
		return defaultDial(ctx, target)
	}
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := e.pool.Connect(ctx, req)
			if err != nil {
				t.Errorf("connect: %v", err)
				return
			}
			s.Close()
		}()
	}
	wg.Wait()
	if got := dials.Load(); got != 1 {
		t.Errorf("dials = %d, want 1", got)
	}
}

func TestHalfClose(t *testing.T) {
	checkLeaks(t)
	t.Run("client first", func(t *testing.T) {
		// The client sends and half-closes; the server answers after EOF.
		h := HandlerFunc(func(ctx context.Context, in *Inbound) {
			s, _ := in.Accept()
			defer s.Close()
			b, err := io.ReadAll(s)
			if err != nil {
				t.Errorf("server read: %v", err)
			}
			s.Write(append([]byte("got "), b...))
			s.CloseWrite()
		})
		e := newEnv(t, DefaultConfig(), h)
		s := e.connect(t)
		defer s.Close()
		s.Write([]byte("hello"))
		s.CloseWrite()
		got, err := io.ReadAll(s)
		if err != nil {
			t.Fatalf("client read: %v", err)
		}
		if diff := cmp.Diff("got hello", string(got)); diff != "" {
			t.Errorf("reply (-want +got):\n%s", diff)
		}
		if _, err := s.Write([]byte("x")); err == nil {
			t.Error("write after CloseWrite succeeded")
		}
	})
	t.Run("server first", func(t *testing.T) {
		// The server greets and half-closes at once, then still reads.
		h := HandlerFunc(func(ctx context.Context, in *Inbound) {
			s, _ := in.Accept()
			defer s.Close()
			s.Write([]byte("banner"))
			s.CloseWrite()
			b, err := io.ReadAll(s)
			if err != nil {
				t.Errorf("server read: %v", err)
			}
			if string(b) != "late data" {
				t.Errorf("server got %q", b)
			}
		})
		e := newEnv(t, DefaultConfig(), h)
		s := e.connect(t)
		defer s.Close()
		got, err := io.ReadAll(s)
		if err != nil || string(got) != "banner" {
			t.Fatalf("client read %q, %v", got, err)
		}
		if _, err := s.Write([]byte("late data")); err != nil {
			t.Fatalf("write after server FIN: %v", err)
		}
		s.CloseWrite()
		waitFor(t, "stream to end", func() bool { return e.pool.streams() == 0 })
	})
}

func TestResetPropagation(t *testing.T) {
	checkLeaks(t)
	t.Run("client resets", func(t *testing.T) {
		serverErr := make(chan error, 1)
		h := HandlerFunc(func(ctx context.Context, in *Inbound) {
			s, _ := in.Accept()
			defer s.Close()
			_, err := io.ReadAll(s)
			serverErr <- err
			<-ctx.Done() // the reset cancels the handler's context
		})
		e := newEnv(t, DefaultConfig(), h)
		s := e.connect(t)
		s.Write([]byte("some"))
		s.Close()
		if err := <-serverErr; !errors.Is(err, ErrReset) {
			t.Errorf("server read error = %v, want ErrReset", err)
		}
	})
	t.Run("server resets", func(t *testing.T) {
		h := HandlerFunc(func(ctx context.Context, in *Inbound) {
			s, _ := in.Accept()
			s.Write([]byte("bye"))
			s.Close()
		})
		e := newEnv(t, DefaultConfig(), h)
		s := e.connect(t)
		defer s.Close()
		_, err := io.ReadAll(s)
		if !errors.Is(err, ErrReset) {
			t.Errorf("client read error = %v, want ErrReset", err)
		}
		if _, err := s.Write([]byte("x")); !errors.Is(err, ErrReset) {
			t.Errorf("client write error = %v, want ErrReset", err)
		}
	})
}

func TestStatusCodes(t *testing.T) {
	checkLeaks(t)
	for _, tc := range []struct {
		name      string
		handler   HandlerFunc
		authority string // overrides the request's authority
		method    string
		any       bool
		want      int
	}{
		{name: "accepted", handler: func(_ context.Context, in *Inbound) { s, _ := in.Accept(); s.Close() }, want: 200},
		{name: "denied", handler: func(_ context.Context, in *Inbound) { in.Reject(http.StatusUnauthorized) }, want: 401},
		{name: "upstream unreachable", handler: func(_ context.Context, in *Inbound) { in.Reject(http.StatusServiceUnavailable) }, want: 503},
		{name: "no answer", handler: func(context.Context, *Inbound) {}, want: 503},
		{name: "authority not local", authority: "10.1.2.3:80", want: 400},
		{name: "authority not local, waypoint", authority: "10.1.2.3:80", any: true, want: 200},
		{name: "authority a name", authority: "example.com:80", want: 400},
		{name: "authority without port", authority: "127.0.0.1", want: 400},
		{name: "authority empty", authority: "-", want: 400},
		{name: "not CONNECT", method: "GET", want: 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.handler
			if h == nil {
				h = func(_ context.Context, in *Inbound) { s, _ := in.Accept(); s.Close() }
			}
			e := newEnvWith(t, DefaultConfig(), h, func(_ *env, id *ServerIdentity) { id.AnyAuthority = tc.any })
			req := e.request()
			fields := requestFields(req)
			if tc.authority != "" {
				fields[1].Value = tc.authority
				if tc.authority == "-" {
					fields[1].Value = ""
				}
			}
			if tc.method != "" {
				fields[0].Value = tc.method
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := e.pool.connect(ctx, req, fields)
			got := 200
			var se *StatusError
			switch {
			case errors.As(err, &se):
				got = se.Code
			case err != nil:
				t.Fatalf("connect: %v", err)
			default:
				s.Close()
			}
			if got != tc.want {
				t.Errorf("status = %d, want %d", got, tc.want)
			}
			if tc.want == 400 {
				waitFor(t, "log", func() bool { return e.serverLog.count("refused stream") == 1 })
			}
		})
	}
}

func TestRequestHeaders(t *testing.T) {
	checkLeaks(t)
	got := make(chan *Inbound, 1)
	e := newEnv(t, DefaultConfig(), HandlerFunc(func(_ context.Context, in *Inbound) {
		got <- in
		in.Reject(http.StatusUnauthorized)
	}))
	req := e.request()
	req.ForwardedHost = "svc.ns.svc.cluster.local"
	req.Baggage = "k8s.namespace.name=client"
	_, err := e.pool.Connect(context.Background(), req)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 401 {
		t.Fatalf("connect error = %v, want status 401", err)
	}
	in := <-got
	if diff := cmp.Diff(req.Authority, in.Authority, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("authority (-want +got):\n%s", diff)
	}
	if in.Peer != e.client.ID {
		t.Errorf("peer = %v, want %v", in.Peer, e.client.ID)
	}
	if diff := cmp.Diff(`for="10.0.0.1:4242";host=svc.ns.svc.cluster.local`, in.Header.Get("Forwarded")); diff != "" {
		t.Errorf("forwarded (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff("k8s.namespace.name=client", in.Header.Get("Baggage")); diff != "" {
		t.Errorf("baggage (-want +got):\n%s", diff)
	}
	if tp := in.Header.Get("Traceparent"); !traceParentRE.MatchString(tp) {
		t.Errorf("traceparent %q malformed", tp)
	}
}

func TestWrongExpectedIdentity(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, DefaultConfig(), echo())
	req := e.request()
	req.Expected = []spiffeid.ID{e.client.ID} // the server is not the client
	_, err := e.pool.Connect(context.Background(), req)
	if err == nil {
		t.Fatal("connect to a server with an unexpected identity succeeded")
	}
	t.Logf("refused as expected: %v", err)
	waitFor(t, "server log", func() bool { return e.serverLog.count("refused connection") == 1 })
}

func TestIdleRelease(t *testing.T) {
	checkLeaks(t)
	cfg := DefaultConfig()
	cfg.IdleTimeout = 100 * time.Millisecond
	e := newEnv(t, cfg, echo())
	s := e.connect(t)
	time.Sleep(3 * cfg.IdleTimeout)
	if got := e.pool.connCount(); got != 1 {
		t.Fatalf("connection with an open stream released: %d conns", got)
	}
	s.CloseWrite()
	io.ReadAll(s)
	s.Close()
	waitFor(t, "idle release", func() bool { return e.pool.connCount() == 0 && e.server.connCount() == 0 })
}

func TestShutdownDrains(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, DefaultConfig(), echo())
	s := e.connect(t)
	shut := make(chan error, 1)
	go func() { shut <- e.server.Shutdown(context.Background()) }()
	// The open stream keeps working while the server drains.
	waitFor(t, "GOAWAY", func() bool { return e.pool.connCount() == 0 || !e.pool.firstConn().usable() })
	if _, err := s.Write([]byte("still here")); err != nil {
		t.Fatalf("write while draining: %v", err)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "still here" {
		t.Fatalf("read while draining: %q %v", buf, err)
	}
	select {
	case err := <-shut:
		t.Fatalf("shutdown returned with a stream open: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	s.CloseWrite()
	io.ReadAll(s)
	s.Close()
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if _, err := e.pool.Connect(context.Background(), e.request()); err == nil {
		t.Fatal("connect after shutdown succeeded")
	}
}

func TestShutdownTimeoutResets(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, DefaultConfig(), echo())
	s := e.connect(t)
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := e.server.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown = %v, want deadline exceeded", err)
	}
	if _, err := io.ReadAll(s); !errors.Is(err, ErrReset) {
		t.Fatalf("read after forced shutdown = %v, want ErrReset", err)
	}
}

func TestDeadline(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, DefaultConfig(), echo())
	s := e.connect(t)
	defer s.Close()
	s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read = %v, want deadline exceeded", err)
	}
	s.SetReadDeadline(time.Time{})
	s.Write([]byte("x"))
	if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
		t.Fatalf("read after clearing deadline: %v", err)
	}
}
