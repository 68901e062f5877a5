package redirect

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/warren-mesh/warren/netns"
)

const ioTimeout = 3 * time.Second

func openNS(t *testing.T, path string) *netns.NS {
	t.Helper()
	ns, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

func listen(t *testing.T, ns *netns.NS, network, addr string) *net.TCPListener {
	t.Helper()
	ln, err := ns.Listen(context.Background(), &net.ListenConfig{}, network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

func dial(t *testing.T, ns *netns.NS, d *net.Dialer, addr netip.AddrPort) {
	t.Helper()
	d.Timeout = ioTimeout
	c, err := ns.Dial(context.Background(), d, "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
}

// acceptOne waits for one connection on ln.
func acceptOne(t *testing.T, ln *net.TCPListener) *net.TCPConn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(ioTimeout))
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatalf("no connection on %v: %v", ln.Addr(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func checkOrigDst(t *testing.T, c *net.TCPConn, want netip.AddrPort) {
	t.Helper()
	got, err := OriginalDst(c)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("OriginalDst = %v, want %v", got, want)
	}
}

// TestCapture builds a pod netns and a peer netns joined by a veth pair on
// a random 10.x.y.0/24, applies the capture with each backend, and checks
// where connections land.
func TestCapture(t *testing.T) {
	requireRoot(t)
	cfg := DefaultConfig()
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			r, err := be.new(cfg, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			p := runPrefix(t)
			podPath, peerPath := newNetNS(t, p+"p"), newNetNS(t, p+"q")
			var x [2]byte
			rand.Read(x[:])
			podIP := netip.AddrFrom4([4]byte{10, x[0], x[1], 1})
			peerIP := netip.AddrFrom4([4]byte{10, x[0], x[1], 2})
			sh(t, "ip", "link", "add", p+"a", "netns", p+"p", "type", "veth", "peer", "name", p+"b", "netns", p+"q")
			sh(t, "ip", "-n", p+"p", "addr", "add", podIP.String()+"/24", "dev", p+"a")
			sh(t, "ip", "-n", p+"p", "link", "set", p+"a", "up")
			sh(t, "ip", "-n", p+"q", "addr", "add", peerIP.String()+"/24", "dev", p+"b")
			sh(t, "ip", "-n", p+"q", "link", "set", p+"b", "up")

			if err := r.Apply(context.Background(), Pod{NetNS: podPath, IPs: []netip.Addr{podIP}}); err != nil {
				t.Fatal(err)
			}
			pod, peer := openNS(t, podPath), openNS(t, peerPath)
			outLn := listen(t, pod, "tcp4", fmt.Sprintf(":%d", cfg.OutboundPort))
			inLn := listen(t, pod, "tcp4", fmt.Sprintf(":%d", cfg.InboundPlaintextPort))
			tunLn := listen(t, pod, "tcp4", fmt.Sprintf(":%d", cfg.InboundTunnelPort))
			appLn := listen(t, peer, "tcp4", ":80")

			t.Run("outbound to 15001", func(t *testing.T) {
				dst := netip.AddrPortFrom(peerIP, 80)
				dial(t, pod, &net.Dialer{}, dst)
				checkOrigDst(t, acceptOne(t, outLn), dst)
			})
			t.Run("agent mark not captured", func(t *testing.T) {
				d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
					var serr error
					err := rc.Control(func(fd uintptr) {
						serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(cfg.AgentMark))
					})
					if err != nil {
						return err
					}
					return serr
				}}
				dial(t, pod, d, netip.AddrPortFrom(peerIP, 80))
				c := acceptOne(t, appLn)
				if got, want := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(), podIP; got != want {
					t.Errorf("peer saw source %v, want %v", got, want)
				}
			})
			t.Run("replies to agent spoofed source", func(t *testing.T) {
				// The agent connects to the pod's app as if it were the peer
				// (transparent socket bound to peerIP, agent mark). The app's
				// replies are addressed to peerIP and would leave through the
				// veth; connmark + fwmark + table 100 must bring them back.
				app := listen(t, pod, "tcp4", ":8080")
				d := &net.Dialer{
					LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(peerIP, 0)),
					Control: func(_, _ string, rc syscall.RawConn) error {
						var serr error
						err := rc.Control(func(fd uintptr) {
							if serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1); serr != nil {
								return
							}
							serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(cfg.AgentMark))
						})
						if err != nil {
							return err
						}
						return serr
					},
				}
				dial(t, pod, d, netip.AddrPortFrom(podIP, 8080))
				c := acceptOne(t, app)
				if got := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != peerIP {
					t.Errorf("app saw source %v, want %v", got, peerIP)
				}
			})
			t.Run("inbound to 15006", func(t *testing.T) {
				dst := netip.AddrPortFrom(podIP, 8080)
				dial(t, peer, &net.Dialer{}, dst)
				checkOrigDst(t, acceptOne(t, inLn), dst)
			})
			t.Run("inbound HBONE untouched", func(t *testing.T) {
				dst := netip.AddrPortFrom(podIP, cfg.InboundTunnelPort)
				dial(t, peer, &net.Dialer{}, dst)
				// Not NATed: conntrack's original destination is the real one.
				checkOrigDst(t, acceptOne(t, tunLn), dst)
			})
		})
	}
}

// TestOriginalDst checks both getsockopt variants with a plain nft redirect
// on loopback: IPv6, and IPv4 accepted on a dual-stack socket.
func TestOriginalDst(t *testing.T) {
	requireRoot(t)
	name := runPrefix(t)
	ns := openNS(t, newNetNS(t, name))
	inNS(t, name, "nft", "add table inet t; add chain inet t o { type nat hook output priority -100; }; add rule inet t o tcp dport 81 redirect to :15001")
	ln := listen(t, ns, "tcp", "[::]:15001") // dual-stack
	for _, dst := range []netip.AddrPort{
		netip.MustParseAddrPort("[::1]:81"),
		netip.MustParseAddrPort("127.0.0.1:81"),
	} {
		t.Run(dst.String(), func(t *testing.T) {
			dial(t, ns, &net.Dialer{}, dst)
			checkOrigDst(t, acceptOne(t, ln), dst)
		})
	}
}
