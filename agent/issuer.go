package agent

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/client"
	"github.com/warren-mesh/warren/identity"
)

// RemoteCA names the CA service the agent asks for certificates: Warren's
// controller or Istio's istiod, over the same API. Empty Address keeps the
// in-process CA of Config.CADir.
type RemoteCA struct {
	// Address is host:port of the CA (Istio: istiod.istio-system.svc:15012).
	Address string
	// ServerName is checked in the CA's certificate; empty: Address's host.
	ServerName string
	// RootFile verifies the CA and seeds the trust bundle (Kubernetes: the
	// istio-ca-root-cert ConfigMap mounted as a file).
	RootFile string
	// TokenFile is the bearer token read on every request: a projected
	// service-account token with the CA's audience (istio-ca), or a node
	// bootstrap token.
	TokenFile string
}

// validateCA reports problems with the certificate source.
func (c Config) validateCA() []error {
	var errs []error
	if c.CA.Address == "" {
		return nil
	}
	if c.CADir != "" {
		errs = append(errs, errors.New("ca: set the local CA directory or a CA address, not both"))
	}
	if c.CA.RootFile == "" {
		errs = append(errs, errors.New("ca root file: must be set with a CA address"))
	}
	if c.CA.TokenFile == "" {
		errs = append(errs, errors.New("ca token file: must be set with a CA address"))
	}
	if c.BundleRefresh < 0 {
		errs = append(errs, fmt.Errorf("bundle refresh: %v is negative", c.BundleRefresh))
	}
	return errs
}

// issuer returns where certificates come from: a client of the CA service
// when CA.Address is set, else the local CA of CADir (loaded or created).
// The returned close function releases the client's connection.
func (c Config) issuer(log *slog.Logger) (identity.Issuer, func() error, error) {
	if c.CA.Address == "" {
		caCfg := ca.DefaultConfig()
		caCfg.TrustDomain, caCfg.Dir = c.TrustDomain, c.CADir
		localCA, err := ca.New(caCfg, log)
		if err != nil {
			return nil, nil, fmt.Errorf("loading local CA: %w", err)
		}
		return identity.LocalIssuer(localCA), func() error { return nil }, nil
	}
	cc := client.DefaultConfig()
	cc.Address, cc.ServerName, cc.RootFile, cc.TokenFile = c.CA.Address, c.CA.ServerName, c.CA.RootFile, c.CA.TokenFile
	// istiod picks its node authorizer by this cluster name; without it
	// every ImpersonatedIdentity request is refused.
	cc.ClusterID = c.ClusterID
	cl, err := client.New(cc, log)
	if err != nil {
		return nil, nil, err
	}
	return cl, cl.Close, nil
}

// identityConfig is the identity manager's configuration.
func (c Config) identityConfig() identity.Config {
	idCfg := identity.DefaultConfig()
	idCfg.TrustDomain, idCfg.TTL = c.TrustDomain, c.CertTTL
	if c.BundleRefresh > 0 {
		idCfg.BundleRefresh = c.BundleRefresh
	}
	return idCfg
}
