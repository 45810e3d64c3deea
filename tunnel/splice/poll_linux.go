//go:build linux

package splice

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// idlePoller waits for idle sockets to become readable on one epoll
// instance, so that an idle connection needs no goroutine parked in Go's
// poller. Its one goroutine runs only while some socket waits.
//
// Each wait is one-shot and level-triggered: re-arming a socket that
// already has bytes (they came between the read that found none and the
// re-arm) fires at once, so no wake-up is lost. A closed socket leaves
// the epoll set by itself; whoever closes it cancels its wait (see
// polled.kick), since no event will come for it.
type idlePoller struct {
	mu      sync.Mutex
	epfd    int // 0 until first used
	wakefd  int // an eventfd that wakes the loop to see it has nothing left
	waiters map[uint64]func()
	next    uint64 // tokens: 0 is the wake-up's, never a waiter's
	running bool
}

var idle idlePoller

// setup creates the epoll instance and the wake-up; p.mu is held.
func (p *idlePoller) setup() error {
	if p.epfd != 0 {
		return nil
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("splice: epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return fmt.Errorf("splice: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN} // token 0
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(wakefd)
		return fmt.Errorf("splice: epoll_ctl of the wake-up: %w", err)
	}
	p.epfd, p.wakefd, p.waiters = epfd, wakefd, make(map[uint64]func())
	return nil
}

// wait arranges for f to be called once rc's socket is readable (or hung
// up, or failed). added says whether the socket is in the epoll set
// already (wait sets it). It returns the wait's token, for cancel; an
// error if the socket is closed or epoll fails.
func (p *idlePoller) wait(rc syscall.RawConn, added *bool, f func()) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.setup(); err != nil {
		return 0, err
	}
	p.next++
	tok := p.next
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(tok)), Pad: int32(uint32(tok >> 32))}
	var cerr error
	// Under Control the descriptor cannot be closed (and its number
	// reused) while epoll_ctl runs.
	err := rc.Control(func(fd uintptr) {
		op := unix.EPOLL_CTL_MOD
		if !*added {
			op = unix.EPOLL_CTL_ADD
		}
		cerr = unix.EpollCtl(p.epfd, op, int(fd), &ev)
		if cerr == nil {
			*added = true
		}
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	p.waiters[tok] = f
	if !p.running {
		p.running = true
		go p.loop(p.epfd)
	}
	return tok, nil
}

// cancel takes back the wait tok; it reports false if its event came
// first (then its callback runs, or ran).
func (p *idlePoller) cancel(tok uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.waiters[tok]; !ok {
		return false
	}
	delete(p.waiters, tok)
	if len(p.waiters) == 0 && p.running {
		// Wake the loop so that it ends: nothing is left to wait for.
		var one = [8]byte{1}
		_, _ = unix.Write(p.wakefd, one[:])
	}
	return true
}

// waiting is the number of sockets waiting.
func (p *idlePoller) waiting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.waiters)
}

// loop calls the callbacks of the sockets that became readable, until
// none waits.
func (p *idlePoller) loop(epfd int) {
	events := make([]unix.EpollEvent, 128)
	var ready []func()
	for {
		n, err := unix.EpollWait(epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		p.mu.Lock()
		if err != nil {
			// Should not happen; if it does, wake every waiter: each
			// reads its socket, finds it idle and waits again (a new
			// loop, which may fail the same way and say so again).
			slog.Error("splice: epoll_wait failed; idle connections are woken and wait again (nothing lost). If this repeats, report it with this error", "err", err)
			for tok, f := range p.waiters {
				delete(p.waiters, tok)
				ready = append(ready, f)
			}
		}
		for _, ev := range events[:n] {
			tok := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if tok == 0 {
				var b [8]byte
				_, _ = unix.Read(p.wakefd, b[:])
				continue
			}
			if f, ok := p.waiters[tok]; ok {
				delete(p.waiters, tok)
				ready = append(ready, f)
			}
		}
		stop := len(p.waiters) == 0
		if stop {
			p.running = false
		}
		p.mu.Unlock()
		for i, f := range ready {
			f()
			ready[i] = nil
		}
		ready = ready[:0]
		if stop {
			return
		}
	}
}

// pollable returns the raw connection of a TCP or Unix socket, whose idle
// waits the epoll set can take.
func pollable(c net.Conn) (syscall.RawConn, bool) {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
		rc, err := c.(syscall.Conn).SyscallConn()
		return rc, err == nil
	}
	return nil, false
}

// newPolled prepares copying the socket of rc to dst (see polled): start
// starts it, kick is for closeBoth.
func newPolled(src, dst net.Conn, rc syscall.RawConn, n *int64, end func(dst net.Conn, readErr, err error)) (start, kick func()) {
	d := &polled{src: src, dst: dst, rc: rc, n: n, end: end}
	d.s = newSource(src, &d.b)
	d.resume = func() { go d.loop() }
	start = func() {
		sweep.add(d)
		d.resume()
	}
	return start, d.kick
}

// polled copies a socket to dst. Between bursts its goroutine waits in
// Go's poller, holding no buffer, as a connection in use should (a wake-up
// there costs no system call). Once the socket has been idle for a sweep
// period or two, the sweeper moves it to the epoll set and the goroutine
// ends; the socket's readiness starts the next one.
type polled struct {
	src    net.Conn // the socket
	dst    net.Conn
	rc     syscall.RawConn
	n      *int64
	b      buffers
	added  bool // the socket is in the epoll set
	resume func()
	end    func(dst net.Conn, readErr, err error)

	s *source // reads the socket, holding no buffer while it waits

	active atomic.Bool // read since the sweeper last looked

	mu       sync.Mutex
	state    pollState
	evicting bool   // the sweeper set a past read deadline to move it to the epoll set
	tok      uint64 // the wait in the epoll set (stateEpoll)
	closed   bool   // kick was called: the socket is closed
	pinned   bool   // the epoll set failed for it: it stays in Go's poller
}

type pollState int

const (
	stateRunning pollState = iota // a goroutine copies, or waits in Go's poller
	stateEpoll                    // no goroutine: the socket waits in the epoll set
	stateDone
)

// loop copies what the socket has, waiting in Go's poller between bursts,
// until the copy ends or the sweeper moves the socket to the epoll set.
func (d *polled) loop() {
	d.mu.Lock()
	if d.state == stateDone {
		d.mu.Unlock()
		return
	}
	d.state, d.tok = stateRunning, 0
	d.mu.Unlock()
	for {
		nr, err := d.s.read()
		if err != nil {
			switch {
			case err == io.EOF:
				d.finish(nil, nil)
				return
			case errors.Is(err, os.ErrDeadlineExceeded):
				moved, merr := d.toEpoll()
				if moved {
					return
				}
				if merr == nil {
					continue // the epoll set failed: wait in Go's poller
				}
				err = merr
			}
			d.finish(err, err) // closed, or cut
			return
		}
		d.active.Store(true)
		nw, werr := d.dst.Write(d.b.buf()[:nr])
		*d.n += int64(nw)
		if werr == nil && nw != nr {
			werr = io.ErrShortWrite
		}
		if werr != nil {
			d.finish(nil, werr)
			return
		}
		full := nr == len(d.b.buf())
		switch {
		case full && !d.b.large: // bulk: grow
			d.b.grow()
		case !full:
			d.b.release() // hold nothing while waiting
		}
	}
}

// toEpoll moves an evicted socket to the epoll set: moved, the goroutine
// ends; else err ends the copy (the socket closed under it), or, nil, the
// copy goes on in Go's poller (the epoll set failed: this socket stays
// there from now on).
func (d *polled) toEpoll() (moved bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return false, net.ErrClosed
	case !d.evicting:
		return false, os.ErrDeadlineExceeded // not ours: nothing else sets one
	}
	d.evicting = false
	if err := d.src.SetReadDeadline(time.Time{}); err != nil {
		return false, err
	}
	tok, err := idle.wait(d.rc, &d.added, d.resume)
	if err != nil {
		if cerr := d.rc.Control(func(uintptr) {}); cerr != nil {
			return false, cerr // closed
		}
		d.pinned = true
		epollFailed.Do(func() {
			slog.Warn("splice: idle connections cannot wait in the epoll set; they keep a goroutine each (more memory, nothing lost). "+
				"Check the open-file limit (ulimit -n) and the kernel's epoll watch limit (sysctl fs.epoll.max_user_watches)", "err", err)
		})
		return false, nil
	}
	d.state, d.tok = stateEpoll, tok
	return true, nil
}

// epollFailed says once that the epoll set failed.
var epollFailed sync.Once

// kick ends the copy's wait after the socket was closed under it: in the
// epoll set, the copy resumes and finds the socket closed (in Go's poller,
// the close itself wakes it).
func (d *polled) kick() {
	d.mu.Lock()
	d.closed = true
	tok := d.tok
	waiting := d.state == stateEpoll
	d.mu.Unlock()
	if waiting && idle.cancel(tok) {
		d.resume()
	}
}

// evict makes a socket idle since the last sweep leave Go's poller for the
// epoll set: a past read deadline wakes its goroutine (see toEpoll).
func (d *polled) evict() {
	if d.active.Swap(false) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != stateRunning || d.closed || d.evicting || d.pinned {
		return
	}
	d.evicting = true
	_ = d.src.SetReadDeadline(time.Unix(1, 0))
}

func (d *polled) finish(readErr, err error) {
	d.mu.Lock()
	d.state = stateDone
	d.mu.Unlock()
	sweep.remove(d)
	d.b.release()
	d.end(d.dst, readErr, err)
}

// sweepPeriod is how often the sweeper looks for sockets gone idle: one
// idle for a whole period (one to two, from its last read) leaves Go's
// poller for the epoll set. A connection in use (a request, its answer)
// stays in Go's poller; one that pauses for longer moves, which costs a
// few system calls, once. Short, so that goroutines parked in Go's poller
// (and their stacks) do not pile up while many connections open at once.
const sweepPeriod = 100 * time.Millisecond

// sweeper moves idle sockets from Go's poller to the epoll set, so that
// an idle connection holds no goroutine while one in use keeps the
// cheaper wake-up of Go's poller. It runs on a timer, only while some
// copy is registered.
type sweeper struct {
	mu     sync.Mutex
	copies map[*polled]struct{}
	timer  *time.Timer
}

var sweep sweeper

func (s *sweeper) add(d *polled) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.copies == nil {
		s.copies = make(map[*polled]struct{})
	}
	s.copies[d] = struct{}{}
	if s.timer == nil {
		s.timer = time.AfterFunc(sweepPeriod, s.run)
	}
}

func (s *sweeper) remove(d *polled) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.copies, d)
	if len(s.copies) == 0 && s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
}

func (s *sweeper) run() {
	s.mu.Lock()
	copies := make([]*polled, 0, len(s.copies))
	for d := range s.copies {
		copies = append(copies, d)
	}
	s.mu.Unlock()
	for _, d := range copies {
		d.evict()
	}
	s.mu.Lock()
	if s.timer != nil && len(s.copies) > 0 {
		s.timer.Reset(sweepPeriod)
	}
	s.mu.Unlock()
}
