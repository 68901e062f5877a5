package testbed

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// NetnsDir is where iproute2 keeps named namespaces; using it makes every
// testbed namespace visible to `ip netns` and `ip -n`.
const NetnsDir = "/run/netns"

// PrepareNetnsDir makes NetnsDir a mount point with shared propagation, as
// `ip netns add` does: a namespace removed here then also disappears from
// mount namespaces copied later (for example by `ip netns exec`), so they
// cannot keep it alive. An flock serialises this with other testbeds, which
// could otherwise both stack a bind mount on the directory.
func PrepareNetnsDir() error {
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", NetnsDir, err)
	}
	d, err := os.Open(NetnsDir)
	if err != nil {
		return fmt.Errorf("opening %s: %w", NetnsDir, err)
	}
	defer d.Close()
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("locking %s: %w", NetnsDir, err)
	}
	defer unix.Flock(int(d.Fd()), unix.LOCK_UN)
	for bound := false; ; bound = true {
		err := unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		// EINVAL: not a mount point yet. Bind it onto itself once and retry.
		if !errors.Is(err, unix.EINVAL) || bound {
			return fmt.Errorf("making %s a shared mount: %w", NetnsDir, err)
		}
		if err := unix.Mount(NetnsDir, NetnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mounting %s onto itself: %w", NetnsDir, err)
		}
	}
}

// CreateNamedNS creates a new network namespace and pins it at
// NetnsDir/name. It fails with fs.ErrExist when the name is taken, so a
// testbed never adopts (and later deletes) a namespace it did not create.
func CreateNamedNS(name string) (string, error) {
	path := filepath.Join(NetnsDir, name)
	if err := PinNewNS(path); err != nil {
		return "", err
	}
	return path, nil
}

// PinNewNS creates a new network namespace pinned at path, in any
// directory (tests that stand in for containerd pin pod namespaces in a
// temporary one). It fails with fs.ErrExist when path exists. Remove it
// with RemoveNamedNS.
func PinNewNS(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("creating netns file: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: after unshare this thread is in the new namespace,
		// and the runtime ends a locked thread when its goroutine returns.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unsharing netns: %w", err)
			return
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("pinning netns at %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// RemoveNamedNS unpins the namespace at path and removes the file. The kernel
// frees the namespace, and every interface in it, once nothing else (a
// process, a socket, an open handle) refers to it. Removing a missing
// namespace is not an error.
func RemoveNamedNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing netns file %s: %w", path, err)
	}
	return nil
}

// CleanupPrefix removes every named namespace whose name starts with
// prefix + "-" (and with it every interface inside), for leftovers of a run
// that died before Close. It does not touch processes.
func CleanupPrefix(prefix string) error {
	if !prefixRE.MatchString(prefix) {
		return fmt.Errorf("cleaning up prefix %q: want lowercase letters and digits, starting with a letter", prefix)
	}
	entries, err := os.ReadDir(NetnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing %s: %w", NetnsDir, err)
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			errs = append(errs, RemoveNamedNS(filepath.Join(NetnsDir, e.Name())))
		}
	}
	return errors.Join(errs...)
}
