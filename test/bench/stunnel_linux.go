package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/test/harness"
)

// startStunnel starts, for each topology, a stunnel client in the client
// pod and a stunnel server in the server pod: TLS 1.3 only, each side
// presenting a certificate from the mesh's own CA and verifying the peer's
// chain to it, as Warren's agents do.
func (r *runner) startStunnel(ctx context.Context) error {
	certs, err := r.stunnelCerts()
	if err != nil {
		return err
	}
	client := r.m.Pod(harness.Client)
	for _, where := range []string{CrossNode, SameNode} {
		server := r.serverPod(where)
		var srv, cli strings.Builder
		common := func(b *strings.Builder, side string) {
			// foreground keeps it in the testbed's process group; no pid
			// file; warnings and worse only.
			fmt.Fprintf(b, "foreground = yes\npid =\ndebug = warning\n")
			fmt.Fprintf(b, "sslVersionMin = TLSv1.3\nsslVersionMax = TLSv1.3\n")
			fmt.Fprintf(b, "cert = %s\nkey = %s\nCAfile = %s\nverifyChain = yes\n",
				certs[side+".pem"], certs[side+"-key.pem"], certs["root.pem"])
		}
		common(&srv, "server")
		common(&cli, "client")
		cli.WriteString("client = yes\n")
		for svc := range numServices {
			_, local := r.addr(PathStunnel, where, svc)
			fmt.Fprintf(&srv, "[svc%d]\naccept = %s:%d\nconnect = 127.0.0.1:%d\n", svc, server.IP, stunnelServerBase+int(svc), backendPort[svc])
			fmt.Fprintf(&cli, "[svc%d]\naccept = 127.0.0.1:%d\nconnect = %s:%d\n", svc, local, server.IP, stunnelServerBase+int(svc))
		}
		for side, conf := range map[string]string{"server": srv.String(), "client": cli.String()} {
			path := filepath.Join(r.dir, "stunnel-"+side+"-"+strings.ReplaceAll(where, " ", "-")+".conf")
			if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
				return fmt.Errorf("writing stunnel config: %w", err)
			}
			ns, port := server.NetNS, stunnelServerBase
			if side == "client" {
				_, port = r.addr(PathStunnel, where, svcIperf)
				ns = client.NetNS
			}
			p, err := r.start(ctx, ns, filepath.Base(strings.TrimSuffix(path, ".conf")), false, port, r.tool["stunnel"], path)
			if err != nil {
				return err
			}
			r.stunnel[side+"-"+where] = p
		}
	}
	return nil
}

// stunnelCerts issues a client and a server certificate from the mesh's CA
// root and writes them, their keys and the root as PEM files, returning
// the paths by name.
func (r *runner) stunnelCerts() (map[string]string, error) {
	cfg := ca.DefaultConfig()
	cfg.Dir = filepath.Join(r.m.Dir, "ca")
	authority, err := ca.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, fmt.Errorf("loading mesh CA: %w", err)
	}
	files := map[string][]byte{"root.pem": certsPEM(authority.Roots())}
	for _, side := range []string{"client", "server"} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generating key: %w", err)
		}
		id := spiffeid.RequireFromPath(authority.TrustDomain(), "/ns/bench/sa/stunnel-"+side)
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
		if err != nil {
			return nil, fmt.Errorf("creating CSR: %w", err)
		}
		chain, err := authority.Sign(csr, 0)
		if err != nil {
			return nil, fmt.Errorf("signing stunnel %s certificate: %w", side, err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("encoding key: %w", err)
		}
		// The leaf alone: the peer has the root.
		files[side+".pem"] = certsPEM(chain[:1])
		files[side+"-key.pem"] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	paths := map[string]string{}
	for name, b := range files {
		p := filepath.Join(r.dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return nil, fmt.Errorf("writing %s: %w", name, err)
		}
		paths[name] = p
	}
	return paths, nil
}

func certsPEM(certs []*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}
