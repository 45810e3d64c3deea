// Package idle lets an idle socket wait without a goroutine.
//
// A goroutine that reads a socket parks in Go's poller with its stack
// (4 to 8 KiB), which for ten thousand idle connections or agents is most
// of what they cost. Here, on Linux, a socket idle for a while waits in one
// epoll set per process instead, and a callback starts its reader again
// when bytes come:
//
//   - [Wait] and [Cancel]: the epoll set. Each wait is one-shot and
//     level-triggered, so a socket that got bytes between the read that
//     found none and the wait fires at once: no wake-up is lost. Its one
//     goroutine runs only while some socket waits.
//   - [Watch]: a sweeper that, every [SweepPeriod] while something is
//     watched, asks each watched reader that read nothing for a whole
//     period to move. A reader in use stays in Go's poller, whose wake-up
//     costs no system call; only one that pauses moves, once.
//
// Elsewhere than Linux, [Wait] declines and readers stay in Go's poller.
package idle

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// SweepPeriod is how often the sweeper looks for readers gone idle: one
// idle for a whole period (one to two, from its last read) is asked to
// move to the epoll set. Short, so that goroutines parked in Go's poller
// (and their stacks) do not pile up while many connections open at once.
const SweepPeriod = 100 * time.Millisecond

// An Evictor is a reader the sweeper watches. Evict is called once a sweep
// period; the reader decides (from its own activity since the last call)
// whether to leave Go's poller, typically by setting a past read deadline
// that wakes its goroutine, which then calls Wait and ends.
type Evictor interface {
	Evict()
}

// sweeper calls Evict on the watched readers every SweepPeriod, on a timer
// that runs only while some reader is watched.
type sweeper struct {
	mu      sync.Mutex
	readers map[Evictor]struct{}
	timer   *time.Timer
}

var sweep sweeper

// Watch adds e to the sweeper's readers.
func Watch(e Evictor) {
	sweep.mu.Lock()
	defer sweep.mu.Unlock()
	if sweep.readers == nil {
		sweep.readers = make(map[Evictor]struct{})
	}
	sweep.readers[e] = struct{}{}
	if sweep.timer == nil {
		sweep.timer = time.AfterFunc(SweepPeriod, sweep.run)
	}
}

// Unwatch removes e; the sweeper stops when it watches nothing.
func Unwatch(e Evictor) {
	sweep.mu.Lock()
	defer sweep.mu.Unlock()
	delete(sweep.readers, e)
	if len(sweep.readers) == 0 && sweep.timer != nil {
		sweep.timer.Stop()
		sweep.timer = nil
	}
}

// Watched is the number of readers the sweeper watches.
func Watched() int {
	sweep.mu.Lock()
	defer sweep.mu.Unlock()
	return len(sweep.readers)
}

func (s *sweeper) run() {
	s.mu.Lock()
	readers := make([]Evictor, 0, len(s.readers))
	for e := range s.readers {
		readers = append(readers, e)
	}
	s.mu.Unlock()
	for _, e := range readers {
		e.Evict()
	}
	s.mu.Lock()
	if s.timer != nil && len(s.readers) > 0 {
		s.timer.Reset(SweepPeriod)
	}
	s.mu.Unlock()
}

// ErrIdle is what a read returns, having consumed nothing, instead of
// waiting on a connection the sweeper found idle, when its reader asked
// for that: the reader then calls Wait and ends. It is a net.Error whose
// Temporary is true, so that crypto/tls above such a read keeps the
// connection usable and what it holds.
var ErrIdle error = idleError{}

type idleError struct{}

func (idleError) Error() string {
	return "idle: the connection is idle; its reader waits in the epoll set"
}
func (idleError) Timeout() bool   { return true }
func (idleError) Temporary() bool { return true }

// failed says once that the epoll set failed.
var failed sync.Once

// logFailed says, once per process, that a socket could not wait in the
// epoll set: it keeps its goroutine in Go's poller, which costs memory and
// loses nothing.
func logFailed(err error) {
	failed.Do(func() {
		slog.Warn("idle connections cannot wait in the epoll set; they keep a goroutine each (more memory, nothing lost). "+
			"Check the open-file limit (ulimit -n) and the kernel's epoll watch limit (sysctl fs.epoll.max_user_watches)", "err", err)
	})
}

// A Socket is one socket's reader as it moves between Go's poller and the
// epoll set. Its owner reads the socket on one goroutine at a time and:
//   - calls Active after a read that got bytes;
//   - on a read that failed with os.ErrDeadlineExceeded, calls Evicted,
//     which says whether that was the sweeper's deadline (now cleared);
//   - when the reader may leave, calls Park: its goroutine then ends, and
//     resume runs once the socket is readable, or closed;
//   - calls Close once the socket is closed or its reader has ended for
//     good: a parked reader resumes, and finds it closed.
//
// Watch it to have the sweeper evict it.
type Socket struct {
	conn   interface{ SetReadDeadline(time.Time) error }
	rc     syscall.RawConn
	active atomic.Bool // read since the sweeper last looked

	mu       sync.Mutex
	evicting bool   // the sweeper set a past read deadline to move the reader out
	waiting  bool   // parked: the socket waits in the epoll set
	tok      uint64 // that wait
	resume   func() // its callback
	added    bool   // the socket is in the epoll set
	pinned   bool   // the epoll set failed: the reader stays in Go's poller
	closed   bool
}

// NewSocket is the Socket of conn, whose raw connection is rc.
func NewSocket(conn interface{ SetReadDeadline(time.Time) error }, rc syscall.RawConn) *Socket {
	return &Socket{conn: conn, rc: rc}
}

// Active records a read with bytes: the next sweep leaves the reader be.
func (s *Socket) Active() { s.active.Store(true) }

// Evict, for the sweeper: a socket not read since the last sweep gets a
// past read deadline, which wakes its reader in Go's poller.
func (s *Socket) Evict() {
	if s.active.Swap(false) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.evicting || s.waiting || s.pinned {
		return
	}
	s.evicting = true
	_ = s.conn.SetReadDeadline(time.Unix(1, 0))
}

// Evicted handles a read's os.ErrDeadlineExceeded: ours reports whether it
// was the sweeper's (its deadline is then cleared, and the reader may Park
// or read on); an error, that the socket is closed.
func (s *Socket) Evicted() (ours bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return false, net.ErrClosed
	case !s.evicting:
		return false, nil
	}
	s.evicting = false
	if err := s.conn.SetReadDeadline(time.Time{}); err != nil {
		return false, err
	}
	return true, nil
}

// Park arranges for resume to be called once the socket is readable (or
// closed: see Close), on a goroutine it must not block; the reader's
// goroutine then ends. parked false with no error means the epoll set
// failed: read on, in Go's poller, from now on.
func (s *Socket) Park(resume func()) (parked bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, net.ErrClosed
	}
	tok, ok, err := Wait(s.rc, &s.added, s.woken)
	if !ok {
		s.pinned = err == nil
		return false, err
	}
	s.waiting, s.tok, s.resume = true, tok, resume
	return true, nil
}

// Parked reports whether the reader is parked.
func (s *Socket) Parked() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiting
}

// woken is the epoll set's callback: the reader resumes (not to be evicted
// again before it reads).
func (s *Socket) woken() {
	s.active.Store(true)
	s.mu.Lock()
	resume := s.resume
	s.waiting, s.resume = false, nil
	s.mu.Unlock()
	if resume != nil {
		resume()
	}
}

// Close ends the Socket's part: the sweeper no longer watches it, and a
// parked reader resumes (to find its socket closed). It may be called more
// than once.
func (s *Socket) Close() {
	Unwatch(s)
	s.mu.Lock()
	s.closed = true
	tok, waiting := s.tok, s.waiting
	s.mu.Unlock()
	if waiting && Cancel(tok) {
		s.woken()
	}
}
