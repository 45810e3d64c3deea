package streamkubelet

import (
	"io"
	"net"
	"sync"
	"time"
)

// lingerTimeout bounds how long a closed connection is read on, waiting for
// the peer's own close.
const lingerTimeout = 30 * time.Second

// lingerListener's connections close as net/http closes an answered
// connection (its closeWriteAndWait), which hijacked connections (exec,
// attach, port-forward) do not get: Close sends FIN after what was
// written, then reads on and discards until the peer closes too, for at
// most lingerTimeout, and only then closes the socket.
//
// Without it, an exec that ends while its output still sits in the socket's
// send buffer (the reader, kube-apiserver through the tunnel, is behind)
// can lose that output: the close leaves the socket unable to read, the
// next bytes from kube-apiserver (its SPDY ping, every 5 s) make the kernel
// answer with RST, and a reset drops what was not yet sent. kube-apiserver
// then sees the stream end early, and passes it on to kubectl as a success
// (kubectl cp: "unexpected EOF" in the middle of the tar). That race is the
// kubelet's and kube-apiserver's, with any tunnel or none; the stand-in
// closes the way that does not lose data, so that the tests see the
// tunnel's faults, not that race.
type lingerListener struct {
	net.Listener
	mu      sync.Mutex
	closing map[*lingerConn]struct{} // reading on after Close
	stopped bool
	wg      sync.WaitGroup
}

func (l *lingerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	return &lingerConn{TCPConn: tc, l: l}, nil
}

// stop ends every lingering connection now, and waits for their readers.
func (l *lingerListener) stop() {
	l.mu.Lock()
	l.stopped = true
	for c := range l.closing {
		_ = c.TCPConn.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

type lingerConn struct {
	*net.TCPConn
	l    *lingerListener
	once sync.Once
}

func (c *lingerConn) Close() error {
	err := net.ErrClosed
	c.once.Do(func() {
		err = nil
		l := c.l
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.stopped || c.TCPConn.CloseWrite() != nil {
			err = c.TCPConn.Close()
			return
		}
		if l.closing == nil {
			l.closing = map[*lingerConn]struct{}{}
		}
		l.closing[c] = struct{}{}
		_ = c.TCPConn.SetReadDeadline(time.Now().Add(lingerTimeout))
		l.wg.Go(func() {
			_, _ = io.Copy(io.Discard, c.TCPConn) // the peer's close, an error or the deadline
			l.mu.Lock()
			delete(l.closing, c)
			l.mu.Unlock()
			_ = c.TCPConn.Close()
		})
	})
	return err
}
