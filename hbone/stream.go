package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
)

// errWriteClosed is returned by Write after CloseWrite.
var errWriteClosed = errors.New("hbone: write after CloseWrite")

type response struct {
	code int
	err  error
}

// Stream is one tunnelled TCP connection: an HTTP/2 CONNECT stream used as a
// full-duplex byte stream. It implements net.Conn; CloseWrite sends END_STREAM
// (the tunnel's FIN) and Close without both directions ended sends
// RST_STREAM (the tunnel's RST).
type Stream struct {
	c      *conn
	id     uint32
	ctx    context.Context
	cancel context.CancelFunc

	readMu  sync.Mutex // one reader at a time
	writeMu sync.Mutex // one writer at a time
	rwake   chan struct{}
	wwake   chan struct{}
	rdl     deadline
	wdl     deadline
	wdone   chan error
	wbuf    []byte // the chunk lent to the connection writer

	// Guarded by c.mu.
	recv        recvBuf
	recvWin     int64
	recvUnacked int64
	sendWin     int64
	waitConnWin bool
	recvEnd     bool
	sentEnd     bool
	inMap       bool
	localClosed bool
	reset       error
	gotResponse bool
	resp        chan response // client: the CONNECT answer, sent once
	responded   bool
}

var (
	_ net.Conn      = (*Stream)(nil)
	_ io.WriterTo   = (*Stream)(nil)
	_ io.ReaderFrom = (*Stream)(nil)
)

// respond delivers the CONNECT answer to a waiting client, once.
func (s *Stream) respond(code int, err error) {
	if s.resp == nil || s.responded {
		return
	}
	s.responded = true
	s.resp <- response{code: code, err: err}
}

// resetLocked ends the stream abruptly with err. Unread data is dropped unless
// the peer had already finished sending (then reads still drain to EOF).
func (s *Stream) resetLocked(err error) {
	if s.reset != nil {
		return
	}
	s.reset = err
	if !s.recvEnd {
		s.c.consumedLocked(s.recv.drop())
	}
	s.respond(0, err)
	s.c.removeLocked(s)
	notify(s.rwake)
	notify(s.wwake)
	s.cancel()
}

// endRecvLocked records the peer's END_STREAM.
func (s *Stream) endRecvLocked() {
	if s.recvEnd {
		return
	}
	s.recvEnd = true
	notify(s.rwake)
	if s.sentEnd {
		s.c.removeLocked(s)
	}
}

// Read reads tunnelled bytes. It returns io.EOF after the peer's END_STREAM
// and an error matching ErrReset after a reset.
func (s *Stream) Read(p []byte) (int, error) {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	c := s.c
	c.mu.Lock()
	for s.recv.size == 0 {
		if err := s.readErrLocked(); err != nil || len(p) == 0 {
			c.mu.Unlock()
			return 0, err
		}
		c.mu.Unlock()
		select {
		case <-s.rwake:
		case <-s.rdl.wait():
			return 0, os.ErrDeadlineExceeded
		}
		c.mu.Lock()
	}
	n := s.recv.read(p, c.bufs)
	s.consumedLocked(n)
	c.mu.Unlock()
	return n, nil
}

// WriteTo writes received bytes to w straight from the receive buffer, until
// END_STREAM (returning nil) or an error.
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	c := s.c
	var total int64
	for {
		c.mu.Lock()
		for s.recv.size == 0 {
			if err := s.readErrLocked(); err != nil {
				c.mu.Unlock()
				if err == io.EOF {
					err = nil
				}
				return total, err
			}
			c.mu.Unlock()
			select {
			case <-s.rwake:
			case <-s.rdl.wait():
				return total, os.ErrDeadlineExceeded
			}
			c.mu.Lock()
		}
		// The front bytes stay put while unlocked: only this reader consumes
		// them, and a drop leaves the memory to the garbage collector.
		b := s.recv.front(c.bufs)
		c.mu.Unlock()
		n, err := w.Write(b)
		c.mu.Lock()
		if !s.recv.dropped {
			s.recv.consume(n, c.bufs)
		}
		s.consumedLocked(n)
		c.mu.Unlock()
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
}

func (s *Stream) readErrLocked() error {
	switch {
	case s.localClosed:
		return net.ErrClosed
	case s.recvEnd:
		return io.EOF
	case s.reset != nil:
		return s.reset
	}
	return nil
}

// consumedLocked returns window for n bytes the application has taken.
func (s *Stream) consumedLocked(n int) {
	s.c.consumedLocked(n)
	if !s.inMap || s.recvEnd {
		return
	}
	s.recvUnacked += int64(n)
	if s.recvUnacked >= int64(s.c.cfg.StreamWindow)/4 {
		s.c.queueCtrl(ctrlWrite{kind: ctrlWindowUpdate, streamID: s.id, val: uint32(s.recvUnacked)})
		s.recvWin += s.recvUnacked
		s.recvUnacked = 0
	}
}

// Write sends p as DATA frames, waiting for flow-control window as needed. It
// returns when the connection writer is done with p.
func (s *Stream) Write(p []byte) (int, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	return s.write(p)
}

func (s *Stream) write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		n, err := s.acquire(len(p))
		if err != nil {
			return total, err
		}
		s.wbuf = p[:n]
		if err := s.c.queueData(s); err != nil {
			s.wbuf = nil
			return total, err
		}
		err = <-s.wdone
		s.wbuf = nil
		if err != nil {
			return total, err
		}
		total += n
		p = p[n:]
	}
	return total, nil
}

// acquire takes up to want bytes of send window from the stream and the
// connection, waiting while either is empty.
func (s *Stream) acquire(want int) (int, error) {
	c := s.c
	c.mu.Lock()
	for {
		if err := s.writeErrLocked(); err != nil {
			c.mu.Unlock()
			return 0, err
		}
		if s.sendWin > 0 && c.sendWin > 0 {
			n := min(int64(want), s.sendWin, c.sendWin, maxWriteChunk)
			s.sendWin -= n
			c.sendWin -= n
			s.waitConnWin = false
			c.mu.Unlock()
			return int(n), nil
		}
		s.waitConnWin = c.sendWin <= 0
		c.mu.Unlock()
		select {
		case <-s.wwake:
		case <-s.wdl.wait():
			return 0, os.ErrDeadlineExceeded
		}
		c.mu.Lock()
	}
}

func (s *Stream) writeErrLocked() error {
	switch {
	case s.localClosed:
		return net.ErrClosed
	case s.reset != nil:
		return s.reset
	case s.sentEnd:
		return errWriteClosed
	}
	return nil
}

// ReadFrom copies r into the stream. It reads into a small buffer and takes
// a large pooled one (for big DATA frames) only while reads fill the small
// one, handing it back as soon as traffic slows to a trickle: an idle
// connection blocked in Read must not pin 256 KiB (10,000 idle connections
// held 2.5 GB that way). Like io.Copy it does not CloseWrite at EOF.
func (s *Stream) ReadFrom(r io.Reader) (int64, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	var small [smallReadSize]byte
	var big *[copySize]byte
	defer func() {
		if big != nil {
			s.c.bufs.copies.Put(big)
		}
	}()
	var total int64
	for {
		buf := small[:]
		if big != nil {
			buf = big[:]
		}
		n, rerr := r.Read(buf)
		if n > 0 {
			w, err := s.write(buf[:n])
			total += int64(w)
			if err != nil {
				return total, err
			}
		}
		switch {
		case big == nil && n == len(small):
			big = s.c.bufs.copies.Get().(*[copySize]byte)
		case big != nil && n < smallReadSize:
			s.c.bufs.copies.Put(big)
			big = nil
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// CloseWrite sends END_STREAM: the peer reads EOF after the data already
// written. Reading continues.
func (s *Stream) CloseWrite() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := s.writeErrLocked(); err != nil {
		if err == errWriteClosed {
			return nil
		}
		return err
	}
	s.sentEnd = true
	c.queueCtrl(ctrlWrite{kind: ctrlEndStream, streamID: s.id})
	if s.recvEnd {
		c.removeLocked(s)
	}
	return nil
}

// Close releases the stream. If it has not ended in both directions the peer
// gets RST_STREAM(CANCEL); blocked reads and writes return net.ErrClosed.
func (s *Stream) Close() error {
	c := s.c
	c.mu.Lock()
	if s.localClosed {
		c.mu.Unlock()
		return nil
	}
	s.localClosed = true
	if s.inMap && s.reset == nil {
		c.queueCtrl(ctrlWrite{kind: ctrlRST, streamID: s.id, val: uint32(http2.ErrCodeCancel)})
		s.reset = &ResetError{Code: http2.ErrCodeCancel}
		c.removeLocked(s)
	}
	c.consumedLocked(s.recv.drop())
	notify(s.rwake)
	notify(s.wwake)
	c.mu.Unlock()
	s.cancel()
	s.rdl.stop()
	s.wdl.stop()
	return nil
}

// Context is cancelled when the stream is reset (either side), closed, or
// its connection dies.
func (s *Stream) Context() context.Context { return s.ctx }

// Peer is the verified SPIFFE identity at the other end of the tunnel.
func (s *Stream) Peer() spiffeid.ID { return s.c.peer }

// LocalAddr is the local address of the tunnel's TCP connection.
func (s *Stream) LocalAddr() net.Addr { return net.TCPAddrFromAddrPort(s.c.local) }

// RemoteAddr is the remote address of the tunnel's TCP connection.
func (s *Stream) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(s.c.remote) }

func (s *Stream) SetDeadline(t time.Time) error {
	s.rdl.set(t)
	s.wdl.set(t)
	return nil
}

// SetReadDeadline bounds waiting for data.
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.rdl.set(t)
	return nil
}

// SetWriteDeadline bounds waiting for flow-control window; a write already
// handed to the connection finishes or fails with the connection.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.wdl.set(t)
	return nil
}

func (s *Stream) String() string {
	return fmt.Sprintf("hbone stream %d %v->%v", s.id, s.c.local, s.c.remote)
}
