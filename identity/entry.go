package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// entry is one identity in use: its current certificate and the task that
// renews it. It is the x509svid.Source handed to every holder of the id.
type entry struct {
	m   *Manager
	id  spiffeid.ID
	ctx context.Context // ends when the last holder releases, or on Stop
	// cancel ends the renewal task.
	cancel context.CancelFunc
	// ready is closed when the first certificate is in place.
	ready chan struct{}
	// refs counts holders; guarded by m.mu.
	refs int

	// svid is read on every TLS handshake, hence atomic; nil until the first
	// certificate and after the task ends, so a released key is unreachable.
	svid atomic.Pointer[x509svid.SVID]

	mu        sync.Mutex
	lastErr   error
	refreshAt time.Time
}

var _ x509svid.Source = (*entry)(nil)

// newEntry starts the renewal task of id. Called with m.mu held and the
// manager not stopped, so that wg.Add never races with Stop's wg.Wait.
func (m *Manager) newEntry(id spiffeid.ID) *entry {
	ctx, cancel := context.WithCancel(m.ctx)
	e := &entry{m: m, id: id, ctx: ctx, cancel: cancel, ready: make(chan struct{})}
	m.wg.Add(1)
	go e.run()
	return e
}

// GetX509SVID returns the current certificate and key of the identity. The
// returned SVID is shared and must not be modified.
func (e *entry) GetX509SVID() (*x509svid.SVID, error) {
	s := e.svid.Load()
	if s == nil {
		if err := e.lastError(); err != nil {
			return nil, fmt.Errorf("%s: %w (last error: %v)", e.id, ErrNoCertificate, err)
		}
		return nil, fmt.Errorf("%s: %w", e.id, ErrNoCertificate)
	}
	if notAfter := s.Certificates[0].NotAfter; time.Now().After(notAfter) {
		return nil, fmt.Errorf("%s: certificate expired at %s: %w", e.id, notAfter.UTC().Format(time.RFC3339), ErrNoCertificate)
	}
	return s, nil
}

// run obtains and renews the certificate until the entry's context ends,
// then forgets it.
func (e *entry) run() {
	m := e.m
	defer m.wg.Done()
	defer e.svid.Store(nil)
	var (
		backoff time.Duration
		// key is kept across retries of one renewal, sparing the CPU while
		// the CA is down; each certificate still gets a key of its own.
		key *ecdsa.PrivateKey
	)
	for {
		var (
			svid *x509svid.SVID
			err  error
		)
		if key == nil {
			key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				err = fmt.Errorf("generating key: %w", err)
			}
		}
		if err == nil {
			svid, err = m.obtain(e.ctx, e.id, key)
		}
		now := time.Now()
		var wait time.Duration
		switch {
		case err == nil:
			key = nil
			backoff = 0
			leaf := svid.Certificates[0]
			// Measured from now rather than NotBefore, which the CA
			// backdates for clock skew.
			wait = m.jitter(time.Duration(m.cfg.RefreshFraction * float64(leaf.NotAfter.Sub(now))))
			e.svid.Store(svid)
			e.setStatus(nil, now.Add(wait))
			select {
			case <-e.ready:
			default:
				close(e.ready)
			}
			m.log.Info("certificate issued", "id", e.id.String(), "serial", leaf.SerialNumber.Text(16),
				"not_after", leaf.NotAfter, "refresh_in", wait)
		case e.ctx.Err() != nil:
			return
		default:
			backoff = m.nextBackoff(backoff)
			wait = m.jitter(backoff)
			e.setStatus(err, now.Add(wait))
			attrs := []any{"id", e.id.String(), "error", err, "retry_in", wait}
			if cur := e.svid.Load(); cur != nil {
				attrs = append(attrs, "current_not_after", cur.Certificates[0].NotAfter)
			}
			m.log.Warn("obtaining certificate failed; retrying", attrs...)
		}
		if m.sleep(e.ctx, wait) != nil {
			return
		}
	}
}

func (e *entry) setStatus(err error, refreshAt time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lastErr = err
	e.refreshAt = refreshAt
}

func (e *entry) lastError() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lastErr
}

func (e *entry) info(now time.Time) CertInfo {
	e.mu.Lock()
	info := CertInfo{ID: e.id, State: StatePending, RefreshAt: e.refreshAt}
	if e.lastErr != nil {
		info.LastError = e.lastErr.Error()
	}
	e.mu.Unlock()
	if s := e.svid.Load(); s != nil {
		leaf := s.Certificates[0]
		info.Chain = s.Certificates
		info.Serial = leaf.SerialNumber.Text(16)
		info.NotBefore = leaf.NotBefore
		info.NotAfter = leaf.NotAfter
		info.State = StateValid
		if now.After(leaf.NotAfter) {
			info.State = StateExpired
		}
	}
	return info
}

// obtain creates a CSR for id and key, has the issuer sign it and checks the
// result. Every failure may be retried.
func (m *Manager) obtain(ctx context.Context, id spiffeid.ID, key *ecdsa.PrivateKey) (*x509svid.SVID, error) {
	// One URI SAN and no subject: the CSR shape Istio's CA expects
	// (COMPAT.md "Identity and CA"). P-256 keys sign with SHA-256.
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("creating CSR: %w", err)
	}
	ictx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	chain, err := m.iss.Issue(ictx, id, csr, m.cfg.TTL)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("requesting certificate: %w", err)
	}
	if err := m.checkChain(ctx, id, key, chain); err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: m.presented(chain), PrivateKey: key}, nil
}

// presented is what TLS presents of an issued chain: the leaf and any
// intermediates, which peers need to reach a root, but not a trailing root
// (self-signed, or a trust anchor of the bundle), which peers hold already.
// The chain is leaf first; the leaf itself is always kept.
func (m *Manager) presented(chain []*x509.Certificate) []*x509.Certificate {
	n := len(chain)
	if n < 2 {
		return chain
	}
	last := chain[n-1]
	if bytes.Equal(last.RawSubject, last.RawIssuer) {
		return chain[:n-1]
	}
	if b := m.bundle.Load(); b != nil && b.HasX509Authority(last) {
		return chain[:n-1]
	}
	return chain
}

// checkChain makes sure the issuer returned a certificate for id and key
// that peers will accept. A chain to a root not in the bundle triggers one
// bundle fetch, since the CA may have started a rotation.
func (m *Manager) checkChain(ctx context.Context, id spiffeid.ID, key *ecdsa.PrivateKey, chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return errors.New("issuer returned no certificate")
	}
	leaf := chain[0]
	got, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return fmt.Errorf("issued certificate: %w", err)
	}
	if got != id {
		return fmt.Errorf("issued certificate is for %s, requested %s", got, id)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return errors.New("issued certificate does not match the requested key")
	}
	seen := m.bundle.Load()
	_, _, err = x509svid.Verify(chain, m.Bundle())
	if err == nil {
		return nil
	}
	if ferr := m.refetchBundle(ctx, seen); ferr != nil {
		return fmt.Errorf("verifying issued certificate: %w (fetching trust bundle: %v)", err, ferr)
	}
	if _, _, err := x509svid.Verify(chain, m.Bundle()); err != nil {
		return fmt.Errorf("verifying issued certificate: %w", err)
	}
	return nil
}
