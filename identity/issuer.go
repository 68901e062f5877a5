package identity

import (
	"context"
	"crypto/x509"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/ca"
)

// Issuer is what the Manager needs from a CA: the in-process ca.CA through
// LocalIssuer, or a client of the controller's CA service.
type Issuer interface {
	// Issue signs csrDER, which must carry id as its only URI SAN, for about
	// ttl (the CA may shorten it). It returns the chain leaf first.
	Issue(ctx context.Context, id spiffeid.ID, csrDER []byte, ttl time.Duration) (chain []*x509.Certificate, err error)
	// Roots returns the CA's current trust bundle.
	Roots(ctx context.Context) ([]*x509.Certificate, error)
}

// LocalIssuer adapts an in-process CA, for single-binary setups and tests.
func LocalIssuer(c *ca.CA) Issuer { return localIssuer{ca: c} }

type localIssuer struct{ ca *ca.CA }

var _ Issuer = localIssuer{}

func (l localIssuer) Issue(ctx context.Context, id spiffeid.ID, csrDER []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return l.ca.SignFor(csrDER, id, ttl)
}

func (l localIssuer) Roots(ctx context.Context) ([]*x509.Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return l.ca.Roots(), nil
}
