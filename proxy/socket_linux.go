package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/warren-mesh/warren/netns"
)

// markControl sets SO_MARK on a socket before it connects. The pod's capture
// rules exempt packets carrying the mark, so the agent's own connections
// from inside the pod are not captured again.
func markControl(mark uint32) func(string, string, syscall.RawConn) error {
	return func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		})
		if err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("setting SO_MARK %#x: %w", mark, serr)
		}
		return nil
	}
}

// transparentControl additionally sets IP_TRANSPARENT (IPV6_TRANSPARENT), so
// the socket may bind the remote client's address: the application then sees
// the real client pod IP as the source. Replies come back to the socket
// through the connmark and policy-routing rules that redirect installs.
func transparentControl(mark uint32) func(string, string, syscall.RawConn) error {
	setMark := markControl(mark)
	return func(network, address string, rc syscall.RawConn) error {
		if err := setMark(network, address, rc); err != nil {
			return err
		}
		var serr error
		err := rc.Control(func(fd uintptr) {
			if network == "tcp6" {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
			}
		})
		if err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("setting IP_TRANSPARENT: %w", serr)
		}
		return nil
	}
}

// NetNSDialers returns the two ways the agent connects from inside a pod: a
// marked dial (outbound tunnels and passthrough) and a transparent dial that
// keeps a remote client's address as source (inbound to the application).
func NetNSDialers(ns *netns.NS, mark uint32, timeout time.Duration) (dial DialFunc, dialFrom DialFromFunc) {
	dial = func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		d := &net.Dialer{Timeout: timeout, Control: markControl(mark)}
		return ns.Dial(ctx, d, "tcp", dst.String())
	}
	dialFrom = func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
		d := &net.Dialer{
			Timeout:   timeout,
			Control:   transparentControl(mark),
			LocalAddr: &net.TCPAddr{IP: src.AsSlice()},
		}
		return ns.Dial(ctx, d, "tcp", dst.String())
	}
	return dial, dialFrom
}
