//go:build linux

package splice

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"isthmus.dev/tunnel/idle"
)

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
		idle.Watch(d)
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
	tok, ok, err := idle.Wait(d.rc, &d.added, d.resume)
	if !ok {
		d.pinned = err == nil
		return false, err
	}
	d.state, d.tok = stateEpoll, tok
	return true, nil
}

// kick ends the copy's wait after the socket was closed under it: in the
// epoll set, the copy resumes and finds the socket closed (in Go's poller,
// the close itself wakes it).
func (d *polled) kick() {
	d.mu.Lock()
	d.closed = true
	tok := d.tok
	waiting := d.state == stateEpoll
	d.mu.Unlock()
	if waiting && idle.Cancel(tok) {
		d.resume()
	}
}

// Evict makes a socket idle since the last sweep leave Go's poller for the
// epoll set: a past read deadline wakes its goroutine (see toEpoll).
func (d *polled) Evict() {
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
	idle.Unwatch(d)
	d.b.release()
	d.end(d.dst, readErr, err)
}
