package mux

import (
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

type streamState int

// A stream's states, as yamux's.
const (
	stateInit streamState = iota
	stateSYNSent
	stateSYNReceived
	stateEstablished
	stateLocalClose  // we sent FIN
	stateRemoteClose // the peer sent FIN
	stateClosed      // both sent FIN, or the session closed
	stateReset
)

// Stream is a bidirectional stream of a Session.
type Stream struct {
	s  *Session
	id uint32

	// sendMu: one Write at a time, so that the frames of two Writes do
	// not interleave.
	sendMu sync.Mutex

	mu         sync.Mutex
	state      streamState
	inflight   bool   // opened here, not yet acknowledged: holds a synCh slot
	sendWindow uint32 // bytes we may send
	recvWindow uint32 // bytes the peer may send
	rbuf       *buffer
	roff       int // unread bytes are rbuf.b[roff:]
	filling    int // bytes being read from the connection into rbuf, past len(rbuf.b)
	rdl, wdl   time.Time
	rtimer     *time.Timer
	wtimer     *time.Timer
	readCh     chan struct{} // notified on data, state change, read deadline
	readers    int           // goroutines waiting in Read: data wakes them only then
	onReadable func()        // NotifyReadable's callback, called once at the next of those
	sendCh     chan struct{} // notified on window update, state change, write deadline
}

func newStream(s *Session, id uint32, state streamState) *Stream {
	return &Stream{
		s:          s,
		id:         id,
		state:      state,
		sendWindow: initialStreamWindow,
		recvWindow: initialStreamWindow,
		readCh:     make(chan struct{}, 1),
		sendCh:     make(chan struct{}, 1),
	}
}

// StreamID returns the stream's id.
func (st *Stream) StreamID() uint32 { return st.id }

// Read reads what the peer sent. With no data it waits for data, the
// peer's FIN (then io.EOF), a reset (ErrConnectionReset), the end of the
// session (io.EOF, as yamux) or the read deadline (ErrTimeout). Read of an
// empty p waits likewise and copies nothing. Having consumed data it sends
// a window update by yamux's rule: once the peer's credit fell by half the
// maximum window.
func (st *Stream) Read(p []byte) (int, error) {
	st.mu.Lock()
	for {
		if st.state == stateReset {
			st.release()
			st.leaveRead()
			return 0, ErrConnectionReset
		}
		if st.buffered() > 0 {
			n := copy(p, st.rbuf.b[st.roff:])
			st.roff += n
			if st.buffered() == 0 {
				st.release()
			}
			// A failure to send the update fails the session: the data
			// read is good, and the next call reports the end.
			flush, _ := st.updateWindow()
			more := st.buffered() > 0
			st.mu.Unlock()
			if more {
				st.readable() // for another reader
			}
			if flush {
				_ = st.s.flush()
			}
			return n, nil
		}
		if st.state == stateRemoteClose || st.state == stateClosed || st.s.IsClosed() {
			st.leaveRead()
			return 0, io.EOF
		}
		if !st.rdl.IsZero() && !time.Now().Before(st.rdl) {
			st.leaveRead()
			return 0, ErrTimeout
		}
		st.readers++
		st.mu.Unlock()
		select {
		case <-st.readCh:
		case <-st.s.shutdownCh:
		}
		st.mu.Lock()
		st.readers--
	}
}

// leaveRead unlocks st.mu for a Read that ends with no data (an end, a
// reset, the deadline), passing the wake-up on: one wake-up wakes one of
// the goroutines waiting in Read, and what ends this one ends them all.
func (st *Stream) leaveRead() {
	others := st.readers > 0
	st.mu.Unlock()
	if others {
		notify(st.readCh)
	}
}

// ReadNow reads buffered bytes without waiting, and without writing to
// the session's connection itself: a window update it owes goes out by a
// goroutine of its own if nobody is writing. It returns 0 and no error
// when nothing is buffered (Read would wait, or return EOF or an error).
// A NotifyReadable callback, which must not block, may call it.
func (st *Stream) ReadNow(p []byte) (int, error) {
	st.mu.Lock()
	if st.state == stateReset || st.buffered() == 0 {
		st.mu.Unlock()
		return 0, nil
	}
	n := copy(p, st.rbuf.b[st.roff:])
	st.roff += n
	if st.buffered() == 0 {
		st.release()
	}
	flush, _ := st.updateWindow() // a failure fails the session, as in Read
	st.mu.Unlock()
	if flush {
		_ = st.s.writeOut(0) // hands the write to a goroutine
	}
	return n, nil
}

// Peek copies bytes the stream holds into p without taking them; it
// returns how many. It does not wait.
func (st *Stream) Peek(p []byte) int {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.state == stateReset || st.buffered() == 0 {
		return 0
	}
	return copy(p, st.rbuf.b[st.roff:])
}

// NotifyReadable arranges for f to be called once, as soon as Read would
// not wait: data arrived, the peer's FIN or reset, the session's end, or
// the read deadline. It returns false, and arranges nothing, if Read would
// not wait now. It replaces the previous f not yet called.
//
// With it, a stream that is idle needs no goroutine waiting in Read. f is
// called by the goroutine that made the stream readable (the session's
// receive goroutine, a timer, a closer), outside the stream's locks: it
// must not block (start a goroutine to read).
func (st *Stream) NotifyReadable(f func()) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.readableLocked() {
		st.onReadable = nil
		return false
	}
	st.onReadable = f
	return true
}

// readableLocked reports whether Read would not wait; st.mu is held.
func (st *Stream) readableLocked() bool {
	return st.state == stateReset || st.buffered() > 0 || st.state == stateRemoteClose || st.state == stateClosed ||
		st.s.IsClosed() || (!st.rdl.IsZero() && !time.Now().Before(st.rdl))
}

// readable wakes the stream's reader: the goroutine waiting in Read and
// the NotifyReadable callback.
func (st *Stream) readable() {
	notify(st.readCh)
	st.mu.Lock()
	f := st.takeReadable()
	st.mu.Unlock()
	if f != nil {
		f()
	}
}

// takeReadable takes the NotifyReadable callback if Read would not wait
// now; st.mu is held.
func (st *Stream) takeReadable() func() {
	f := st.onReadable
	if f == nil || !st.readableLocked() {
		return nil
	}
	st.onReadable = nil
	return f
}

// buffered is the number of unread bytes; st.mu is held.
func (st *Stream) buffered() int {
	if st.rbuf == nil {
		return 0
	}
	return len(st.rbuf.b) - st.roff
}

// release gives the receive buffer back once it holds nothing unread (and
// the receive goroutine is not filling it); st.mu is held.
func (st *Stream) release() {
	if st.rbuf != nil && st.filling == 0 {
		putBuffer(st.rbuf)
		st.rbuf, st.roff = nil, 0
	}
}

// updateWindow pushes a window update if yamux would send one: when the
// credit to restore reaches half the maximum window, or flags (SYN, ACK)
// are due. st.mu is held; see Session.push for flush.
func (st *Stream) updateWindow() (flush bool, err error) {
	max := st.s.cfg.MaxStreamWindowSize
	held := uint32(st.buffered() + st.filling)
	delta := (max - held) - st.recvWindow
	flags := st.sendFlags()
	if delta < max/2 && flags == 0 {
		return false, nil
	}
	st.recvWindow += delta
	return st.s.push(typeWindowUpdate, flags, st.id, delta, nil, modeControl)
}

// sendFlags returns the SYN or ACK the next frame carries, and moves the
// state on; st.mu is held.
func (st *Stream) sendFlags() uint16 {
	switch st.state {
	case stateInit:
		st.state = stateSYNSent
		return flagSYN
	case stateSYNReceived:
		st.state = stateEstablished
		return flagACK
	}
	return 0
}

// Write writes p, in frames of at most the send window; it waits while
// the window is empty. It returns once the frames are in the session's
// buffer (or written, if this goroutine became the writer).
func (st *Stream) Write(p []byte) (int, error) {
	st.sendMu.Lock()
	defer st.sendMu.Unlock()
	return st.write(p, true)
}

// TryWrite writes what of p it can without waiting: for window, for room
// in the session's buffer, or for another Write of this stream. It
// returns how much it wrote (maybe 0, with a nil error) or why it could
// not. Like Write, it may write the session's pending frames itself.
func (st *Stream) TryWrite(p []byte) (int, error) {
	if !st.sendMu.TryLock() {
		return 0, nil
	}
	defer st.sendMu.Unlock()
	return st.write(p, false)
}

// write writes p in frames; sendMu is held. Without wait it stops, with
// no error, where it would have to wait.
func (st *Stream) write(p []byte, wait bool) (int, error) {
	total := 0
	for total < len(p) {
		n, flush, err := st.writeFrame(p[total:], wait)
		total += n
		if err == nil && flush {
			err = st.s.flush()
		}
		if err != nil {
			return total, err
		}
		if n == 0 {
			break // !wait, and it would have to
		}
	}
	return total, nil
}

// writeFrame pushes one data frame of p's first bytes, waiting for window
// or for room in the session's buffer (without wait it returns n = 0
// instead).
func (st *Stream) writeFrame(p []byte, wait bool) (n int, flush bool, err error) {
	st.mu.Lock()
	for {
		switch {
		case st.s.IsClosed():
			err = ErrSessionShutdown
		case st.state == stateLocalClose || st.state == stateClosed:
			err = ErrStreamClosed
		case st.state == stateReset:
			err = ErrConnectionReset
		case !st.wdl.IsZero() && !time.Now().Before(st.wdl):
			err = ErrTimeout
		}
		if err != nil {
			st.mu.Unlock()
			return 0, false, err
		}
		if st.sendWindow == 0 {
			st.mu.Unlock()
			if !wait {
				return 0, false, nil
			}
			select {
			case <-st.sendCh:
			case <-st.s.shutdownCh:
			}
			st.mu.Lock()
			continue
		}
		n = min(len(p), int(st.sendWindow), maxFrameBody)
		flush, err = st.s.push(typeData, 0, st.id, uint32(n), p[:n], modeData)
		if err == errFull {
			st.mu.Unlock()
			if !wait {
				return 0, false, nil
			}
			if err = st.s.waitRoom(); err != nil {
				return 0, false, err
			}
			st.mu.Lock()
			continue
		}
		if err == nil {
			st.sendWindow -= uint32(n)
		} else {
			n = 0
		}
		st.mu.Unlock()
		return n, flush, err
	}
}

// Close half-closes the stream: it sends FIN (the peer reads EOF after
// the data); reads go on until the peer's FIN. The stream is forgotten
// once both sides sent FIN. Like yamux's, it returns nil even if the FIN
// could not be sent (the session is then closed).
func (st *Stream) Close() error {
	st.mu.Lock()
	forget := false
	switch st.state {
	case stateSYNSent, stateSYNReceived, stateEstablished:
		st.state = stateLocalClose
	case stateRemoteClose:
		st.state = stateClosed
		forget = true
		st.releaseSYN()
	default:
		st.mu.Unlock()
		return nil
	}
	flush, err := st.s.push(typeWindowUpdate, flagFIN, st.id, 0, nil, modeControl)
	st.mu.Unlock()
	st.wake()
	if forget {
		st.s.forget(st)
	}
	if err == nil && flush {
		_ = st.s.flush()
	}
	return nil
}

// forceClose ends the stream when the session closes.
func (st *Stream) forceClose() {
	st.mu.Lock()
	st.state = stateClosed
	st.mu.Unlock()
	st.wake()
}

// wake wakes the stream's reader and writer to look at its state.
func (st *Stream) wake() {
	st.readable()
	notify(st.sendCh)
}

// releaseSYN frees the stream's slot among the unacknowledged opens;
// st.mu is held.
func (st *Stream) releaseSYN() {
	if st.inflight {
		st.inflight = false
		<-st.s.synCh
	}
}

// processFlags applies the flags of a frame received; st.mu is held. It
// returns forget = true when the stream is done (both FINs, or RST).
func (st *Stream) processFlags(flags uint16) (forget bool, err error) {
	if flags&flagACK != 0 {
		if st.state == stateSYNSent {
			st.state = stateEstablished
		}
		st.releaseSYN()
	}
	if flags&flagFIN != 0 {
		switch st.state {
		case stateSYNSent, stateSYNReceived, stateEstablished:
			st.state = stateRemoteClose
		case stateLocalClose:
			st.state = stateClosed
			forget = true
		default:
			return false, fmt.Errorf("%w: FIN on stream %d in state %d", ErrUnexpectedFlag, st.id, st.state)
		}
	}
	if flags&flagRST != 0 {
		st.state = stateReset
		forget = true
	}
	if forget {
		st.releaseSYN()
	}
	return forget, nil
}

// windowUpdate handles a window update frame from the peer.
func (st *Stream) windowUpdate(flags uint16, delta uint32) error {
	st.mu.Lock()
	forget, err := st.processFlags(flags)
	st.sendWindow += delta
	st.mu.Unlock()
	notify(st.sendCh)
	if flags&(flagFIN|flagRST) != 0 {
		st.readable()
	}
	if forget {
		st.s.forget(st)
	}
	return err
}

// receive reads a data frame's body from the connection into the
// stream's buffer. The bytes are read without st.mu (a slow peer must not
// block the stream's reader, its deadline or Close): the region past the
// buffered bytes is reserved, and readers leave it alone while filling is
// set. FIN and RST are applied after the data, which comes first.
func (st *Stream) receive(flags uint16, length uint32) error {
	st.mu.Lock()
	if _, err := st.processFlags(flags &^ (flagFIN | flagRST)); err != nil {
		st.mu.Unlock()
		return err
	}
	if length > 0 {
		if length > st.recvWindow {
			st.mu.Unlock()
			return fmt.Errorf("%w: stream %d got %d bytes with a window of %d", ErrRecvWindowExceeded, st.id, length, st.recvWindow)
		}
		st.recvWindow -= length
		region := st.reserve(int(length))
		st.filling = int(length)
		st.mu.Unlock()
		_, err := io.ReadFull(st.s.conn, region)
		st.mu.Lock()
		st.filling = 0
		if err != nil {
			st.mu.Unlock()
			return err
		}
		st.rbuf.b = st.rbuf.b[:len(st.rbuf.b)+int(length)]
	}
	forget, err := st.processFlags(flags & (flagFIN | flagRST))
	f := st.takeReadable()
	// A reader that comes later sees the data before it waits; a stream
	// read from its callback has none waiting.
	wake := st.readers > 0
	st.mu.Unlock()
	if wake {
		notify(st.readCh)
	}
	if f != nil {
		f()
	}
	if flags&(flagFIN|flagRST) != 0 {
		notify(st.sendCh)
	}
	if forget {
		st.s.forget(st)
	}
	return err
}

// reserve returns the n bytes past the buffered ones, growing or
// compacting the buffer; st.mu is held. It compacts only when the bytes
// to move are fewer than those already read, so a byte is moved at most
// once on average.
func (st *Stream) reserve(n int) []byte {
	if st.rbuf == nil {
		st.rbuf, st.roff = getBuffer(n), 0
	}
	b := st.rbuf.b
	if cap(b)-len(b) < n {
		unread := len(b) - st.roff
		if cap(b)-unread >= n && unread <= st.roff {
			st.rbuf.b = b[:copy(b, b[st.roff:])]
		} else {
			nb := getBuffer(unread + n)
			nb.b = append(nb.b, b[st.roff:]...)
			putBuffer(st.rbuf)
			st.rbuf = nb
		}
		st.roff = 0
		b = st.rbuf.b
	}
	return b[len(b) : len(b)+n]
}

// SetDeadline sets both deadlines.
func (st *Stream) SetDeadline(t time.Time) error {
	_ = st.SetReadDeadline(t)
	return st.SetWriteDeadline(t)
}

// SetReadDeadline bounds blocked and future Reads that must wait (as in
// yamux, buffered data is returned whatever the deadline). The zero time
// removes the bound.
func (st *Stream) SetReadDeadline(t time.Time) error {
	st.mu.Lock()
	st.rdl = t
	if st.rtimer != nil {
		st.rtimer.Stop()
	}
	// A deadline already past needs no timer: readable below wakes the
	// reader (a close wakes readers this way, and a timer's goroutine per
	// dial costs).
	if d := time.Until(t); !t.IsZero() && d > 0 {
		if st.rtimer == nil {
			st.rtimer = time.AfterFunc(d, st.readable)
		} else {
			st.rtimer.Reset(d)
		}
	}
	st.mu.Unlock()
	st.readable()
	return nil
}

// SetWriteDeadline bounds blocked and future Writes. Unlike yamux, which
// looks at the deadline only while waiting for window, a Write after the
// deadline fails at once (net.Conn's rule).
func (st *Stream) SetWriteDeadline(t time.Time) error {
	st.mu.Lock()
	st.wdl = t
	st.wtimer = deadlineTimer(st.wtimer, t, st.sendCh)
	st.mu.Unlock()
	notify(st.sendCh)
	return nil
}

// deadlineTimer (re)arms tm to notify ch at t: the stream's waits then
// need no timer of their own.
func deadlineTimer(tm *time.Timer, t time.Time, ch chan struct{}) *time.Timer {
	if tm != nil {
		tm.Stop()
	}
	if t.IsZero() {
		return tm
	}
	d := time.Until(t)
	if d <= 0 {
		notify(ch) // already past: no timer (and no goroutine) for it
		return tm
	}
	if tm == nil {
		return time.AfterFunc(d, func() { notify(ch) })
	}
	tm.Reset(d)
	return tm
}

// LocalAddr and RemoteAddr are the connection's if it has them (else
// placeholders), as with yamux: a Stream is a net.Conn.
func (st *Stream) LocalAddr() net.Addr { return st.addr(true) }

// RemoteAddr: see LocalAddr.
func (st *Stream) RemoteAddr() net.Addr { return st.addr(false) }

func (st *Stream) addr(local bool) net.Addr {
	if c, ok := st.s.conn.(interface {
		LocalAddr() net.Addr
		RemoteAddr() net.Addr
	}); ok {
		if local {
			return c.LocalAddr()
		}
		return c.RemoteAddr()
	}
	return addr{}
}

type addr struct{}

func (addr) Network() string { return "mux" }
func (addr) String() string  { return "mux" }
