package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// newNS creates a named namespace with a unique name and removes it when
// the test ends.
func newNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces; CI runs as root")
	}
	var b [3]byte
	rand.Read(b[:])
	name := "wns" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	return "/run/netns/" + name
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestDoEntersAndRestores(t *testing.T) {
	path := newNS(t)
	ns, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	want := inode(t, path)
	var inside uint64
	if err := ns.Do(func() error {
		inside = inode(t, "/proc/thread-self/ns/net")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if inside != want {
		t.Fatalf("inside Do the thread's netns is %d, want %d", inside, want)
	}
	sentinel := errors.New("boom")
	if err := ns.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Fatalf("Do returned %v, want fn's error", err)
	}
	// Many calls: no thread may be returned to the scheduler in the wrong
	// namespace.
	self := inode(t, "/proc/self/ns/net")
	for range 50 {
		ns.Do(func() error { return nil })
		if got := inode(t, "/proc/thread-self/ns/net"); got != self {
			t.Fatalf("caller's thread is in netns %d after Do, want %d", got, self)
		}
	}
}

func TestListenAndDialInside(t *testing.T) {
	path := newNS(t)
	ns, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := ns.Do(func() error { return exec.Command("ip", "link", "set", "lo", "up").Run() }); err != nil {
		t.Fatal(err)
	}
	ln, err := ns.Listen(context.Background(), &net.ListenConfig{}, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := ns.Dial(context.Background(), &net.Dialer{}, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q, %v", buf, err)
	}
	c.Close()
}

func TestOpenRejectsNonNamespace(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "x")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := Open(f.Name()); !errors.Is(err, ErrNotNetNS) {
		t.Fatalf("Open(regular file) = %v, want ErrNotNetNS", err)
	}
	if _, err := Open("/nonexistent/netns"); err == nil {
		t.Fatal("Open(missing) succeeded")
	}
}
