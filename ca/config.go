package ca

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Config configures a CA.
type Config struct {
	// TrustDomain is the SPIFFE trust domain the CA signs for, without the
	// spiffe:// scheme.
	TrustDomain string
	// Dir is where root.pem and root-key.pem persist. Empty keeps the root in
	// memory only, so every restart creates a new trust domain root.
	Dir string
	// LeafTTL is the lifetime of a leaf when the request does not ask for one.
	LeafTTL time.Duration
	// MaxTTL caps the lifetime a request may ask for.
	MaxTTL time.Duration
	// Backdate moves NotBefore into the past so that peers whose clocks lag
	// ours still accept a freshly issued certificate.
	Backdate time.Duration
}

// DefaultConfig returns the defaults: Istio's trust domain and certificate
// lifetime (COMPAT.md "Identity and CA"), in-memory root.
func DefaultConfig() Config {
	return Config{
		TrustDomain: "cluster.local",
		LeafTTL:     24 * time.Hour,
		MaxTTL:      24 * time.Hour,
		// Five minutes covers the skew of NTP-synchronised nodes with a wide
		// margin while keeping the extra exposure of a leaked key small.
		Backdate: 5 * time.Minute,
	}
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if err := ValidateTrustDomain(c.TrustDomain); err != nil {
		return err
	}
	if c.LeafTTL <= 0 {
		return fmt.Errorf("leaf TTL %v: must be positive", c.LeafTTL)
	}
	if c.MaxTTL <= 0 {
		return fmt.Errorf("max TTL %v: must be positive", c.MaxTTL)
	}
	if c.LeafTTL > c.MaxTTL {
		return fmt.Errorf("leaf TTL %v exceeds max TTL %v", c.LeafTTL, c.MaxTTL)
	}
	if c.Backdate < 0 {
		return fmt.Errorf("backdate %v: must not be negative", c.Backdate)
	}
	return nil
}

// ValidateTrustDomain checks a configured trust domain: a bare SPIFFE trust
// domain name such as "cluster.local", not a URI.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return errors.New("trust domain is empty")
	}
	if strings.Contains(td, "://") {
		return fmt.Errorf("trust domain %q: want a bare name, not a URI", td)
	}
	if _, err := spiffeid.TrustDomainFromString(td); err != nil {
		return fmt.Errorf("trust domain %q: %w", td, err)
	}
	return nil
}
