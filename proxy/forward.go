package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// Duplex is a byte stream that can be half-closed: *net.TCPConn and
// *hbone.Stream both are.
type Duplex interface {
	io.ReadWriteCloser
	// CloseWrite signals end of data to the peer while reads continue.
	CloseWrite() error
}

// Forward copies client->server and server->client until both directions
// have ended, then closes both. A clean end of one direction (EOF) is passed
// on as a half-close, so a FIN from either application reaches the other.
// Any other failure (a reset, a broken tunnel) aborts both sides, so a reset
// is passed on as a reset. It returns the bytes copied each way and the first
// error.
func Forward(client, server Duplex) (sent, received int64, err error) {
	var sentN, recvN atomic.Int64
	var once sync.Once
	// The first failure aborts both sides, which also unblocks the other
	// direction's copy.
	fail := func() {
		once.Do(func() {
			abort(client)
			abort(server)
		})
	}
	// One direction runs here, the other on one extra goroutine: an idle
	// connection costs a goroutine stack per direction, not more.
	done := make(chan error, 1)
	go func() {
		err := pipe(server, client, &sentN)
		if err != nil {
			fail()
		}
		done <- err
	}()
	err = pipe(client, server, &recvN)
	if err != nil {
		fail()
	}
	if err2 := <-done; err == nil {
		err = err2
	}
	client.Close()
	server.Close()
	return sentN.Load(), recvN.Load(), err
}

// pipe copies src to dst and half-closes dst at src's EOF.
func pipe(dst, src Duplex, n *atomic.Int64) error {
	c, err := io.Copy(dst, src)
	n.Add(c)
	if err != nil {
		return err
	}
	if err := dst.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// abort closes c so that its peer sees a reset rather than an orderly end:
// SO_LINGER 0 makes the kernel send RST for TCP; an hbone stream closed
// before both directions ended sends RST_STREAM.
func abort(c Duplex) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
