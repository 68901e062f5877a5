package kube

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Config configures the Kubernetes authenticator and authorizer.
type Config struct {
	// Audiences the caller's token must be issued for; at least one.
	Audiences []string
	// TrustDomain is the SPIFFE trust domain of the identities, without the
	// spiffe:// scheme.
	TrustDomain string
	// NodeAgents are the "namespace/serviceaccount" of trusted node agents,
	// which may obtain the identities of the pods on their node.
	NodeAgents []string
}

// DefaultConfig returns Istio's token audience and trust domain, and the
// service accounts of ztunnel and of Warren's agent as node agents.
func DefaultConfig() Config {
	return Config{
		// The audience ztunnel requests its projected token for
		// (COMPAT.md "Identity and CA").
		Audiences:   []string{"istio-ca"},
		TrustDomain: "cluster.local",
		NodeAgents:  []string{"istio-system/ztunnel", "warren-system/warren-agent"},
	}
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if len(c.Audiences) == 0 {
		return errors.New("no token audience")
	}
	for _, a := range c.Audiences {
		if a == "" {
			return errors.New("empty token audience")
		}
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil || strings.Contains(c.TrustDomain, "://") {
		return fmt.Errorf("trust domain %q: want a bare trust domain name", c.TrustDomain)
	}
	for _, a := range c.NodeAgents {
		ns, sa, ok := strings.Cut(a, "/")
		if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
			return fmt.Errorf("node agent %q: want namespace/serviceaccount", a)
		}
	}
	return nil
}
