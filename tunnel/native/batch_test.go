package native

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// frameWriter keeps yamux's order whatever mix of small (queued) and large
// (written at once) frames comes, and Close writes what is still queued.
func TestFrameWriterKeepsOrderAndFlushesOnClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fw := newFrameWriter(c)
	var want bytes.Buffer
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		n := rng.IntN(512)
		if i%50 == 0 {
			n = 64<<10 + rng.IntN(256<<10) // bulk: written at once
		}
		body := bytes.Repeat([]byte{byte(i)}, n)
		hdr := make([]byte, yamuxHeaderSize)
		hdr[1] = yamuxTypeData
		binary.BigEndian.PutUint32(hdr[4:], uint32(i))
		binary.BigEndian.PutUint32(hdr[8:], uint32(n))
		// As yamux's send loop does: the header, then the body.
		if _, err := fw.Write(hdr); err != nil {
			t.Fatal(err)
		}
		want.Write(hdr)
		if n > 0 {
			if _, err := fw.Write(body); err != nil {
				t.Fatal(err)
			}
			want.Write(body)
		}
	}
	// Small frames last: they are still queued when Close comes.
	for i := range 100 {
		f := []byte{0, 1, 0, 0, 0, 0, 0, byte(i), 0, 0, 0, 0} // a window update
		if _, err := fw.Write(f); err != nil {
			t.Fatal(err)
		}
		want.Write(f)
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	b := <-got
	if !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("the peer read %d bytes, want %d in order", len(b), want.Len())
	}
	if _, err := fw.Write([]byte("late")); err == nil {
		t.Fatal("a write after Close succeeded")
	}
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// A RawConn holds a read buffer only while it has fetched bytes not yet
// read, gives every byte in order whatever the reader's sizes, and reports
// the peer's close as EOF: an idle link holds no buffer.
func TestRawConnHoldsNoBufferIdle(t *testing.T) {
	c, s := tcpPair(t)
	r := WrapRaw(s)
	if r.rbuf != nil || r.w != nil {
		t.Fatal("a new RawConn holds a buffer")
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	go func() {
		_, _ = c.Write(data)
		c.Close()
	}()
	var got bytes.Buffer
	sizes := []int{5, 1, 16 << 10, 300, 512 << 10}
	for i := 0; ; i++ {
		p := make([]byte, sizes[i%len(sizes)])
		n, err := r.Read(p)
		got.Write(p[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i > 1<<20 {
			t.Fatal("no EOF after the peer closed")
		}
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("read %d bytes, want the %d written, in order", got.Len(), len(data))
	}
	if r.rbuf != nil {
		t.Fatal("the RawConn still holds a read buffer with nothing left to read")
	}
}

// The flusher ends once the queue is written and gives its buffers back to
// the pool: an idle link holds neither a goroutine nor a queue.
func TestFrameWriterIdleHoldsNoFlusher(t *testing.T) {
	c, s := tcpPair(t)
	go func() { _, _ = io.Copy(io.Discard, s) }()
	fw := newFrameWriter(c)
	f := []byte{0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0} // a window update: queued
	for range 10000 {                               // a burst: 120 KB queued at most
		if _, err := fw.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	idle := func() bool {
		fw.mu.Lock()
		defer fw.mu.Unlock()
		return !fw.flushing && fw.queue == nil && fw.spare == nil
	}
	for i := 0; !idle(); i++ {
		if i == 1000 {
			t.Fatal("the flusher still runs, or a queue buffer is held, 10 s after the last frame")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
}

// Against a peer that stopped reading, the queue stays within its pooled
// buffer (appending never grows it), the writer waits rather than queue
// more, and Close ends the wait and gives both buffers back: a stalled
// link neither grows nor keeps a queue.
func TestFrameWriterStalledPeerKeepsPooledQueue(t *testing.T) {
	c, _ := tcpPair(t) // the peer never reads
	fw := newFrameWriter(c)
	f := make([]byte, yamuxHeaderSize+1000) // a data frame, header and body
	f[1] = yamuxTypeData
	binary.BigEndian.PutUint32(f[8:], 1000)
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := fw.Write(f[:yamuxHeaderSize]); err != nil {
				done <- err
				return
			}
			if _, err := fw.Write(f[yamuxHeaderSize:]); err != nil {
				done <- err
				return
			}
		}
	}()
	full := func() bool {
		fw.mu.Lock()
		defer fw.mu.Unlock()
		pooled := func(c int) bool { return c == 0 || c == smallQueueSize || c == queueBufSize }
		if !pooled(cap(fw.queue)) || !pooled(cap(fw.spare)) {
			t.Errorf("queue buffers grew: cap %d and %d, want %d or %d", cap(fw.queue), cap(fw.spare), smallQueueSize, queueBufSize)
		}
		return len(fw.queue) >= maxQueue
	}
	for i := 0; !full(); i++ {
		if i == 1000 {
			t.Fatal("the queue did not fill against a peer that does not read")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("a write returned (%v) with the queue full", err)
	case <-time.After(50 * time.Millisecond):
	}
	start := time.Now()
	_ = fw.Close()
	if d := time.Since(start); d > closeFlushTimeout+5*time.Second {
		t.Fatalf("Close took %v against a stalled peer", d)
	}
	if err := <-done; err == nil {
		t.Fatal("the waiting write succeeded after Close")
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.flushing || fw.queue != nil || fw.spare != nil {
		t.Fatalf("after Close: flushing %v, queue %d, spare %d bytes held", fw.flushing, cap(fw.queue), cap(fw.spare))
	}
}
