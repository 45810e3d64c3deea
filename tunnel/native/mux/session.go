// Package mux multiplexes streams over one connection, speaking the wire
// protocol of github.com/hashicorp/yamux v0.1.2 (either end may be yamux),
// with the subset of yamux's API that the native link uses and the same
// semantics, but fewer goroutine hand-offs.
//
// yamux hands every frame to a send goroutine and waits for it: two
// context switches per frame, the main cost of small messages over many
// streams. Here the goroutine that sends a frame appends it to the
// session's pending buffer and, if nobody is writing to the connection,
// writes the buffer itself, in one Write, looping while others appended
// meanwhile (group commit); the others return as soon as their frame is
// in the buffer, as a write to a socket does. The receive goroutine reads
// frames straight into the streams' buffers and wakes their readers;
// readers send the window updates. An idle session holds its receive
// goroutine and no buffer; an idle stream holds no buffer.
//
// Where it differs from yamux, on purpose:
//   - Write returns once its frames are in the session's buffer (yamux
//     waits for its send goroutine to write them); a failed connection
//     write ends the session, and later calls report it.
//   - Once the session is closed, writes return ErrSessionShutdown (yamux:
//     mostly ErrStreamClosed, as it marks every stream closed).
//   - A Write after its deadline fails at once (yamux looks at the
//     deadline only while waiting for window).
//   - Close sends GoAway and writes what is pending, for up to a second
//     (yamux sends no GoAway and drops what is queued); an unanswered Ping
//     closes the session (yamux's Ping only returns ErrTimeout).
//   - Data frames carry at most 64 KiB; the data of a frame with FIN is
//     delivered before the FIN (yamux applies the FIN first).
//   - Every protocol violation is answered with GoAway(protocol error)
//     and wraps ErrProtocol.
//   - The connection is read without a bufio.Reader: a *tls.Conn buffers
//     a record already, and an idle session then holds no read buffer.
package mux

import (
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"isthmus.dev/tunnel/idle"
)

const (
	// maxPending bounds the frames waiting to be written: a data frame
	// that finds this much waits for the writer to take it.
	maxPending = 1 << 20
	// maxUrgent bounds the frames the receive goroutine appends past
	// maxPending (it never waits); reaching it means the peer keeps
	// sending without reading, and ends the session.
	maxUrgent = 4 << 20
	// maxFrameBody bounds a data frame's body, so that a large Write
	// enters the bounded buffer in pieces.
	maxFrameBody = 64 << 10
	// closeFlushTimeout bounds how long Close waits for the pending frames
	// and its GoAway to be written (a peer that stopped reading).
	closeFlushTimeout = time.Second
)

// pushMode says what a frame may do when the pending buffer is full.
type pushMode int

const (
	modeData    pushMode = iota // refused with errFull beyond maxPending: the caller waits
	modeControl                 // 12-byte frames of a user's call: never wait (few, and bounded by the streams)
	modeUrgent                  // frames of the receive goroutine: never wait, up to maxUrgent
)

var errFull = errors.New("mux: pending buffer full")

// Session multiplexes streams over a connection.
type Session struct {
	cfg  Config
	conn io.ReadWriteCloser

	// Writing: see push and flush.
	wmu        sync.Mutex
	room       sync.Cond      // signalled when the writer took a batch or stopped
	pending    *buffer        // frames not yet taken by the writer; nil when none
	writing    bool           // a goroutine writes to conn and will take pending
	shut       bool           // closing: nothing more is appended
	werr       error          // the write error that ends the session
	writeStart time.Time      // when the conn.Write under way began; zero if none
	watchdog   *time.Timer    // fails a write blocked for ConnectionWriteTimeout (checkWrite)
	wdArmed    bool           // the watchdog is set to fire
	flushers   sync.WaitGroup // writer goroutines (sendUrgent, writeOut): Close waits for them

	mu       sync.Mutex
	streams  map[uint32]*Stream
	nextID   uint32
	acceptQ  []*Stream     // opened by the peer, not yet taken by AcceptStream
	acceptCh chan struct{} // notified when acceptQ gains a stream
	synCh    chan struct{} // semaphore: our streams not yet acknowledged

	pingMu sync.Mutex
	pings  map[uint32]chan struct{}
	pingID uint32

	remoteGoAway atomic.Bool
	localGoAway  atomic.Bool

	closeMu     sync.Mutex // held through Close
	shutdownErr error      // set before shutdownCh is closed
	shutdownCh  chan struct{}
	recvDone    chan struct{}

	idle   IdleConn // conn, when its reader may leave while it is quiet; else nil
	resume func()   // starts the receive goroutine again (idle)
}

// An IdleConn is a connection whose reader may leave, rather than wait,
// while the connection is quiet (package idle): a session on one holds no
// goroutine between frames once the connection has been idle a while.
//   - EnableIdle reports whether it can; the session calls it once, before
//     reading.
//   - Between ReadIdle(true) and ReadIdle(false) (the session reads a
//     frame's first bytes), a Read may return idle.ErrIdle instead of
//     waiting, having consumed nothing.
//   - WaitReadable then arranges for resume to be called once a Read would
//     not wait, or the connection is closed; parked false with no error
//     means it cannot, and the reader reads on.
type IdleConn interface {
	EnableIdle() bool
	ReadIdle(on bool)
	WaitReadable(resume func()) (parked bool, err error)
}

// errParked ends a receive goroutine whose connection waits to be readable
// (IdleConn): another starts when it is.
var errParked = errors.New("mux: the receive goroutine left an idle connection")

// Client starts a session on conn as the client end (odd stream ids).
func Client(conn io.ReadWriteCloser, cfg *Config) (*Session, error) {
	return newSession(conn, cfg, 1)
}

// Server starts a session on conn as the server end (even stream ids).
func Server(conn io.ReadWriteCloser, cfg *Config) (*Session, error) {
	return newSession(conn, cfg, 2)
}

func newSession(conn io.ReadWriteCloser, cfg *Config, firstID uint32) (*Session, error) {
	if err := cfg.verify(); err != nil {
		return nil, err
	}
	s := &Session{
		cfg:        *cfg,
		conn:       conn,
		streams:    make(map[uint32]*Stream),
		nextID:     firstID,
		acceptCh:   make(chan struct{}, 1),
		synCh:      make(chan struct{}, cfg.AcceptBacklog),
		shutdownCh: make(chan struct{}),
		recvDone:   make(chan struct{}),
	}
	s.room.L = &s.wmu
	if ic, ok := conn.(IdleConn); ok && ic.EnableIdle() {
		s.idle = ic
		s.resume = func() { go s.recv() }
	}
	go s.recv()
	return s, nil
}

// IsClosed reports whether the session is closed.
func (s *Session) IsClosed() bool {
	select {
	case <-s.shutdownCh:
		return true
	default:
		return false
	}
}

// CloseChan is closed when the session closes.
func (s *Session) CloseChan() <-chan struct{} { return s.shutdownCh }

// NumStreams returns the number of streams not yet forgotten: open, or
// closed by one side only.
func (s *Session) NumStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// OpenStream opens a stream: it sends the SYN (a window update granting
// the rest of the receive window, as yamux) and returns without waiting
// for the peer's ACK. Like yamux it waits while AcceptBacklog streams are
// unacknowledged.
func (s *Session) OpenStream() (*Stream, error) { return s.openStream(nil, nil) }

// OpenStreamWith opens a stream as OpenStream does and writes first on
// it: the SYN and first's frames leave in one write where they fit the
// session's buffer (a dial's request then costs one system call, and the
// peer reads both at once). opened, if not nil, is called with the new
// stream before first is written (to register it before any answer can
// come); on an error after that, the caller closes the stream.
func (s *Session) OpenStreamWith(first []byte, opened func(*Stream)) (*Stream, error) {
	return s.openStream(first, opened)
}

func (s *Session) openStream(first []byte, opened func(*Stream)) (*Stream, error) {
	if s.IsClosed() {
		return nil, ErrSessionShutdown
	}
	if s.remoteGoAway.Load() {
		return nil, ErrRemoteGoAway
	}
	select {
	case s.synCh <- struct{}{}:
	case <-s.shutdownCh:
		return nil, ErrSessionShutdown
	}
	s.mu.Lock()
	id := s.nextID
	if id >= math.MaxUint32-1 {
		s.mu.Unlock()
		<-s.synCh
		return nil, ErrStreamsExhausted
	}
	s.nextID += 2
	st := newStream(s, id, stateInit)
	st.inflight = true
	s.streams[id] = st
	// The SYN is pushed under s.mu so that SYNs go out in id order.
	st.sendMu.Lock()
	defer st.sendMu.Unlock()
	st.mu.Lock()
	flush, err := st.updateWindow()
	st.mu.Unlock()
	s.mu.Unlock()
	if opened != nil {
		opened(st)
	}
	n := 0
	if err == nil && len(first) > 0 {
		// Pushed without waiting: this goroutine may be the writer (flush),
		// and a wait for room would then wait for itself.
		var more bool
		n, more, err = st.writeFrame(first, false)
		flush = flush || more
	}
	if err == nil && flush {
		err = s.flush()
	}
	if err == nil && n < len(first) {
		_, err = st.write(first[n:], true)
	}
	if err != nil {
		return nil, err // the session is closing: it ends the stream
	}
	return st, nil
}

// AcceptStream waits for a stream opened by the peer and acknowledges it
// (a window update with ACK, as yamux). Once the session is closed it
// returns the error that closed it (ErrSessionShutdown after Close).
func (s *Session) AcceptStream() (*Stream, error) {
	for {
		if s.IsClosed() {
			return nil, s.shutdownErr
		}
		s.mu.Lock()
		if len(s.acceptQ) > 0 {
			st := s.acceptQ[0]
			s.acceptQ[0] = nil
			s.acceptQ = s.acceptQ[1:]
			if len(s.acceptQ) == 0 {
				s.acceptQ = nil // an idle session holds no queue
			} else {
				notify(s.acceptCh) // for the next AcceptStream
			}
			s.mu.Unlock()
			st.mu.Lock()
			flush, err := st.updateWindow()
			st.mu.Unlock()
			if err == nil && flush {
				err = s.flush()
			}
			if err != nil {
				return nil, err
			}
			return st, nil
		}
		s.mu.Unlock()
		select {
		case <-s.acceptCh:
		case <-s.shutdownCh:
		}
	}
}

// Ping sends a ping and waits for its answer, returning the round trip.
// Unanswered within ConnectionWriteTimeout, it closes the session and
// returns ErrTimeout.
func (s *Session) Ping() (time.Duration, error) {
	ch := make(chan struct{})
	s.pingMu.Lock()
	id := s.pingID
	s.pingID++
	if s.pings == nil {
		s.pings = make(map[uint32]chan struct{})
	}
	s.pings[id] = ch
	s.pingMu.Unlock()
	defer func() {
		s.pingMu.Lock()
		delete(s.pings, id)
		s.pingMu.Unlock()
	}()
	if err := s.sendControl(typePing, flagSYN, 0, id); err != nil {
		return 0, err
	}
	start := time.Now()
	t := time.NewTimer(s.cfg.ConnectionWriteTimeout)
	defer t.Stop()
	select {
	case <-ch:
		return time.Since(start), nil
	case <-t.C:
		s.closeWith(fmt.Errorf("%w: no answer to a ping within %v", ErrKeepAliveTimeout, s.cfg.ConnectionWriteTimeout), goAwayNormal, false)
		return 0, ErrTimeout
	case <-s.shutdownCh:
		return 0, ErrSessionShutdown
	}
}

// Close sends GoAway, writes what is pending (for up to a second), closes
// the connection and ends every stream: their reads return what was
// received, then io.EOF; their writes ErrSessionShutdown.
func (s *Session) Close() error {
	s.closeWith(ErrSessionShutdown, goAwayNormal, true)
	return nil
}

// closeWith closes the session for cause; with goAway it first sends a
// GoAway with code and writes the pending frames.
func (s *Session) closeWith(cause error, code uint32, goAway bool) {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.IsClosed() {
		return
	}
	s.shutdownErr = cause
	s.localGoAway.Store(true)
	s.wmu.Lock()
	goAway = goAway && s.werr == nil
	if goAway {
		s.appendLocked(typeGoAway, 0, 0, code, nil)
	}
	s.shut = true
	s.room.Broadcast()
	s.wmu.Unlock()
	close(s.shutdownCh)
	// Readers see the end now (those waiting in Read see shutdownCh);
	// the streams are closed once the pending frames are written.
	for _, st := range s.streamList() {
		st.readable()
	}
	if goAway {
		s.drain()
	}
	_ = s.conn.Close()
	<-s.recvDone
	s.flushers.Wait()
	s.wmu.Lock()
	if s.watchdog != nil {
		s.watchdog.Stop()
		s.wdArmed = false
	}
	if s.pending != nil && !s.writing {
		putBuffer(s.pending)
		s.pending = nil
	}
	s.wmu.Unlock()
	for _, st := range s.streamList() {
		st.forceClose()
	}
}

// streamList is the streams not yet forgotten.
func (s *Session) streamList() []*Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	streams := make([]*Stream, 0, len(s.streams))
	for _, st := range s.streams {
		streams = append(streams, st)
	}
	return streams
}

// drain writes what is pending, or waits for the writer to, within
// closeFlushTimeout (then the connection is closed under the writer).
func (s *Session) drain() {
	t := time.AfterFunc(min(closeFlushTimeout, s.cfg.ConnectionWriteTimeout), func() { _ = s.conn.Close() })
	defer t.Stop()
	s.wmu.Lock()
	if !s.writing {
		s.writing = true
		s.wmu.Unlock()
		_ = s.flush()
		return
	}
	for s.writing {
		s.room.Wait()
	}
	s.wmu.Unlock()
}

// forget drops a stream both sides closed, or reset.
func (s *Session) forget(st *Stream) {
	s.mu.Lock()
	if s.streams[st.id] == st {
		delete(s.streams, st.id)
	}
	s.mu.Unlock()
}

// appendLocked appends a frame to pending; s.wmu is held.
func (s *Session) appendLocked(typ uint8, flags uint16, id, length uint32, body []byte) {
	n := headerSize + len(body)
	if s.pending == nil {
		s.pending = getBuffer(n)
	} else {
		s.pending = grow(s.pending, n)
	}
	s.pending.b = appendFrame(s.pending.b, typ, flags, id, length, body)
}

// push appends a frame to the pending buffer (body is copied). It returns
// flush = true if no one was writing: the caller is now the writer and
// must call flush (outside its own locks). A full buffer refuses a
// modeData frame with errFull (see waitRoom).
func (s *Session) push(typ uint8, flags uint16, id, length uint32, body []byte, mode pushMode) (flush bool, err error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.shut || s.werr != nil {
		return false, ErrSessionShutdown
	}
	if s.pending != nil {
		switch n := len(s.pending.b); {
		case mode == modeData && n >= maxPending:
			return false, errFull
		case mode == modeUrgent && n >= maxUrgent:
			return false, errPeerNotReading
		}
	}
	s.appendLocked(typ, flags, id, length, body)
	if s.writing {
		return false, nil
	}
	s.writing = true
	return true, nil
}

// waitRoom waits until the pending buffer is below maxPending. It is
// bounded by the write in progress, itself bounded by the write timeout.
func (s *Session) waitRoom() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for s.pending != nil && len(s.pending.b) >= maxPending && !s.shut && s.werr == nil {
		s.room.Wait()
	}
	if s.shut || s.werr != nil {
		return ErrSessionShutdown
	}
	return nil
}

// flush is run by the writer (see push): it writes the pending frames, one
// conn.Write per batch, until none are left. A user's goroutine writes at
// most userBatches batches: if others keep appending, a goroutine takes
// over, so that under steady load one caller is not kept writing for
// everybody (its own stream would stall). A write error fails the session:
// the connection is closed, and the receive goroutine, whose read then
// fails, closes the session with the write error as cause.
func (s *Session) flush() error {
	// Group commit: goroutines that are ready to run (the poller often
	// wakes many at once) push their frames into this batch while this
	// one yields, instead of each writing its own (one system call and
	// one TLS record per batch). With nobody else ready, the yield costs
	// well under a microsecond.
	runtime.Gosched()
	return s.writeOut(userBatches)
}

const userBatches = 4

// writeOut is flush with a limit of batches (-1: none).
func (s *Session) writeOut(limit int) error {
	s.wmu.Lock()
	for n := 0; s.pending != nil && s.werr == nil; n++ {
		if n == limit && !s.shut { // Add before closeWith's Wait: it sets shut first
			s.flushers.Add(1)
			go s.flusher()
			s.wmu.Unlock()
			return nil
		}
		batch := s.pending
		s.pending = nil
		s.writeStart = time.Now()
		s.armWatchdog()
		s.wmu.Unlock()
		_, err := s.conn.Write(batch.b)
		putBuffer(batch)
		s.wmu.Lock()
		s.writeStart = time.Time{}
		if err != nil && s.werr == nil {
			s.werr = err
		}
		s.room.Broadcast()
	}
	err := s.werr
	if err != nil && s.pending != nil {
		putBuffer(s.pending)
		s.pending = nil
	}
	s.writing = false
	s.room.Broadcast()
	s.wmu.Unlock()
	if err != nil {
		_ = s.conn.Close()
		return fmt.Errorf("%w: %w", ErrSessionShutdown, err)
	}
	return nil
}

// flusher is a goroutine that writes until nothing is pending.
func (s *Session) flusher() {
	defer s.flushers.Done()
	_ = s.writeOut(-1)
}

// armWatchdog makes sure the write watchdog runs while writes are under
// way: a timer, not a goroutine, and armed once per timeout period of
// busy writing, not per write. s.wmu is held.
func (s *Session) armWatchdog() {
	if s.wdArmed {
		return
	}
	s.wdArmed = true
	if s.watchdog == nil {
		s.watchdog = time.AfterFunc(s.cfg.ConnectionWriteTimeout, s.checkWrite)
		return
	}
	s.watchdog.Reset(s.cfg.ConnectionWriteTimeout)
}

// checkWrite fails the session if the write under way started
// ConnectionWriteTimeout ago, and re-arms itself for the current one.
func (s *Session) checkWrite() {
	s.wmu.Lock()
	if s.writeStart.IsZero() {
		s.wdArmed = false
		s.wmu.Unlock()
		return
	}
	if left := s.cfg.ConnectionWriteTimeout - time.Since(s.writeStart); left > 0 {
		s.watchdog.Reset(left)
		s.wmu.Unlock()
		return
	}
	s.wdArmed = false
	if s.werr == nil {
		s.werr = ErrConnectionWriteTimeout
	}
	s.room.Broadcast()
	s.wmu.Unlock()
	_ = s.conn.Close() // unblocks the write; the receive goroutine ends the session
}

// sendControl sends a header-only frame from a user's goroutine, writing
// it itself if nobody is writing.
func (s *Session) sendControl(typ uint8, flags uint16, id, length uint32) error {
	flush, err := s.push(typ, flags, id, length, nil, modeControl)
	if err == nil && flush {
		err = s.flush()
	}
	return err
}

// sendUrgent sends a frame from the receive goroutine, which must never
// wait on the connection (with both ends blocked writing, neither would
// read): if nobody is writing, a short-lived goroutine writes it.
func (s *Session) sendUrgent(typ uint8, flags uint16, id, length uint32) error {
	flush, err := s.push(typ, flags, id, length, nil, modeUrgent)
	switch {
	case errors.Is(err, ErrSessionShutdown):
		return nil // closing: the session ends anyway
	case err != nil:
		return err
	case flush:
		s.flushers.Add(1) // before closeWith's Wait: recv has ended by then
		go s.flusher()
	}
	return nil
}

// recv reads frames until the connection fails or the peer breaks the
// protocol, then closes the session.
func (s *Session) recv() {
	err := s.recvLoop()
	if err == errParked {
		return // resume starts another
	}
	close(s.recvDone) // before closeWith, which a Close may be running: it waits for this
	s.wmu.Lock()
	werr := s.werr
	s.wmu.Unlock()
	if werr != nil {
		err = werr // the write failure closed the connection under the read
	}
	proto := werr == nil && errors.Is(err, ErrProtocol)
	code := goAwayNormal
	if proto {
		code = goAwayProtoErr
	}
	s.closeWith(err, code, proto)
}

func (s *Session) recvLoop() error {
	var h header
	for {
		if err := s.readHeader(&h); err != nil {
			return err
		}
		if v := h[0]; v != protoVersion {
			return fmt.Errorf("%w %d", ErrInvalidVersion, v)
		}
		var err error
		switch t := h.msgType(); t {
		case typeData, typeWindowUpdate:
			err = s.handleStream(&h)
		case typePing:
			err = s.handlePing(&h)
		case typeGoAway:
			err = s.handleGoAway(&h)
		default:
			err = fmt.Errorf("%w %d", ErrInvalidMsgType, t)
		}
		if err != nil {
			return err
		}
	}
}

// readHeader reads a frame's header. On an IdleConn, its first read may
// find the connection idle: the goroutine then leaves (errParked), and
// resume starts another once the connection is readable.
func (s *Session) readHeader(h *header) error {
	n := 0
	if s.idle != nil {
		s.idle.ReadIdle(true)
		var err error
		n, err = s.conn.Read(h[:])
		s.idle.ReadIdle(false)
		switch {
		case n == 0 && err == idle.ErrIdle:
			parked, err := s.idle.WaitReadable(s.resume)
			if err != nil {
				return err
			}
			if parked {
				return errParked
			}
		case n == len(h):
			return nil
		case err == io.EOF && n > 0:
			return io.ErrUnexpectedEOF
		case err != nil:
			return err
		}
	}
	_, err := io.ReadFull(s.conn, h[n:])
	if err == io.EOF && n > 0 {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func (s *Session) handleStream(h *header) error {
	id, flags, length := h.streamID(), h.flags(), h.length()
	if flags&flagSYN != 0 {
		if err := s.incoming(id); err != nil {
			return err
		}
	}
	s.mu.Lock()
	st := s.streams[id]
	s.mu.Unlock()
	if st == nil {
		// A stream we reset or forgot (as yamux): drop its data.
		if h.msgType() == typeData && length > 0 {
			if _, err := io.CopyN(io.Discard, s.conn, int64(length)); err != nil {
				return err
			}
		}
		return nil
	}
	if h.msgType() == typeWindowUpdate {
		return st.windowUpdate(flags, length)
	}
	return st.receive(flags, length)
}

// incoming registers a stream the peer opened, or refuses it with RST when
// closing or when the accept backlog is full.
func (s *Session) incoming(id uint32) error {
	if s.localGoAway.Load() {
		return s.sendUrgent(typeWindowUpdate, flagRST, id, 0)
	}
	st := newStream(s, id, stateSYNReceived)
	s.mu.Lock()
	if _, ok := s.streams[id]; ok {
		s.mu.Unlock()
		return fmt.Errorf("%w: stream %d", ErrDuplicateStream, id)
	}
	if len(s.acceptQ) >= s.cfg.AcceptBacklog {
		s.mu.Unlock()
		return s.sendUrgent(typeWindowUpdate, flagRST, id, 0)
	}
	s.streams[id] = st
	s.acceptQ = append(s.acceptQ, st)
	s.mu.Unlock()
	notify(s.acceptCh)
	return nil
}

func (s *Session) handlePing(h *header) error {
	id := h.length()
	if h.flags()&flagSYN != 0 {
		return s.sendUrgent(typePing, flagACK, 0, id)
	}
	s.pingMu.Lock()
	if ch := s.pings[id]; ch != nil {
		delete(s.pings, id)
		close(ch)
	}
	s.pingMu.Unlock()
	return nil
}

func (s *Session) handleGoAway(h *header) error {
	switch code := h.length(); code {
	case goAwayNormal:
		s.remoteGoAway.Store(true)
		return nil
	case goAwayProtoErr:
		return fmt.Errorf("%w: protocol error", ErrRemoteProtocol)
	case goAwayInternalErr:
		return fmt.Errorf("%w: internal error", ErrRemoteProtocol)
	default:
		return fmt.Errorf("%w: unexpected GoAway code %d", ErrProtocol, code)
	}
}
