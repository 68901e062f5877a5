package hbone

import (
	"sync"
	"time"
)

// chunkSize is the unit of a stream's receive buffer: four full TLS records,
// so a 1 MiB DATA frame lands in 16 fills, while an idle stream pins nothing
// (a drained buffer is returned to the pool).
const chunkSize = 64 << 10

// smallReadSize is ReadFrom's buffer while traffic is light: one typical
// request fits, and it lives on the goroutine's stack.
const smallReadSize = 4 << 10

// copySize is the buffer ReadFrom uses: large enough that a fast source fills
// whole 1 MiB-ish DATA frames in a few reads, small enough to pool per stream.
const copySize = 256 << 10

type chunk struct {
	b [chunkSize]byte
	n int // b[:n] holds received bytes
}

// bufPools are shared by every connection of one Pool or Server.
type bufPools struct {
	chunks sync.Pool // *chunk
	copies sync.Pool // *[copySize]byte
}

func newBufPools() *bufPools {
	return &bufPools{
		chunks: sync.Pool{New: func() any { return new(chunk) }},
		copies: sync.Pool{New: func() any { return new([copySize]byte) }},
	}
}

// recvBuf holds bytes received on a stream and not yet read by the
// application. The connection's read loop appends at the tail (writing into
// tail() without the lock, then commit); the reader consumes from the front.
// Only non-last chunks are ever full-and-behind, so the two never touch the
// same bytes. All methods are called with conn.mu held.
type recvBuf struct {
	chunks  []*chunk
	off     int // read offset in chunks[0]
	size    int // committed, unread bytes
	filling bool
	dropped bool // the reader went away; the read loop must discard
}

// tail returns free space after the last committed byte, adding a chunk when
// the last one is full.
func (b *recvBuf) tail(p *bufPools) []byte {
	if len(b.chunks) == 0 || b.chunks[len(b.chunks)-1].n == chunkSize {
		c := p.chunks.Get().(*chunk)
		c.n = 0
		b.chunks = append(b.chunks, c)
	}
	last := b.chunks[len(b.chunks)-1]
	return last.b[last.n:]
}

func (b *recvBuf) commit(n int) {
	b.chunks[len(b.chunks)-1].n += n
	b.size += n
}

// front returns the oldest unread bytes (one chunk's worth at most).
func (b *recvBuf) front(p *bufPools) []byte {
	if b.size == 0 {
		return nil
	}
	b.consume(0, p) // skip a fully read first chunk
	c := b.chunks[0]
	return c.b[b.off:c.n]
}

// consume marks n front bytes read, recycling chunks that are done with.
func (b *recvBuf) consume(n int, p *bufPools) {
	b.size -= n
	for n > 0 || (len(b.chunks) > 0 && b.off == b.chunks[0].n) {
		c := b.chunks[0]
		k := min(n, c.n-b.off)
		b.off += k
		n -= k
		if b.off < c.n {
			return
		}
		// The last chunk may still receive data unless it is full or the
		// read loop is not filling it right now.
		if len(b.chunks) == 1 && c.n < chunkSize && b.filling {
			return
		}
		p.chunks.Put(c)
		b.chunks[0] = nil
		b.chunks = b.chunks[1:]
		b.off = 0
		if len(b.chunks) == 0 {
			b.chunks = nil
			return
		}
	}
}

func (b *recvBuf) read(dst []byte, p *bufPools) int {
	total := 0
	for len(dst) > 0 && b.size > 0 {
		k := copy(dst, b.front(p))
		b.consume(k, p)
		dst = dst[k:]
		total += k
	}
	return total
}

// drop discards everything unread and returns how many bytes that was. The
// chunks are left to the garbage collector: the read loop or a WriteTo may
// still hold a slice of one.
func (b *recvBuf) drop() int {
	n := b.size
	b.chunks = nil
	b.off = 0
	b.size = 0
	b.dropped = true
	return n
}

// deadline is a settable point in time exposed as a channel that is closed
// once it passes; a nil channel means no deadline.
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	expire chan struct{}
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.expire // the callback is closing it; wait so we do not reuse it
	}
	d.timer = nil
	if t.IsZero() {
		d.expire = nil
		return
	}
	ch := make(chan struct{})
	d.expire = ch
	dur := time.Until(t)
	if dur <= 0 {
		close(ch)
		return
	}
	d.timer = time.AfterFunc(dur, func() { close(ch) })
}

func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.expire
}

func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
	}
}

// notify wakes the waiter of a capacity-1 channel without blocking.
func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
