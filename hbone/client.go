package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Request describes one tunnel to open.
type Request struct {
	// SourceID is the identity we present; part of the pool key.
	SourceID spiffeid.ID
	// SVID provides the client certificate for SourceID, read on each handshake.
	SVID x509svid.Source
	// Bundle provides the trust roots for the server's certificate.
	Bundle x509bundle.Source
	// Expected lists the identities the server may present (its URI SAN must
	// equal one of them); part of the pool key.
	Expected []spiffeid.ID
	// Target is the TCP address to dial, normally <destination pod IP>:15008;
	// part of the pool key.
	Target netip.AddrPort
	// SourceIP is part of the pool key: the agent dials from inside the
	// source pod's network namespace, so connections are not shared across pods.
	SourceIP netip.Addr
	// Dial opens the TCP socket; nil uses a plain net.Dialer.
	Dial func(ctx context.Context, target netip.AddrPort) (net.Conn, error)
	// Authority is the original destination, sent as :authority.
	Authority netip.AddrPort
	// Forwarded is the client address for `forwarded: for="ip:port"`; zero omits the header.
	Forwarded netip.AddrPort
	// ForwardedHost adds `;host=<name>` to the forwarded header when set.
	ForwardedHost string
	// Baggage is sent as the `baggage` header when set.
	Baggage string
	// TraceParent is sent as `traceparent`; empty generates a fresh one per stream.
	TraceParent string
}

func (r *Request) validate() error {
	switch {
	case r.SVID == nil:
		return errors.New("request has no SVID source")
	case r.Bundle == nil:
		return errors.New("request has no bundle source")
	case len(r.Expected) == 0:
		return errors.New("request has no expected server identity")
	case !r.Target.IsValid():
		return errors.New("request has no target")
	case !r.Authority.IsValid():
		return errors.New("request has no authority")
	}
	return nil
}

// poolKey identifies connections that may carry each other's streams.
type poolKey struct {
	source   spiffeid.ID
	expected string // sorted, joined identities
	target   netip.AddrPort
	sourceIP netip.Addr
}

func keyOf(r *Request) poolKey {
	ids := make([]string, len(r.Expected))
	for i, id := range r.Expected {
		ids[i] = id.String()
	}
	slices.Sort(ids)
	return poolKey{source: r.SourceID, expected: strings.Join(ids, ","), target: r.Target, sourceIP: r.SourceIP}
}

// dialing is an in-progress dial that other Connects for the key wait on.
type dialing struct {
	done chan struct{}
	err  error
}

type poolEntry struct {
	conns []*conn
	dial  *dialing
}

// Pool opens HBONE streams, sharing HTTP/2 connections per pool key.
type Pool struct {
	cfg  Config
	log  *slog.Logger
	bufs *bufPools

	mu      sync.Mutex
	entries map[poolKey]*poolEntry
	closed  bool
	wg      sync.WaitGroup // one per live connection
}

// NewPool returns an empty pool. cfg should have passed Validate.
func NewPool(cfg Config, log *slog.Logger) *Pool {
	return &Pool{
		cfg:     cfg,
		log:     log.With("component", "hbone-pool"),
		bufs:    newBufPools(),
		entries: make(map[poolKey]*poolEntry),
	}
}

// Connect opens one CONNECT stream and waits for the answer. It reuses a
// pooled connection of the same key with room for a stream; otherwise it dials
// (one dial per key at a time; concurrent callers wait for it and share the
// connection). A non-200 answer returns *StatusError; dial, TLS and identity
// failures are returned wrapped with the target. Connect may be retried.
func (p *Pool) Connect(ctx context.Context, req *Request) (*Stream, error) {
	if err := req.validate(); err != nil {
		return nil, fmt.Errorf("hbone connect to %v: %w", req.Target, err)
	}
	return p.connect(ctx, req, requestFields(req))
}

// refusedRetries bounds how often one Connect reopens a stream that a
// connection's GOAWAY refused before the server saw it.
const refusedRetries = 3

func (p *Pool) connect(ctx context.Context, req *Request, fields []hpack.HeaderField) (*Stream, error) {
	key := keyOf(req)
	refused := 0
retry:
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		e := p.entries[key]
		if e == nil {
			e = &poolEntry{}
			p.entries[key] = e
		}
		for _, c := range e.conns {
			if s := c.tryOpen(fields); s != nil {
				p.mu.Unlock()
				st, err := p.await(ctx, req, s)
				var re *ResetError
				if errors.As(err, &re) && re.Remote && re.Code == http2.ErrCodeRefusedStream && refused < refusedRetries {
					refused++
					continue retry // the server never saw it: safe to try again
				}
				return st, err
			}
		}
		if d := e.dial; d != nil {
			p.mu.Unlock()
			select {
			case <-d.done:
			case <-ctx.Done():
				return nil, fmt.Errorf("hbone connect to %v: waiting for dial: %w", req.Target, ctx.Err())
			}
			// A dial abandoned by its own caller's context is retried by us.
			if d.err != nil && !errors.Is(d.err, context.Canceled) && !errors.Is(d.err, context.DeadlineExceeded) {
				return nil, d.err
			}
			continue
		}
		d := &dialing{done: make(chan struct{})}
		e.dial = d
		p.mu.Unlock()

		c, err := p.dial(ctx, req)

		p.mu.Lock()
		e.dial = nil
		d.err = err
		close(d.done)
		if err == nil {
			if p.closed {
				p.mu.Unlock()
				c.Close()
				return nil, ErrPoolClosed
			}
			e.conns = append(e.conns, c)
			p.watch(key, c)
		} else if len(e.conns) == 0 {
			delete(p.entries, key)
		}
		p.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
}

// await waits for the CONNECT answer on a fresh stream.
func (p *Pool) await(ctx context.Context, req *Request, s *Stream) (*Stream, error) {
	select {
	case r := <-s.resp:
		if r.err != nil {
			s.Close()
			return nil, fmt.Errorf("hbone connect to %v via %v: %w", req.Authority, req.Target, r.err)
		}
		if r.code != 200 {
			s.Close()
			return nil, &StatusError{Code: r.code}
		}
		return s, nil
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("hbone connect to %v via %v: %w", req.Authority, req.Target, ctx.Err())
	}
}

// dial opens, secures and starts one HTTP/2 connection, returning after the
// server's SETTINGS so its stream limit is known.
func (p *Pool) dial(ctx context.Context, req *Request) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout)
	defer cancel()
	dial := req.Dial
	if dial == nil {
		dial = func(ctx context.Context, t netip.AddrPort) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", t.String())
		}
	}
	raw, err := dial(ctx, req.Target)
	if err != nil {
		return nil, fmt.Errorf("hbone dial %v: %w", req.Target, err)
	}
	tuneTCP(raw, p.cfg)
	tc := tls.Client(raw, clientTLSConfig(req))
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("hbone tls handshake with %v: %w", req.Target, err)
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != alpnH2 {
		raw.Close()
		return nil, fmt.Errorf("hbone tls handshake with %v: server did not negotiate ALPN h2", req.Target)
	}
	peer, err := peerID(cs)
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("hbone tls handshake with %v: %w", req.Target, err)
	}
	c := newConn(p.cfg, p.log, true, tc, raw, p.bufs)
	c.peer = peer
	if _, err := io.WriteString(c.bw, http2.ClientPreface); err != nil {
		raw.Close()
		return nil, fmt.Errorf("hbone preface to %v: %w", req.Target, err)
	}
	c.start()
	select {
	case <-c.settingsCh:
		return c, nil
	case <-c.done:
		err = c.err
	case <-ctx.Done():
		err = ctx.Err()
	}
	// In TLS 1.3 the server checks our certificate after our handshake
	// finished, so its refusal shows up here.
	c.close(err)
	c.wg.Wait()
	return nil, fmt.Errorf("hbone http/2 setup with %v: %w", req.Target, err)
}

// watch removes c from the pool when it dies, and closes it when idle.
func (p *Pool) watch(key poolKey, c *conn) {
	c.mu.Lock()
	c.onIdle = func(c *conn) { p.release(key, c, true) }
	if c.active == 0 && c.err == nil {
		c.idleTimer = time.AfterFunc(p.cfg.IdleTimeout, func() { c.onIdle(c) })
	}
	c.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		<-c.done
		c.wg.Wait()
		p.release(key, c, false)
	}()
}

// release drops c from the pool; when idle is set it first checks c still has
// no streams and then closes it with GOAWAY.
func (p *Pool) release(key poolKey, c *conn, idle bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Under p.mu no Connect can open a stream on c while we decide.
	if idle && c.streamCount() > 0 {
		return
	}
	if e := p.entries[key]; e != nil {
		e.conns = slices.DeleteFunc(e.conns, func(x *conn) bool { return x == c })
		if len(e.conns) == 0 && e.dial == nil {
			delete(p.entries, key)
		}
	}
	if idle {
		c.mu.Lock()
		c.closeGracefulLocked()
		c.mu.Unlock()
	}
}

// Close sends GOAWAY on every pooled connection, closes them (resetting
// streams still open) and waits for their goroutines. Connect fails afterwards.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	var conns []*conn
	for _, e := range p.entries {
		conns = append(conns, e.conns...)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
	return nil
}

// tuneTCP sets TCP_NODELAY (frames are already batched) and keepalives.
func tuneTCP(c net.Conn, cfg Config) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	_ = tc.SetNoDelay(true)
	// Three unanswered probes, one KeepAlive apart, declare the peer dead.
	_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: cfg.KeepAlive, Interval: cfg.KeepAlive, Count: 3})
}
