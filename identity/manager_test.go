package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"

	"github.com/warren-mesh/warren/ca"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	webID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/web")
	dbID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/db")
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{name: "default", mod: func(*Config) {}},
		{name: "empty trust domain", mod: func(c *Config) { c.TrustDomain = "" }, wantErr: "trust domain is empty"},
		{name: "uri trust domain", mod: func(c *Config) { c.TrustDomain = "spiffe://x" }, wantErr: "bare name"},
		{name: "zero ttl", mod: func(c *Config) { c.TTL = 0 }, wantErr: "TTL"},
		{name: "fraction zero", mod: func(c *Config) { c.RefreshFraction = 0 }, wantErr: "refresh fraction"},
		{name: "fraction one", mod: func(c *Config) { c.RefreshFraction = 1 }, wantErr: "refresh fraction"},
		{name: "negative jitter", mod: func(c *Config) { c.Jitter = -0.1 }, wantErr: "jitter"},
		{name: "jitter one", mod: func(c *Config) { c.Jitter = 1 }, wantErr: "jitter"},
		{name: "zero retry min", mod: func(c *Config) { c.RetryMin = 0 }, wantErr: "retry min"},
		{name: "retry max below min", mod: func(c *Config) { c.RetryMax = c.RetryMin / 2 }, wantErr: "retry max"},
		{name: "zero timeout", mod: func(c *Config) { c.Timeout = 0 }, wantErr: "timeout"},
		{name: "zero bundle refresh", mod: func(c *Config) { c.BundleRefresh = 0 }, wantErr: "bundle refresh"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.mod(&cfg)
			err := cfg.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("got %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

// fakeIssuer wraps a real CA and records calls; tests switch failures on and
// off.
type fakeIssuer struct {
	mu         sync.Mutex
	ca         *ca.CA // signs, and provides the roots
	signer     *ca.CA // when set, signs instead of ca (a rotation)
	extraRoots []*x509.Certificate
	issueErr   error
	rootsErr   error
	rootsFail  int  // fail this many more Roots calls
	wrongKey   bool // sign a CSR for another key
	issueAt    []time.Time
	rootsCalls int
}

var _ Issuer = (*fakeIssuer)(nil)

func newTestCA(t *testing.T) *ca.CA {
	t.Helper()
	c, err := ca.New(ca.DefaultConfig(), discard())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newFakeIssuer(t *testing.T) *fakeIssuer { return &fakeIssuer{ca: newTestCA(t)} }

func (f *fakeIssuer) Issue(ctx context.Context, id spiffeid.ID, csr []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	f.mu.Lock()
	f.issueAt = append(f.issueAt, time.Now())
	err, signer, wrongKey := f.issueErr, f.ca, f.wrongKey
	if f.signer != nil {
		signer = f.signer
	}
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if wrongKey {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		csr, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
		if err != nil {
			return nil, err
		}
	}
	return LocalIssuer(signer).Issue(ctx, id, csr, ttl)
}

func (f *fakeIssuer) Roots(ctx context.Context) ([]*x509.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rootsCalls++
	if f.rootsFail > 0 {
		f.rootsFail--
		return nil, errors.New("ca unreachable")
	}
	if f.rootsErr != nil {
		return nil, f.rootsErr
	}
	return append(f.ca.Roots(), f.extraRoots...), nil
}

func (f *fakeIssuer) roots() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rootsCalls
}

func (f *fakeIssuer) set(fn func(f *fakeIssuer)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// issues returns the times of Issue calls relative to start.
func (f *fakeIssuer) issues(start time.Time) []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]time.Duration, len(f.issueAt))
	for i, at := range f.issueAt {
		out[i] = at.Sub(start)
	}
	return out
}

// testConfig has no jitter, so that refreshes and retries happen at exact
// times.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Jitter = 0
	return cfg
}

func startManager(t *testing.T, cfg Config, iss Issuer) *Manager {
	t.Helper()
	m, err := NewManager(cfg, iss, discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	return m
}

func mustSVID(t *testing.T, src x509svid.Source) *x509svid.SVID {
	t.Helper()
	s, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAcquireShares(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFakeIssuer(t)
		m := startManager(t, testConfig(), iss)
		start := time.Now()

		src1, release1, err := m.Acquire(t.Context(), webID)
		if err != nil {
			t.Fatal(err)
		}
		defer release1()
		src2, release2, err := m.Acquire(t.Context(), webID)
		if err != nil {
			t.Fatal(err)
		}
		defer release2()
		if diff := cmp.Diff([]time.Duration{0}, iss.issues(start)); diff != "" {
			t.Fatalf("issue calls (-want +got):\n%s", diff)
		}
		s1, s2 := mustSVID(t, src1), mustSVID(t, src2)
		if s1 != s2 {
			t.Error("two holders of one identity got different certificates")
		}

		// What peers see: a leaf with only the URI SAN, verifiable with the
		// manager's bundle; the root is not sent.
		if len(s1.Certificates) != 1 {
			t.Errorf("SVID has %d certificates, want the leaf only", len(s1.Certificates))
		}
		leaf := s1.Certificates[0]
		if leaf.Subject.CommonName != "" || len(leaf.DNSNames) != 0 {
			t.Errorf("leaf has CN %q, DNS %q; want neither", leaf.Subject.CommonName, leaf.DNSNames)
		}
		id, _, err := x509svid.Verify(s1.Certificates, m.Bundle())
		if err != nil || id != webID {
			t.Errorf("Verify = %v, %v; want %v", id, err, webID)
		}

		// Another identity gets its own certificate.
		src3, release3, err := m.Acquire(t.Context(), dbID)
		if err != nil {
			t.Fatal(err)
		}
		defer release3()
		if got := mustSVID(t, src3).ID; got != dbID {
			t.Errorf("second identity: got %v", got)
		}
		if n := len(iss.issues(start)); n != 2 {
			t.Errorf("issuer called %d times, want 2", n)
		}
		var holders []int
		for _, info := range m.Identities() {
			holders = append(holders, info.Holders)
		}
		if diff := cmp.Diff([]int{1, 2}, holders); diff != "" { // db, web
			t.Errorf("holders (-want +got):\n%s", diff)
		}
	})
}

func TestRefreshAtHalfLife(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFakeIssuer(t)
		m := startManager(t, testConfig(), iss)
		start := time.Now()
		src, release, err := m.Acquire(t.Context(), webID)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		first := mustSVID(t, src)
		if got, want := m.Identities()[0].RefreshAt, start.Add(12*time.Hour); !got.Equal(want) {
			t.Errorf("RefreshAt = %v, want %v", got, want)
		}

		time.Sleep(12*time.Hour - time.Second)
		synctest.Wait()
		if mustSVID(t, src) != first {
			t.Fatal("certificate replaced before half life")
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		second := mustSVID(t, src)
		if second == first {
			t.Fatal("certificate not replaced at half life")
		}
		if second.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
			t.Error("refreshed certificate has the same serial")
		}
		if second.PrivateKey.Public().(*ecdsa.PublicKey).Equal(first.PrivateKey.Public()) {
			t.Error("refresh reused the key")
		}
		time.Sleep(24 * time.Hour)
		synctest.Wait()
		want := []time.Duration{0, 12 * time.Hour, 24 * time.Hour, 36 * time.Hour}
		if diff := cmp.Diff(want, iss.issues(start)); diff != "" {
			t.Errorf("issue times (-want +got):\n%s", diff)
		}
	})
}

func TestRefreshJitter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFakeIssuer(t)
		m := startManager(t, DefaultConfig(), iss) // Jitter 0.1
		start := time.Now()
		for _, id := range []spiffeid.ID{webID, dbID} {
			_, release, err := m.Acquire(t.Context(), id)
			if err != nil {
				t.Fatal(err)
			}
			defer release()
		}
		for _, info := range m.Identities() {
			d := info.RefreshAt.Sub(start)
			if d < 12*time.Hour*9/10 || d > 12*time.Hour {
				t.Errorf("%v refreshes after %v, want within [10.8h, 12h]", info.ID, d)
			}
		}
	})
}

func TestLastReleaseStopsRefreshing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFakeIssuer(t)
		m := startManager(t, testConfig(), iss)
		start := time.Now()
		srcA, releaseA, err := m.Acquire(t.Context(), webID)
		if err != nil {
			t.Fatal(err)
		}
		_, releaseB, err := m.Acquire(t.Context(), webID)
		if err != nil {
			t.Fatal(err)
		}
		releaseA()
		releaseA() // idempotent: must not drop B's reference
		if got := m.Identities(); len(got) != 1 || got[0].Holders != 1 {
			t.Fatalf("after one release: %+v, want one identity with one holder", got)
		}
		time.Sleep(12*time.Hour + time.Second)
		synctest.Wait()
		if n := len(iss.issues(start)); n != 2 {
			t.Fatalf("issuer called %d times before the last release, want 2", n)
		}

		releaseB()
		synctest.Wait()
		if got := m.Identities(); len(got) != 0 {
			t.Errorf("Identities after last release = %+v, want none", got)
		}
		if _, err := srcA.GetX509SVID(); !errors.Is(err, ErrNoCertificate) {
			t.Errorf("released source: got %v, want ErrNoCertificate (key forgotten)", err)
		}
		time.Sleep(72 * time.Hour)
		synctest.Wait()
		if n := len(iss.issues(start)); n != 2 {
			t.Errorf("issuer called %d times, want no calls after the last release", n)
		}

		// Acquiring again starts afresh.
		src, release, err := m.Acquire(t.Context(), webID)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		mustSVID(t, src)
	})
}

func TestIssuerFailureBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFakeIssuer(t)
		cfg := testConfig()
		cfg.RetryMax = 8 * time.Second
		m := startManager(t, cfg, iss)
		start := time.Now()
		src, release, err := m.Acquire(t.Context(), webID)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		first := mustSVID(t, src)

		iss.set(func(f *fakeIssuer) { f.issueErr = errors.New("ca unreachable") })
		time.Sleep(12*time.Hour + 30*time.Second)
		synctest.Wait()
		// Attempts at half life, then 1, 2, 4, 8 s apart, capped at 8 s.
		h := 12 * time.Hour
		want := []time.Duration{0, h, h + 1*time.Second, h + 3*time.Second, h + 7*time.Second, h + 15*time.Second, h + 23*time.Second}
		if diff := cmp.Diff(want, iss.issues(start)); diff != "" {
			t.Errorf("issue times (-want +got):\n%s", diff)
		}
		if mustSVID(t, src) != first {
			t.Error("old certificate not served while the CA fails")
		}
		info := m.Identities()[0]
		if info.State != StateValid || !strings.Contains(info.LastError, "ca unreachable") {
			t.Errorf("state %q, last error %q; want valid with the CA error", info.State, info.LastError)
		}
		if len(m.Pending()) != 0 {
			t.Errorf("Pending = %v while the old certificate is valid", m.Pending())
		}

		iss.set(func(f *fakeIssuer) { f.issueErr = nil })
		time.Sleep(8 * time.Second) // the next retry
		synctest.Wait()
		second := mustSVID(t, src)
		if second == first {
			t.Fatal("certificate not replaced after the CA recovered")
		}
		if info := m.Identities()[0]; info.LastError != "" {
			t.Errorf("last error %q not cleared", info.LastError)
		}
		// Backoff is reset: the next attempt is at the new certificate's
		// half life.
		got := m.Identities()[0].RefreshAt.Sub(second.Certificates[0].NotAfter)
		if got != -12*time.Hour {
			t.Errorf("next refresh %v before expiry, want 12h", -got)
		}
	})
}

func TestExpiryWhileFailing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFakeIssuer(t)
		m := startManager(t, testConfig(), iss)
		src, release, err := m.Acquire(t.Context(), webID)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		notAfter := mustSVID(t, src).Certificates[0].NotAfter

		iss.set(func(f *fakeIssuer) { f.issueErr = errors.New("ca unreachable") })
		time.Sleep(time.Until(notAfter) - time.Second)
		synctest.Wait()
		mustSVID(t, src) // still valid in its last second
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if _, err := src.GetX509SVID(); !errors.Is(err, ErrNoCertificate) || !strings.Contains(err.Error(), "expired") {
			t.Errorf("GetX509SVID after expiry: %v, want an expiry ErrNoCertificate", err)
		}
		if diff := cmp.Diff([]spiffeid.ID{webID}, m.Pending(), cmp.Comparer(func(a, b spiffeid.ID) bool { return a == b })); diff != "" {
			t.Errorf("Pending (-want +got):\n%s", diff)
		}
		if got := m.Identities()[0].State; got != StateExpired {
			t.Errorf("state %q, want expired", got)
		}

		iss.set(func(f *fakeIssuer) { f.issueErr = nil })
		time.Sleep(time.Minute) // at most RetryMax
		synctest.Wait()
		mustSVID(t, src)
		if got := m.Pending(); len(got) != 0 {
			t.Errorf("Pending after recovery = %v", got)
		}
	})
}

func TestAcquireWaitsForFirstCertificate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFakeIssuer(t)
		iss.set(func(f *fakeIssuer) { f.issueErr = errors.New("ca unreachable") })
		m := startManager(t, testConfig(), iss)

		// Gives up when its context ends, leaving nothing behind.
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		_, _, err := m.Acquire(ctx, webID)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "ca unreachable") {
			t.Errorf("Acquire = %v, want deadline exceeded with the CA error", err)
		}
		if got := m.Identities(); len(got) != 0 {
			t.Errorf("Identities after failed Acquire = %+v", got)
		}

		// Pending while waiting; served once the CA recovers.
		type result struct {
			src x509svid.Source
			rel func()
			err error
		}
		done := make(chan result)
		go func() {
			src, rel, err := m.Acquire(t.Context(), webID)
			done <- result{src, rel, err}
		}()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if got := m.Pending(); len(got) != 1 || got[0] != webID {
			t.Errorf("Pending while waiting = %v, want [%v]", got, webID)
		}
		if info := m.Identities()[0]; info.State != StatePending || info.LastError == "" {
			t.Errorf("info while waiting = %+v", info)
		}
		iss.set(func(f *fakeIssuer) { f.issueErr = nil })
		r := <-done
		if r.err != nil {
			t.Fatal(r.err)
		}
		defer r.rel()
		mustSVID(t, r.src)
		if len(m.Pending()) != 0 {
			t.Errorf("Pending after issue = %v", m.Pending())
		}
	})
}

func TestAcquireErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFakeIssuer(t)
		m, err := NewManager(testConfig(), iss, discard())
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := m.Acquire(t.Context(), webID); !errors.Is(err, ErrNotStarted) {
			t.Errorf("before Start: %v, want ErrNotStarted", err)
		}
		if err := m.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"spiffe://example.org/ns/default/sa/web", "spiffe://cluster.local"} {
			if _, _, err := m.Acquire(t.Context(), spiffeid.RequireFromString(s)); err == nil {
				t.Errorf("Acquire(%s) succeeded, want an error", s)
			}
		}
		src, release, err := m.Acquire(t.Context(), webID)
		if err != nil {
			t.Fatal(err)
		}
		m.Stop()
		if _, err := src.GetX509SVID(); !errors.Is(err, ErrNoCertificate) {
			t.Errorf("source after Stop: %v, want ErrNoCertificate", err)
		}
		release() // after Stop: harmless
		if _, _, err := m.Acquire(t.Context(), webID); !errors.Is(err, ErrStopped) {
			t.Errorf("after Stop: %v, want ErrStopped", err)
		}
		if err := m.Start(t.Context()); !errors.Is(err, ErrStopped) {
			t.Errorf("Start after Stop: %v, want ErrStopped", err)
		}
	})
}

func TestStartRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFakeIssuer(t)
		iss.set(func(f *fakeIssuer) { f.rootsFail = 3 })
		start := time.Now()
		startManager(t, testConfig(), iss)
		if got, want := time.Since(start), 7*time.Second; got != want { // 1+2+4
			t.Errorf("Start took %v, want %v", got, want)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		iss := newFakeIssuer(t)
		iss.set(func(f *fakeIssuer) { f.rootsErr = errors.New("ca unreachable") })
		m, err := NewManager(testConfig(), iss, discard())
		if err != nil {
			t.Fatal(err)
		}
		defer m.Stop()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		err = m.Start(ctx)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "ca unreachable") {
			t.Errorf("Start = %v, want deadline exceeded with the CA error", err)
		}
		if _, err := m.Bundle().GetX509BundleForTrustDomain(m.td); err == nil {
			t.Error("bundle available although never fetched")
		}
	})
}

func TestBundleRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFakeIssuer(t)
		m := startManager(t, testConfig(), iss)
		td := spiffeid.RequireTrustDomainFromString("cluster.local")
		if _, err := m.Bundle().GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("example.org")); err == nil {
			t.Error("bundle for another trust domain")
		}
		b, err := m.Bundle().GetX509BundleForTrustDomain(td)
		if err != nil || len(b.X509Authorities()) != 1 {
			t.Fatalf("bundle = %v, %v; want one root", b, err)
		}

		next := newTestCA(t)
		iss.set(func(f *fakeIssuer) { f.extraRoots = next.Roots() })
		time.Sleep(testConfig().BundleRefresh)
		synctest.Wait()
		b, _ = m.Bundle().GetX509BundleForTrustDomain(td)
		if !b.HasX509Authority(next.Roots()[0]) {
			t.Error("new root not in the bundle after BundleRefresh")
		}

		// A failed refresh keeps the bundle in hand.
		iss.set(func(f *fakeIssuer) { f.rootsErr = errors.New("ca unreachable") })
		time.Sleep(testConfig().BundleRefresh + time.Minute)
		synctest.Wait()
		if b2, err := m.Bundle().GetX509BundleForTrustDomain(td); err != nil || !b2.Equal(b) {
			t.Errorf("bundle after failed refresh = %v, %v", b2, err)
		}
	})
}

func TestIssuedChainChecked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFakeIssuer(t)
		m := startManager(t, testConfig(), iss)

		iss.set(func(f *fakeIssuer) { f.wrongKey = true })
		ctx, cancel := context.WithTimeout(t.Context(), time.Second/2)
		defer cancel()
		if _, _, err := m.Acquire(ctx, webID); err == nil || !strings.Contains(err.Error(), "does not match the requested key") {
			t.Errorf("certificate for another key: %v", err)
		}

		// The CA signs with a root the agent does not trust yet (rotation):
		// the manager fetches the bundle once more and then accepts it.
		next := newTestCA(t)
		iss.set(func(f *fakeIssuer) {
			f.wrongKey = false
			f.signer = next
			f.extraRoots = next.Roots()
		})
		before := iss.roots()
		src, release, err := m.Acquire(t.Context(), webID)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		mustSVID(t, src)
		if got := iss.roots() - before; got != 1 {
			t.Errorf("bundle fetched %d times, want 1", got)
		}

		// A chain to an untrusted root is refused.
		iss.set(func(f *fakeIssuer) { f.signer = newTestCA(t) })
		ctx, cancel = context.WithTimeout(t.Context(), time.Second/2)
		defer cancel()
		if _, _, err := m.Acquire(ctx, dbID); err == nil || !strings.Contains(err.Error(), "verifying issued certificate") {
			t.Errorf("untrusted chain: %v", err)
		}
	})
}

// TestMutualTLS checks that the sources plug into go-spiffe's TLS helpers,
// with the local CA and the real clock.
func TestMutualTLS(t *testing.T) {
	m := startManager(t, DefaultConfig(), LocalIssuer(newTestCA(t)))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	client, releaseC, err := m.Acquire(ctx, webID)
	if err != nil {
		t.Fatal(err)
	}
	defer releaseC()
	server, releaseS, err := m.Acquire(ctx, dbID)
	if err != nil {
		t.Fatal(err)
	}
	defer releaseS()

	cc, sc := net.Pipe()
	defer cc.Close()
	defer sc.Close()
	sconn := tls.Server(sc, tlsconfig.MTLSServerConfig(server, m.Bundle(), tlsconfig.AuthorizeID(webID)))
	errc := make(chan error, 1)
	go func() { errc <- sconn.HandshakeContext(ctx) }()
	cconn := tls.Client(cc, tlsconfig.MTLSClientConfig(client, m.Bundle(), tlsconfig.AuthorizeID(dbID)))
	if err := cconn.HandshakeContext(ctx); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	peer, err := x509svid.IDFromCert(sconn.ConnectionState().PeerCertificates[0])
	if err != nil || peer != webID {
		t.Errorf("server sees peer %v, %v; want %v", peer, err, webID)
	}
}

// TestGetX509SVIDNoAllocs pins the per-handshake cost of a source at zero
// allocations.
func TestGetX509SVIDNoAllocs(t *testing.T) {
	m := startManager(t, DefaultConfig(), LocalIssuer(newTestCA(t)))
	src, release, err := m.Acquire(t.Context(), webID)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if n := testing.AllocsPerRun(100, func() { _, _ = src.GetX509SVID() }); n != 0 {
		t.Errorf("GetX509SVID allocates %v times per call, want 0", n)
	}
}
