package server

import (
	"context"
	"crypto/x509"
	"errors"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Sentinel errors of authenticators and authorizers; the server maps them
// to gRPC codes.
var (
	// ErrUnauthenticated: the credential is missing, malformed, expired or
	// not recognised (gRPC Unauthenticated).
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermissionDenied: the caller is known but may not obtain the
	// identity it asked for (gRPC PermissionDenied).
	ErrPermissionDenied = errors.New("permission denied")
)

// Caller is who presented the credential.
type Caller struct {
	// Kind is "kubernetes" (a service-account token) or "node" (a static
	// node credential).
	Kind string
	// Name identifies the caller in logs.
	Name string
	// Identity is the caller's own SPIFFE identity, if it has one; it may
	// always obtain that.
	Identity spiffeid.ID
	// Node is the node the caller runs on.
	Node string
	// MayImpersonate marks a trusted node agent, which may ask for the
	// identities of workloads on its node.
	MayImpersonate bool
}

// Caller kinds.
const (
	KindKubernetes = "kubernetes"
	KindNode       = "node"
)

// Authenticator turns a request's credentials into a Caller: the bearer
// token (empty when none was sent) and the verified client certificate
// chain (nil when none). Errors wrap ErrUnauthenticated unless the check
// itself failed (e.g. the Kubernetes API was unreachable).
type Authenticator interface {
	Authenticate(ctx context.Context, token string, peerCerts []*x509.Certificate) (*Caller, error)
}

// Authorizer decides whether caller may obtain id on behalf of a workload.
// The server calls it only when id is not the caller's own identity and the
// caller may impersonate. Errors wrap ErrPermissionDenied unless the check
// itself failed.
type Authorizer interface {
	Authorize(ctx context.Context, caller *Caller, id spiffeid.ID) error
}
