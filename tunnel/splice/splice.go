// Package splice is the one place where isthmus copies bytes between two
// connections: both directions at once, half-close where both ends support
// it, pooled buffers, and byte counts for metrics.
package splice

import (
	"errors"
	"io"
	"net"
	"sync"
)

// BufferSize is the size of each pooled copy buffer.
const BufferSize = 64 << 10

var pool = sync.Pool{New: func() any { b := make([]byte, BufferSize); return &b }}

// GetBuffer takes a BufferSize buffer from the shared pool; PutBuffer returns it.
func GetBuffer() *[]byte  { return pool.Get().(*[]byte) }
func PutBuffer(b *[]byte) { pool.Put(b) }

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
	var (
		res    Result
		wg     sync.WaitGroup
		once   sync.Once
		errMu  sync.Mutex
		_, aHC = a.(HalfCloser)
		_, bHC = b.(HalfCloser)
	)
	halfClose := aHC && bHC
	closeBoth := func() {
		once.Do(func() {
			_ = a.Close()
			_ = b.Close()
		})
	}
	run := func(dst, src net.Conn, n *int64) {
		defer wg.Done()
		var err error
		var readErr error
		*n, readErr, err = copyBuf(dst, src)
		if readErr != nil && !isClosed(readErr) {
			// src was cut, not closed: pass the abort on, so the peer
			// behind dst does not take a truncated stream for a whole one.
			abort(dst)
		}
		if err != nil && !isClosed(err) {
			errMu.Lock()
			if res.Err == nil {
				res.Err = err
			}
			errMu.Unlock()
		}
		if err == nil && halfClose {
			if cerr := dst.(HalfCloser).CloseWrite(); cerr == nil {
				return
			}
		}
		closeBoth()
	}
	wg.Add(2)
	go run(b, a, &res.AtoB)
	go run(a, b, &res.BtoA)
	wg.Wait()
	closeBoth()
	return res
}

// copyBuf is io.Copy with a pooled buffer; it returns nil at EOF, and
// separately the error that ended reading src, if reading ended it.
func copyBuf(dst io.Writer, src io.Reader) (n int64, readErr, err error) {
	buf := GetBuffer()
	defer PutBuffer(buf)
	r := &onlyReader{Reader: src}
	n, err = io.CopyBuffer(onlyWriter{dst}, r, *buf)
	return n, r.err, err
}

// abort makes the next Close of c abortive where the transport has one: a
// TCP reset instead of an orderly FIN (also beneath TLS).
func abort(c net.Conn) {
	for range 4 { // bounded unwrapping
		switch x := c.(type) {
		case interface{ SetLinger(int) error }:
			_ = x.SetLinger(0)
			return
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return
		}
	}
}

// onlyWriter and onlyReader hide ReadFrom/WriteTo so that io.CopyBuffer uses
// the pooled buffer. (TCP's own ReadFrom/splice(2) would be faster for
// socket-to-socket, but our ends are rarely both plain sockets.)
type onlyWriter struct{ io.Writer }
type onlyReader struct {
	io.Reader
	err error // the last read error
}

func (r *onlyReader) Read(p []byte) (int, error) {
	n, err := r.Reader.Read(p)
	if err != nil {
		r.err = err
	}
	return n, err
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, io.EOF)
}
