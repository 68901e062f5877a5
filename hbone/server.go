package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
)

// ServerIdentity is what one listener presents and accepts.
type ServerIdentity struct {
	// SVID provides our certificate, read on each handshake.
	SVID x509svid.Source
	// Bundle provides the roots client certificates must chain to.
	Bundle x509bundle.Source
	// TrustDomain is where the client's SPIFFE ID must be.
	TrustDomain spiffeid.TrustDomain
	// AnyAuthority accepts any authority IP (waypoints); otherwise the
	// authority IP must be the local address the connection arrived on.
	AnyAuthority bool
}

// Handler serves accepted CONNECT streams.
type Handler interface {
	// ServeHBONE must answer with in.Accept or in.Reject; returning without
	// either answers 503. After Accept it owns the Stream and must Close it.
	// ctx is cancelled when the stream is reset or closed, or its connection
	// dies (including a Shutdown whose context expired).
	ServeHBONE(ctx context.Context, in *Inbound)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, in *Inbound)

func (f HandlerFunc) ServeHBONE(ctx context.Context, in *Inbound) { f(ctx, in) }

// Inbound is a CONNECT request that passed the server's own checks.
type Inbound struct {
	// Authority is the parsed :authority, the original destination.
	Authority netip.AddrPort
	// Peer is the client's verified SPIFFE ID.
	Peer spiffeid.ID
	// Header holds the request headers (forwarded, baggage, traceparent, ...).
	Header http.Header
	// Local and Remote are the addresses of the tunnel's TCP connection.
	Local, Remote netip.AddrPort

	s        *Stream
	mu       sync.Mutex
	answered bool
}

// ForwardedFor is the client's original address as the peer stated it in
// the forwarded header; ok is false when it sent none.
func (in *Inbound) ForwardedFor() (netip.AddrPort, bool) {
	return parseForwardedFor(in.Header.Get("Forwarded"))
}

// Accept answers 200 and returns the tunnelled byte stream.
func (in *Inbound) Accept() (*Stream, error) {
	if err := in.answer(http.StatusOK); err != nil {
		return nil, err
	}
	return in.s, nil
}

// Reject answers code (401 denied, 503 upstream unreachable, ...) and ends
// the stream.
func (in *Inbound) Reject(code int) error {
	if code < 300 || code > 599 {
		return fmt.Errorf("hbone: status %d does not reject", code)
	}
	return in.answer(code)
}

func (in *Inbound) answer(code int) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.answered {
		return errors.New("hbone: request already answered")
	}
	in.answered = true
	return in.s.answer(code)
}

// answer sends the response HEADERS. A rejection ends our side at once; if
// the client is still sending, RST_STREAM(NO_ERROR) asks it to stop, as RFC
// 9113 section 8.1 allows after a complete response.
func (s *Stream) answer(code int) error {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.reset != nil {
		return s.reset
	}
	if code == http.StatusOK {
		c.queueCtrl(ctrlWrite{kind: ctrlHeaders, streamID: s.id, fields: statusFields(code)})
		return nil
	}
	c.queueCtrl(ctrlWrite{kind: ctrlHeaders, streamID: s.id, fields: statusFields(code), end: true})
	s.sentEnd = true
	if s.recvEnd {
		c.removeLocked(s)
		s.cancel()
	} else {
		c.queueCtrl(ctrlWrite{kind: ctrlRST, streamID: s.id, val: uint32(http2.ErrCodeNo)})
		s.resetLocked(&ResetError{Code: http2.ErrCodeNo})
	}
	return nil
}

// Server accepts HBONE connections on any number of listeners.
type Server struct {
	cfg  Config
	h    Handler
	log  *slog.Logger
	bufs *bufPools

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]*conn // nil until TLS and the preface are done
	shutdown  bool
	connWG    sync.WaitGroup
	handlerWG sync.WaitGroup
}

// NewServer returns a server calling h for each stream. cfg should have
// passed Validate.
func NewServer(cfg Config, h Handler, log *slog.Logger) *Server {
	return &Server{
		cfg:       cfg,
		h:         h,
		log:       log.With("component", "hbone-server"),
		bufs:      newBufPools(),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]*conn),
	}
}

// Serve accepts TCP connections on ln, does the TLS 1.3 handshake presenting
// id, and serves CONNECT streams. It returns nil when ln is closed and
// ErrServerClosed after Shutdown; connections already accepted live on.
func (s *Server) Serve(ln net.Listener, id ServerIdentity) error {
	tlsCfg := serverTLSConfig(id)
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	// Back off on accept errors such as running out of file descriptors,
	// from 5 ms up to 1 s, instead of spinning.
	var backoff time.Duration
	for {
		raw, err := ln.Accept()
		if err != nil {
			if s.isShutdown() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed", "listener", ln.Addr(), "error", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.mu.Lock()
		if s.shutdown {
			s.mu.Unlock()
			raw.Close()
			continue
		}
		s.conns[raw] = nil
		s.connWG.Add(1)
		s.mu.Unlock()
		go s.serveConn(raw, tlsCfg, id)
	}
}

func (s *Server) isShutdown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

// serveConn runs one connection: handshake, preface, then frames until it
// closes. A refused connection is logged once here.
func (s *Server) serveConn(raw net.Conn, tlsCfg *tls.Config, id ServerIdentity) {
	defer s.connWG.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, raw)
		s.mu.Unlock()
	}()
	c, err := s.handshake(raw, tlsCfg)
	if err != nil {
		raw.Close()
		if !s.isShutdown() {
			s.log.Info("refused connection", "remote", raw.RemoteAddr(), "local", raw.LocalAddr(), "reason", err)
		}
		return
	}
	c.onRequest = func(st *Stream, f *http2.MetaHeadersFrame) { s.onRequest(c, st, f, id) }
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		raw.Close()
		return
	}
	s.conns[raw] = c
	s.mu.Unlock()
	c.start()
	<-c.done
	c.wg.Wait()
}

// handshake does TLS (client certificate verified by go-spiffe) and reads the
// HTTP/2 client preface, all within HandshakeTimeout.
func (s *Server) handshake(raw net.Conn, tlsCfg *tls.Config) (*conn, error) {
	tuneTCP(raw, s.cfg)
	if err := raw.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout)); err != nil {
		return nil, fmt.Errorf("setting handshake deadline: %w", err)
	}
	tc := tls.Server(raw, tlsCfg)
	if err := tc.Handshake(); err != nil {
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != alpnH2 {
		return nil, errors.New("client did not negotiate ALPN h2")
	}
	peer, err := peerID(cs)
	if err != nil {
		return nil, err
	}
	c := newConn(s.cfg, s.log, false, tc, raw, s.bufs)
	c.peer = peer
	var pre [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(c.br, pre[:]); err != nil {
		return nil, fmt.Errorf("reading HTTP/2 preface: %w", err)
	}
	if string(pre[:]) != http2.ClientPreface {
		return nil, fmt.Errorf("not an HTTP/2 client preface: %q", pre[:])
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("clearing handshake deadline: %w", err)
	}
	return c, nil
}

// onRequest runs on the read loop: it checks what the server itself is
// responsible for and hands the rest to the handler in its own goroutine.
func (s *Server) onRequest(c *conn, st *Stream, f *http2.MetaHeadersFrame, id ServerIdentity) {
	refuse := func(reason string, args ...any) {
		s.log.Info("refused stream", "status", http.StatusBadRequest, "reason", fmt.Sprintf(reason, args...),
			"remote", c.remote, "peer", c.peer)
		_ = st.answer(http.StatusBadRequest)
	}
	if m := f.PseudoValue("method"); m != http.MethodConnect {
		refuse("method %q is not CONNECT", m)
		return
	}
	auth, err := parseAuthority(f.PseudoValue("authority"))
	if err != nil {
		refuse("%v", err)
		return
	}
	if !id.AnyAuthority && !sameIP(auth.Addr(), c.local.Addr()) {
		refuse("authority %v is not the address the connection arrived on (%v)", auth, c.local.Addr())
		return
	}
	regular := f.RegularFields()
	header := make(http.Header, len(regular))
	for _, hf := range regular {
		header.Add(hf.Name, hf.Value)
	}
	in := &Inbound{Authority: auth, Peer: c.peer, Header: header, Local: c.local, Remote: c.remote, s: st}
	s.handlerWG.Add(1)
	go func() {
		defer s.handlerWG.Done()
		s.h.ServeHBONE(st.ctx, in)
		in.mu.Lock()
		answered := in.answered
		in.mu.Unlock()
		if !answered {
			_ = in.Reject(http.StatusServiceUnavailable)
		}
	}()
}

// Shutdown closes the listeners, sends GOAWAY on every connection and waits
// for their streams to finish; connections close as they empty. When ctx ends
// first, the remaining connections are closed (their streams reset, handler
// contexts cancelled) and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	var conns []*conn
	for raw, c := range s.conns {
		if c == nil {
			raw.Close() // still handshaking: nothing to drain
			continue
		}
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		c.drainLocked()
		c.mu.Unlock()
	}
	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		s.handlerWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	for _, c := range conns {
		c.close(ErrServerClosed)
	}
	<-done
	return fmt.Errorf("hbone server shutdown: %w", ctx.Err())
}
