package hbone

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Sizes of the socket buffers. The reader's is one full TLS record plus
// frame headers, so small frames are parsed from memory while large DATA
// payloads are read straight into stream buffers. The writer's is one TLS
// record: a DATA frame header and the first bytes of its payload go out as one
// full record and the rest of the payload is written without copying.
const (
	readBufSize  = 16<<10 + 512
	writeBufSize = 16 << 10
)

// maxHeaderList bounds a decoded header block; HBONE requests carry a few
// short headers plus baggage, far below this.
const maxHeaderList = 64 << 10

// maxWriteChunk bounds one hand-off from a stream to the connection writer, so
// one busy stream cannot hold the writer long while others wait.
const maxWriteChunk = 1 << 20

var (
	errPingTimeout = errors.New("ping not answered in time")
	errGoingAway   = errors.New("connection closed after GOAWAY")
)

type ctrlKind uint8

const (
	ctrlSettings ctrlKind = iota
	ctrlSettingsAck
	ctrlPing
	ctrlPingAck
	ctrlWindowUpdate
	ctrlRST
	ctrlGoAway
	ctrlHeaders
	ctrlEndStream // empty DATA frame with END_STREAM
	ctrlClose     // flush everything queued, then close the connection
)

// ctrlWrite is a frame queued for the writer goroutine. Everything but DATA
// payloads goes through this queue, ahead of data.
type ctrlWrite struct {
	kind     ctrlKind
	streamID uint32
	val      uint32 // window increment, error code, last stream id or header table size
	hasVal   bool
	ping     [8]byte
	settings []http2.Setting
	fields   []hpack.HeaderField
	end      bool
}

// conn is one HTTP/2 connection, client or server side. Three goroutines own
// its parts: the read loop (frames in, flow-control accounting), the writer
// (the only one touching the socket's write side and the HPACK encoder), and
// whoever uses its streams.
type conn struct {
	cfg    Config
	log    *slog.Logger
	client bool
	nc     net.Conn // TLS
	raw    net.Conn // TCP under nc
	local  netip.AddrPort
	remote netip.AddrPort
	peer   spiffeid.ID
	bufs   *bufPools

	br   *bufio.Reader
	bw   *bufio.Writer
	fr   *http2.Framer
	henc *hpack.Encoder // writer only
	hbuf bytes.Buffer   // writer only

	peerMaxFrame atomic.Uint32

	wmu     sync.Mutex
	ctrl    []ctrlWrite
	dataq   []*Stream
	wclosed bool
	wake    chan struct{}

	mu             sync.Mutex
	streams        map[uint32]*Stream
	active         int
	nextID         uint32 // client: next stream id to open
	lastPeerID     uint32 // server: highest stream id the peer opened
	sendWin        int64
	recvWin        int64
	recvUnacked    int64
	peerInitWin    int64
	peerMaxStreams uint32
	gotSettings    bool
	goAwaySent     bool
	goAwayRecv     bool
	draining       bool
	err            error
	pingOut        bool
	pingSent       time.Time
	pingSeq        uint64
	wdeadline      time.Time // writer only: the socket's write deadline
	idleTimer      *time.Timer
	closeTimer     *time.Timer

	// onIdle is called (without locks) when a client connection has had no
	// streams for IdleTimeout.
	onIdle func(*conn)
	// onRequest is called by the server's read loop for each new stream.
	onRequest func(*Stream, *http2.MetaHeadersFrame)

	ctx        context.Context
	cancel     context.CancelFunc
	settingsCh chan struct{}
	done       chan struct{}
	wg         sync.WaitGroup
}

func newConn(cfg Config, log *slog.Logger, client bool, nc, raw net.Conn, bufs *bufPools) *conn {
	c := &conn{
		cfg:            cfg,
		log:            log,
		client:         client,
		nc:             nc,
		raw:            raw,
		local:          addrPort(raw.LocalAddr()),
		remote:         addrPort(raw.RemoteAddr()),
		bufs:           bufs,
		br:             bufio.NewReaderSize(nc, readBufSize),
		bw:             bufio.NewWriterSize(nc, writeBufSize),
		wake:           make(chan struct{}, 1),
		streams:        make(map[uint32]*Stream),
		nextID:         1,
		sendWin:        defaultWindow,
		recvWin:        defaultWindow,
		peerInitWin:    defaultWindow,
		peerMaxStreams: ^uint32(0),
		settingsCh:     make(chan struct{}),
		done:           make(chan struct{}),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.fr = http2.NewFramer(c.bw, c.br)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil) // RFC 9113 default table size; we never advertise another
	c.fr.MaxHeaderListSize = maxHeaderList
	c.fr.SetMaxReadFrameSize(cfg.MaxFrameSize)
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.peerMaxFrame.Store(minFrameSize)
	return c
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// start queues our SETTINGS and connection window, then runs the read loop and
// the writer. A client must have written the preface before.
func (c *conn) start() {
	settings := []http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: c.cfg.StreamWindow},
		{ID: http2.SettingMaxFrameSize, Val: c.cfg.MaxFrameSize},
		{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList},
	}
	if c.client {
		settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	} else {
		settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.cfg.MaxConcurrentStreams})
	}
	c.queueCtrl(ctrlWrite{kind: ctrlSettings, settings: settings})
	if inc := int64(c.cfg.ConnWindow) - defaultWindow; inc > 0 {
		c.mu.Lock()
		c.recvWin += inc
		c.mu.Unlock()
		c.queueCtrl(ctrlWrite{kind: ctrlWindowUpdate, val: uint32(inc)})
	}
	c.wg.Add(2)
	go c.readLoop()
	go c.writeLoop()
}

// close tears the connection down at once: every open stream is reset with
// err, the socket closed. Safe to call many times and from any goroutine.
func (c *conn) close(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	for _, s := range c.streams {
		s.resetLocked(&ResetError{Code: http2.ErrCodeCancel, Cause: err})
	}
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	if c.closeTimer != nil {
		c.closeTimer.Stop()
	}
	c.mu.Unlock()
	c.cancel()
	close(c.done)
	// Closing TCP, not TLS: a TLS close would try to send close_notify and
	// could block behind a stuck write.
	_ = c.raw.Close()
}

// goAwayLocked queues a GOAWAY (once) telling the peer the last stream we
// will process; no new streams are accepted after it.
func (c *conn) goAwayLocked(code http2.ErrCode) {
	if c.goAwaySent || c.err != nil {
		return
	}
	c.goAwaySent = true
	c.queueCtrl(ctrlWrite{kind: ctrlGoAway, val: uint32(code), streamID: c.lastPeerID})
}

// drainLocked stops new streams and closes the connection once the last
// stream ends.
func (c *conn) drainLocked() {
	c.goAwayLocked(http2.ErrCodeNo)
	c.draining = true
	if c.active == 0 {
		c.closeGracefulLocked()
	}
}

// closeGracefulLocked sends GOAWAY, flushes and closes. If the peer does not
// take our last bytes within PingTimeout it is dead and we close anyway.
func (c *conn) closeGracefulLocked() {
	if c.err != nil || c.closeTimer != nil {
		return
	}
	c.goAwayLocked(http2.ErrCodeNo)
	c.queueCtrl(ctrlWrite{kind: ctrlClose})
	c.closeTimer = time.AfterFunc(c.cfg.PingTimeout, func() { c.close(errGoingAway) })
}

// Close sends GOAWAY and closes the connection, resetting streams still open.
func (c *conn) Close() {
	c.mu.Lock()
	c.closeGracefulLocked()
	c.mu.Unlock()
	<-c.done
	c.wg.Wait()
}

func (c *conn) queueCtrl(w ctrlWrite) {
	c.wmu.Lock()
	if !c.wclosed {
		c.ctrl = append(c.ctrl, w)
	}
	c.wmu.Unlock()
	notify(c.wake)
}

// queueData hands s.wbuf to the writer; the writer answers on s.wdone.
func (c *conn) queueData(s *Stream) error {
	c.wmu.Lock()
	if c.wclosed {
		c.wmu.Unlock()
		return c.connErr()
	}
	c.dataq = append(c.dataq, s)
	c.wmu.Unlock()
	notify(c.wake)
	return nil
}

func (c *conn) connErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		return &ResetError{Code: http2.ErrCodeCancel, Cause: net.ErrClosed}
	}
	return &ResetError{Code: http2.ErrCodeCancel, Cause: c.err}
}

// writeLoop is the only writer of the socket. Control frames go before data;
// the buffer is flushed whenever there is nothing left to write.
func (c *conn) writeLoop() {
	defer c.wg.Done()
	// Ping timeouts are checked on each tick, so they are detected within
	// PingTimeout plus one interval.
	ping := time.NewTicker(c.cfg.PingInterval)
	defer ping.Stop()
	var ctrl []ctrlWrite
	for {
		c.wmu.Lock()
		ctrl = append(ctrl[:0], c.ctrl...)
		clear(c.ctrl)
		c.ctrl = c.ctrl[:0]
		var s *Stream
		if len(ctrl) == 0 && len(c.dataq) > 0 {
			s = c.dataq[0]
			c.dataq[0] = nil
			c.dataq = c.dataq[1:]
		}
		c.wmu.Unlock()

		if len(ctrl) == 0 && s == nil {
			if c.bw.Buffered() > 0 {
				if err := c.flush(); err != nil {
					c.failWriter(err)
					return
				}
				continue
			}
			select {
			case <-c.wake:
			case <-ping.C:
				if err := c.ping(); err != nil {
					c.failWriter(err)
					return
				}
			case <-c.done:
				c.failWriter(nil)
				return
			}
			continue
		}
		c.armWriteDeadline()
		for i := range ctrl {
			closing, err := c.writeCtrl(&ctrl[i])
			if err == nil && closing {
				err = c.flush()
				if err == nil {
					err = errGoingAway
				}
			}
			if err != nil {
				clear(ctrl)
				c.failWriter(err)
				return
			}
		}
		clear(ctrl)
		if s != nil {
			err := c.writeData(s.id, s.wbuf)
			s.wdone <- err
			if err != nil {
				c.failWriter(err)
				return
			}
		}
	}
}

func (c *conn) flush() error {
	c.armWriteDeadline()
	return c.bw.Flush()
}

// armWriteDeadline makes a blocked write fail within PingTimeout/2 to PingTimeout
// (a write blocked that long means the peer stopped reading its socket,
// which its read loop never does while alive). It moves the socket's
// deadline only once less than half of it is left: setting a deadline
// updates a runtime timer, which cost 8% of an agent's CPU when done on every
// write. Writer goroutine only.
func (c *conn) armWriteDeadline() {
	now := time.Now()
	if c.wdeadline.Sub(now) > c.cfg.PingTimeout/2 {
		return
	}
	c.wdeadline = now.Add(c.cfg.PingTimeout)
	_ = c.nc.SetWriteDeadline(c.wdeadline)
}

// failWriter stops the writer: queued data writers are answered with an error
// and the connection is closed with err (nil when it is already closed).
func (c *conn) failWriter(err error) {
	c.wmu.Lock()
	c.wclosed = true
	pending := c.dataq
	c.dataq = nil
	c.ctrl = nil
	c.wmu.Unlock()
	if err != nil {
		if errors.Is(err, errGoingAway) {
			// Tell the peer we are done before the socket goes away.
			if tc, ok := c.nc.(interface{ CloseWrite() error }); ok {
				_ = tc.CloseWrite()
			}
		}
		c.close(err)
	}
	werr := c.connErr()
	for _, s := range pending {
		s.wdone <- werr
	}
}

func (c *conn) ping() error {
	c.mu.Lock()
	if c.pingOut {
		late := time.Since(c.pingSent) >= c.cfg.PingTimeout
		c.mu.Unlock()
		if late {
			return errPingTimeout
		}
		return nil
	}
	c.pingOut = true
	c.pingSent = time.Now()
	c.pingSeq++
	var data [8]byte
	binary.BigEndian.PutUint64(data[:], c.pingSeq)
	c.mu.Unlock()
	c.armWriteDeadline()
	if err := c.fr.WritePing(false, data); err != nil {
		return err
	}
	return c.flush()
}

// writeCtrl writes one control frame into the buffer. It reports whether the
// connection should now be flushed and closed.
func (c *conn) writeCtrl(w *ctrlWrite) (bool, error) {
	switch w.kind {
	case ctrlSettings:
		return false, c.fr.WriteSettings(w.settings...)
	case ctrlSettingsAck:
		if w.hasVal {
			c.henc.SetMaxDynamicTableSizeLimit(w.val)
		}
		return false, c.fr.WriteSettingsAck()
	case ctrlPing, ctrlPingAck:
		return false, c.fr.WritePing(w.kind == ctrlPingAck, w.ping)
	case ctrlWindowUpdate:
		return false, c.fr.WriteWindowUpdate(w.streamID, w.val)
	case ctrlRST:
		return false, c.fr.WriteRSTStream(w.streamID, http2.ErrCode(w.val))
	case ctrlGoAway:
		return false, c.fr.WriteGoAway(w.streamID, http2.ErrCode(w.val), nil)
	case ctrlHeaders:
		return false, c.writeHeaders(w)
	case ctrlEndStream:
		return false, c.fr.WriteData(w.streamID, true, nil)
	case ctrlClose:
		return true, nil
	}
	return false, fmt.Errorf("unknown control write %d", w.kind)
}

func (c *conn) writeHeaders(w *ctrlWrite) error {
	c.hbuf.Reset()
	for _, f := range w.fields {
		if err := c.henc.WriteField(f); err != nil {
			return fmt.Errorf("encoding headers: %w", err)
		}
	}
	block := c.hbuf.Bytes()
	max := int(c.peerMaxFrame.Load())
	first := true
	for first || len(block) > 0 {
		n := min(len(block), max)
		frag := block[:n]
		block = block[n:]
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{
				StreamID:      w.streamID,
				BlockFragment: frag,
				EndStream:     w.end,
				EndHeaders:    len(block) == 0,
			})
			first = false
		} else {
			err = c.fr.WriteContinuation(w.streamID, len(block) == 0, frag)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// writeData writes p as DATA frames of at most the peer's frame size. The
// frame header is written by hand so the payload is never copied into the
// Framer's buffer.
func (c *conn) writeData(id uint32, p []byte) error {
	max := int(c.peerMaxFrame.Load())
	var h [9]byte
	for len(p) > 0 {
		n := min(len(p), max)
		h[0], h[1], h[2] = byte(n>>16), byte(n>>8), byte(n)
		h[3] = byte(http2.FrameData)
		h[4] = 0
		binary.BigEndian.PutUint32(h[5:], id)
		if _, err := c.bw.Write(h[:]); err != nil {
			return err
		}
		if _, err := c.bw.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

func (c *conn) readLoop() {
	defer c.wg.Done()
	err := c.readFrames()
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		c.log.Info("closing HTTP/2 connection on protocol error", "remote", c.remote, "peer", c.peer, "error", err)
		c.mu.Lock()
		c.goAwayLocked(http2.ErrCode(ce))
		c.closeGracefulLocked()
		c.mu.Unlock()
		return
	}
	c.close(err)
}

func (c *conn) readFrames() error {
	for {
		fh, err := c.fr.ReadFrameHeader()
		if err != nil {
			return err
		}
		if fh.Type == http2.FrameData {
			if err := c.readData(fh); err != nil {
				return err
			}
			continue
		}
		f, err := c.fr.ReadFrameForHeader(fh)
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code)
				continue
			}
			return err
		}
		if err := c.handleFrame(f); err != nil {
			return err
		}
	}
}

func (c *conn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if c.client {
			c.onResponseHeaders(f)
			return nil
		}
		return c.onRequestHeaders(f)
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.PingFrame:
		if f.IsAck() {
			c.mu.Lock()
			c.pingOut = false
			c.mu.Unlock()
			return nil
		}
		c.queueCtrl(ctrlWrite{kind: ctrlPingAck, ping: f.Data})
		return nil
	case *http2.RSTStreamFrame:
		c.mu.Lock()
		if s := c.streams[f.StreamID]; s != nil {
			s.resetLocked(&ResetError{Code: f.ErrCode, Remote: true})
		}
		c.mu.Unlock()
		return nil
	case *http2.GoAwayFrame:
		return c.onGoAway(f)
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	// PRIORITY and unknown frame types carry nothing HBONE uses.
	return nil
}

// resetStream answers a stream-level protocol error with RST_STREAM.
func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.streams[id]; s != nil {
		s.resetLocked(&ResetError{Code: code})
	}
	c.queueCtrl(ctrlWrite{kind: ctrlRST, streamID: id, val: uint32(code)})
}

// readData reads a DATA frame's payload straight into the stream's receive
// buffer, enforcing both receive windows.
func (c *conn) readData(fh http2.FrameHeader) error {
	if fh.StreamID == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	length := int64(fh.Length)
	c.mu.Lock()
	if length > c.recvWin {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWin -= length
	s := c.streams[fh.StreamID]
	var rst http2.ErrCode
	switch {
	case s == nil || s.recv.dropped:
		s = nil
	case s.recvEnd:
		rst, s = http2.ErrCodeStreamClosed, nil
	case length > s.recvWin:
		rst = http2.ErrCodeFlowControl
		s.resetLocked(&ResetError{Code: rst})
		s = nil
	default:
		s.recvWin -= length
	}
	c.mu.Unlock()
	if rst != 0 {
		c.queueCtrl(ctrlWrite{kind: ctrlRST, streamID: fh.StreamID, val: uint32(rst)})
	}

	remaining := int(length) // data bytes, after the padding fields
	padLen := 0
	if fh.Flags.Has(http2.FlagDataPadded) {
		if remaining == 0 {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		pad, err := c.br.ReadByte()
		if err != nil {
			return err
		}
		padLen = int(pad)
		remaining -= 1 + padLen
		if remaining < 0 {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
	}
	if s == nil {
		if _, err := c.br.Discard(remaining + padLen); err != nil {
			return err
		}
		c.credit(int(length))
		return nil
	}
	// Padding never reaches the application, so its window comes back at once.
	unused := int(length) - remaining
	for remaining > 0 {
		c.mu.Lock()
		if s.recv.dropped {
			c.mu.Unlock()
			break
		}
		buf := s.recv.tail(c.bufs)
		s.recv.filling = true
		c.mu.Unlock()
		n := min(len(buf), remaining)
		_, err := io.ReadFull(c.br, buf[:n])
		c.mu.Lock()
		s.recv.filling = false
		if err != nil {
			c.mu.Unlock()
			return err
		}
		if s.recv.dropped {
			unused += n
		} else {
			s.recv.commit(n)
			notify(s.rwake)
		}
		c.mu.Unlock()
		remaining -= n
	}
	// Whatever is left belongs to a stream dropped while we read it.
	if _, err := c.br.Discard(remaining + padLen); err != nil {
		return err
	}
	unused += remaining
	if fh.Flags.Has(http2.FlagDataEndStream) {
		c.mu.Lock()
		if s.inMap {
			s.endRecvLocked()
		}
		c.mu.Unlock()
	}
	if unused > 0 {
		c.credit(unused)
	}
	return nil
}

// credit returns connection window for received bytes the application will
// never read.
func (c *conn) credit(n int) {
	c.mu.Lock()
	c.consumedLocked(n)
	c.mu.Unlock()
}

// consumedLocked accounts n bytes leaving the connection's receive buffers and
// sends a WINDOW_UPDATE once a quarter of the window is owed: the sender keeps
// three quarters in flight, and we send a handful of updates per window rather
// than one per frame.
func (c *conn) consumedLocked(n int) {
	c.recvUnacked += int64(n)
	if c.recvUnacked >= int64(c.cfg.ConnWindow)/4 && c.err == nil {
		c.queueCtrl(ctrlWrite{kind: ctrlWindowUpdate, val: uint32(c.recvUnacked)})
		c.recvWin += c.recvUnacked
		c.recvUnacked = 0
	}
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ack := ctrlWrite{kind: ctrlSettingsAck}
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - c.peerInitWin
			c.peerInitWin = int64(st.Val)
			for _, s := range c.streams {
				s.sendWin += delta
				if s.sendWin > maxWindow {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
				notify(s.wwake)
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame.Store(st.Val)
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = st.Val
		case http2.SettingHeaderTableSize:
			ack.val, ack.hasVal = st.Val, true
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.queueCtrl(ack)
	if !c.gotSettings {
		c.gotSettings = true
		close(c.settingsCh)
	}
	return nil
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		c.sendWin += inc
		if c.sendWin > maxWindow {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		for _, s := range c.streams {
			if s.waitConnWin {
				notify(s.wwake)
			}
		}
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		return nil
	}
	s.sendWin += inc
	if s.sendWin > maxWindow {
		s.resetLocked(&ResetError{Code: http2.ErrCodeFlowControl})
		c.queueCtrl(ctrlWrite{kind: ctrlRST, streamID: s.id, val: uint32(http2.ErrCodeFlowControl)})
		return nil
	}
	notify(s.wwake)
	return nil
}

func (c *conn) onGoAway(f *http2.GoAwayFrame) error {
	c.mu.Lock()
	c.goAwayRecv = true
	if c.client {
		// Streams the server never saw may be retried elsewhere.
		for id, s := range c.streams {
			if id > f.LastStreamID {
				s.resetLocked(&ResetError{Code: http2.ErrCodeRefusedStream, Remote: true})
			}
		}
	}
	if f.ErrCode != http2.ErrCodeNo {
		c.mu.Unlock()
		return fmt.Errorf("peer sent GOAWAY with %v", f.ErrCode)
	}
	c.drainLocked()
	c.mu.Unlock()
	return nil
}

// onResponseHeaders delivers a response (or trailers) to a client stream.
func (c *conn) onResponseHeaders(f *http2.MetaHeadersFrame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[f.StreamID]
	if s == nil {
		return
	}
	if !s.gotResponse {
		code, err := strconv.Atoi(f.PseudoValue("status"))
		if err != nil || code < 100 || code > 999 {
			s.resetLocked(&ResetError{Code: http2.ErrCodeProtocol})
			c.queueCtrl(ctrlWrite{kind: ctrlRST, streamID: s.id, val: uint32(http2.ErrCodeProtocol)})
			return
		}
		if code < 200 {
			return // informational; the real answer follows
		}
		s.gotResponse = true
		s.respond(code, nil)
	}
	if f.StreamEnded() {
		s.endRecvLocked()
	}
}

// onRequestHeaders opens a server stream, or ends one on trailers.
func (c *conn) onRequestHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	if s := c.streams[id]; s != nil {
		if f.StreamEnded() {
			s.endRecvLocked()
		} else {
			s.resetLocked(&ResetError{Code: http2.ErrCodeProtocol})
			c.queueCtrl(ctrlWrite{kind: ctrlRST, streamID: id, val: uint32(http2.ErrCodeProtocol)})
		}
		c.mu.Unlock()
		return nil
	}
	if id%2 == 0 {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if id <= c.lastPeerID {
		c.mu.Unlock()
		return nil // trailers for a stream we already forgot
	}
	c.lastPeerID = id
	if c.goAwaySent {
		c.queueCtrl(ctrlWrite{kind: ctrlRST, streamID: id, val: uint32(http2.ErrCodeRefusedStream)})
		c.mu.Unlock()
		return nil
	}
	if uint32(c.active) >= c.cfg.MaxConcurrentStreams {
		c.queueCtrl(ctrlWrite{kind: ctrlRST, streamID: id, val: uint32(http2.ErrCodeRefusedStream)})
		c.mu.Unlock()
		c.log.Info("refused stream over the concurrency limit", "remote", c.remote, "peer", c.peer, "limit", c.cfg.MaxConcurrentStreams)
		return nil
	}
	s := c.newStreamLocked(id)
	if f.StreamEnded() {
		s.recvEnd = true
	}
	c.mu.Unlock()
	c.onRequest(s, f)
	return nil
}

// newStreamLocked registers a stream; the caller has checked the limits.
func (c *conn) newStreamLocked(id uint32) *Stream {
	s := &Stream{
		c:       c,
		id:      id,
		rwake:   make(chan struct{}, 1),
		wwake:   make(chan struct{}, 1),
		wdone:   make(chan error, 1),
		sendWin: c.peerInitWin,
		recvWin: int64(c.cfg.StreamWindow),
		inMap:   true,
	}
	s.ctx, s.cancel = context.WithCancel(c.ctx)
	c.streams[id] = s
	c.active++
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	return s
}

// removeLocked forgets a stream that ended in both directions or was reset.
func (c *conn) removeLocked(s *Stream) {
	if !s.inMap {
		return
	}
	s.inMap = false
	delete(c.streams, s.id)
	c.active--
	if c.active > 0 || c.err != nil {
		return
	}
	if c.draining {
		c.closeGracefulLocked()
		return
	}
	if c.onIdle != nil {
		if c.idleTimer == nil {
			c.idleTimer = time.AfterFunc(c.cfg.IdleTimeout, func() { c.onIdle(c) })
		} else {
			c.idleTimer.Reset(c.cfg.IdleTimeout)
		}
	}
}

// tryOpen opens a client stream when this connection has room for it: not
// closing, not past GOAWAY, under min(ClientStreamLimit, peer's limit).
func (c *conn) tryOpen(fields []hpack.HeaderField) *Stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	limit := min(c.cfg.ClientStreamLimit, c.peerMaxStreams)
	if c.err != nil || c.goAwayRecv || c.goAwaySent || c.draining || uint32(c.active) >= limit || c.nextID > maxStreamID {
		return nil
	}
	id := c.nextID
	c.nextID += 2
	s := c.newStreamLocked(id)
	s.resp = make(chan response, 1)
	// Queued under c.mu so HEADERS leave in stream-id order (RFC 9113 5.1.1).
	c.queueCtrl(ctrlWrite{kind: ctrlHeaders, streamID: id, fields: fields})
	return s
}

// usable reports whether the connection may take new streams at all.
func (c *conn) usable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err == nil && !c.goAwayRecv && !c.goAwaySent && !c.draining
}

func (c *conn) streamCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active
}
