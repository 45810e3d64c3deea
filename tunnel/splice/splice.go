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

// Copy buffers: a connection moving bulk data copies with a large buffer
// (fewer system calls and tunnel frames); one with light traffic, or idle
// and blocked in Read, holds only a small one.
const (
	smallBuffer = 16 << 10
	largeBuffer = 256 << 10
)

var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallBuffer); return &b }}
	largePool = sync.Pool{New: func() any { b := make([]byte, largeBuffer); return &b }}
)

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

// copyBuf copies src to dst until EOF (then it returns nil), with pooled
// buffers sized to the traffic. It also returns the error that ended reading
// src, if reading ended it.
func copyBuf(dst io.Writer, src io.Reader) (n int64, readErr, err error) {
	small, large := smallPool.Get().(*[]byte), (*[]byte)(nil)
	defer func() {
		smallPool.Put(small)
		if large != nil {
			largePool.Put(large)
		}
	}()
	buf := *small
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr == nil && nw != nr {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return n, nil, werr
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return n, nil, nil
			}
			return n, rerr, rerr
		}
		switch {
		case nr == len(buf) && large == nil: // bulk: grow
			large = largePool.Get().(*[]byte)
			buf = *large
		case nr < len(buf)/8 && large != nil: // light again: shrink
			largePool.Put(large)
			large, buf = nil, *small
		}
	}
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

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, io.EOF)
}
