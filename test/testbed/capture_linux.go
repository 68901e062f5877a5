package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/warren-mesh/warren/netns"
)

// Capture records every frame sent or received on node's underlay link
// until stop is called, and stop returns them as a pcap file (Ethernet link
// type, full frames), readable by tcpdump -r or Wireshark. It is how tests
// prove that no plaintext crosses between nodes. Capturing starts before
// Capture returns, and stop reads everything queued before returning.
//
// The capture is an AF_PACKET socket opened in the node's namespace rather
// than tcpdump, so tests need no extra tool and stop cannot lose frames that
// were still buffered in a child process.
func (tb *Testbed) Capture(ctx context.Context, node *Node) (stop func() ([]byte, error), err error) {
	return tb.CaptureLink(ctx, node.NetNS, node.Link)
}

// CaptureLink is Capture on any interface of any namespace, for example a
// pod's eth0 or a node's pod veth (Pod.HostLink). Captures end at stop, when
// ctx is done, or when the testbed closes; stop still returns what was
// recorded.
func (tb *Testbed) CaptureLink(ctx context.Context, nsPath, link string) (stop func() ([]byte, error), err error) {
	c, err := openCapture(nsPath, link)
	if err != nil {
		return nil, err
	}
	untrack, err := tb.track(c.end)
	if err != nil {
		unix.Close(c.fd) // the reader has not started
		return nil, fmt.Errorf("capturing on %s: %w", link, err)
	}
	return c.start(ctx, untrack), nil
}

// CaptureIn captures on link in the network namespace at nsPath, outside
// any testbed (for example a real cluster's node link); the capture ends at
// stop or when ctx is done.
func CaptureIn(ctx context.Context, nsPath, link string) (stop func() ([]byte, error), err error) {
	c, err := openCapture(nsPath, link)
	if err != nil {
		return nil, err
	}
	return c.start(ctx, func() {}), nil
}

// start reads frames until stop (or ctx); untrack runs at stop.
func (c *capture) start(ctx context.Context, untrack func()) func() ([]byte, error) {
	stopOnCtx := context.AfterFunc(ctx, c.end)
	go c.run()
	return func() ([]byte, error) {
		stopOnCtx()
		untrack()
		c.end()
		return c.out.Bytes(), c.err
	}
}

// openCapture opens and binds the packet socket.
func openCapture(nsPath, link string) (*capture, error) {
	ns, err := netns.Open(nsPath)
	if err != nil {
		return nil, fmt.Errorf("capturing on %s: %w", link, err)
	}
	defer ns.Close()
	fd := -1
	err = ns.Do(func() error {
		ifi, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		// ETH_P_ALL: every protocol, in both directions.
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("opening packet socket: %w", err)
		}
		// Room for bursts while the reader is descheduled (the default is
		// about 200 KiB); FORCE because root may exceed rmem_max.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, captureBuf); err != nil {
			unix.Close(fd)
			fd = -1
			return fmt.Errorf("sizing packet socket buffer: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			fd = -1
			return fmt.Errorf("binding packet socket: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capturing on %s in %s: %w", link, nsPath, err)
	}
	c := &capture{fd: fd, done: make(chan struct{})}
	c.out.Write(pcapHeader())
	return c, nil
}

// captureBuf is the packet socket's receive buffer.
const captureBuf = 8 << 20

// pollInterval bounds how long stop waits for the reader to notice it.
const pollInterval = 20 * time.Millisecond

type capture struct {
	fd       int
	stopping atomic.Bool
	once     sync.Once
	done     chan struct{}
	out      bytes.Buffer // written only by run until done is closed
	err      error
}

// run reads frames until stopping is set, then drains the socket queue.
func (c *capture) run() {
	defer close(c.done)
	buf := make([]byte, snapLen)
	for {
		for {
			n, _, err := unix.Recvfrom(c.fd, buf, unix.MSG_DONTWAIT|unix.MSG_TRUNC)
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				break
			}
			if err != nil {
				c.err = fmt.Errorf("reading packet socket: %w", err)
				return
			}
			c.out.Write(pcapRecord(time.Now(), buf, n))
		}
		if c.stopping.Load() {
			return // queue drained after stop was asked
		}
		fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(pollInterval/time.Millisecond)); err != nil && !errors.Is(err, unix.EINTR) {
			c.err = fmt.Errorf("polling packet socket: %w", err)
			return
		}
	}
}

// end stops the reader, waits for it to drain, and closes the socket.
func (c *capture) end() {
	c.once.Do(func() {
		c.stopping.Store(true)
		<-c.done
		unix.Close(c.fd)
	})
}

// htons converts a protocol number to network byte order, as AF_PACKET wants.
func htons(v uint16) uint16 { return v<<8 | v>>8 }
