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
// starts it (here: on the calling goroutine, until the copy ends or the
// socket is idle long enough to wait in the epoll set), kick is for
// closeBoth.
func newPolled(src, dst net.Conn, rc syscall.RawConn, n *int64, end func(dst net.Conn, readErr, err error)) (start func(here bool), kick func()) {
	d := &polled{dst: dst, n: n, end: end, sock: idle.NewSocket(src, rc)}
	d.s = newSource(src, &d.b)
	if tw, ok := dst.(TryWriter); ok {
		d.tw, d.raw = tw, rc
		d.burstFD = d.burstRead
	}
	d.resume = func() { go d.loop() }
	start = func(here bool) {
		idle.Watch(d.sock)
		if here {
			d.loop()
			return
		}
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

	// With a dst that takes writes that must not wait, the copy runs in
	// bursts (see burstRead): the socket's raw connection, the callback made
	// once, and what a burst left.
	tw       TryWriter
	raw      syscall.RawConn
	burstFD  func(fd uintptr) bool
	rest     []byte // read, not taken by dst
	readErr  error  // what ended reading (io.EOF at the end)
	writeErr error  // what dst's TryWrite failed with
}

// loop copies what the socket has, waiting in Go's poller between bursts,
// until the copy ends or the sweeper moves the socket to the epoll set.
func (d *polled) loop() {
	for {
		if d.tw != nil {
			if d.burstLoop() {
				return
			}
			continue
		}
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
		if werr := writeCounted(d.dst, d.b.buf()[:nr], d.n); werr != nil {
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

// burstLoop runs one burst and deals with what ended it: a write that
// must wait, the end of the copy (done), or the sweeper's eviction.
func (d *polled) burstLoop() (done bool) {
	d.rest, d.readErr, d.writeErr = nil, nil, nil
	err := d.raw.Read(d.burstFD)
	switch {
	case d.writeErr != nil:
		d.finish(nil, d.writeErr)
		return true
	case d.readErr == io.EOF:
		d.finish(nil, nil)
		return true
	case d.readErr != nil:
		d.finish(d.readErr, d.readErr)
		return true
	case errors.Is(err, os.ErrDeadlineExceeded):
		parked, perr := d.toEpoll()
		if parked {
			return true
		}
		if perr != nil {
			d.finish(perr, perr)
			return true
		}
		return false // the epoll set failed: wait in Go's poller
	case err != nil:
		d.finish(err, err) // closed
		return true
	}
	// dst would have waited for the rest: write it the usual way. The
	// buffer stays for the next burst (bulk keeps its large one); a read
	// that finds nothing gives it back.
	werr := writeCounted(d.dst, d.rest, d.n)
	d.rest = nil
	if werr != nil {
		d.finish(nil, werr)
		return true
	}
	return false
}

// burstRead is the raw read callback of a burst: it reads the socket and
// hands what it read to dst without waiting, for as long as dst takes it.
// After a read that did not fill the buffer, the socket had no more: the
// callback then lets Go's poller wait for its next bytes without the read
// that would say so (EAGAIN). Within one RawConn.Read nothing resets the
// poller's readiness, and its edge-triggered wake-up comes for any byte
// that arrives after a read, so none is missed. It ends the burst (true)
// at the end of reading, on an error, or when dst would have waited.
func (d *polled) burstRead(fd uintptr) bool {
	for {
		buf := d.b.buf()
		n, err := syscall.Read(int(fd), buf)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			d.b.release() // idle: wait for the poller without a buffer
			return false
		case err != nil:
			d.readErr = os.NewSyscallError("read", err)
			return true
		case n == 0:
			d.readErr = io.EOF
			return true
		}
		d.sock.Active()
		w, werr := d.tw.TryWrite(buf[:n])
		*d.n += int64(w)
		switch {
		case werr != nil:
			d.writeErr = werr
			return true
		case w < n:
			d.rest = buf[w:n]
			return true
		case n < len(buf):
			d.b.release()
			return false
		case !d.b.large: // bulk: grow
			d.b.grow()
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
