package anp

import (
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"isthmus.dev/tunnel/link"
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
	linger0       atomic.Bool // SetLinger(0): Close cuts
	writeDeadline atomic.Pointer[time.Time]
	ended         atomic.Pointer[error] // set when the conn ended: what writes return
}

func (c *conn) Read(p []byte) (int, error) { return c.q.read(p) }

// WaitRead waits until bytes or the end can be read, taking nothing: a
// splice holds no buffer while the connection is idle.
func (c *conn) WaitRead() error { return c.q.wait() }

func (c *conn) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		if err := c.ended.Load(); err != nil {
			return written, *err
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

// end records why writes fail from now on; the first reason stays.
func (c *conn) end(err error) { c.ended.CompareAndSwap(nil, &err) }

// Close ends the connection; unless the peer closed it first, the peer is
// told (CLOSE_REQ from the server, CLOSE_RSP from the agent). After
// SetLinger(0) the agent's CLOSE_RSP says the connection was cut; the
// server's CLOSE_REQ has no field to say it.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.end(net.ErrClosed)
		c.q.fail(net.ErrClosed)
		c.ep.release(c, !c.remoteClosed.Load(), c.linger0.Load())
	})
	return nil
}

// SetLinger(0) makes the next Close a cut, as it makes a TCP Close a
// reset; other values restore the orderly close.
func (c *conn) SetLinger(sec int) error {
	c.linger0.Store(sec == 0)
	return nil
}

// peerClosed is called by the link's reader when the peer closed the
// connection: readers get what is queued, then io.EOF.
func (c *conn) peerClosed() {
	c.closeRemote(io.EOF, true)
	if c.onPeerClose != nil {
		c.onPeerClose()
	}
}

// peerCut is called by the link's reader when the peer cut the connection
// (a CLOSE_RSP with an error: our agent's cut, or any agent's "unknown
// connectID"): readers get what is queued, then link.ErrAborted.
func (c *conn) peerCut(why string) {
	c.closeRemote(fmt.Errorf("connection %d: %w: the agent says %q", c.id, link.ErrAborted, why), true)
}

// closeRemote ends the connection from the link's side: readers get err,
// after what is queued if keep; writes fail (after the peer's close, with
// net.ErrClosed).
func (c *conn) closeRemote(err error, keep bool) {
	c.remoteClosed.Store(true)
	if err == io.EOF {
		c.end(net.ErrClosed)
	} else {
		c.end(err)
	}
	c.q.end(err, keep)
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
