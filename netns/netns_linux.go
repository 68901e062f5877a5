package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// NS is an open handle to a network namespace. Holding the file keeps the
// namespace alive and makes each switch a single setns(2) call with no path
// lookup.
type NS struct {
	path string
	f    *os.File
}

// Open opens the network namespace at path (for example /run/netns/pod-a or
// /proc/<pid>/ns/net).
func Open(path string) (*NS, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening netns %s: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("checking netns %s: %w", path, err)
	}
	// NSFS_MAGIC for a bind-mounted or /proc namespace file; PROC_SUPER_MAGIC
	// for /proc/<pid>/ns/net on older kernels.
	if st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC {
		f.Close()
		return nil, fmt.Errorf("opening netns %s: %w", path, ErrNotNetNS)
	}
	return &NS{path: path, f: f}, nil
}

// Path is the path the namespace was opened from.
func (n *NS) Path() string { return n.path }

// Close releases the handle. Sockets already created inside the namespace
// keep working.
func (n *NS) Close() error { return n.f.Close() }

// Do runs fn on a fresh OS thread switched into the namespace and waits for
// it. Sockets fn creates stay in the namespace after Do returns. If the
// thread cannot be switched back it is discarded (never unlocked), so no other
// goroutine ever runs in the wrong namespace. fn must not start goroutines
// that expect to inherit the namespace.
func (n *NS) Do(fn func() error) error {
	home, err := homeNS()
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(n.f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering netns %s: %w", n.path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime terminates it when this
			// goroutine exits.
			errc <- fmt.Errorf("restoring netns after %s: %w", n.path, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// homeNS is the network namespace every unlocked thread of this process is
// in: Do only ever switches threads it has locked, and switches them back
// (or discards them) before unlocking. It is opened once, not on every Do:
// opening /proc/.../ns/net was a measurable part of each dial.
// It is read on a fresh goroutine, whose thread is unlocked and so at home,
// even when the first Do is called from inside another Do.
var homeNS = sync.OnceValues(func() (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		f, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
		ch <- result{f, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, fmt.Errorf("opening this process's netns: %w", r.err)
	}
	return r.f, nil
})

// Listen opens a listener inside the namespace.
func (n *NS) Listen(ctx context.Context, lc *net.ListenConfig, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = lc.Listen(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s %s in netns %s: %w", network, addr, n.path, err)
	}
	return ln, nil
}

// Dial connects from inside the namespace. The thread stays in the namespace
// until the connection completes or fails, so keep d.Timeout short or ctx
// bounded.
func (n *NS) Dial(ctx context.Context, d *net.Dialer, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dialing %s %s from netns %s: %w", network, addr, n.path, err)
	}
	return c, nil
}

// Do opens the namespace at path, runs fn inside it and closes it again.
func Do(path string, fn func() error) error {
	ns, err := Open(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	return ns.Do(fn)
}
