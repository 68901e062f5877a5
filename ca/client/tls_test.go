package client

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/catest"
)

// TestFileRootsTLS handshakes with a server whose certificate a CA signed,
// against root files that trust it or not, and checks that a root written
// after the configuration was made is used on the next handshake.
func TestFileRootsTLS(t *testing.T) {
	dir := t.TempDir()
	caCfg := ca.DefaultConfig()
	caCfg.Dir = filepath.Join(dir, "ca")
	good, err := ca.New(caCfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	caCfg.Dir = filepath.Join(dir, "other")
	other, err := ca.New(caCfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := good.SignServing(&key.PublicKey, []string{"warren-controller.warren-system.svc"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: key}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()

	rootFile := filepath.Join(dir, "root-cert.pem")
	handshake := func(serverName string) error {
		c, err := tls.Dial("tcp", ln.Addr().String(), FileRootsTLS(rootFile, serverName))
		if err == nil {
			c.Close()
		}
		return err
	}
	// No file yet: refused, naming the file.
	if err := handshake("warren-controller.warren-system.svc"); err == nil || !strings.Contains(err.Error(), "root file") {
		t.Errorf("without a root file: %v, want a root-file error", err)
	}
	write := func(c *ca.CA) {
		if err := os.WriteFile(rootFile, catest.PEM(c.Roots()...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(other)
	if err := handshake("warren-controller.warren-system.svc"); err == nil {
		t.Error("handshake verified against another CA's root")
	}
	write(good)
	if err := handshake("warren-controller.warren-system.svc"); err != nil {
		t.Errorf("handshake with the right root: %v", err)
	}
	if err := handshake("other.example"); err == nil {
		t.Error("handshake accepted a certificate for another name")
	}
}
