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
	"sync"
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
