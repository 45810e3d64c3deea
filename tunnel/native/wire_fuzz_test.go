package native

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// wireErr reports whether err is an error the wire readers may return: a
// protocol violation, or the stream ending early.
func wireErr(err error) bool {
	return errors.Is(err, ErrProtocol) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

func ctlFrame(body string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	return append(b, body...)
}

// FuzzReadCtl: a control frame from the peer is a message, a protocol
// violation or the end of the stream, never more than its length prefix
// says (the next frame is untouched); a message read writes back to a
// frame that reads as the same message.
func FuzzReadCtl(f *testing.F) {
	for _, s := range []string{
		`{"t":"hello","version":1,"agentID":"a","identifiers":"host=n1&ipv4=10.0.0.5","token":"x"}`,
		`{"t":"welcome","version":1,"serverID":"s","serverCount":3}`, `{"t":"refuse","error":"no"}`,
		`{"t":"abort","stream":7}`, `{"t":"abort","stream":7,"error":"cut"}`, `{"t":"drain"}`,
		`{"t":""}`, `{}`, `[]`, `{"t":"x","stream":-1}`, `{"t":"x","stream":4294967296}`, `{"t":"hello","t":"drain"}`,
	} {
		f.Add(append(ctlFrame(s), ctlFrame(`{"t":"drain"}`)...), 0)
	}
	f.Add([]byte{0, 0, 0, 0}, 0)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff}, 4096)
	f.Add(ctlFrame(`{"t":"hello"`), 0)
	f.Fuzz(func(t *testing.T, data []byte, limit int) {
		r := bytes.NewReader(data)
		m, err := readCtl(r, limit)
		if err != nil {
			if !wireErr(err) {
				t.Fatalf("%q: unexpected error %v", data, err)
			}
			return
		}
		n := int(binary.BigEndian.Uint32(data))
		if used := len(data) - r.Len(); used != 4+n {
			t.Fatalf("%q: read %d bytes of a %d-byte frame", data, used, 4+n)
		}
		if max := limit; max > 0 && n > max || max <= 0 && n > MaxControlFrame {
			t.Fatalf("%q: a %d-byte frame passed the bound %d", data, n, limit)
		}
		if m.T == "" {
			t.Fatalf("%q: a message without a type", data)
		}
		var buf bytes.Buffer
		if err := writeCtl(&buf, m); err != nil {
			t.Fatal(err)
		}
		again, err := readCtl(&buf, MaxControlMessage)
		if err != nil || again != m {
			t.Fatalf("%+v written and read back: %+v, %v", m, again, err)
		}
	})
}

// FuzzReadHeader: a data stream's dial header is an address of 1 to
// maxAddress bytes, read exactly as dialHeader makes it (no other
// encoding of an address is accepted), or an error.
func FuzzReadHeader(f *testing.F) {
	for _, s := range []string{"10.0.0.5:443", "[fd00::5]:10250", "kubernetes.default.svc:443", "x"} {
		hdr, err := dialHeader(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append(hdr, "then data"...))
	}
	f.Add([]byte{'D', 0, 0})
	f.Add([]byte{'D', 0x04, 0x01, 'x'})
	f.Add([]byte{'X', 0, 1, 'x'})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		addr, err := readHeader(r)
		if err != nil {
			if !wireErr(err) {
				t.Fatalf("%q: unexpected error %v", data, err)
			}
			return
		}
		if len(addr) == 0 || len(addr) > maxAddress {
			t.Fatalf("%q: address of %d bytes accepted", data, len(addr))
		}
		hdr, err := dialHeader(addr)
		if err != nil {
			t.Fatalf("%q: the address read does not write: %v", data, err)
		}
		used := len(data) - r.Len()
		if !bytes.Equal(hdr, data[:used]) {
			t.Fatalf("%q: read %q, which writes as %q", data[:used], addr, hdr)
		}
	})
}

// FuzzReadAnswer: an agent's answer is a known code with a message, read
// exactly as writeAnswer writes it, or an error; a code maps to a reason
// and back.
func FuzzReadAnswer(f *testing.F) {
	for code, msg := range []string{"", "connection refused", "no route to host", "i/o timeout", "not allowed by policy", "boom", "cancelled"} {
		var b bytes.Buffer
		if err := writeAnswer(&b, byte(code), msg); err != nil {
			f.Fatal(err)
		}
		f.Add(append(b.Bytes(), "then data"...))
	}
	f.Add([]byte{7, 0, 0})
	f.Add([]byte{0, 0xff, 0xff, 'x'})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		code, msg, err := readAnswer(r)
		if err != nil {
			if !wireErr(err) {
				t.Fatalf("%q: unexpected error %v", data, err)
			}
			return
		}
		if int(code) >= len(answerReasons) {
			t.Fatalf("%q: code %d accepted", data, code)
		}
		if code > 0 && answerCode(answerReasons[code]) != code {
			t.Fatalf("code %d is reason %q, which is code %d", code, answerReasons[code], answerCode(answerReasons[code]))
		}
		used := len(data) - r.Len()
		if used != 3+len(msg) {
			t.Fatalf("%q: read %d bytes for a %d-byte message", data, used, len(msg))
		}
		if len(msg) <= 4096 {
			var b bytes.Buffer
			if err := writeAnswer(&b, code, msg); err != nil || !bytes.Equal(b.Bytes(), data[:used]) {
				t.Fatalf("%q: read (%d, %q), which writes as %q (%v)", data[:used], code, msg, b.Bytes(), err)
			}
		}
	})
}

// recordConn is the connection under a frameWriter in FuzzFrameWriter: it
// keeps what is written, and fails once failAfter bytes went through (0:
// never).
type recordConn struct {
	net.Conn  // nil: only Write and Close are called
	mu        sync.Mutex
	got       []byte
	failAfter int
	failed    bool
	closed    bool
}

var errRecordFull = errors.New("record: write failed")

func (c *recordConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	if c.failed || c.failAfter > 0 && len(c.got)+len(p) > c.failAfter {
		c.failed = true
		return 0, errRecordFull
	}
	c.got = append(c.got, p...)
	return len(p), nil
}

func (c *recordConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

// FuzzFrameWriter: whatever mix of frames yamux writes (data frames with
// bodies small and large, headers alone), the frameWriter puts exactly
// those bytes on the connection, in order, by Close; once a write failed,
// what went out is a prefix of them and every later write fails.
func FuzzFrameWriter(f *testing.F) {
	f.Add([]byte{0, 10, 1, 0, 2, 3, 0, 0}, uint16(0))
	f.Add([]byte{2, 200, 0, 5, 1, 1, 2, 255, 0, 1}, uint16(0))
	f.Add([]byte{0, 10, 2, 100, 0, 3, 1}, uint16(5000))
	f.Fuzz(func(t *testing.T, plan []byte, failAfter uint16) {
		if len(plan) > 256 {
			plan = plan[:256]
		}
		conn := &recordConn{failAfter: int(failAfter)}
		fw := newFrameWriter(conn)
		var want []byte
		failed := false
		for i := 0; i+1 < len(plan); i += 2 {
			hdr, body := yamuxFrame(plan[i], plan[i+1], i)
			for j, p := range [][]byte{hdr, body} {
				if len(p) == 0 {
					continue
				}
				_, err := fw.Write(p)
				// A data frame's header is only held for its body, which
				// then fails: the one write that may pass after a failure.
				if failed && err == nil && (j == 1 || len(body) == 0) {
					t.Fatalf("a write after a failed one succeeded")
				}
				if err != nil {
					failed = true
					continue
				}
				want = append(want, p...)
			}
		}
		_ = fw.Close()
		conn.mu.Lock()
		got, connFailed := conn.got, conn.failed
		conn.mu.Unlock()
		// Small frames go out behind the writer's back: a failure there
		// shows in later writes only.
		if !connFailed && !bytes.Equal(got, want) {
			t.Fatalf("wrote %d bytes, the connection got %d (or another order)", len(want), len(got))
		}
		if connFailed && !bytes.HasPrefix(want, got) {
			t.Fatalf("after a failure, the connection got bytes out of order")
		}
	})
}

// yamuxFrame makes the i-th frame of a plan: kind%3 is 0 for a small data
// frame, 1 for a window update (a header alone), 2 for a bulk data frame;
// size scales its body.
func yamuxFrame(kind, size byte, i int) (hdr, body []byte) {
	hdr = make([]byte, yamuxHeaderSize)
	binary.BigEndian.PutUint32(hdr[4:], uint32(i))
	n := int(size)
	switch kind % 3 {
	case 1:
		hdr[1] = 1
		binary.BigEndian.PutUint32(hdr[8:], uint32(n))
		return hdr, nil
	case 2:
		n *= 1 << 10
	}
	hdr[1] = yamuxTypeData
	binary.BigEndian.PutUint32(hdr[8:], uint32(n))
	return hdr, bytes.Repeat([]byte{byte(i)}, n)
}
