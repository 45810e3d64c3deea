package native

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// ErrAborted is what reads return after the peer dropped the connection
// (a client's full close does that). It is a kind of net.ErrClosed.
var ErrAborted = fmt.Errorf("native link: connection dropped by the peer: %w", net.ErrClosed)

// streamConn is one tunneled connection: a yamux stream as a net.Conn with
// TCP's half-close. Close drops the connection; if the peer may still send,
// it is told to stop (abort), since yamux has no public reset.
type streamConn struct {
	*yamux.Stream
	sess *session

	mu          sync.Mutex
	wroteFIN    bool // CloseWrite or Close sent our FIN
	sawEOF      bool // the peer's FIN arrived
	closed      bool
	abortedPeer bool
}

func (c *streamConn) Read(p []byte) (int, error) {
	n, err := c.Stream.Read(p)
	return n, c.why(err)
}

// WaitRead waits until bytes, EOF or an error can be read, taking nothing:
// splice then holds no buffer for an idle connection. (yamux's Read of an
// empty slice waits for data and copies none.)
func (c *streamConn) WaitRead() error {
	_, err := c.Stream.Read(nil)
	return c.why(err)
}

func (c *streamConn) Write(p []byte) (int, error) {
	n, err := c.Stream.Write(p)
	return n, c.why(err)
}

// why says why a read or write failed: the peer's abort or our Close come
// out as such, not as yamux's deadline errors.
func (c *streamConn) why(err error) error {
	if err == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.abortedPeer:
		return ErrAborted
	case c.closed:
		return net.ErrClosed
	case errors.Is(err, io.EOF):
		c.sawEOF = true
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
	return c.Stream.Close()
}

// Close ends both directions. Blocked reads return net.ErrClosed.
func (c *streamConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	fin := !c.wroteFIN
	c.wroteFIN = true
	abort := !c.sawEOF && !c.abortedPeer
	c.mu.Unlock()
	_ = c.Stream.SetDeadline(time.Unix(1, 0)) // wake a blocked Read or Write
	if fin {
		_ = c.Stream.Close()
	}
	c.sess.forget(c)
	if abort {
		c.sess.sendAbort(c.StreamID())
	}
	return nil
}

// peerAborted ends the connection at the peer's request: blocked reads
// and writes return.
func (c *streamConn) peerAborted() {
	c.mu.Lock()
	c.abortedPeer = true
	c.mu.Unlock()
	_ = c.Stream.SetDeadline(time.Unix(1, 0))
}
