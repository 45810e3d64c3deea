// Package splice is the one place where isthmus copies bytes between two
// connections: both directions at once, half-close where both ends support
// it, pooled buffers, and byte counts for metrics.
package splice

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// Copy buffers: a connection moving bulk data copies with a large buffer
// (fewer system calls and tunnel frames); one with light traffic, or idle
// and blocked in Read, holds only a small one.
const (
	smallBuffer = 16 << 10
	largeBuffer = 256 << 10
)

var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallBuffer); return &b }}
	largePool = sync.Pool{New: func() any { b := make([]byte, largeBuffer); return &b }}
)

// HalfCloser is a connection whose write side can be closed alone (TCP, Unix
// sockets, TLS, native tunnel streams). A connection without it (an ANP
// tunneled connection) has no half-close: EOF from it means the whole
// connection ended.
type HalfCloser interface {
	CloseWrite() error
}

// Result counts what Splice moved.
type Result struct {
	AtoB, BtoA int64 // bytes copied a->b and b->a
	Err        error // the first error that was not a plain EOF or close
}

// Splice copies a->b and b->a until both directions end, then closes both
// connections. It owns a and b from the call on.
//
// When one direction reads EOF and both ends can half-close, the write side of
// the other end is closed and the opposite direction carries on (TCP
// semantics). Otherwise, and on any error, both connections are closed so the
// other direction ends too: nothing outlives a finished connection.
func Splice(a, b net.Conn) Result {
	p := newPair(a, b)
	run := func(dst, src net.Conn, n *int64) {
		var readErr, err error
		*n, readErr, err = copyBuf(dst, src)
		p.end(dst, readErr, err)
	}
	// A direction whose source can call back when it has bytes runs on a
	// goroutine only while they come: an idle connection then holds one
	// goroutine, this one, waiting on the other source.
	switch {
	case isNotifier(b):
		done := startNotified(a, b, &p.res.BtoA, p.end)
		run(b, a, &p.res.AtoB)
		<-done
	case isNotifier(a):
		done := startNotified(b, a, &p.res.AtoB, p.end)
		run(a, b, &p.res.BtoA)
		<-done
	default:
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			run(b, a, &p.res.AtoB)
		}()
		run(a, b, &p.res.BtoA) // one goroutine fewer per connection
		wg.Wait()
	}
	p.closeBoth()
	return p.res
}

// Async splices a and b as Splice does, but holds no goroutine while both
// are idle. It needs one of them to be a ReadNotifier and the other a TCP
// or Unix socket, on Linux: an epoll set waits for idle sockets, and the
// stream calls back.
type Async struct {
	p                *pair
	sock, stream     net.Conn
	toSock, toStream *int64 // the counts of each direction
	startPolled      func(here bool)
	left             atomic.Int32 // directions still copying
	done             func(Result)
}

// NewAsync prepares an Async splice of a and b; ok = false for any other
// pair than those Async takes (use Splice). From ok on, it owns a and b.
func NewAsync(a, b net.Conn) (s *Async, ok bool) {
	p := newPair(a, b)
	s = &Async{p: p}
	switch {
	case isNotifier(b):
		s.sock, s.stream, s.toStream, s.toSock = a, b, &p.res.AtoB, &p.res.BtoA
	case isNotifier(a):
		s.sock, s.stream, s.toStream, s.toSock = b, a, &p.res.BtoA, &p.res.AtoB
	default:
		return nil, false
	}
	rc, ok := pollable(s.sock)
	if !ok {
		return nil, false
	}
	s.startPolled, p.kick = newPolled(s.sock, s.stream, rc, s.toStream, s.end)
	return s, true
}

// Start starts copying; done is called once, with the result, when both
// directions have ended and both connections are closed.
func (s *Async) Start(done func(Result)) {
	s.done = done
	s.left.Store(2)
	s.startPolled(false)
	startNotified(s.sock, s.stream, s.toSock, s.end)
}

// Run is Start, but the copy from the socket runs on the calling goroutine
// for as long as it is busy: Run returns once that copy has ended or the
// socket, idle, waits in the epoll set. A goroutine that would end after
// Start saves starting another one, and the socket's first bytes the wake
// of one.
func (s *Async) Run(done func(Result)) {
	s.done = done
	s.left.Store(2)
	startNotified(s.sock, s.stream, s.toSock, s.end)
	s.startPolled(true)
}

// Close ends the splice: both connections are closed, and done follows
// (once Start was called). The socket must be closed only through Close:
// closed under the epoll set's wait, it would never wake it.
func (s *Async) Close() { s.p.closeBoth() }

func (s *Async) end(dst net.Conn, readErr, err error) {
	s.p.end(dst, readErr, err)
	if s.left.Add(-1) == 0 {
		s.p.closeBoth()
		s.done(s.p.res)
	}
}

// pair is what both directions of a splice share.
type pair struct {
	a, b      net.Conn
	halfClose bool // both ends can half-close
	once      sync.Once
	kick      func() // wakes a direction waiting for a socket that closeBoth closed
	errMu     sync.Mutex
	res       Result
}

func newPair(a, b net.Conn) *pair {
	_, aHC := a.(HalfCloser)
	_, bHC := b.(HalfCloser)
	return &pair{a: a, b: b, halfClose: aHC && bHC}
}

func (p *pair) closeBoth() {
	p.once.Do(func() {
		_ = p.a.Close()
		_ = p.b.Close()
		if p.kick != nil {
			p.kick()
		}
	})
}

// end ends one direction, dst being the connection it wrote to.
func (p *pair) end(dst net.Conn, readErr, err error) {
	if readErr != nil && !isClosed(readErr) {
		// src was cut, not closed: pass the abort on, so the peer
		// behind dst does not take a truncated stream for a whole one.
		abort(dst)
	}
	if err != nil && !isClosed(err) {
		p.errMu.Lock()
		if p.res.Err == nil {
			p.res.Err = err
		}
		p.errMu.Unlock()
	}
	if err == nil && p.halfClose {
		if cerr := dst.(HalfCloser).CloseWrite(); cerr == nil {
			return
		}
	}
	p.closeBoth()
}

// ReadNotifier is a connection that calls back when a Read would not wait
// (a native tunnel stream over package mux). NotifyReadable arranges for
// f to be called once then, and returns false, arranging nothing, if a
// Read would not wait now. f must not block.
type ReadNotifier interface {
	NotifyReadable(f func()) bool
}

// TryWriter is a connection that takes writes that must not wait (a
// native tunnel stream over package mux): TryWrite writes what of p it
// can now, maybe nothing, and fails only as Write would. A socket copied
// to one is read in bursts that save a system call per message (see
// polled).
type TryWriter interface {
	TryWrite(p []byte) (int, error)
}

func isNotifier(c net.Conn) bool {
	_, ok := c.(ReadNotifier)
	return ok
}

// NowReader is a ReadNotifier that hands over what it holds without
// waiting and without writing anywhere (package mux's stream): ReadNow
// returns 0 and no error when it holds nothing. Copied to a socket, its
// bytes are then written by the goroutine that calls back, when the
// socket takes them at once (see notified.deliver).
type NowReader interface {
	ReadNow(p []byte) (int, error)
}

// notified copies src, a ReadNotifier, to dst on a goroutine that runs
// only while src has something to read: between bursts it ends, holding
// no buffer, and src's callback starts the next one.
type notified struct {
	dst     net.Conn
	src     net.Conn
	rn      ReadNotifier
	n       *int64
	b       buffers
	bulk    bool // the last read filled its buffer: read the next into a large one
	resume  func()
	end     func(dst net.Conn, readErr, err error)
	done    chan struct{}
	now     NowReader       // src, if it can hand bytes over in the callback
	raw     syscall.RawConn // dst's socket, written without waiting in the callback
	pending []byte          // delivered but not taken by the socket: loop writes it first
	nw      int             // what writeNow wrote
	writeFD func(fd uintptr) bool
}

// deliverRounds bounds how many times a callback delivers before it
// leaves the rest to a goroutine: it runs on the session's receive
// goroutine, which other streams wait for.
const deliverRounds = 4

// startNotified starts copying src to dst; done is closed once the copy
// ended (and end was called).
func startNotified(dst, src net.Conn, n *int64, end func(dst net.Conn, readErr, err error)) (done <-chan struct{}) {
	c := &notified{dst: dst, src: src, rn: src.(ReadNotifier), n: n, end: end, done: make(chan struct{})}
	c.resume = func() { go c.loop() }
	if now, ok := src.(NowReader); ok {
		if rc, ok := pollable(dst); ok {
			c.now, c.raw = now, rc
			c.writeFD = c.writeRaw
			c.resume = func() {
				if !c.deliver() {
					go c.loop()
				}
			}
		}
	}
	// With nothing to read yet (a new connection's usual state), no
	// goroutine until there is. Once asked to call back, c is not touched
	// here: the callback may run at once.
	if !c.rn.NotifyReadable(c.resume) {
		go c.loop()
	}
	return c.done
}

// deliver runs in src's callback: it moves what src holds to the socket
// while the socket takes it without waiting, and asks to be called
// again. It reports false, having touched nothing the copy's goroutine
// would not expect, when that goroutine must carry on: src is at its end
// or failed (Read reports how), the socket would have waited (pending
// holds what it did not take), or the callback delivered enough rounds.
// Once it asked to be called again it touches nothing of c: another
// goroutine may run the copy from then on.
func (c *notified) deliver() bool {
	for range deliverRounds {
		if c.bulk {
			return false // bulk goes by the goroutine's large buffers
		}
		buf := c.b.get(false)
		n, _ := c.now.ReadNow(buf)
		if n == 0 {
			c.b.release()
			return false // the end, an error or a deadline: Read says which
		}
		if w := c.writeNow(buf[:n]); w < n {
			c.pending = buf[w:n] // the buffer stays held until loop wrote it
			return false
		}
		c.b.release()
		if c.rn.NotifyReadable(c.resume) {
			return true
		}
	}
	return false
}

// writeNow writes p to the socket without waiting and counts what it
// wrote; an error writes nothing (loop's Write then meets it again).
func (c *notified) writeNow(p []byte) int {
	c.pending, c.nw = p, 0
	_ = c.raw.Write(c.writeFD) // closed: nothing written
	c.pending = nil
	*c.n += int64(c.nw)
	return c.nw
}

// writeRaw is writeNow's callback: one write, never a wait.
func (c *notified) writeRaw(fd uintptr) bool {
	for {
		n, err := syscall.Write(int(fd), c.pending)
		if err == syscall.EINTR {
			continue
		}
		if n > 0 {
			c.nw = n
		}
		return true
	}
}

// loop copies what src has. Once src has nothing to read, it gives its
// buffer back, asks to be called again and ends: from then on another
// goroutine may run the copy, so nothing of c is touched after that.
func (c *notified) loop() {
	if c.pending != nil { // what deliver's socket did not take
		werr := writeCounted(c.dst, c.pending, c.n)
		c.pending = nil
		c.b.release()
		if werr != nil {
			c.finish(nil, werr)
			return
		}
	}
	for {
		if c.rn.NotifyReadable(c.resume) {
			return // a call that came early (a deadline moved later)
		}
		buf := c.b.get(c.bulk)
		nr, rerr := c.src.Read(buf)
		if nr > 0 {
			if werr := writeCounted(c.dst, buf[:nr], c.n); werr != nil {
				c.finish(nil, werr)
				return
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				c.finish(nil, nil)
			} else {
				c.finish(rerr, rerr)
			}
			return
		}
		c.bulk = nr == len(buf) || (c.bulk && nr >= len(buf)/8)
		c.b.release()
	}
}

func (c *notified) finish(readErr, err error) {
	c.b.release()
	c.end(c.dst, readErr, err)
	close(c.done)
}

// Copy is one direction of a splice, for a dst that is not a connection (the
// gRPC frontend's DATA packets): it copies src to dst until EOF (then err is
// nil) or an error, with the pooled buffers Splice uses, none held while src
// is idle. readErr is the error that ended reading src, if reading ended it.
// Copy closes neither.
func Copy(dst io.Writer, src io.Reader) (n int64, readErr, err error) { return copyBuf(dst, src) }

// copyBuf copies src to dst until EOF (then it returns nil), with pooled
// buffers sized to the traffic. It also returns the error that ended reading
// src, if reading ended it.
func copyBuf(dst io.Writer, src io.Reader) (n int64, readErr, err error) {
	var b buffers
	defer b.release()
	s := newSource(src, &b)
	for {
		nr, rerr := s.read()
		if nr > 0 {
			if werr := writeCounted(dst, b.buf()[:nr], &n); werr != nil {
				return n, nil, werr
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return n, nil, nil
			}
			return n, rerr, rerr
		}
		switch size := len(b.buf()); {
		case nr == size && !b.large: // bulk: grow
			b.grow()
		case nr < size/8 && b.large: // light again: shrink
			b.release()
		case nr < size && s.wait != nil:
			// Not bulk: hold no buffer while waiting for the next bytes.
			b.release()
		}
	}
}

// writeCounted writes p to dst, adds what it wrote to *n, and makes a
// short write an error.
func writeCounted(dst io.Writer, p []byte, n *int64) error {
	nw, err := dst.Write(p)
	*n += int64(nw)
	if err == nil && nw != len(p) {
		err = io.ErrShortWrite
	}
	return err
}

// buffers is the one buffer a direction holds, from the small or the large
// pool, or none while the connection is idle.
type buffers struct {
	p     *[]byte
	large bool
}

// held counts the buffers copies hold now.
var held atomic.Int64

// HeldBuffers is how many copy buffers are in use: idle connections hold
// none.
func HeldBuffers() int64 { return held.Load() }

func (b *buffers) buf() []byte {
	if b.p == nil {
		b.p, b.large = smallPool.Get().(*[]byte), false
		held.Add(1)
	}
	return *b.p
}

// get returns the buffer held, taking a large or small one if none is.
func (b *buffers) get(large bool) []byte {
	if b.p == nil && large {
		b.p, b.large = largePool.Get().(*[]byte), true
		held.Add(1)
	}
	return b.buf()
}

func (b *buffers) grow() {
	b.release()
	b.p, b.large = largePool.Get().(*[]byte), true
	held.Add(1)
}

func (b *buffers) release() {
	switch {
	case b.p == nil:
		return
	case b.large:
		largePool.Put(b.p)
	default:
		smallPool.Put(b.p)
	}
	b.p = nil
	held.Add(-1)
}

// ReadWaiter is a connection that can wait for bytes to read without
// taking them (a native tunnel stream). Its errors come again from Read.
type ReadWaiter interface {
	WaitRead() error
}

// source reads a connection so that an idle one holds no buffer: a socket
// is read with its raw file descriptor, giving the buffer back while it
// waits for the poller; a ReadWaiter waits before a buffer is taken. Other
// connections (TLS) are read plainly.
type source struct {
	r    io.Reader
	raw  syscall.RawConn
	wait ReadWaiter

	// A raw read's callback, made once (not a closure per read), and what
	// it reports.
	readFD func(fd uintptr) bool
	b      *buffers
	n      int
	err    error
}

func newSource(r io.Reader, b *buffers) *source {
	s := &source{r: r, b: b}
	switch c := r.(type) {
	case *net.TCPConn, *net.UnixConn:
		if rc, err := c.(syscall.Conn).SyscallConn(); err == nil {
			s.raw, s.readFD = rc, s.readRaw
		}
	case ReadWaiter:
		s.wait = c
	}
	return s
}

// readRaw reads the descriptor into the buffer; when nothing is there it
// gives the buffer back and lets the poller wait.
func (s *source) readRaw(fd uintptr) bool {
	for {
		s.n, s.err = syscall.Read(int(fd), s.b.buf())
		switch s.err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			s.b.release() // idle: wait for the poller without a buffer
			return false
		}
		return true
	}
}

func (s *source) read() (int, error) {
	switch {
	case s.raw != nil:
		if err := s.raw.Read(s.readFD); err != nil {
			return 0, err // closed, or a deadline
		}
		switch {
		case s.err != nil:
			return 0, os.NewSyscallError("read", s.err)
		case s.n == 0:
			return 0, io.EOF
		}
		return s.n, nil
	case s.wait != nil && s.b.p == nil:
		_ = s.wait.WaitRead() // an error comes again from Read
	}
	return s.r.Read(s.b.buf())
}

// abort closes c abortively where the transport can: a TCP reset instead
// of an orderly FIN, a cut for a tunneled connection. Beneath TLS the reset
// goes out at once, with no close_notify ahead of it (that alert reads as
// a clean end); c's own Close later sends nothing more.
func abort(c net.Conn) {
	for range 4 { // bounded unwrapping
		switch x := c.(type) {
		case interface{ SetLinger(int) error }:
			_ = x.SetLinger(0)
			_ = c.Close()
			return
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return
		}
	}
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, io.EOF)
}
