package testbed

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
)

// endpoint is what Node and Pod share: a namespace to open sockets in.
type endpoint struct {
	tb    *Testbed
	space *space
}

// Dial opens a TCP connection to addr ("10.1.2.3:80") from inside the node's
// namespace.
func (n *Node) Dial(ctx context.Context, addr string) (net.Conn, error) { return n.ep.dial(ctx, addr) }

// Dial opens a TCP connection to addr ("10.1.2.3:80") from inside the pod's
// namespace, so its source address is the pod's IP.
func (p *Pod) Dial(ctx context.Context, addr string) (net.Conn, error) { return p.ep.dial(ctx, addr) }

// Listen opens a listener inside the node's namespace.
func (n *Node) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	return n.ep.listen(ctx, network, addr)
}

// Listen opens a listener inside the pod's namespace.
func (p *Pod) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	return p.ep.listen(ctx, network, addr)
}

// ListenEcho starts a TCP echo server on port (all addresses) inside the
// node's namespace. See Pod.ListenEcho.
func (n *Node) ListenEcho(ctx context.Context, port int) (stop func(), err error) {
	return n.ep.listenEcho(ctx, port)
}

// ListenEcho starts a TCP echo server on port (all addresses) inside the
// pod's namespace: it writes back whatever it reads and closes once the client
// half-closes. It runs until stop is called, ctx is done or the testbed is
// closed; stop closes the listener and every open connection and waits for
// them.
func (p *Pod) ListenEcho(ctx context.Context, port int) (stop func(), err error) {
	return p.ep.listenEcho(ctx, port)
}

// ListenRecorder starts a Recorder on port inside the node's namespace.
func (n *Node) ListenRecorder(ctx context.Context, port int) (*Recorder, error) {
	return n.ep.listenRecorder(ctx, port)
}

// ListenRecorder starts a Recorder on port inside the pod's namespace, for
// tests that check which source address a server sees (for example that the
// mesh preserves the client pod's IP).
func (p *Pod) ListenRecorder(ctx context.Context, port int) (*Recorder, error) {
	return p.ep.listenRecorder(ctx, port)
}

func (e endpoint) dial(ctx context.Context, addr string) (net.Conn, error) {
	return e.space.ns.Dial(ctx, &net.Dialer{}, "tcp", addr)
}

func (e endpoint) listen(ctx context.Context, network, addr string) (net.Listener, error) {
	return e.space.ns.Listen(ctx, &net.ListenConfig{}, network, addr)
}

func (e endpoint) listenEcho(ctx context.Context, port int) (func(), error) {
	s, err := e.serve(ctx, port, func(c net.Conn) {
		// Until the client's EOF; then Close sends our FIN after the echo.
		io.Copy(c, c)
	})
	if err != nil {
		return nil, err
	}
	return s.close, nil
}

// Recorder is a TCP server that answers each connection with one line, the
// client address it sees ("10.1.1.11:40000\n"), then reads until the client
// closes. It also queues each address for Next.
type Recorder struct {
	srv   *server
	peers chan netip.AddrPort
}

// recorderQueue bounds the addresses kept for Next; tests make a handful of
// connections, and a flood must not block the server.
const recorderQueue = 1024

func (e endpoint) listenRecorder(ctx context.Context, port int) (*Recorder, error) {
	r := &Recorder{peers: make(chan netip.AddrPort, recorderQueue)}
	s, err := e.serve(ctx, port, func(c net.Conn) {
		peer, err := netip.ParseAddrPort(c.RemoteAddr().String())
		if err != nil {
			return
		}
		peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
		select {
		case r.peers <- peer:
		default: // queue full: the client still gets its answer
		}
		if _, err := io.WriteString(c, peer.String()+"\n"); err != nil {
			return
		}
		// Read until the client closes, so our close is never a reset that
		// could destroy the answer before the client reads it.
		io.Copy(io.Discard, c)
	})
	if err != nil {
		return nil, err
	}
	r.srv = s
	return r, nil
}

// Next returns the client address of the next connection, in arrival order.
func (r *Recorder) Next(ctx context.Context) (netip.AddrPort, error) {
	select {
	case p := <-r.peers:
		return p, nil
	case <-ctx.Done():
		return netip.AddrPort{}, fmt.Errorf("waiting for a connection: %w", ctx.Err())
	}
}

// Close stops the server and waits for its connections.
func (r *Recorder) Close() { r.srv.close() }

// ReadPeer reads a Recorder's answer on c: the client address the server saw.
func ReadPeer(c net.Conn) (netip.AddrPort, error) {
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("reading recorder answer: %w", err)
	}
	ap, err := netip.ParseAddrPort(line[:len(line)-1])
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("parsing recorder answer %q: %w", line, err)
	}
	return ap, nil
}

// server is an accept loop with one goroutine per connection, closed by
// whichever comes first of its stop func, its context and the testbed.
type server struct {
	ln      net.Listener
	handle  func(net.Conn)
	wg      sync.WaitGroup
	once    sync.Once
	untrack func()
	stopCtx func() bool

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool
}

func (e endpoint) serve(ctx context.Context, port int, handle func(net.Conn)) (*server, error) {
	ln, err := e.listen(ctx, "tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	s := &server{ln: ln, handle: handle, conns: map[net.Conn]struct{}{}}
	if s.untrack, err = e.tb.track(s.close); err != nil {
		ln.Close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, s.close)
	s.mu.Lock()
	s.stopCtx = stop // close may already have run (ctx done); then stop is a no-op anyway
	s.mu.Unlock()
	s.wg.Go(s.accept)
	return s, nil
}

func (s *server) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed
		}
		s.mu.Lock()
		if s.done {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() {
			s.handle(c)
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		})
	}
}

func (s *server) close() {
	s.once.Do(func() {
		s.untrack()
		s.ln.Close()
		s.mu.Lock()
		s.done = true
		stopCtx := s.stopCtx
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		if stopCtx != nil {
			stopCtx()
		}
		s.wg.Wait()
	})
}
