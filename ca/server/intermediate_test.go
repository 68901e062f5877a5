package server

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	pb "istio.io/api/security/v1alpha1"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/catest"
)

// TestIssueIntermediate checks Istio's answer layout with a plugged-in
// intermediate: leaf, intermediate, then every root of root-cert.pem in the
// last element. The test client trusts only the roots, so the connection
// itself shows that the serving chain carries the intermediate.
func TestIssueIntermediate(t *testing.T) {
	h := catest.New(t, catest.Options{})
	spare := catest.New(t, catest.Options{})
	files := h.Files(t)
	files[ca.PluggedRootFile] = catest.PEM(h.Root, spare.Root)
	dir := t.TempDir()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	caCfg := ca.DefaultConfig()
	caCfg.Dir = dir
	c, err := ca.New(caCfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseStatic([]byte(nodesYAML), td)
	if err != nil {
		t.Fatal(err)
	}
	e := startServerWith(t, c, DefaultConfig(), s, s)

	req := &pb.IstioCertificateRequest{Csr: csrFor(t, nil, apiID.String()), ValidityDuration: 60, Metadata: impersonate(apiID.String())}
	resp, err := e.client.CreateCertificate(withToken("node1-secret"), req)
	if err != nil {
		t.Fatal(err)
	}
	var got [][]string
	for i, elem := range resp.CertChain {
		certs, err := ca.ParseCertificates([]byte(elem))
		if err != nil {
			t.Fatalf("element %d: %v", i, err)
		}
		var names []string
		for _, c := range certs {
			names = append(names, c.Subject.CommonName)
		}
		got = append(got, names)
	}
	want := [][]string{{""}, {h.Intermediate.Subject.CommonName}, {h.Root.Subject.CommonName, spare.Root.Subject.CommonName}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("answer elements (-want +got):\n%s", diff)
	}
	if resp.CertChain[2] != string(catest.PEM(h.Root, spare.Root)) {
		t.Error("last element is not root-cert.pem's bundle")
	}
	leaf, _ := ca.ParseCertificates([]byte(resp.CertChain[0]))
	inter := x509.NewCertPool()
	inter.AddCert(h.Intermediate)
	roots := x509.NewCertPool()
	roots.AddCert(h.Root)
	if _, err := leaf[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not verify through the intermediate: %v", err)
	}
}
