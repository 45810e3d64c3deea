package native

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"isthmus.dev/tunnel/link"
)

// ErrAborted is what a connection's reads and writes return once the peer
// cut it (reads: after what arrived before the cut), and what its writes
// return once the peer closed it while this side still had data to send.
// It is a link.ErrAborted: a stream that ends with it may be truncated.
var ErrAborted = fmt.Errorf("native link: connection dropped by the peer: %w", link.ErrAborted)

// cutAnswerTimeout bounds how long a cut stream waits for the peer's
// answer before it sends its FIN anyway (a peer that predates the answer
// never sends one).
const cutAnswerTimeout = 30 * time.Second

// streamConn is one tunneled connection: a yamux stream as a net.Conn with
// TCP's half-close. yamux has no public reset, so the end of a connection
// is said on the control stream:
//
//   - Close sends FIN (what was written is complete) and, if the peer may
//     still send, an abort: the peer's writes fail, its reads get every
//     byte and then EOF.
//   - After SetLinger(0), Close cuts: an abort marked as a cut, and no FIN
//     until the peer has answered with an abort of its own (a FIN ahead of
//     the cut would read as a clean end). The peer's reads get what
//     arrived, then ErrAborted, never EOF.
type streamConn struct {
	muxStream
	sess *session

	mu            sync.Mutex
	wroteFIN      bool // CloseWrite, Close or the peer's abort sent our FIN
	sawEOF        bool // the peer's FIN was read
	closed        bool
	linger0       bool // SetLinger(0): Close cuts
	cutting       bool // cut by Close, waiting for the peer's answer
	cutTimer      *time.Timer
	abortedPeer   bool // the peer closed or cut while we might send
	peerCut       bool // the peer cut: what we read is truncated
	writeDeadline time.Time
}

// readNotifier is a stream that calls back when it has something to read
// and takes writes that must not wait (package mux's; yamux's has
// neither).
type readNotifier interface {
	NotifyReadable(f func()) bool
	TryWrite(p []byte) (int, error)
	ReadNow(p []byte) (int, error)
}

// notifyConn is a streamConn whose stream calls back when it has something
// to read: splice then runs the copy out of it only while bytes come, and
// an idle connection holds no goroutine for that direction.
type notifyConn struct {
	*streamConn
	rn readNotifier
}

// NotifyReadable calls f once a Read would not wait (bytes, EOF, an error,
// the read deadline, Close); it returns false if a Read would not wait now.
func (c notifyConn) NotifyReadable(f func()) bool { return c.rn.NotifyReadable(f) }

// ReadNow reads what the stream holds without waiting (see
// splice.NowReader): 0 and no error when it holds nothing.
func (c notifyConn) ReadNow(p []byte) (int, error) { return c.rn.ReadNow(p) }

// TryWrite writes what of p the stream takes without waiting (see
// splice.TryWriter); the write deadline holds as for Write.
func (c notifyConn) TryWrite(p []byte) (int, error) {
	if err := c.writeExpired(); err != nil {
		return 0, err
	}
	n, err := c.rn.TryWrite(p)
	return n, c.why(err)
}

// public is c as handed to the link's user: a notifyConn if its stream
// can call back.
func (c *streamConn) public() net.Conn {
	if rn, ok := c.muxStream.(readNotifier); ok {
		return notifyConn{c, rn}
	}
	return c
}

func (c *streamConn) Read(p []byte) (int, error) {
	n, err := c.muxStream.Read(p)
	return n, c.why(err)
}

// WaitRead waits until bytes, EOF or an error can be read, taking nothing:
// splice then holds no buffer for an idle connection. (yamux's Read of an
// empty slice waits for data and copies none.)
func (c *streamConn) WaitRead() error {
	_, err := c.muxStream.Read(nil)
	return c.why(err)
}

// Write honours the write deadline itself: yamux looks at it only when the
// stream's window is full.
func (c *streamConn) Write(p []byte) (int, error) {
	if err := c.writeExpired(); err != nil {
		return 0, err
	}
	n, err := c.muxStream.Write(p)
	return n, c.why(err)
}

// writeExpired is the error of a write past the write deadline.
func (c *streamConn) writeExpired() error {
	c.mu.Lock()
	d := c.writeDeadline
	c.mu.Unlock()
	if !d.IsZero() && !time.Now().Before(d) {
		return c.why(os.ErrDeadlineExceeded)
	}
	return nil
}

// why says why a read or write failed: our Close, the peer's cut or abort,
// or the link's end come out as such, never as yamux's deadline errors or
// as a clean EOF.
func (c *streamConn) why(err error) error {
	if err == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	eof := errors.Is(err, io.EOF)
	switch {
	case c.closed:
		return net.ErrClosed
	case c.peerCut, c.abortedPeer && !eof:
		return ErrAborted
	case eof && !c.sawEOF && c.sess.ys.IsClosed():
		// yamux ends every stream with EOF when the session dies. A FIN
		// that came just before may be taken for the loss; never the
		// reverse.
		return fmt.Errorf("%w: %w", link.ErrLinkClosed, io.ErrUnexpectedEOF)
	case eof:
		c.sawEOF = true
	case c.sess.ys.IsClosed():
		return fmt.Errorf("%w: %w", link.ErrLinkClosed, err)
	}
	return err
}

// CloseWrite sends FIN: the peer reads EOF; this side can still read.
func (c *streamConn) CloseWrite() error {
	c.mu.Lock()
	if c.wroteFIN {
		c.mu.Unlock()
		return nil
	}
	c.wroteFIN = true
	c.mu.Unlock()
	return c.why(c.muxStream.Close())
}

// SetLinger(0) makes the next Close a cut, as it makes a TCP Close a
// reset; other values restore the orderly close.
func (c *streamConn) SetLinger(sec int) error {
	c.mu.Lock()
	c.linger0 = sec == 0
	c.mu.Unlock()
	return nil
}

// Close ends both directions; blocked reads and writes return
// net.ErrClosed. It closes, or cuts after SetLinger(0) (see streamConn).
func (c *streamConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	cut := c.linger0 && !c.wroteFIN && !c.abortedPeer && !c.sess.ys.IsClosed() // a dead session answers nothing
	fin := !c.wroteFIN && !cut
	c.wroteFIN = c.wroteFIN || fin
	abort := !cut && !c.sawEOF && !c.abortedPeer
	if cut {
		c.cutting = true
		c.cutTimer = time.AfterFunc(cutAnswerTimeout, c.endCut)
	}
	c.mu.Unlock()
	_ = c.muxStream.SetDeadline(time.Unix(1, 0)) // wake a blocked Read or Write
	if fin {
		_ = c.muxStream.Close()
	}
	switch {
	case cut:
		c.sess.sendAbort(c.StreamID(), true) // the FIN waits for the answer (endCut)
		return nil
	case abort:
		c.sess.sendAbort(c.StreamID(), false)
	}
	c.sess.forget(c)
	return nil
}

// endCut ends a stream this side cut, once the peer answered (or did not
// in time, or the session ended): FIN, and forget it.
func (c *streamConn) endCut() {
	c.mu.Lock()
	if !c.cutting {
		c.mu.Unlock()
		return
	}
	c.cutting = false
	c.wroteFIN = true
	c.cutTimer.Stop()
	c.mu.Unlock()
	_ = c.muxStream.Close()
	c.sess.forget(c)
}

// peerAborted handles the peer's abort (cut: the peer cut the stream). On
// a stream this side cut, it is the peer's answer: the stream ends. Else
// the peer dropped the connection: blocked reads and writes return, the
// peer is answered, and our FIN frees the stream at both ends.
func (c *streamConn) peerAborted(cut bool) {
	c.mu.Lock()
	if c.cutting {
		c.mu.Unlock()
		c.endCut()
		return
	}
	if c.abortedPeer {
		c.mu.Unlock()
		return
	}
	c.abortedPeer, c.peerCut = true, cut
	fin := !c.wroteFIN
	c.wroteFIN = true
	c.mu.Unlock()
	_ = c.muxStream.SetDeadline(time.Unix(1, 0))
	if fin {
		_ = c.muxStream.Close()
	}
	if cut {
		c.sess.sendAbort(c.StreamID(), false) // the answer the cutter waits for
	}
}

// SetDeadline sets both deadlines (see SetReadDeadline, SetWriteDeadline).
func (c *streamConn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline bounds reads. Once the connection is closed or dropped
// by the peer, reads end at once whatever the deadline.
func (c *streamConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.abortedPeer {
		return nil
	}
	return c.muxStream.SetReadDeadline(t)
}

// SetWriteDeadline bounds writes, also those that need no wait.
func (c *streamConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writeDeadline = t
	if c.closed || c.abortedPeer {
		return nil
	}
	return c.muxStream.SetWriteDeadline(t)
}
