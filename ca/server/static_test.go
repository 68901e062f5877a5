package server

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestParseStaticErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{name: "unknown field", yaml: "nodes: [{name: a, token: t, identitys: []}]", want: "unknown field"},
		{name: "no name", yaml: "nodes: [{token: t}]", want: "name is empty"},
		{name: "duplicate name", yaml: "nodes: [{name: a, token: t}, {name: a, token: u}]", want: "duplicate name"},
		{name: "no credential", yaml: "nodes: [{name: a}]", want: "no credential"},
		{name: "both tokens", yaml: "nodes: [{name: a, token: t, tokenSHA256: '00'}]", want: "not both"},
		{name: "bad hash", yaml: "nodes: [{name: a, tokenSHA256: xyz}]", want: "64 hex digits"},
		{name: "shared token", yaml: "nodes: [{name: a, token: t}, {name: b, token: t}]", want: `same token as node "a"`},
		{name: "shared subject", yaml: "nodes: [{name: a, certificateSubject: s}, {name: b, certificateSubject: s}]", want: "same certificate subject"},
		{name: "other trust domain", yaml: "nodes: [{name: a, token: t, identities: ['spiffe://other.org/ns/x/sa/y']}]", want: "not in trust domain"},
		{name: "inner wildcard", yaml: "nodes: [{name: a, token: t, identities: ['spiffe://cluster.local/ns/*/sa/y']}]", want: "last path segment"},
		{name: "bare trust domain", yaml: "nodes: [{name: a, token: t, identities: ['spiffe://cluster.local']}]", want: "names the trust domain"},
		{name: "not a SPIFFE ID", yaml: "nodes: [{name: a, token: t, identities: ['https://x/y']}]", want: "identity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseStatic([]byte(tt.yaml), td)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want error containing %q", err, tt.want)
			}
		})
	}
}

func TestStatic(t *testing.T) {
	s, err := ParseStatic([]byte(nodesYAML+`
- name: node3
  certificateSubject: node3.example
  identities: ["spiffe://cluster.local/*"]
`), td)
	if err != nil {
		t.Fatal(err)
	}
	cert := func(cn string) []*x509.Certificate {
		return []*x509.Certificate{{Subject: pkix.Name{CommonName: cn, Organization: []string{"example"}}}}
	}
	authn := []struct {
		name  string
		token string
		certs []*x509.Certificate
		want  *Caller
		err   error
	}{
		{name: "plain token", token: "node1-secret", want: &Caller{Kind: KindNode, Name: "node/node1", Node: "node1", MayImpersonate: true}},
		{name: "hashed token", token: "s3cret-node2", want: &Caller{Kind: KindNode, Name: "node/node2", Node: "node2", MayImpersonate: true}},
		{name: "certificate CN", certs: cert("node3.example"), want: &Caller{Kind: KindNode, Name: "node/node3", Node: "node3", MayImpersonate: true}},
		{name: "wrong token", token: "node1-secreT", err: ErrUnauthenticated},
		{name: "token wins over certificate", token: "nope", certs: cert("node3.example"), err: ErrUnauthenticated},
		{name: "unknown certificate", certs: cert("node9"), err: ErrUnauthenticated},
		{name: "nothing", err: ErrUnauthenticated},
	}
	for _, tt := range authn {
		t.Run("authenticate/"+tt.name, func(t *testing.T) {
			got, err := s.Authenticate(context.Background(), tt.token, tt.certs)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b spiffeid.ID) bool { return a == b })); diff != "" {
				t.Errorf("caller (-want +got):\n%s", diff)
			}
		})
	}
	authz := []struct {
		node, id string
		ok       bool
	}{
		{"node1", "spiffe://cluster.local/ns/backend/sa/api", true},
		{"node1", "spiffe://cluster.local/ns/backend/sa/api2", false},
		{"node1", "spiffe://cluster.local/ns/frontend/sa/web", true},
		{"node1", "spiffe://cluster.local/ns/frontendx/sa/web", false},
		{"node2", "spiffe://cluster.local/ns/backend/sa/api", false},
		{"node3", "spiffe://cluster.local/ns/any/sa/thing", true},
		{"node9", "spiffe://cluster.local/ns/backend/sa/api", false},
	}
	for _, tt := range authz {
		t.Run("authorize/"+tt.node+"/"+tt.id, func(t *testing.T) {
			err := s.Authorize(context.Background(), &Caller{Node: tt.node}, spiffeid.RequireFromString(tt.id))
			if tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrPermissionDenied)) {
				t.Fatalf("got %v, want allowed=%v", err, tt.ok)
			}
		})
	}
}
