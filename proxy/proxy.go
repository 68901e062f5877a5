package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/warren-mesh/warren/hbone"
	"github.com/warren-mesh/warren/state"
)

// Config tunes the proxy.
type Config struct {
	// Mark is set on every socket the agent opens inside a pod, so capture
	// exempts it (Istio: 0x539).
	Mark uint32
	// ConnectTimeout bounds each dial and CONNECT.
	ConnectTimeout time.Duration
}

// DefaultConfig matches Istio's in-pod mark.
func DefaultConfig() Config {
	return Config{Mark: 0x539, ConnectTimeout: 10 * time.Second}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.Mark == 0 {
		return errors.New("proxy: Mark must be non-zero")
	}
	if c.ConnectTimeout <= 0 {
		return fmt.Errorf("proxy: ConnectTimeout %v must be positive", c.ConnectTimeout)
	}
	return nil
}

// Env is what the outbound and inbound paths share.
type Env struct {
	Store    *state.Store
	Tracker  *Tracker
	Observer Observer
	OrigDst  OrigDstFunc
	Log      *slog.Logger
}

// DialFunc connects from inside a pod to dst.
type DialFunc func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)

// DialFromFunc connects from inside a pod to dst with src as source address.
type DialFromFunc func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error)

// Pod is what the proxy needs of one captured local pod. The agent builds it
// when the pod is enrolled and never changes it afterwards.
type Pod struct {
	UID  string
	IPs  []netip.Addr
	SVID x509svid.Source // the pod's certificate, for both tunnel ends
	// Dial opens a marked connection from the pod (tunnels, passthrough).
	Dial DialFunc
	// DialFrom opens a transparent connection to the pod's application.
	DialFrom DialFromFunc
}

// Tunnel opens HBONE streams; *hbone.Pool through TunnelFunc in the agent,
// fakes in tests.
type Tunnel interface {
	Connect(ctx context.Context, req *hbone.Request) (Duplex, error)
}

// PodLookup finds the local pod that owns an address.
type PodLookup interface {
	PodByIP(ip netip.Addr) (*Pod, bool)
}

// Bundle is the trust bundle used for every tunnel.
type Bundle = x509bundle.Source

// acceptLoop hands each accepted connection to handle on its own goroutine
// until ln is closed (then it returns nil). Any other accept error — running
// out of file descriptors, a connection aborted before accept — is waited out
// with backoff rather than ending the pod's listener.
func acceptLoop(ln net.Listener, handle func(*net.TCPConn)) error {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go handle(c.(*net.TCPConn))
	}
}
