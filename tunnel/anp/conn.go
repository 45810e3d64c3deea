package anp

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// conn is one tunneled connection on an ANP link, as a net.Conn. Reads come
// from a bounded queue filled by the link's reader; writes become DATA
// packets. It has no CloseWrite: the ANP wire has no half-close, so EOF from
// a conn means the whole connection ended.
type conn struct {
	ep     *endpoint
	id     int64 // connectID
	q      *queue
	local  net.Addr
	remote net.Addr

	// onPeerClose, if set before the conn is registered, runs when the peer
	// closes the connection (not on overflow or link loss).
	onPeerClose func()

	closeOnce     sync.Once
	remoteClosed  atomic.Bool // the peer closed: Close sends nothing
	writeDeadline atomic.Pointer[time.Time]
	closed        atomic.Bool
}

func (c *conn) Read(p []byte) (int, error) { return c.q.read(p) }

func (c *conn) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		if c.closed.Load() {
			return written, net.ErrClosed
		}
		if d := c.writeDeadline.Load(); d != nil && !d.IsZero() && time.Now().After(*d) {
			return written, os.ErrDeadlineExceeded
		}
		chunk := p[written:]
		if len(chunk) > MaxDataChunk {
			chunk = chunk[:MaxDataChunk]
		}
		if err := c.ep.send(data(c.id, chunk)); err != nil {
			return written, err
		}
		written += len(chunk)
	}
	return written, nil
}

// Close ends the connection; unless the peer closed it first, the peer is told
// (CLOSE_REQ from the server, CLOSE_RSP from the agent).
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.q.fail(net.ErrClosed)
		c.ep.release(c, !c.remoteClosed.Load())
	})
	return nil
}

// peerClosed is called by the link's reader when the peer closed the
// connection: readers get what is queued, then io.EOF.
func (c *conn) peerClosed() {
	c.closeRemote(io.EOF)
	if c.onPeerClose != nil {
		c.onPeerClose()
	}
}

// closeRemote ends the connection from the link's side: with io.EOF
// readers get what is queued first; any other error drops it.
func (c *conn) closeRemote(err error) {
	c.remoteClosed.Store(true)
	c.closed.Store(true)
	c.q.fail(err)
}

func (c *conn) LocalAddr() net.Addr  { return c.local }
func (c *conn) RemoteAddr() net.Addr { return c.remote }

func (c *conn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *conn) SetReadDeadline(t time.Time) error {
	c.q.setDeadline(t)
	return nil
}

// SetWriteDeadline bounds Write between packets; a packet already handed to
// the gRPC stream is bounded by the stream itself.
func (c *conn) SetWriteDeadline(t time.Time) error {
	c.writeDeadline.Store(&t)
	return nil
}

// addr is the net.Addr of a tunneled connection.
type addr struct{ s string }

func (a addr) Network() string { return "konnectivity" }
func (a addr) String() string  { return a.s }
