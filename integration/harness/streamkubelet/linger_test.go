package streamkubelet

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// A connection closed while what it wrote still waits in its send buffer,
// and while bytes it never read wait in its receive buffer (kube-apiserver's
// SPDY ping at an exec's end), still delivers all it wrote, then a clean
// end: no reset, nothing dropped. A plain TCP close answers those unread
// bytes with RST and drops the unsent rest.
func TestLingeringCloseDeliversWhatWasWritten(t *testing.T) {
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &lingerListener{Listener: tl}
	defer l.stop()
	defer l.Close()

	data := bytes.Repeat([]byte("kubelet-output-"), 256<<10/15)
	written := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			written <- err
			return
		}
		_ = c.(*lingerConn).SetWriteBuffer(4 << 20) // all of data fits: Write returns at once
		if _, err := c.Write(data); err != nil {
			written <- err
			return
		}
		written <- c.Close() // never read the client's ping
	}()

	// The client's receive buffer is small, so that most of data is still
	// in the server's send buffer when it closes.
	d := net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10) })
		return errors.Join(err, serr)
	}}
	c, err := d.Dial("tcp", tl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-written:
		if err != nil {
			t.Fatalf("server: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the server's write and close did not return")
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read %d of %d bytes, then %v", len(got), len(data), err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes of %d, not the same", len(got), len(data))
	}
	_ = c.Close()
	l.stop() // returns once the lingering reader saw the client's close
	if n := len(l.closing); n != 0 {
		t.Fatalf("%d connections still lingering", n)
	}
}
