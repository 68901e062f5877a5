package cni

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Config is the agent side of the socket.
type Config struct {
	// Socket is the unix socket the agent listens on; the plugin's
	// "agentSocket" must name the same path.
	Socket string
	// AddTimeout bounds one ADD: how long the agent may take to capture a
	// pod before it answers with an error (and the kubelet retries the
	// sandbox). It must stay below the plugin's own timeout so that the
	// runtime sees the agent's reason rather than a bare timeout.
	AddTimeout time.Duration
}

// DefaultConfig returns the default socket path and a 30 s ADD timeout:
// long enough to fetch a certificate from a slow CA, well under the
// kubelet's 4 min sandbox creation timeout.
func DefaultConfig() Config {
	return Config{Socket: DefaultSocket, AddTimeout: 30 * time.Second}
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.Socket == "" || !filepath.IsAbs(c.Socket) {
		errs = append(errs, fmt.Errorf("cni socket: %q must be an absolute path", c.Socket))
	}
	if c.AddTimeout <= 0 {
		errs = append(errs, fmt.Errorf("cni add timeout: %v must be positive", c.AddTimeout))
	}
	return errors.Join(errs...)
}

// delTimeout bounds a DEL: the agent only forgets what it learnt at ADD,
// and the runtime is waiting to tear the sandbox down.
const delTimeout = 10 * time.Second

// Handler is what the agent does for the plugin.
type Handler interface {
	// Add is told about a new pod sandbox. It reports whether the pod is
	// captured, and should return only once it is, so the pod's containers
	// never run uncaptured. An error fails the sandbox's creation.
	Add(ctx context.Context, req AddRequest) (captured bool, err error)
	// Del is told that a sandbox is going away; it cannot fail the
	// teardown.
	Del(ctx context.Context, req DelRequest)
}

// Server answers the plugin on a unix socket.
type Server struct {
	cfg Config
	h   Handler
	log *slog.Logger
	ln  net.Listener
	srv *http.Server
	// ino identifies our socket file, so Close removes it only if no later
	// agent has replaced it in the meantime.
	ino uint64

	// ctx is the parent of every request's context; Close cancels it so an
	// ADD waiting for capture gives up at once.
	ctx    context.Context
	cancel context.CancelFunc

	closeOnce sync.Once
	closeErr  error
}

// NewServer checks cfg and listens on its socket. Side effects, in order:
// creates the socket's directory (0755) if missing; binds a socket under a
// temporary name beside the target, makes it 0600 (only root may tell the
// agent about pods) and renames it onto cfg.Socket, which atomically
// replaces a stale socket left by an earlier agent. A path that exists and
// is not a socket is an error and is left alone. On error nothing is left
// behind; NewServer may be retried. Call Serve, then Close.
func NewServer(cfg Config, h Handler, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cni server config: %w", err)
	}
	if fi, err := os.Lstat(cfg.Socket); err == nil && fi.Mode().Type() != fs.ModeSocket {
		return nil, fmt.Errorf("cni socket %s exists and is not a socket (%v)", cfg.Socket, fi.Mode().Type())
	}
	dir := filepath.Dir(cfg.Socket)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating cni socket dir: %w", err)
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(dir, ".cni-"+hex.EncodeToString(rnd[:])+".sock")
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", tmp, err)
	}
	// The temp path is renamed away; Close must not try to unlink it.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	fail := func(err error) (*Server, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(fmt.Errorf("restricting cni socket: %w", err))
	}
	var st unix.Stat_t
	if err := unix.Stat(tmp, &st); err != nil {
		return fail(fmt.Errorf("reading cni socket: %w", err))
	}
	if err := os.Rename(tmp, cfg.Socket); err != nil {
		return fail(fmt.Errorf("moving cni socket into place at %s: %w", cfg.Socket, err))
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:    cfg,
		h:      h,
		log:    log.With("component", "cni-server"),
		ln:     ln,
		ino:    st.Ino,
		ctx:    ctx,
		cancel: cancel,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+pathAdd, s.serveAdd)
	mux.HandleFunc("POST "+pathDel, s.serveDel)
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.cfg.Socket }

// Serve answers requests until Close; it returns nil after Close.
func (s *Server) Serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("serving cni socket %s: %w", s.cfg.Socket, err)
}

// Close cancels requests in flight (their ADDs fail, the kubelet retries
// them), closes the listener and removes the socket file if it is still
// ours. Safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.closeErr = s.srv.Close()
		// Serve may never have run, and only Serve hands the listener to
		// the HTTP server.
		if err := s.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			s.closeErr = errors.Join(s.closeErr, err)
		}
		var st unix.Stat_t
		if err := unix.Stat(s.cfg.Socket, &st); err == nil && st.Ino == s.ino {
			if err := os.Remove(s.cfg.Socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
				s.closeErr = errors.Join(s.closeErr, fmt.Errorf("removing cni socket: %w", err))
			}
		}
	})
	return s.closeErr
}

func (s *Server) serveAdd(w http.ResponseWriter, r *http.Request) {
	var req AddRequest
	if !decode(w, r, &req) {
		return
	}
	if err := req.Validate(); err != nil {
		reply(w, http.StatusBadRequest, errorReply{Error: "invalid add request: " + err.Error()})
		return
	}
	log := s.log.With("pod", req.PodNamespace+"/"+req.PodName, "container", req.ContainerID, "netns", req.NetNS)
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.AddTimeout)
	defer cancel()
	start := time.Now()
	captured, err := s.h.Add(ctx, req)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) && s.ctx.Err() == nil {
			err = fmt.Errorf("pod not captured within %v: %w", s.cfg.AddTimeout, err)
		}
		log.Warn("cni add failed", "error", err, "took", time.Since(start))
		reply(w, http.StatusInternalServerError, errorReply{Error: err.Error()})
		return
	}
	log.Info("cni add", "captured", captured, "ips", req.IPs, "took", time.Since(start))
	reply(w, http.StatusOK, addReply{Captured: captured})
}

func (s *Server) serveDel(w http.ResponseWriter, r *http.Request) {
	var req DelRequest
	if !decode(w, r, &req) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), delTimeout)
	defer cancel()
	s.h.Del(ctx, req)
	s.log.Debug("cni del", "pod", req.PodNamespace+"/"+req.PodName, "container", req.ContainerID)
	reply(w, http.StatusOK, struct{}{})
}

// decode reads a JSON body into v, answering 400 itself when it cannot.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	if err := dec.Decode(v); err != nil {
		reply(w, http.StatusBadRequest, errorReply{Error: "decoding request: " + err.Error()})
		return false
	}
	return true
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
