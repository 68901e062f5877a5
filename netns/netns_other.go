//go:build !linux

package netns

import (
	"context"
	"errors"
	"net"
)

// ErrNotSupported is returned on systems without network namespaces.
var ErrNotSupported = errors.New("network namespaces need Linux")

// NS is unavailable off Linux.
type NS struct{ path string }

// Open always fails off Linux.
func Open(path string) (*NS, error) { return nil, ErrNotSupported }

func (n *NS) Path() string          { return n.path }
func (n *NS) Close() error          { return nil }
func (n *NS) Do(func() error) error { return ErrNotSupported }
func (n *NS) Listen(context.Context, *net.ListenConfig, string, string) (net.Listener, error) {
	return nil, ErrNotSupported
}
func (n *NS) Dial(context.Context, *net.Dialer, string, string) (net.Conn, error) {
	return nil, ErrNotSupported
}

// Do always fails off Linux.
func Do(path string, fn func() error) error { return ErrNotSupported }
