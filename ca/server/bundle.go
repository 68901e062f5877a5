package server

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/warren-mesh/warren/ca"
)

// fileRoots is the extra-roots file, parsed again only when its size or
// modification time changes, so that a rotation step needs no restart.
type fileRoots struct {
	path string

	mu    sync.Mutex
	mod   time.Time
	size  int64
	roots []*x509.Certificate
	err   error
}

// load returns the roots in the file; a missing file means none.
func (f *fileRoots) load() ([]*x509.Certificate, error) {
	if f == nil || f.path == "" {
		return nil, nil
	}
	fi, err := os.Stat(f.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("trust bundle %s: %w", f.path, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if fi.ModTime().Equal(f.mod) && fi.Size() == f.size {
		return f.roots, f.err
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		return nil, fmt.Errorf("trust bundle %s: %w", f.path, err)
	}
	f.mod, f.size = fi.ModTime(), fi.Size()
	f.roots, f.err = ca.ParseCertificates(data)
	if f.err == nil {
		for _, r := range f.roots {
			if !r.IsCA {
				f.roots, f.err = nil, fmt.Errorf("certificate with serial %x is not a CA", r.SerialNumber)
				break
			}
		}
	}
	if f.err != nil {
		f.err = fmt.Errorf("trust bundle %s: %w", f.path, f.err)
	}
	return f.roots, f.err
}
