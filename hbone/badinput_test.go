package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// tlsCert turns an SVID into a plain crypto/tls certificate.
func tlsCert(s *x509svid.SVID) tls.Certificate {
	c := tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
	for _, x := range s.Certificates {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// TestBadInputRefused sends what must not become a tunnel and checks that the
// server hangs up, logs exactly one line, and leaks nothing.
func TestBadInputRefused(t *testing.T) {
	checkLeaks(t)
	raw := func(payload string) func(t *testing.T, e *env) error {
		return func(t *testing.T, e *env) error {
			c, err := net.Dial("tcp", e.addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte(payload))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = io.ReadAll(c)
			return err
		}
	}
	tlsThen := func(alpn []string, payload string) func(t *testing.T, e *env) error {
		return func(t *testing.T, e *env) error {
			c, err := tls.Dial("tcp", e.addr.String(), &tls.Config{
				InsecureSkipVerify: true, // this test is about what the server accepts
				Certificates:       []tls.Certificate{tlsCert(e.client)},
				NextProtos:         alpn,
				MinVersion:         tls.VersionTLS13,
			})
			if err != nil {
				return err
			}
			defer c.Close()
			c.Write([]byte(payload))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = io.ReadAll(c)
			return err
		}
	}
	poolWith := func(svid func(e *env) *x509svid.SVID) func(t *testing.T, e *env) error {
		return func(t *testing.T, e *env) error {
			req := e.request()
			req.SVID = svid(e)
			req.SourceID = req.SVID.(*x509svid.SVID).ID
			if req.SourceID.TrustDomain() != e.ca.td {
				// Our side still trusts the server's roots.
				req.Bundle = x509bundle.NewSet(e.ca.bundle)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := e.pool.Connect(ctx, req)
			if err == nil {
				s.Close()
				t.Fatal("connect succeeded")
			}
			return err
		}
	}
	for _, tc := range []struct {
		name string
		do   func(t *testing.T, e *env) error
	}{
		{"plaintext HTTP/1.1", raw("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"plaintext HTTP/2 preface", raw("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")},
		{"TLS with ALPN http/1.1", tlsThen([]string{"http/1.1"}, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"TLS without ALPN", tlsThen(nil, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"HTTP/1.1 after ALPN h2", tlsThen([]string{"h2"}, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"TLS without client certificate", func(t *testing.T, e *env) error {
			c, err := tls.Dial("tcp", e.addr.String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = io.ReadAll(c)
			return err
		}},
		{"client from another trust domain", poolWith(func(e *env) *x509svid.SVID {
			return newTestCA(t, "other.local").leaf(t, "client", "frontend", time.Time{}, time.Time{})
		})},
		{"client from another CA", poolWith(func(e *env) *x509svid.SVID {
			return newTestCA(t, "cluster.local").leaf(t, "client", "frontend", time.Time{}, time.Time{})
		})},
		{"expired client certificate", poolWith(func(e *env) *x509svid.SVID {
			return e.ca.leaf(t, "client", "frontend", time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, DefaultConfig(), echo())
			err := tc.do(t, e)
			t.Logf("client saw: %v", err)
			waitFor(t, "refusal log", func() bool { return e.serverLog.count("refused connection") >= 1 })
			time.Sleep(20 * time.Millisecond)
			if n := e.serverLog.count("refused"); n != 1 {
				t.Errorf("%d refusal log lines, want 1:\n%s", n, e.serverLog.all())
			}
			waitFor(t, "server to drop the connection", func() bool { return e.server.connCount() == 0 })
		})
	}
}

// TestExpiredServerCertificate: the client refuses a server whose
// certificate has expired, and the server logs the refusal once.
func TestExpiredServerCertificate(t *testing.T) {
	checkLeaks(t)
	e := newEnvWith(t, DefaultConfig(), echo(), func(e *env, id *ServerIdentity) {
		id.SVID = e.ca.leaf(t, "server", "backend", time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	})
	_, err := e.pool.Connect(context.Background(), e.request())
	if err == nil {
		t.Fatal("connect to a server with an expired certificate succeeded")
	}
	t.Logf("client refused: %v", err)
	waitFor(t, "refusal log", func() bool { return e.serverLog.count("refused connection") == 1 })
}
