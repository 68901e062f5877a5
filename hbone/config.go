package hbone

import (
	"errors"
	"fmt"
	"time"
)

// Config tunes HTTP/2 and the connection pool. The defaults are the sizes
// ztunnel uses, so a Warren node behaves like a ztunnel node towards its peers.
type Config struct {
	// StreamWindow is the receive window advertised per stream (SETTINGS_INITIAL_WINDOW_SIZE).
	StreamWindow uint32
	// ConnWindow is the receive window of a whole HTTP/2 connection.
	ConnWindow uint32
	// MaxFrameSize is the largest frame we accept (SETTINGS_MAX_FRAME_SIZE).
	MaxFrameSize uint32
	// MaxConcurrentStreams is what a Server advertises and enforces per connection.
	MaxConcurrentStreams uint32
	// ClientStreamLimit caps the streams a Pool opens on one connection; it opens
	// another connection at min(ClientStreamLimit, peer's SETTINGS_MAX_CONCURRENT_STREAMS).
	ClientStreamLimit uint32
	// PingInterval is how often each connection sends an HTTP/2 PING.
	PingInterval time.Duration
	// PingTimeout closes a connection whose PING stays unanswered this long, and
	// also bounds a single blocked socket write.
	PingTimeout time.Duration
	// IdleTimeout releases a pooled client connection without streams after this long.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds the TCP dial, TLS handshake and HTTP/2 preface.
	HandshakeTimeout time.Duration
	// KeepAlive is the TCP keepalive idle time on tunnel sockets: it keeps
	// conntrack/NAT state alive and finds dead peers before HTTP/2 is up.
	KeepAlive time.Duration
}

// DefaultConfig returns ztunnel's HTTP/2 sizes and timers.
func DefaultConfig() Config {
	return Config{
		StreamWindow:         4 << 20,
		ConnWindow:           16 << 20,
		MaxFrameSize:         1 << 20,
		MaxConcurrentStreams: 200,
		ClientStreamLimit:    100,
		PingInterval:         10 * time.Second,
		PingTimeout:          20 * time.Second,
		IdleTimeout:          5 * time.Minute,
		HandshakeTimeout:     10 * time.Second,
		KeepAlive:            15 * time.Second,
	}
}

// HTTP/2 protocol limits (RFC 9113 sections 4.2 and 6.9.1).
const (
	minFrameSize  = 1 << 14
	maxFrameSize  = 1<<24 - 1
	defaultWindow = 65535
	maxWindow     = 1<<31 - 1
	maxStreamID   = 1<<31 - 1
)

// Validate reports the first setting outside what HTTP/2 allows or that would
// make the tunnel unusable.
func (c Config) Validate() error {
	var errs []error
	if c.StreamWindow < defaultWindow || c.StreamWindow > maxWindow {
		errs = append(errs, fmt.Errorf("stream window %d outside [%d, %d]", c.StreamWindow, defaultWindow, maxWindow))
	}
	if c.ConnWindow < defaultWindow || c.ConnWindow > maxWindow {
		errs = append(errs, fmt.Errorf("connection window %d outside [%d, %d]", c.ConnWindow, defaultWindow, maxWindow))
	}
	if c.MaxFrameSize < minFrameSize || c.MaxFrameSize > maxFrameSize {
		errs = append(errs, fmt.Errorf("max frame size %d outside [%d, %d]", c.MaxFrameSize, minFrameSize, maxFrameSize))
	}
	if c.MaxConcurrentStreams == 0 {
		errs = append(errs, errors.New("max concurrent streams must be positive"))
	}
	if c.ClientStreamLimit == 0 {
		errs = append(errs, errors.New("client stream limit must be positive"))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"ping interval", c.PingInterval},
		{"ping timeout", c.PingTimeout},
		{"idle timeout", c.IdleTimeout},
		{"handshake timeout", c.HandshakeTimeout},
		{"keepalive", c.KeepAlive},
	} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %v", d.name, d.v))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("hbone config: %w", err)
	}
	return nil
}
