package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Manager holds the certificates of the identities in use on this node and
// the trust bundle. It is safe for concurrent use.
type Manager struct {
	cfg Config
	td  spiffeid.TrustDomain
	iss Issuer
	log *slog.Logger

	// ctx ends all background work; Stop cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	bundle atomic.Pointer[x509bundle.Bundle]
	// bundleMu serialises bundle fetches so that many identities meeting a
	// new root at once cause one fetch, not one each.
	bundleMu sync.Mutex

	mu      sync.Mutex
	started bool
	stopped bool
	entries map[spiffeid.ID]*entry
}

// NewManager returns a Manager that obtains certificates from iss. It does
// no I/O; call Start.
func NewManager(cfg Config, iss Issuer, log *slog.Logger) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("identity config: %w", err)
	}
	if iss == nil {
		return nil, errors.New("identity: issuer is nil")
	}
	td, _ := spiffeid.TrustDomainFromString(cfg.TrustDomain) // checked by Validate
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{
		cfg:     cfg,
		td:      td,
		iss:     iss,
		log:     log.With("component", "identity"),
		ctx:     ctx,
		cancel:  cancel,
		entries: make(map[spiffeid.ID]*entry),
	}, nil
}

// Start fetches the trust bundle, retrying with backoff until it succeeds,
// ctx ends or Stop is called, and then starts refreshing the bundle in the
// background until Stop. ctx bounds only the initial fetch. A failed Start
// may be retried.
func (m *Manager) Start(ctx context.Context) error {
	m.mu.Lock()
	switch {
	case m.stopped:
		m.mu.Unlock()
		return ErrStopped
	case m.started:
		m.mu.Unlock()
		return errors.New("identity manager already started")
	}
	m.mu.Unlock()

	var backoff time.Duration
	for {
		err := m.fetchBundle(ctx)
		if err == nil {
			break
		}
		backoff = m.nextBackoff(backoff)
		wait := m.jitter(backoff)
		m.log.Warn("fetching trust bundle failed; retrying", "error", err, "retry_in", wait)
		if werr := m.sleep(ctx, wait); werr != nil {
			return fmt.Errorf("fetching trust bundle: %w", errors.Join(werr, err))
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.stopped:
		return ErrStopped
	case m.started: // a concurrent Start won
		return nil
	}
	m.started = true
	m.wg.Add(1)
	go m.refreshBundleLoop()
	return nil
}

// Stop ends all background work, forgets every key and waits for the
// goroutines to exit. Sources handed out before report ErrNoCertificate.
func (m *Manager) Stop() {
	m.mu.Lock()
	m.stopped = true
	clear(m.entries)
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

// Acquire returns a source of the current certificate for id, and a release
// function that the caller must call when done with it (it may be called more
// than once).
//
// The first Acquire of an id starts a background task that creates a key and
// CSR, obtains a certificate and replaces it, with a new key, at
// RefreshFraction of its life; failures are retried with backoff while the
// previous certificate keeps serving until it expires. Later Acquires of the
// same id share that task and certificate. Acquire waits until the id has a
// certificate or ctx ends; an error leaves nothing to release and may be
// retried. The release of the last holder stops the task and forgets the key.
func (m *Manager) Acquire(ctx context.Context, id spiffeid.ID) (x509svid.Source, func(), error) {
	if !id.MemberOf(m.td) || id.Path() == "" {
		return nil, nil, fmt.Errorf("acquiring certificate for %q: not a workload identity in trust domain %q", id, m.td.Name())
	}
	m.mu.Lock()
	switch {
	case m.stopped:
		m.mu.Unlock()
		return nil, nil, ErrStopped
	case !m.started:
		m.mu.Unlock()
		return nil, nil, ErrNotStarted
	}
	e := m.entries[id]
	if e == nil {
		e = m.newEntry(id)
		m.entries[id] = e
	}
	e.refs++
	m.mu.Unlock()

	release := sync.OnceFunc(func() { m.release(e) })
	select {
	case <-e.ready:
		return e, release, nil
	case <-ctx.Done():
		release()
		return nil, nil, fmt.Errorf("acquiring certificate for %s: %w", id, errors.Join(ctx.Err(), e.lastError()))
	case <-e.ctx.Done():
		release()
		return nil, nil, ErrStopped
	}
}

func (m *Manager) release(e *entry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e.refs--
	if e.refs > 0 {
		return
	}
	if m.entries[e.id] == e {
		delete(m.entries, e.id)
	}
	e.cancel()
}

// Bundle returns the trust bundle of the manager's trust domain as a
// go-spiffe source. It reads the current bundle on every call, so updates
// apply to new handshakes without restarts. The bundles it returns are
// shared and must not be modified.
func (m *Manager) Bundle() x509bundle.Source { return bundleSource{m: m} }

type bundleSource struct{ m *Manager }

func (b bundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != b.m.td {
		return nil, fmt.Errorf("no trust bundle for trust domain %q", td.Name())
	}
	bundle := b.m.bundle.Load()
	if bundle == nil {
		return nil, fmt.Errorf("trust bundle for %q not fetched yet", td.Name())
	}
	return bundle, nil
}

// State says whether an identity can be used.
type State string

// States of an identity's certificate.
const (
	StatePending State = "pending" // no certificate obtained yet
	StateValid   State = "valid"
	StateExpired State = "expired" // refresh kept failing until expiry
)

// CertInfo describes one identity for readiness checks and the admin page.
type CertInfo struct {
	ID        spiffeid.ID
	State     State
	Serial    string // lowercase hex; empty while pending
	NotBefore time.Time
	NotAfter  time.Time
	// RefreshAt is when the next request to the CA is due.
	RefreshAt time.Time
	// Holders counts the unreleased Acquires.
	Holders int
	// LastError is the latest failure to obtain a certificate, cleared on
	// success.
	LastError string
	// Chain is the certificate served, leaf first, without the root; nil
	// while pending. Shared: do not modify.
	Chain []*x509.Certificate
	// Roots is the trust bundle the chain verifies against.
	Roots []*x509.Certificate
}

// Identities describes every identity in use, ordered by ID.
func (m *Manager) Identities() []CertInfo {
	m.mu.Lock()
	entries := make([]*entry, 0, len(m.entries))
	holders := make(map[*entry]int, len(m.entries))
	for _, e := range m.entries {
		entries = append(entries, e)
		holders[e] = e.refs
	}
	m.mu.Unlock()

	now := time.Now()
	var roots []*x509.Certificate
	if b := m.bundle.Load(); b != nil {
		roots = b.X509Authorities()
	}
	out := make([]CertInfo, 0, len(entries))
	for _, e := range entries {
		info := e.info(now)
		info.Holders = holders[e]
		info.Roots = roots
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b CertInfo) int { return compareIDs(a.ID, b.ID) })
	return out
}

// Pending lists the identities in use that have no valid certificate: not
// yet issued, or expired while the CA was unreachable. Ordered by ID.
func (m *Manager) Pending() []spiffeid.ID {
	var out []spiffeid.ID
	for _, info := range m.Identities() {
		if info.State != StateValid {
			out = append(out, info.ID)
		}
	}
	return out
}

func compareIDs(a, b spiffeid.ID) int {
	switch as, bs := a.String(), b.String(); {
	case as < bs:
		return -1
	case as > bs:
		return 1
	}
	return 0
}
