package enroll

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/warren-mesh/warren/netns"
	"github.com/warren-mesh/warren/test/testbed"
)

// newPodNetNS pins a new network namespace at dir/name, as containerd pins
// a pod's, gives it an eth0 with addrs, and removes it when the test
// ends.
func newPodNetNS(t *testing.T, dir, name string, addrs ...string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := testbed.PinNewNS(path); err != nil {
		t.Fatalf("creating netns %s: %v", path, err)
	}
	t.Cleanup(func() { testbed.RemoveNamedNS(path) })
	err := netns.Do(path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		// A veth pair with both ends inside: the dummy driver is not in
		// every kernel.
		eth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}
		if err := netlink.LinkAdd(eth); err != nil {
			return err
		}
		peer, err := netlink.LinkByName("peer0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(peer); err != nil {
			return err
		}
		for _, a := range addrs {
			addr, err := netlink.ParseAddr(a)
			if err != nil {
				return err
			}
			// No DAD: the address is usable (and listed) at once.
			addr.Flags = unix.IFA_F_NODAD
			if err := netlink.AddrAdd(eth, addr); err != nil {
				return err
			}
		}
		return netlink.LinkSetUp(eth)
	})
	if err != nil {
		t.Fatalf("configuring netns %s: %v", path, err)
	}
	return path
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces; CI runs as root")
	}
}

func TestFindNetNS(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	var b [3]byte
	rand.Read(b[:])
	prefix := "cni-" + hex.EncodeToString(b[:])
	podA := newPodNetNS(t, dir, prefix+"-a", "10.200.1.5/24", "fd00:200::5/64")
	podB := newPodNetNS(t, dir, prefix+"-b", "10.200.1.6/24")
	newPodNetNS(t, dir, prefix+"-empty")
	// Not a namespace: skipped.
	os.WriteFile(filepath.Join(dir, "README"), []byte("x"), 0o644)
	os.Mkdir(filepath.Join(dir, "subdir"), 0o755)

	addrs := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	tests := []struct {
		name    string
		dir     string
		ips     []netip.Addr
		want    string
		wantErr error
	}{
		{name: "pod a", dir: dir, ips: addrs("10.200.1.5"), want: podA},
		{name: "pod a by its v6 address", dir: dir, ips: addrs("fd00:200::5"), want: podA},
		{name: "pod a dual stack", dir: dir, ips: addrs("10.200.1.5", "fd00:200::5"), want: podA},
		{name: "pod b", dir: dir, ips: addrs("10.200.1.6"), want: podB},
		{name: "v4-mapped form", dir: dir, ips: addrs("::ffff:10.200.1.6"), want: podB},
		{name: "no such address", dir: dir, ips: addrs("10.200.1.7"), wantErr: ErrNetNSNotFound},
		{name: "loopback is in every namespace, and no pod's", dir: dir, ips: addrs("127.0.0.1"), wantErr: ErrNetNSNotFound},
		{name: "addresses of two pods", dir: dir, ips: addrs("10.200.1.5", "10.200.1.6"), wantErr: ErrNetNSAmbiguous},
		{name: "missing dir", dir: filepath.Join(dir, "missing"), ips: addrs("10.200.1.5"), wantErr: ErrNetNSNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FindNetNS(tt.dir, tt.ips)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("FindNetNS = %q, %v; want %v", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("FindNetNS = %q, %v; want %q", got, err, tt.want)
			}
		})
	}

	t.Run("same address in two namespaces", func(t *testing.T) {
		// A dead sandbox's namespace still pinned with the address that
		// was since given to a new pod.
		stale := newPodNetNS(t, dir, prefix+"-stale", "10.200.1.6/24")
		_, err := FindNetNS(dir, addrs("10.200.1.6"))
		if !errors.Is(err, ErrNetNSAmbiguous) {
			t.Fatalf("FindNetNS = %v, want ErrNetNSAmbiguous", err)
		}
		unix.Unmount(stale, unix.MNT_DETACH)
		os.Remove(stale)
		if got, err := FindNetNS(dir, addrs("10.200.1.6")); err != nil || got != podB {
			t.Fatalf("after removing the stale one: %q, %v; want %q", got, err, podB)
		}
	})
}
