package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/identity"
	"github.com/warren-mesh/warren/logging"
	"github.com/warren-mesh/warren/state"
)

// Source is what the admin server reads; the agent implements it. Every
// method is called once per request and must be safe for concurrent use.
type Source interface {
	// Snapshot is the current state.
	Snapshot() *state.Snapshot
	// Certificates describes the identities in use.
	Certificates() []identity.CertInfo
	// Connections are the open connections, as far as known (byte counts
	// may lag or be zero).
	Connections() []flow.Record
	// LocalPods are the pods this agent captures or is trying to.
	LocalPods() []PodState
	// Pending lists what keeps the agent from being ready; empty is ready.
	Pending() []string
}

// Server serves the admin API and the readiness probe.
type Server struct {
	cfg    Config
	src    Source
	levels *logging.Levels
	quit   func()
	log    *slog.Logger

	build    BuildInfo
	settings json.RawMessage
	quitOnce sync.Once

	mu      sync.Mutex
	started bool
	servers []*http.Server
	addrs   map[string]net.Addr // "admin", "readiness": bound addresses
}

// New checks cfg and builds the server without binding anything; Start
// does. quit is called, once and on its own goroutine, on POST
// /quitquitquit. levels may be nil, in which case /logging answers 501.
func New(cfg Config, src Source, levels *logging.Levels, quit func(), log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("admin config: %w", err)
	}
	if src == nil {
		return nil, errors.New("admin: source is nil")
	}
	if quit == nil {
		quit = func() {}
	}
	settings := cfg.Settings
	if settings == nil {
		settings = struct {
			Node          string `json:"node"`
			AdminAddr     string `json:"adminAddr"`
			ReadinessAddr string `json:"readinessAddr"`
		}{cfg.Node, cfg.AdminAddr, cfg.ReadinessAddr}
	}
	raw, err := json.Marshal(settings)
	if err != nil {
		return nil, fmt.Errorf("admin config: rendering settings: %w", err)
	}
	return &Server{
		cfg:      cfg,
		src:      src,
		levels:   levels,
		quit:     quit,
		log:      log.With("component", "admin"),
		build:    BuildInfo{Version: cfg.Version, GoVersion: runtime.Version()},
		settings: raw,
		addrs:    map[string]net.Addr{},
	}, nil
}

// Start binds the admin and readiness listeners, then serves them in the
// background until Stop. If either address cannot be bound nothing is left
// listening and Start may be retried.
func (s *Server) Start() error {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if started {
		return errors.New("admin server already started")
	}
	type bound struct {
		name string
		ln   net.Listener
		h    http.Handler
	}
	var toServe []bound
	for _, l := range []struct {
		name, addr string
		h          http.Handler
	}{
		{"admin", s.cfg.AdminAddr, s.AdminHandler()},
		{"readiness", s.cfg.ReadinessAddr, s.ReadinessHandler()},
	} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			for _, b := range toServe {
				b.ln.Close()
			}
			return fmt.Errorf("%s listener %s: %w", l.name, l.addr, err)
		}
		toServe = append(toServe, bound{l.name, ln, l.h})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.started = true
	for _, b := range toServe {
		// Header and idle limits keep a stuck client from holding a
		// connection forever; no write timeout, since a pprof profile
		// streams for as long as its ?seconds= asks.
		srv := &http.Server{
			Handler:           b.h,
			ReadHeaderTimeout: 5 * time.Second,
			IdleTimeout:       time.Minute,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		}
		s.servers = append(s.servers, srv)
		s.addrs[b.name] = b.ln.Addr()
		go func() {
			if err := srv.Serve(b.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("server failed", "server", b.name, "error", err)
			}
		}()
		s.log.Info("listening", "server", b.name, "addr", b.ln.Addr().String())
	}
	return nil
}

// Addr is the bound address of "admin" or "readiness", nil before Start
// (useful with port 0).
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[name]
}

// Stop stops both servers, waiting for requests in flight until ctx ends
// or ShutdownTimeout passes, then closing what is left. A stopped Server
// cannot be started again.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	servers := s.servers
	s.servers = nil
	s.mu.Unlock()
	if s.cfg.ShutdownTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.ShutdownTimeout)
		defer cancel()
	}
	var errs []error
	for _, srv := range servers {
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
			errs = append(errs, fmt.Errorf("stopping admin server: %w", err))
		}
	}
	return errors.Join(errs...)
}

// AdminHandler serves the admin API.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.handleIndex)
	mux.HandleFunc("GET /config_dump", s.handleConfigDump)
	mux.HandleFunc("/logging", s.handleLogging)
	mux.HandleFunc("/quitquitquit", s.handleQuit)
	// pprof registers itself on http.DefaultServeMux when imported; mount
	// its handlers here instead, so that only the admin port serves them.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// ReadinessHandler serves Istio's readiness probe: 200 "ready\n" when
// nothing is pending, else 500 naming what is.
func (s *Server) ReadinessHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if p := s.src.Pending(); len(p) > 0 {
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, "not ready: %s\n", strings.Join(p, "; "))
			return
		}
		fmt.Fprint(w, "ready\n")
	})
	return mux
}

func (s *Server) handleIndex(w http.ResponseWriter, _ *http.Request) {
	endpoints := []struct{ path, what string }{
		{"/config_dump", "GET: the agent's state, certificates and connections as JSON (ztunnel's format; istioctl ztunnel-config --file reads it)"},
		{"/logging", "GET or POST: show log levels; POST ?level=<level> or ?level=<component>:<level>,... sets them; POST ?reset resets them"},
		{"/quitquitquit", "POST: shut the agent down"},
		{"/debug/pprof/", "Go runtime profiles"},
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "Warren agent %s admin API\n\n", s.cfg.Version)
	for _, e := range endpoints {
		fmt.Fprintf(w, "%-16s %s\n", e.path, e.what)
	}
}

// Dump reads the source once and renders it.
func (s *Server) Dump() *Dump {
	return buildDump(dumpInput{
		snap:   s.src.Snapshot(),
		certs:  s.src.Certificates(),
		conns:  s.src.Connections(),
		pods:   s.src.LocalPods(),
		config: s.settings,
		build:  s.build,
	})
}

func (s *Server) handleConfigDump(w http.ResponseWriter, _ *http.Request) {
	body, err := json.MarshalIndent(s.Dump(), "", "  ")
	if err != nil {
		s.log.Error("rendering config dump", "error", err)
		http.Error(w, "rendering config dump: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(body, '\n'))
}

const loggingHelp = `usage: GET or POST /logging                          show the current levels
       POST /logging?level=<level>                  set the default level (and clear component levels)
       POST /logging?level=<comp>:<level>,...       set components' levels (':' or '=')
       POST /logging?reset                          back to the levels the agent started with
levels: trace (= debug), debug, info, warn, error, off
`

// handleLogging follows ztunnel: without parameters it shows the levels;
// ?level= changes them and ?reset restores the start levels first (both
// together: reset, then set). Either answers with the resulting levels.
func (s *Server) handleLogging(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if s.levels == nil {
		http.Error(w, "log levels are not adjustable in this agent", http.StatusNotImplemented)
		return
	}
	q := r.URL.Query()
	level, hasLevel := q.Get("level"), q.Has("level")
	reset := q.Has("reset")
	if !hasLevel && !reset {
		if r.Method != http.MethodGet && r.Method != http.MethodPost {
			w.Header().Set("Allow", "GET, POST")
			http.Error(w, "method not allowed\n"+loggingHelp, http.StatusMethodNotAllowed)
			return
		}
		fmt.Fprintf(w, "current log level is %s\n", s.levels)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "changing log levels needs POST\n"+loggingHelp, http.StatusMethodNotAllowed)
		return
	}
	if hasLevel && level == "" {
		http.Error(w, "invalid level provided: empty\n"+loggingHelp, http.StatusBadRequest)
		return
	}
	if hasLevel {
		// Validate before resetting so that a bad request changes nothing.
		if err := logging.Validate(level); err != nil {
			http.Error(w, fmt.Sprintf("invalid level provided: %q: %v\n%s", level, err, loggingHelp), http.StatusBadRequest)
			return
		}
	}
	if reset {
		s.levels.Reset()
	}
	if hasLevel {
		if err := s.levels.Set(level); err != nil {
			http.Error(w, fmt.Sprintf("invalid level provided: %q: %v\n%s", level, err, loggingHelp), http.StatusBadRequest)
			return
		}
	}
	s.log.Info("log levels changed", "levels", s.levels.String(), "reset", reset)
	fmt.Fprintf(w, "current log level is %s\n", s.levels)
}

// handleQuit answers first and then calls quit on its own goroutine: quit
// typically stops the agent, which stops this server, which waits for this
// request to finish.
func (s *Server) handleQuit(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed: use POST", http.StatusMethodNotAllowed)
		return
	}
	s.log.Info("shutdown requested", "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, "OK\n")
	s.quitOnce.Do(func() { go s.quit() })
}
