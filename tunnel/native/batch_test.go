package native

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"testing"
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
