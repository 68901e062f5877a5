package identity

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
)

// fetchBundle asks the issuer for the roots and installs them when they
// changed.
func (m *Manager) fetchBundle(ctx context.Context) error {
	m.bundleMu.Lock()
	defer m.bundleMu.Unlock()
	return m.fetchBundleLocked(ctx)
}

func (m *Manager) fetchBundleLocked(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()
	roots, err := m.iss.Roots(ctx)
	if err != nil {
		return err
	}
	if len(roots) == 0 {
		return errors.New("issuer returned an empty trust bundle")
	}
	for _, r := range roots {
		if !r.IsCA {
			return fmt.Errorf("trust bundle holds a non-CA certificate (serial %x)", r.SerialNumber)
		}
	}
	next := x509bundle.FromX509Authorities(m.td, roots)
	if prev := m.bundle.Load(); prev == nil || !prev.Equal(next) {
		m.bundle.Store(next)
		m.log.Info("trust bundle updated", "trust_domain", m.td.Name(), "roots", len(roots))
	}
	return nil
}

// refetchBundle fetches the bundle again unless it changed since the caller
// read seen, which means another goroutine already did.
func (m *Manager) refetchBundle(ctx context.Context, seen *x509bundle.Bundle) error {
	m.bundleMu.Lock()
	defer m.bundleMu.Unlock()
	if m.bundle.Load() != seen {
		return nil
	}
	return m.fetchBundleLocked(ctx)
}

// refreshBundleLoop fetches the bundle every BundleRefresh, with backoff on
// failure; the bundle in hand stays in use meanwhile.
func (m *Manager) refreshBundleLoop() {
	defer m.wg.Done()
	var backoff time.Duration
	wait := m.jitter(m.cfg.BundleRefresh)
	for {
		if m.sleep(m.ctx, wait) != nil {
			return
		}
		err := m.fetchBundle(m.ctx)
		switch {
		case err == nil:
			backoff = 0
			wait = m.jitter(m.cfg.BundleRefresh)
		case m.ctx.Err() != nil:
			return
		default:
			backoff = m.nextBackoff(backoff)
			wait = m.jitter(backoff)
			m.log.Warn("refreshing trust bundle failed; retrying", "error", err, "retry_in", wait)
		}
	}
}

// nextBackoff doubles the previous backoff within [RetryMin, RetryMax]; zero
// means there was no previous failure. Callers wait jitter(backoff).
func (m *Manager) nextBackoff(prev time.Duration) time.Duration {
	return min(max(2*prev, m.cfg.RetryMin), m.cfg.RetryMax)
}

// jitter brings d forward by up to Jitter of it, never later, so that a
// refresh is never due after the configured point.
func (m *Manager) jitter(d time.Duration) time.Duration {
	return d - time.Duration(m.cfg.Jitter*rand.Float64()*float64(d))
}

// sleep waits for d, or returns an error when ctx or the manager ends first.
func (m *Manager) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-m.ctx.Done():
		return ErrStopped
	}
}
