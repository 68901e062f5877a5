package client

import (
	"errors"
	"fmt"
	"net"
)

// Config configures a Client.
type Config struct {
	// Address is the CA's host:port, e.g. warren-ca.warren-system.svc:15012
	// or istiod.istio-system.svc:15012.
	Address string
	// ServerName is the name checked in the CA's certificate; empty means
	// the host part of Address.
	ServerName string
	// RootFile holds the PEM roots that verify the CA's server certificate
	// and seed the trust bundle (in Kubernetes, the istio-ca-root-cert
	// ConfigMap mounted as a file). It is read again on every handshake and
	// every Roots call, so a rotated file takes effect without a restart.
	RootFile string
	// TokenFile holds the bearer token (a projected service-account token
	// with the CA's audience, or a node bootstrap token). It is read on
	// every request, because the kubelet rotates projected tokens. Empty
	// sends no token.
	TokenFile string
	// CertFile and KeyFile are an optional client certificate (node mTLS
	// credential), read again on every handshake.
	CertFile, KeyFile string
	// ClusterID, when set, is sent as the "ClusterID" header, which istiod
	// uses to pick the cluster whose API verifies the token.
	ClusterID string
}

// DefaultConfig returns an empty configuration; Address and RootFile must
// be set.
func DefaultConfig() Config { return Config{} }

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		errs = append(errs, fmt.Errorf("CA address %q: %w", c.Address, err))
	}
	if c.RootFile == "" {
		errs = append(errs, errors.New("CA root file: must be set (it verifies the CA's certificate)"))
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		errs = append(errs, errors.New("client certificate: set both cert and key file, or neither"))
	}
	if c.TokenFile == "" && c.CertFile == "" {
		errs = append(errs, errors.New("credential: set a token file or a client certificate"))
	}
	return errors.Join(errs...)
}
