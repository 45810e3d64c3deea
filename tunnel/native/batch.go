package native

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"net"
	"sync"
)

// Writes on a native link are batched at two levels, because the libraries
// underneath write small pieces: yamux writes each frame as a 12-byte header
// and then its body, and crypto/tls writes each 16 KiB record with its own
// system call. frameWriter hands yamux a frame in one TLS write, and
// RawConn gathers the records of that write into one system call.

// RawConn is the TCP connection under the TLS of a native link. Wrap the
// raw connection with it before TLS (see WrapRaw); writes go straight
// through except inside a batch.
type RawConn struct {
	net.Conn
	r        *bufio.Reader // TLS reads a record at a time: fetch many per system call
	mu       sync.Mutex
	w        *bufio.Writer
	batching bool
}

// WrapRaw wraps a raw connection for the TLS of an agent port or agent.
func WrapRaw(c net.Conn) *RawConn {
	return &RawConn{Conn: c, r: bufio.NewReaderSize(c, 256<<10), w: bufio.NewWriterSize(c, 256<<10)}
}

func (r *RawConn) Read(p []byte) (int, error) { return r.r.Read(p) }

func (r *RawConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.batching {
		return r.w.Write(p)
	}
	return r.Conn.Write(p)
}

// batch runs write with writes buffered, then flushes them.
func (r *RawConn) batch(write func() error) error {
	r.mu.Lock()
	r.batching = true
	r.mu.Unlock()
	err := write()
	r.mu.Lock()
	r.batching = false
	if ferr := r.w.Flush(); err == nil {
		err = ferr
	}
	r.mu.Unlock()
	return err
}

// CloseWrite half-closes the TCP connection, for TLS's CloseWrite.
func (r *RawConn) CloseWrite() error {
	if cw, ok := r.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// yamux's frame header: version, type, flags, stream id, length.
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
)

// frameWriter sits between yamux and the TLS connection. yamux writes from
// one goroutine (its send loop): a header, then, for a data frame with a
// body, the body. frameWriter holds such a header and writes it together
// with its body.
type frameWriter struct {
	net.Conn // the *tls.Conn; reads and everything else pass through
	raw      *RawConn
	held     []byte // a data frame header waiting for its body
	buf      []byte
}

func newFrameWriter(c net.Conn) net.Conn {
	fw := &frameWriter{Conn: c, held: make([]byte, 0, yamuxHeaderSize)}
	if tc, ok := c.(*tls.Conn); ok {
		fw.raw, _ = tc.NetConn().(*RawConn)
	}
	return fw
}

func (f *frameWriter) Write(p []byte) (int, error) {
	if len(f.held) == 0 && len(p) == yamuxHeaderSize && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:]) > 0 {
		f.held = append(f.held, p...)
		return len(p), nil
	}
	var err error
	switch {
	case f.raw != nil:
		// Header and body as two TLS records, in one system call: no
		// copy of the body to put them side by side.
		err = f.raw.batch(func() error {
			if len(f.held) > 0 {
				if _, err := f.Conn.Write(f.held); err != nil {
					return err
				}
			}
			_, err := f.Conn.Write(p)
			return err
		})
		f.held = f.held[:0]
	case len(f.held) > 0:
		f.buf = append(append(f.buf[:0], f.held...), p...)
		f.held = f.held[:0]
		_, err = f.Conn.Write(f.buf)
	default:
		_, err = f.Conn.Write(p)
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}
