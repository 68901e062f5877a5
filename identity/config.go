package identity

import (
	"fmt"
	"time"

	"github.com/warren-mesh/warren/ca"
)

// Config configures a Manager.
type Config struct {
	// TrustDomain is the SPIFFE trust domain of every identity, without the
	// spiffe:// scheme.
	TrustDomain string
	// TTL is the certificate lifetime requested from the CA, which may cap it.
	TTL time.Duration
	// RefreshFraction is the part of a certificate's remaining life at
	// issuance after which it is replaced.
	RefreshFraction float64
	// Jitter is the largest fraction by which a refresh or retry is brought
	// forward at random, so that identities issued together, or agents
	// restarted together, do not hit the CA in step.
	Jitter float64
	// RetryMin and RetryMax bound the exponential backoff between failed
	// requests to the CA.
	RetryMin, RetryMax time.Duration
	// Timeout bounds each request to the CA.
	Timeout time.Duration
	// BundleRefresh is how often the trust bundle is fetched again, so that
	// a root added during a CA rotation is trusted without a restart.
	BundleRefresh time.Duration
}

// DefaultConfig returns Istio's defaults: 24 h certificates refreshed at half
// life (COMPAT.md "Identity and CA").
func DefaultConfig() Config {
	return Config{
		TrustDomain:     "cluster.local",
		TTL:             24 * time.Hour,
		RefreshFraction: 0.5,
		Jitter:          0.1,
		RetryMin:        time.Second,
		// A minute keeps a recovering CA from being flooded by every agent
		// while still healing well within a certificate's remaining half life.
		RetryMax: time.Minute,
		// Signing takes milliseconds; 30 s covers a CA that is busy or a slow
		// TokenReview behind it.
		Timeout: 30 * time.Second,
		// Root rotation keeps old and new roots side by side for far longer
		// than this, so a few minutes of lag is harmless.
		BundleRefresh: 5 * time.Minute,
	}
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if err := ca.ValidateTrustDomain(c.TrustDomain); err != nil {
		return err
	}
	if c.TTL <= 0 {
		return fmt.Errorf("TTL %v: must be positive", c.TTL)
	}
	if !(c.RefreshFraction > 0 && c.RefreshFraction < 1) {
		return fmt.Errorf("refresh fraction %v: must be between 0 and 1", c.RefreshFraction)
	}
	if !(c.Jitter >= 0 && c.Jitter < 1) {
		return fmt.Errorf("jitter %v: must be at least 0 and below 1", c.Jitter)
	}
	if c.RetryMin <= 0 {
		return fmt.Errorf("retry min %v: must be positive", c.RetryMin)
	}
	if c.RetryMax < c.RetryMin {
		return fmt.Errorf("retry max %v is below retry min %v", c.RetryMax, c.RetryMin)
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("timeout %v: must be positive", c.Timeout)
	}
	if c.BundleRefresh <= 0 {
		return fmt.Errorf("bundle refresh %v: must be positive", c.BundleRefresh)
	}
	return nil
}
