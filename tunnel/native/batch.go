package native

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"isthmus.dev/tunnel/idle"
)

// Writes on a native link are batched at two levels, because the libraries
// underneath write small pieces: yamux writes each frame as a 12-byte header
// and then its body, and crypto/tls writes each 16 KiB record with its own
// system call. frameWriter hands yamux a frame in one TLS write, and
// RawConn gathers the records of that write into one system call.

// RawConn is the TCP connection under the TLS of a native link. Wrap the
// raw connection with it before TLS (see WrapRaw); writes go straight
// through except inside a batch.
//
// It holds no buffer while the link is idle, so that an agent port with
// thousands of quiet agents costs little per agent: a read waits for the
// socket to be readable with none (the runtime's poller waits, as for any
// read), then takes a pooled buffer, fetches all that is there (many TLS
// records per system call under bulk traffic), and gives the buffer back
// once TLS has read it all. A batch of writes borrows its buffer likewise.
type RawConn struct {
	net.Conn
	raw    syscall.RawConn // nil when the connection has no descriptor (a pipe)
	readFD func(fd uintptr) bool
	rbuf   *[]byte // bytes fetched and not yet read, rbuf[roff:rend]; nil when none
	roff   int
	rend   int
	rerr   error // what the last raw read reported

	mu       sync.Mutex
	w        *bufio.Writer // while batching
	batching bool

	// Idle reading (EnableIdle): the reader's goroutine may leave while
	// the link is quiet, and the socket then waits in package idle's
	// epoll set.
	idle   *idle.Socket // nil unless EnableIdle succeeded
	parkOK bool         // the reader may leave at this read (ReadIdle); its goroutine only
}

// rawBufSize is the read and write buffer of a busy link: many TLS records
// per system call.
const rawBufSize = 256 << 10

var (
	rawReadPool  = sync.Pool{New: func() any { b := make([]byte, rawBufSize); return &b }}
	rawWritePool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, rawBufSize) }}
)

// WrapRaw wraps a raw connection for the TLS of an agent port or agent.
func WrapRaw(c net.Conn) *RawConn {
	r := &RawConn{Conn: c}
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			r.raw = rc
			r.readFD = r.readRaw
		}
	}
	return r
}

// Read serves what was fetched, or fetches more. TLS reads from one
// goroutine at a time (under its input lock), so Read needs no lock.
func (r *RawConn) Read(p []byte) (int, error) {
	if r.raw == nil {
		return r.Conn.Read(p)
	}
	if r.rbuf == nil {
		for {
			err := r.raw.Read(r.readFD)
			if err == nil {
				break
			}
			if r.idle == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
				return 0, err // closed, or a deadline
			}
			ours, ierr := r.idle.Evicted()
			switch {
			case ierr != nil:
				return 0, ierr
			case !ours:
				return 0, err
			case r.parkOK:
				return 0, idle.ErrIdle
			} // else, in a frame: read on
		}
		if r.idle != nil {
			r.idle.Active()
		}
		switch {
		case r.rerr != nil:
			return 0, os.NewSyscallError("read", r.rerr)
		case r.rbuf == nil: // the peer closed its side
			return 0, io.EOF
		}
	}
	n := copy(p, (*r.rbuf)[r.roff:r.rend])
	r.roff += n
	if r.roff == r.rend {
		rawReadPool.Put(r.rbuf)
		r.rbuf = nil
	}
	return n, nil
}

// readRaw fetches what the socket holds into a pooled buffer; when it
// holds nothing it gives the buffer back and lets the poller wait.
func (r *RawConn) readRaw(fd uintptr) bool {
	b := rawReadPool.Get().(*[]byte)
	for {
		n, err := syscall.Read(int(fd), *b)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			rawReadPool.Put(b)
			return false
		case err != nil || n == 0:
			rawReadPool.Put(b)
			r.rerr = err
			return true
		}
		r.rbuf, r.roff, r.rend, r.rerr = b, 0, n, nil
		return true
	}
}

// EnableIdle lets the reader leave while the link is quiet: once the
// sweeper finds no read for a whole period, a read between ReadIdle(true)
// and ReadIdle(false) that would wait returns idle.ErrIdle instead, having
// consumed nothing, and the reader calls WaitReadable. It reports false if
// this connection cannot (no descriptor, or no epoll set on this system);
// reads then wait as always. Call it once, before the reader starts.
func (r *RawConn) EnableIdle() bool {
	if r.raw == nil || !idle.Supported {
		return false
	}
	r.idle = idle.NewSocket(r.Conn, r.raw)
	idle.Watch(r.idle)
	return true
}

// ReadIdle says whether the reader may leave at its next reads: a session
// layer turns it on only at a frame's first byte, where leaving loses
// nothing of its own.
func (r *RawConn) ReadIdle(on bool) { r.parkOK = on }

// WaitReadable, after a read returned idle.ErrIdle, arranges for resume to
// be called once the socket is readable (or closed) on a goroutine that
// must not block. parked false with no error means the epoll set failed:
// read on, in Go's poller, from now on.
func (r *RawConn) WaitReadable(resume func()) (parked bool, err error) {
	return r.idle.Park(resume)
}

// Close closes the connection; a reader waiting in the epoll set resumes,
// and finds it closed.
func (r *RawConn) Close() error {
	err := r.Conn.Close()
	if r.idle != nil {
		r.idle.Close()
	}
	return err
}

func (r *RawConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.batching {
		return r.w.Write(p)
	}
	return r.Conn.Write(p)
}

// batch runs write with writes buffered, then flushes them.
func (r *RawConn) batch(write func() error) error {
	r.mu.Lock()
	r.batching = true
	r.w = rawWritePool.Get().(*bufio.Writer)
	r.w.Reset(r.Conn)
	r.mu.Unlock()
	err := write()
	r.mu.Lock()
	r.batching = false
	if ferr := r.w.Flush(); err == nil {
		err = ferr
	}
	r.w.Reset(nil)
	rawWritePool.Put(r.w)
	r.w = nil
	r.mu.Unlock()
	return err
}

// CloseWrite half-closes the TCP connection, for TLS's CloseWrite.
func (r *RawConn) CloseWrite() error {
	if cw, ok := r.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// yamux's frame header: version, type, flags, stream id, length.
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
)

// frameWriter sits between yamux and the TLS connection. yamux writes from
// one goroutine (its send loop), a frame at a time: a header, then, for a
// data frame with a body, the body.
//
//   - A data frame's header is held and written with its body.
//   - A large frame (bulk data) is written at once, header and body in one
//     system call, without a copy.
//   - Small frames (requests, answers, window updates, dial headers) are
//     queued and written by a flusher goroutine: while it writes one batch,
//     the next gathers, so a thousand busy connections share TLS records
//     and system calls instead of paying one each (group commit). The
//     flusher ends when it finds the queue empty, and the next small frame
//     starts another: an idle link holds no goroutine and no queue.
//   - The queue's two buffers (one gathering while the other is written)
//     come from pools shared by every link and go back to them when the
//     flusher ends: a busy link reuses them from burst to burst instead of
//     growing new ones (at a thousand small frames a batch, that garbage
//     was most of what the link allocated, and its GC a tenth of the CPU).
//     A queue starts small (a handshake or a lone answer needs little) and
//     moves to a full-size buffer when a burst outgrows it.
//
// Order is kept: a large frame waits until the queue is written.
type frameWriter struct {
	linkConn        // the *tls.Conn; reads and everything else pass through
	held     []byte // a data frame header waiting for its body
	buf      []byte

	mu       sync.Mutex
	cond     sync.Cond
	queue    []byte // small frames waiting for the flusher; nil when none
	spare    []byte // the flusher's other buffer, while it runs
	writing  bool   // a batch or a large frame is being written
	err      error  // the first write error; every later write returns it
	closed   bool
	flushing bool           // a flusher goroutine runs
	flushers sync.WaitGroup // the one that runs, for Close
}

const (
	// directFrame: frames this large are written at once, not queued.
	directFrame = 16<<10 + yamuxHeaderSize + 1
	// maxQueue bounds the queue; yamux's send loop waits beyond it.
	maxQueue = 256 << 10
	// queueBufSize is a full-size queue buffer's capacity: the most a
	// queue holds (below maxQueue, plus one frame below directFrame), so
	// that appending never grows it.
	queueBufSize = maxQueue + directFrame
	// smallQueueSize is a queue's first buffer.
	smallQueueSize = 16 << 10
)

var (
	smallQueuePool = sync.Pool{New: func() any { b := make([]byte, 0, smallQueueSize); return &b }}
	queuePool      = sync.Pool{New: func() any { b := make([]byte, 0, queueBufSize); return &b }}
)

// getQueue returns an empty pooled buffer that holds n bytes (n is at most
// queueBufSize).
func getQueue(n int) []byte {
	if n <= smallQueueSize {
		return *smallQueuePool.Get().(*[]byte)
	}
	return *queuePool.Get().(*[]byte)
}

// putQueue gives a queue buffer back to its pool; b may be nil.
func putQueue(b []byte) {
	b = b[:0]
	switch cap(b) {
	case smallQueueSize:
		smallQueuePool.Put(&b)
	case queueBufSize:
		queuePool.Put(&b)
	}
}

// appendQueue appends a frame to the queue, moving it to a full-size
// buffer when it does not fit: a pooled buffer never grows.
func (f *frameWriter) appendQueue(hdr, p []byte) {
	n := len(f.queue) + len(hdr) + len(p)
	if f.queue == nil || n > cap(f.queue) {
		q := append(getQueue(n), f.queue...)
		putQueue(f.queue)
		f.queue = q
	}
	f.queue = append(append(f.queue, hdr...), p...)
}

func newFrameWriter(c net.Conn) *frameWriter {
	fw := &frameWriter{held: make([]byte, 0, yamuxHeaderSize)}
	fw.init(c)
	fw.cond.L = &fw.mu
	return fw
}

func (f *frameWriter) Write(p []byte) (int, error) {
	if len(f.held) == 0 && len(p) == yamuxHeaderSize && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:]) > 0 {
		f.held = append(f.held, p...)
		return len(p), nil
	}
	hdr := f.held
	f.held = f.held[:0]
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(hdr)+len(p) < directFrame {
		for f.err == nil && !f.closed && len(f.queue) >= maxQueue {
			f.cond.Wait()
		}
		if err := f.failed(); err != nil {
			return 0, err
		}
		f.appendQueue(hdr, p)
		if !f.flushing {
			f.flushing = true
			f.flushers.Add(1)
			go f.flush()
		}
		f.cond.Broadcast()
		return len(p), nil
	}
	for f.err == nil && !f.closed && (f.writing || len(f.queue) > 0) {
		f.cond.Wait()
	}
	if err := f.failed(); err != nil {
		return 0, err
	}
	f.writing = true
	f.mu.Unlock()
	err := f.write(hdr, p)
	f.mu.Lock()
	f.writing = false
	if err != nil && f.err == nil {
		f.err = err
	}
	f.cond.Broadcast()
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (f *frameWriter) failed() error {
	switch {
	case f.err != nil:
		return f.err
	case f.closed:
		return net.ErrClosed
	}
	return nil
}

// flush writes the queue, a batch at a time, until it finds the queue
// empty or the writer closes or fails.
func (f *frameWriter) flush() {
	defer f.flushers.Done()
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		for f.err == nil && !f.closed && f.writing { // a large frame goes out
			f.cond.Wait()
		}
		if f.err != nil || f.closed || len(f.queue) == 0 {
			f.flushing = false
			// Empty, or never to be written (writes fail from now on).
			putQueue(f.queue)
			putQueue(f.spare)
			f.queue, f.spare = nil, nil
			f.cond.Broadcast()
			return
		}
		if f.spare == nil {
			f.spare = getQueue(0)
		}
		batch := f.queue
		f.queue, f.writing = f.spare[:0], true
		f.cond.Broadcast() // a writer waiting for room gathers the next batch now
		f.mu.Unlock()
		err := f.write(nil, batch)
		f.mu.Lock()
		f.spare, f.writing = batch[:0], false
		if err != nil && f.err == nil {
			f.err = err
		}
		f.cond.Broadcast()
	}
}

// write puts hdr and body on the wire: TLS records gathered into one
// system call under a RawConn, or one TLS write otherwise.
func (f *frameWriter) write(hdr, body []byte) error {
	if f.raw != nil {
		return f.raw.batch(func() error {
			if len(hdr) > 0 {
				if _, err := f.Conn.Write(hdr); err != nil {
					return err
				}
			}
			_, err := f.Conn.Write(body)
			return err
		})
	}
	if len(hdr) > 0 {
		f.buf = append(append(f.buf[:0], hdr...), body...)
		body = f.buf
	}
	_, err := f.Conn.Write(body)
	return err
}

// closeFlushTimeout bounds how long Close waits for queued frames to go
// out (a peer that stopped reading).
const closeFlushTimeout = time.Second

// Close writes what is queued (within closeFlushTimeout), stops the
// flusher and closes the connection.
func (f *frameWriter) Close() error {
	f.mu.Lock()
	if f.flushing && !f.closed {
		t := time.AfterFunc(closeFlushTimeout, func() {
			f.mu.Lock()
			f.closed = true
			f.cond.Broadcast()
			f.mu.Unlock()
			_ = f.Conn.Close() // unblocks a stuck write
		})
		for f.err == nil && !f.closed && (len(f.queue) > 0 || f.writing) {
			f.cond.Wait()
		}
		t.Stop()
	}
	f.closed = true
	f.cond.Broadcast()
	f.mu.Unlock()
	err := f.Conn.Close()
	f.flushers.Wait()
	return err
}
