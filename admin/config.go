package admin

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// Config configures the admin and readiness servers.
type Config struct {
	// AdminAddr serves /config_dump, /logging, /quitquitquit and pprof. It
	// must stay on loopback: none of these endpoints is authenticated and
	// /quitquitquit stops the agent. Empty disables the admin server.
	AdminAddr string
	// ReadinessAddr serves GET /healthz/ready on all addresses, for the
	// kubelet's probe. Empty disables it.
	ReadinessAddr string
	// Version is reported in the dump's "version".
	Version string
	// Node is this agent's node, reported in the dump's "config" when
	// Settings is nil.
	Node string
	// Settings, when set, is rendered as the dump's "config" (the agent's
	// own configuration); it must marshal to JSON.
	Settings any
	// ShutdownTimeout bounds how long Stop waits for requests in flight
	// when its context has no earlier deadline.
	ShutdownTimeout time.Duration
}

// DefaultConfig uses Istio's ports: admin on 15000 (loopback only) and
// readiness on 15021.
func DefaultConfig() Config {
	return Config{
		AdminAddr:       "127.0.0.1:15000",
		ReadinessAddr:   ":15021",
		ShutdownTimeout: 5 * time.Second,
	}
}

// Validate checks the addresses: each must be empty or host:port, and the
// admin host must be a loopback address (or localhost).
func (c Config) Validate() error {
	var errs []error
	if c.AdminAddr != "" {
		host, _, err := net.SplitHostPort(c.AdminAddr)
		if err != nil {
			errs = append(errs, fmt.Errorf("admin address %q: %w", c.AdminAddr, err))
		} else if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			errs = append(errs, fmt.Errorf("admin address %q: must be on loopback (the admin API is unauthenticated)", c.AdminAddr))
		}
	}
	if c.ReadinessAddr != "" {
		if _, _, err := net.SplitHostPort(c.ReadinessAddr); err != nil {
			errs = append(errs, fmt.Errorf("readiness address %q: %w", c.ReadinessAddr, err))
		}
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, fmt.Errorf("shutdown timeout %v: negative", c.ShutdownTimeout))
	}
	return errors.Join(errs...)
}
