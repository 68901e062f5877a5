package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// pki is the key material of one cluster, as files in dir. ECDSA P-256
// throughout: generating a key takes microseconds where RSA-2048 takes
// ~100 ms, and every component accepts it (test/kube does the same).
type pki struct {
	dir   string
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
	// caPEM and the admin pair are kept for the in-process client.
	caPEM               []byte
	adminCert, adminKey []byte
	serial              int64
}

// certSpec is one leaf certificate: name is the file stem.
type certSpec struct {
	name  string
	cn    string
	orgs  []string
	ips   []netip.Addr
	dns   []string
	usage []x509.ExtKeyUsage
}

var (
	clientAuth = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	serverAuth = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
)

// certSpecs lists every certificate the components need. Names that RBAC
// or the Node authorizer match on (system:kube-controller-manager,
// system:node:<name> in system:nodes, ...) are the ones kubeadm uses.
func certSpecs(nodes []node) []certSpec {
	specs := []certSpec{
		{name: "apiserver", cn: "kube-apiserver", usage: serverAuth,
			ips: []netip.Addr{netip.MustParseAddr("127.0.0.1"), nodeAddr(0), kubernetesServiceIP},
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		{name: "admin", cn: "warren-cluster-admin", orgs: []string{"system:masters"}, usage: clientAuth},
		{name: "kube-controller-manager", cn: "system:kube-controller-manager", usage: clientAuth},
		{name: "kube-scheduler", cn: "system:kube-scheduler", usage: clientAuth},
		// The bootstrap binding system:node-proxier names this user.
		{name: "kube-proxy", cn: "system:kube-proxy", usage: clientAuth},
		// kube-apiserver -> kubelet (logs, exec, port-forward); the kubelets
		// authorize everything their CA signed.
		{name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}, usage: clientAuth},
	}
	for _, n := range nodes {
		specs = append(specs,
			certSpec{name: "kubelet-" + n.name, cn: "system:node:" + n.name, orgs: []string{"system:nodes"}, usage: clientAuth},
			// The apiserver reaches kubelets by InternalIP and checks it.
			certSpec{name: "kubelet-serving-" + n.name, cn: n.name, ips: []netip.Addr{n.addr}, dns: []string{n.name}, usage: serverAuth},
		)
	}
	return specs
}

// newPKI writes into dir: ca.crt/ca.key, <name>.crt/<name>.key for every
// spec, and the service-account signing key pair sa.key/sa.pub.
func newPKI(dir string, specs []certSpec) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating pki dir: %w", err)
	}
	p := &pki{dir: dir, serial: 1}
	var err error
	if p.caKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(p.serial),
		Subject:               pkix.Name{CommonName: "warren-cluster-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, p.caKey.Public(), p.caKey)
	if err != nil {
		return nil, fmt.Errorf("creating CA certificate: %w", err)
	}
	if p.ca, err = x509.ParseCertificate(der); err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	caKeyPEM, err := keyPEM(p.caKey)
	if err != nil {
		return nil, err
	}
	if err := p.write("ca", p.caPEM, caKeyPEM); err != nil {
		return nil, err
	}
	for _, s := range specs {
		if err := p.issue(s); err != nil {
			return nil, fmt.Errorf("issuing %s certificate: %w", s.name, err)
		}
	}
	if p.adminCert, err = os.ReadFile(p.cert("admin")); err != nil {
		return nil, err
	}
	if p.adminKey, err = os.ReadFile(p.key("admin")); err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating service-account key: %w", err)
	}
	saKeyPEM, err := keyPEM(saKey)
	if err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, fmt.Errorf("encoding service-account public key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.key"), saKeyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *pki) issue(s certSpec) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial),
		Subject:      pkix.Name{CommonName: s.cn, Organization: s.orgs},
		NotBefore:    p.ca.NotBefore,
		NotAfter:     p.ca.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  s.usage,
		DNSNames:     s.dns,
	}
	for _, ip := range s.ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, key.Public(), p.caKey)
	if err != nil {
		return err
	}
	kp, err := keyPEM(key)
	if err != nil {
		return err
	}
	return p.write(s.name, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), kp)
}

func (p *pki) write(name string, cert, key []byte) error {
	if err := os.WriteFile(p.cert(name), cert, 0o600); err != nil {
		return fmt.Errorf("writing %s certificate: %w", name, err)
	}
	if err := os.WriteFile(p.key(name), key, 0o600); err != nil {
		return fmt.Errorf("writing %s key: %w", name, err)
	}
	return nil
}

func (p *pki) cert(name string) string { return filepath.Join(p.dir, name+".crt") }
func (p *pki) key(name string) string  { return filepath.Join(p.dir, name+".key") }
func (p *pki) file(name string) string { return filepath.Join(p.dir, name) }

func keyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encoding key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// kubeconfig writes <dir>/<name>.kubeconfig for the certificate name,
// talking to server, with everything embedded so the file can be copied
// anywhere (helm, kubectl, a pod).
func (p *pki) kubeconfig(name, server string) (string, error) {
	cert, err := os.ReadFile(p.cert(name))
	if err != nil {
		return "", err
	}
	key, err := os.ReadFile(p.key(name))
	if err != nil {
		return "", err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["warren"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: p.caPEM}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts["warren"] = &clientcmdapi.Context{Cluster: "warren", AuthInfo: name}
	cfg.CurrentContext = "warren"
	path := filepath.Join(p.dir, name+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", fmt.Errorf("writing %s kubeconfig: %w", name, err)
	}
	return path, nil
}

// adminREST is the admin's client configuration for server; the caller
// adds the dialer.
func (p *pki) adminREST(server string) *rest.Config {
	return &rest.Config{
		Host: server,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   p.caPEM,
			CertData: p.adminCert,
			KeyData:  p.adminKey,
		},
		// client-go's default 5 QPS would throttle setup-heavy tests.
		QPS:   200,
		Burst: 400,
	}
}
