package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"
)

// NodesFile is the static node credentials file of hosts without
// Kubernetes: who each node is and which identities it may obtain.
//
//	nodes:
//	- name: node1
//	  tokenSHA256: 9f86d0...   # hex SHA-256 of the node's bootstrap token
//	  certificateSubject: node1  # or: CN / subject of its client certificate
//	  identities:
//	  - spiffe://cluster.local/ns/backend/sa/api
//	  - spiffe://cluster.local/ns/frontend/*   # every identity under the path
type NodesFile struct {
	Nodes []NodeEntry `json:"nodes"`
}

// NodeEntry is one node of a NodesFile. At least one credential must be
// given.
type NodeEntry struct {
	Name string `json:"name"`
	// TokenSHA256 is the hex SHA-256 of the bootstrap token, so the file
	// does not hold the secret itself.
	TokenSHA256 string `json:"tokenSHA256,omitempty"`
	// Token is the bootstrap token in clear; prefer TokenSHA256.
	Token string `json:"token,omitempty"`
	// CertificateSubject matches a verified client certificate: its subject
	// common name, or its whole subject as written by
	// pkix.Name.String ("CN=node1,O=example").
	CertificateSubject string `json:"certificateSubject,omitempty"`
	// Identities the node may obtain: SPIFFE IDs, or a path prefix ending in
	// "/*" for every ID below it.
	Identities []string `json:"identities"`
}

// Static authenticates nodes by bootstrap token or client certificate and
// authorizes them from a fixed map; it is both the Authenticator and the
// Authorizer for hosts without Kubernetes. Immutable and safe for concurrent
// use.
type Static struct {
	nodes []staticNode
}

type staticNode struct {
	name        string
	tokenSum    []byte // nil when the node has no token
	subject     string
	exact       map[spiffeid.ID]bool
	prefixes    []string // "spiffe://td/ns/x/", matched against ID strings
	identityDoc []string // as written, for messages
}

var (
	_ Authenticator = (*Static)(nil)
	_ Authorizer    = (*Static)(nil)
)

// LoadStatic reads and checks a NodesFile for trust domain td.
func LoadStatic(path string, td spiffeid.TrustDomain) (*Static, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading nodes file: %w", err)
	}
	s, err := ParseStatic(data, td)
	if err != nil {
		return nil, fmt.Errorf("nodes file %s: %w", path, err)
	}
	return s, nil
}

// ParseStatic parses and checks a NodesFile: unknown fields, duplicate
// names or credentials, a node without credential, and identities outside
// td are errors.
func ParseStatic(data []byte, td spiffeid.TrustDomain) (*Static, error) {
	var f NodesFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("parsing: %w", err)
	}
	s := &Static{}
	names := map[string]bool{}
	sums := map[string]string{}
	subjects := map[string]string{}
	for i, n := range f.Nodes {
		where := fmt.Sprintf("node %d (%q)", i+1, n.Name)
		if n.Name == "" {
			return nil, fmt.Errorf("%s: name is empty", where)
		}
		if names[n.Name] {
			return nil, fmt.Errorf("%s: duplicate name", where)
		}
		names[n.Name] = true
		sn := staticNode{name: n.Name, subject: n.CertificateSubject, exact: map[spiffeid.ID]bool{}, identityDoc: n.Identities}
		switch {
		case n.Token != "" && n.TokenSHA256 != "":
			return nil, fmt.Errorf("%s: set token or tokenSHA256, not both", where)
		case n.Token != "":
			sum := sha256.Sum256([]byte(n.Token))
			sn.tokenSum = sum[:]
		case n.TokenSHA256 != "":
			sum, err := hex.DecodeString(n.TokenSHA256)
			if err != nil || len(sum) != sha256.Size {
				return nil, fmt.Errorf("%s: tokenSHA256 is not 64 hex digits", where)
			}
			sn.tokenSum = sum
		}
		if sn.tokenSum == nil && sn.subject == "" {
			return nil, fmt.Errorf("%s: no credential (token, tokenSHA256 or certificateSubject)", where)
		}
		if sn.tokenSum != nil {
			if other, dup := sums[string(sn.tokenSum)]; dup {
				return nil, fmt.Errorf("%s: same token as node %q", where, other)
			}
			sums[string(sn.tokenSum)] = n.Name
		}
		if sn.subject != "" {
			if other, dup := subjects[sn.subject]; dup {
				return nil, fmt.Errorf("%s: same certificate subject as node %q", where, other)
			}
			subjects[sn.subject] = n.Name
		}
		for _, pat := range n.Identities {
			if err := sn.addPattern(pat, td); err != nil {
				return nil, fmt.Errorf("%s: identity %q: %w", where, pat, err)
			}
		}
		s.nodes = append(s.nodes, sn)
	}
	return s, nil
}

func (n *staticNode) addPattern(pat string, td spiffeid.TrustDomain) error {
	base, wildcard := strings.CutSuffix(pat, "/*")
	if strings.Contains(base, "*") {
		return errors.New(`"*" is allowed only as the last path segment`)
	}
	id, err := spiffeid.FromString(base)
	if err != nil {
		return err
	}
	if !id.MemberOf(td) {
		return fmt.Errorf("not in trust domain %q", td.Name())
	}
	switch {
	case wildcard:
		n.prefixes = append(n.prefixes, id.String()+"/")
	case id.Path() == "":
		return errors.New("names the trust domain, not a workload; use spiffe://<td>/* for all")
	default:
		n.exact[id] = true
	}
	return nil
}

// Authenticate finds the node whose bootstrap token or client certificate
// was presented. Token comparisons run in constant time over every node, so
// the time taken does not tell how close a guess came.
func (s *Static) Authenticate(_ context.Context, token string, peerCerts []*x509.Certificate) (*Caller, error) {
	var found *staticNode
	if token != "" {
		sum := sha256.Sum256([]byte(token))
		for i := range s.nodes {
			n := &s.nodes[i]
			if n.tokenSum != nil && subtle.ConstantTimeCompare(sum[:], n.tokenSum) == 1 {
				found = n
			}
		}
		if found == nil {
			return nil, fmt.Errorf("%w: bearer token matches no node", ErrUnauthenticated)
		}
	} else if len(peerCerts) > 0 {
		leaf := peerCerts[0]
		for i := range s.nodes {
			n := &s.nodes[i]
			if n.subject != "" && (n.subject == leaf.Subject.CommonName || n.subject == leaf.Subject.String()) {
				found = n
				break
			}
		}
		if found == nil {
			return nil, fmt.Errorf("%w: client certificate subject %q matches no node", ErrUnauthenticated, leaf.Subject.String())
		}
	} else {
		return nil, fmt.Errorf("%w: no node credential", ErrUnauthenticated)
	}
	// Nodes have no identity of their own: they ask for the identities of
	// the workloads they host.
	return &Caller{Kind: KindNode, Name: "node/" + found.name, Node: found.name, MayImpersonate: true}, nil
}

// Authorize allows id when the caller's node lists it.
func (s *Static) Authorize(_ context.Context, caller *Caller, id spiffeid.ID) error {
	for i := range s.nodes {
		n := &s.nodes[i]
		if n.name != caller.Node {
			continue
		}
		if n.exact[id] {
			return nil
		}
		str := id.String()
		for _, p := range n.prefixes {
			if strings.HasPrefix(str, p) {
				return nil
			}
		}
		return fmt.Errorf("%w: node %s may not obtain %s (allowed: %s)", ErrPermissionDenied, n.name, id, strings.Join(n.identityDoc, ", "))
	}
	return fmt.Errorf("%w: no identities are listed for node %q", ErrPermissionDenied, caller.Node)
}
