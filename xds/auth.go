package xds

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/warren-mesh/warren/ca/server"
)

// CAAuthenticator authenticates xDS streams with the CA's authenticator,
// so that an agent proves itself to discovery exactly as to the CA: the
// "authorization: Bearer <token>" metadata and the verified TLS client
// chain go to a, then allow (when not nil) decides whether that caller may
// subscribe.
//
// Refusals carry their gRPC code: Unauthenticated for a missing or bad
// credential; PermissionDenied when allow refuses; Unavailable when a
// failed to check (the Kubernetes API was unreachable), so that the client
// retries rather than gives up.
func CAAuthenticator(a server.Authenticator, allow func(*server.Caller) error) Authenticator {
	return caAuthenticator{a: a, allow: allow}
}

type caAuthenticator struct {
	a     server.Authenticator
	allow func(*server.Caller) error
}

func (c caAuthenticator) Authenticate(ctx context.Context) (string, error) {
	token, err := bearerToken(ctx)
	if err != nil {
		return "", status.Error(codes.Unauthenticated, err.Error())
	}
	var certs []*x509.Certificate
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			certs = ti.State.VerifiedChains[0]
		}
	}
	if token == "" && certs == nil {
		return "", status.Error(codes.Unauthenticated, "no bearer token and no client certificate")
	}
	caller, err := c.a.Authenticate(ctx, token, certs)
	switch {
	case errors.Is(err, server.ErrUnauthenticated):
		return "", status.Error(codes.Unauthenticated, err.Error())
	case err != nil:
		return "", status.Errorf(codes.Unavailable, "authenticating: %v", err)
	case caller == nil:
		return "", status.Error(codes.Internal, "authenticator returned no caller")
	}
	if c.allow != nil {
		if err := c.allow(caller); err != nil {
			// Whatever allow's reason, the stream is refused: fail closed.
			return "", status.Errorf(codes.PermissionDenied, "%s %s may not subscribe: %v", caller.Kind, caller.Name, err)
		}
	}
	who := caller.Kind + " " + caller.Name
	if caller.Node != "" {
		who += " on node " + caller.Node
	}
	return who, nil
}

// bearerToken reads the one "authorization" metadata value, "" when there
// is none.
func bearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	switch len(vals) {
	case 0:
		return "", nil
	case 1:
	default:
		return "", fmt.Errorf("%d authorization headers, want one", len(vals))
	}
	// The scheme is case-insensitive (RFC 9110 11.1).
	scheme, tok, ok := strings.Cut(vals[0], " ")
	tok = strings.TrimSpace(tok)
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", errors.New(`authorization header is not "Bearer <token>"`)
	}
	return tok, nil
}
