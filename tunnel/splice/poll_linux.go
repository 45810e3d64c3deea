//go:build linux

package splice

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"

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
	d := &polled{dst: dst, n: n, end: end, sock: idle.NewSocket(src, rc)}
	d.s = newSource(src, &d.b)
	d.resume = func() { go d.loop() }
	start = func() {
		idle.Watch(d.sock)
		d.resume()
	}
	return start, d.kick
}

// polled copies a socket to dst. Between bursts its goroutine waits in
// Go's poller, holding no buffer, as a connection in use should (a wake-up
// there costs no system call). Once the socket has been idle for a sweep
// period or two, the sweeper moves it to the epoll set and the goroutine
// ends; the socket's readiness starts the next one (see idle.Socket).
type polled struct {
	dst    net.Conn
	n      *int64
	b      buffers
	resume func()
	end    func(dst net.Conn, readErr, err error)
	s      *source // reads the socket, holding no buffer while it waits
	sock   *idle.Socket
}

// loop copies what the socket has, waiting in Go's poller between bursts,
// until the copy ends or the sweeper moves the socket to the epoll set.
func (d *polled) loop() {
	for {
		nr, err := d.s.read()
		if err != nil {
			switch {
			case err == io.EOF:
				d.finish(nil, nil)
				return
			case errors.Is(err, os.ErrDeadlineExceeded):
				parked, perr := d.toEpoll()
				if parked {
					return
				}
				if perr == nil {
					continue // the epoll set failed: wait in Go's poller
				}
				err = perr
			}
			d.finish(err, err) // closed, or cut
			return
		}
		d.sock.Active()
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

// toEpoll moves an evicted socket to the epoll set: parked, the goroutine
// ends; else err ends the copy (the socket closed under it, or a deadline
// not the sweeper's: nothing else sets one), or, nil, the copy goes on in
// Go's poller (the epoll set failed: this socket stays there from now on).
func (d *polled) toEpoll() (parked bool, err error) {
	ours, err := d.sock.Evicted()
	switch {
	case err != nil:
		return false, err
	case !ours:
		return false, os.ErrDeadlineExceeded
	}
	return d.sock.Park(d.resume)
}

// kick ends the copy's wait after the socket was closed under it: in the
// epoll set, the copy resumes and finds the socket closed (in Go's poller,
// the close itself wakes it).
func (d *polled) kick() { d.sock.Close() }

func (d *polled) finish(readErr, err error) {
	d.sock.Close()
	d.b.release()
	d.end(d.dst, readErr, err)
}
