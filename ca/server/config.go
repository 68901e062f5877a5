package server

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// Config configures a Server.
type Config struct {
	// Addr is where the controller listens; cmd/ uses it, Serve takes a
	// listener. Istio's istiod serves its CA on 15012, and agents that talk
	// to either expect that port.
	Addr string
	// MaxTTL caps the certificate lifetime a request may ask for; longer
	// requests are shortened, not refused (Istio's agents ask for 24 h).
	MaxTTL time.Duration
	// MaxRequestBytes bounds a request message. A CSR with one URI SAN is
	// under 1 KiB; the limit stops a caller from making the server buffer
	// and parse megabytes before anything is checked.
	MaxRequestBytes int
	// MaxMessageBytes is the largest message gRPC accepts on the server's
	// port at all; 0 means twice MaxRequestBytes. Services sharing the port
	// need more: an agent re-subscribing to xDS names every resource it
	// holds in one request.
	MaxMessageBytes int
	// DNSNames and IPs go into the server certificate, which clients check
	// against the name they dialled (for Kubernetes, warren-ca.<ns>.svc).
	DNSNames []string
	IPs      []net.IP
	// ServingTTL is the lifetime of the server certificate; it is renewed
	// at half life, on the next handshake.
	ServingTTL time.Duration
	// BundleFile, when set, holds extra trusted roots (PEM) announced to
	// clients beside the CA's own: during a root rotation, the new root
	// before the switch and the old one after it. It is read again when its
	// modification time changes.
	BundleFile string
	// ClientCAFile, when set, holds the roots that sign node client
	// certificates; the server then asks for a client certificate (but does
	// not require one: bearer tokens remain an alternative).
	ClientCAFile string
}

// DefaultConfig returns the defaults: istiod's port, Istio's 24 h cap.
func DefaultConfig() Config {
	return Config{
		Addr:            ":15012",
		MaxTTL:          24 * time.Hour,
		MaxRequestBytes: 64 << 10,
		DNSNames:        []string{"warren-ca.warren-system.svc"},
		ServingTTL:      24 * time.Hour,
	}
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.MaxTTL <= 0 {
		errs = append(errs, fmt.Errorf("max TTL %v: must be positive", c.MaxTTL))
	}
	// 4 KiB still fits a CSR with a long SPIFFE ID and its metadata.
	if c.MaxRequestBytes < 4<<10 {
		errs = append(errs, fmt.Errorf("max request bytes %d: must be at least 4096", c.MaxRequestBytes))
	}
	if c.MaxMessageBytes != 0 && c.MaxMessageBytes < c.MaxRequestBytes {
		errs = append(errs, fmt.Errorf("max message bytes %d: must be 0 or at least max request bytes (%d)", c.MaxMessageBytes, c.MaxRequestBytes))
	}
	if len(c.DNSNames) == 0 && len(c.IPs) == 0 {
		errs = append(errs, errors.New("server certificate names: need at least one DNS name or IP address"))
	}
	if c.ServingTTL < time.Minute {
		errs = append(errs, fmt.Errorf("serving TTL %v: must be at least a minute", c.ServingTTL))
	}
	return errors.Join(errs...)
}
