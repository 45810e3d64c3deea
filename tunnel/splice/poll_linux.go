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
	"syscall"

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
			slog.Error("splice: epoll_wait failed; idle connections are woken and wait again", "err", err)
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
func newPolled(dst net.Conn, rc syscall.RawConn, n *int64, end func(dst net.Conn, readErr, err error)) (start, kick func()) {
	d := &polled{dst: dst, rc: rc, n: n, end: end}
	d.readFD = d.readRaw
	d.resume = func() { go d.loop() }
	return d.resume, d.kick
}

// polled copies a socket to dst on a goroutine that runs only while the
// socket has bytes: when a read finds none, it gives its buffer back,
// hands the socket to the epoll set and ends; the socket's readiness
// starts the next one.
type polled struct {
	dst    net.Conn
	rc     syscall.RawConn
	n      *int64
	b      buffers
	bulk   bool // the last read filled its buffer: read the next into a large one
	added  bool // the socket is in the epoll set
	resume func()
	end    func(dst net.Conn, readErr, err error)

	// A raw read's callback, made once, and what it reports.
	readFD func(fd uintptr) bool
	buf    []byte
	nr     int
	rerr   error

	mu     sync.Mutex
	tok    uint64 // the wait in the epoll set, 0 when none
	closed bool   // kick was called: the socket is closed
}

// loop copies what the socket has, then waits in the epoll set.
func (d *polled) loop() {
	d.mu.Lock()
	d.tok = 0
	d.mu.Unlock()
	for {
		d.buf = d.b.get(d.bulk)
		// The callback never asks Go's poller to wait: an empty socket
		// is waited for in the epoll set, with no goroutine.
		if err := d.rc.Read(d.readFD); err != nil {
			d.finish(err, err) // closed
			return
		}
		switch {
		case d.rerr == syscall.EAGAIN:
			d.b.release()
			d.wait()
			return
		case d.rerr != nil:
			err := os.NewSyscallError("read", d.rerr)
			d.finish(err, err)
			return
		case d.nr == 0:
			d.finish(nil, nil) // EOF
			return
		}
		nw, werr := d.dst.Write(d.buf[:d.nr])
		*d.n += int64(nw)
		if werr == nil && nw != d.nr {
			werr = io.ErrShortWrite
		}
		if werr != nil {
			d.finish(nil, werr)
			return
		}
		d.bulk = d.nr == len(d.buf) || (d.bulk && d.nr >= len(d.buf)/8)
		if !d.bulk {
			d.b.release()
		}
	}
}

func (d *polled) readRaw(fd uintptr) bool {
	for {
		d.nr, d.rerr = syscall.Read(int(fd), d.buf)
		if d.rerr != syscall.EINTR {
			return true
		}
	}
}

// wait hands the socket to the epoll set, or ends the copy if the socket
// is closed or the set fails.
func (d *polled) wait() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		d.finish(net.ErrClosed, net.ErrClosed)
		return
	}
	tok, err := idle.wait(d.rc, &d.added, d.resume)
	if err == nil {
		d.tok = tok
	}
	d.mu.Unlock()
	if err != nil {
		d.finish(err, err)
	}
}

// kick ends a wait in the epoll set after the socket was closed under
// it: the copy resumes, and finds the socket closed.
func (d *polled) kick() {
	d.mu.Lock()
	d.closed = true
	tok := d.tok
	d.mu.Unlock()
	if tok != 0 && idle.cancel(tok) {
		d.resume()
	}
}

func (d *polled) finish(readErr, err error) {
	d.b.release()
	d.buf = nil
	d.end(d.dst, readErr, err)
}
