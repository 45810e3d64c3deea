package mux

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/goleak"

	"isthmus.dev/tunnel/link/linktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// session and stream are what the tests need of both implementations.
type session interface {
	open() (stream, error)
	accept() (stream, error)
	Ping() (time.Duration, error)
	Close() error
	IsClosed() bool
	NumStreams() int
}

type stream interface {
	io.ReadWriteCloser
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
	StreamID() uint32
}

type muxSession struct{ *Session }

func (m muxSession) open() (stream, error) {
	st, err := m.OpenStream()
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (m muxSession) accept() (stream, error) {
	st, err := m.AcceptStream()
	if err != nil {
		return nil, err
	}
	return st, nil
}

type yamuxSession struct{ *yamux.Session }

func (y yamuxSession) open() (stream, error) {
	st, err := y.OpenStream()
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (y yamuxSession) accept() (stream, error) {
	st, err := y.AcceptStream()
	if err != nil {
		return nil, err
	}
	return st, nil
}

// testConfig is the configuration of both ends.
type testConfig struct {
	backlog int
	window  uint32
	timeout time.Duration
}

var defaults = testConfig{backlog: 256, window: 256 << 10, timeout: 10 * time.Second}

func (c testConfig) mux() *Config {
	return &Config{AcceptBacklog: c.backlog, MaxStreamWindowSize: c.window, ConnectionWriteTimeout: c.timeout}
}

func (c testConfig) yamux() *yamux.Config {
	y := yamux.DefaultConfig()
	y.AcceptBacklog = c.backlog
	y.MaxStreamWindowSize = c.window
	y.ConnectionWriteTimeout = c.timeout
	y.EnableKeepAlive = false
	y.StreamOpenTimeout = 0
	y.StreamCloseTimeout = 0
	y.LogOutput = io.Discard
	return y
}

// impl starts one end of a session.
type impl struct {
	name string
	mux  bool
}

func (i impl) start(t testing.TB, conn io.ReadWriteCloser, client bool, cfg testConfig) session {
	t.Helper()
	var s session
	var err error
	switch {
	case i.mux && client:
		var ms *Session
		ms, err = Client(conn, cfg.mux())
		s = muxSession{ms}
	case i.mux:
		var ms *Session
		ms, err = Server(conn, cfg.mux())
		s = muxSession{ms}
	case client:
		var ys *yamux.Session
		ys, err = yamux.Client(conn, cfg.yamux())
		s = yamuxSession{ys}
	default:
		var ys *yamux.Session
		ys, err = yamux.Server(conn, cfg.yamux())
		s = yamuxSession{ys}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

var (
	muxImpl   = impl{"mux", true}
	yamuxImpl = impl{"yamux", false}
	// pairs: client, server. At least one end is mux.
	pairs = [][2]impl{{muxImpl, yamuxImpl}, {yamuxImpl, muxImpl}, {muxImpl, muxImpl}}
)

// transports return the two ends of a connection.
var transports = []struct {
	name string
	conn func(t testing.TB) (client, server net.Conn)
}{
	{"pipe", func(testing.TB) (net.Conn, net.Conn) { return net.Pipe() }},
	{"tcp", tcpPair},
}

func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return c, r.c
}

type pair struct {
	client, server session
	cImpl, sImpl   impl
}

// forEach runs f for every pair of implementations over every transport.
func forEach(t *testing.T, cfg testConfig, f func(t *testing.T, p *pair)) {
	for _, tr := range transports {
		for _, ps := range pairs {
			t.Run(fmt.Sprintf("%s/%s-%s", tr.name, ps[0].name, ps[1].name), func(t *testing.T) {
				cc, sc := tr.conn(t)
				p := &pair{cImpl: ps[0], sImpl: ps[1]}
				p.client = ps[0].start(t, cc, true, cfg)
				p.server = ps[1].start(t, sc, false, cfg)
				f(t, p)
			})
		}
	}
}

// streamPair opens a stream at from and accepts it at to.
func streamPair(t testing.TB, from, to session) (stream, stream) {
	t.Helper()
	a, err := from.open()
	if err != nil {
		t.Fatal("open:", err)
	}
	// yamux's open is acknowledged only by the accept; the peer sees the
	// stream once data or the SYN arrives.
	b, err := to.accept()
	if err != nil {
		t.Fatal("accept:", err)
	}
	return a, b
}

func pattern(seed uint64, n int) []byte {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	b := make([]byte, n)
	_, _ = r.Read(b)
	return b
}

func echo(st stream) {
	_, _ = io.Copy(st, st)
	_ = st.Close()
}

// exchange writes msg on st, half-closes, and returns all it reads.
func exchange(st stream, msg []byte) ([]byte, error) {
	werr := make(chan error, 1)
	go func() {
		_, err := st.Write(msg)
		if err == nil {
			err = st.Close()
		}
		werr <- err
	}()
	got, err := io.ReadAll(st)
	if err != nil {
		return got, err
	}
	return got, <-werr
}

func isReset(err error) bool {
	return errors.Is(err, ErrConnectionReset) || errors.Is(err, yamux.ErrConnectionReset)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestEchoBothDirections(t *testing.T) {
	forEach(t, defaults, func(t *testing.T, p *pair) {
		for i, dir := range [][2]session{{p.client, p.server}, {p.server, p.client}} {
			a, b := streamPair(t, dir[0], dir[1])
			go echo(b)
			msg := pattern(uint64(i), 1000)
			got, err := exchange(a, msg)
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("direction %d: err %v, got %d bytes equal %v", i, err, len(got), bytes.Equal(got, msg))
			}
		}
	})
}

// TestLargeTransfer sends several windows each way at once: flow control
// (window updates both ways) and byte order.
func TestLargeTransfer(t *testing.T) {
	forEach(t, defaults, func(t *testing.T, p *pair) {
		a, b := streamPair(t, p.client, p.server)
		go echo(b)
		msg := pattern(7, 3<<20+123)
		got, err := exchange(a, msg)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("err %v, got %d of %d bytes, equal %v", err, len(got), len(msg), bytes.Equal(got, msg))
		}
	})
}

func TestHalfClose(t *testing.T) {
	forEach(t, defaults, func(t *testing.T, p *pair) {
		a, b := streamPair(t, p.client, p.server)
		if _, err := a.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(b)
		if err != nil || string(got) != "hello" {
			t.Fatalf("server read %q, %v", got, err)
		}
		if _, err := b.Write([]byte("world")); err != nil {
			t.Fatal("write after the peer's FIN:", err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		got, err = io.ReadAll(a)
		if err != nil || string(got) != "world" {
			t.Fatalf("client read after its own Close: %q, %v", got, err)
		}
		if _, err := a.Write([]byte("x")); !errors.Is(err, ErrStreamClosed) && !errors.Is(err, yamux.ErrStreamClosed) {
			t.Fatalf("write after Close: %v, want ErrStreamClosed", err)
		}
		// Both FINs seen: both ends forget the stream (the server's FIN
		// reached the client; the client's reached the server first).
		waitFor(t, "the streams to be forgotten", func() bool {
			return p.client.NumStreams() == 0 && p.server.NumStreams() == 0
		})
	})
}

// waitFor polls cond, a bounded number of times.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for range 2000 {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("timed out waiting for", what)
}

// TestBacklogReset: a SYN beyond the acceptor's backlog is answered with
// RST; the streams within it work.
func TestBacklogReset(t *testing.T) {
	for _, tr := range transports {
		for _, ps := range pairs {
			t.Run(fmt.Sprintf("%s/%s-%s", tr.name, ps[0].name, ps[1].name), func(t *testing.T) {
				cc, sc := tr.conn(t)
				client := ps[0].start(t, cc, true, defaults)
				server := ps[1].start(t, sc, false, testConfig{backlog: 2, window: defaults.window, timeout: defaults.timeout})
				var sts []stream
				for range 3 {
					st, err := client.open()
					if err != nil {
						t.Fatal(err)
					}
					sts = append(sts, st)
				}
				if _, err := sts[2].Read(make([]byte, 1)); !isReset(err) {
					t.Fatalf("stream beyond the backlog: read %v, want a reset", err)
				}
				for i := range 2 {
					b, err := server.accept()
					if err != nil {
						t.Fatal(err)
					}
					go echo(b)
					if got, err := exchange(sts[i], []byte("hi")); err != nil || string(got) != "hi" {
						t.Fatalf("stream %d: %q, %v", i, got, err)
					}
				}
			})
		}
	}
}

func TestPing(t *testing.T) {
	forEach(t, defaults, func(t *testing.T, p *pair) {
		for _, s := range []session{p.client, p.server} {
			if _, err := s.Ping(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestRemoteGoAway: after the peer's GoAway, OpenStream fails with
// ErrRemoteGoAway; streams already open keep working.
func TestRemoteGoAway(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			cc, sc := tr.conn(t)
			client := muxImpl.start(t, cc, true, defaults).(muxSession)
			server := yamuxImpl.start(t, sc, false, defaults).(yamuxSession)
			a, b := streamPair(t, client, server)
			if err := server.GoAway(); err != nil {
				t.Fatal(err)
			}
			if _, err := client.Ping(); err != nil { // the GoAway came before the answer
				t.Fatal(err)
			}
			if _, err := client.OpenStream(); !errors.Is(err, ErrRemoteGoAway) {
				t.Fatalf("open after GoAway: %v, want ErrRemoteGoAway", err)
			}
			go echo(b)
			if got, err := exchange(a, []byte("still")); err != nil || string(got) != "still" {
				t.Fatalf("open stream after GoAway: %q, %v", got, err)
			}
		})
	}
}

// TestCloseSendsGoAway: Close writes GoAway(normal), then closes.
func TestCloseSendsGoAway(t *testing.T) {
	c, peer := net.Pipe()
	s, err := Client(c, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	frames := readFrames(peer)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	h, ok := <-frames
	if !ok || h.msgType() != typeGoAway || h.length() != goAwayNormal {
		t.Fatalf("got frame %v (ok %v), want GoAway normal", h, ok)
	}
	if !s.IsClosed() {
		t.Fatal("not closed")
	}
	select {
	case <-s.CloseChan():
	default:
		t.Fatal("CloseChan not closed")
	}
	if _, err := s.OpenStream(); !errors.Is(err, ErrSessionShutdown) {
		t.Fatalf("open after Close: %v", err)
	}
	if _, err := s.AcceptStream(); !errors.Is(err, ErrSessionShutdown) {
		t.Fatalf("accept after Close: %v", err)
	}
	peer.Close()
	for range frames {
	}
}

// readFrames reads frames from c (dropping bodies) until it fails.
func readFrames(c net.Conn) <-chan header {
	ch := make(chan header, 1024)
	go func() {
		defer close(ch)
		for {
			var h header
			if _, err := io.ReadFull(c, h[:]); err != nil {
				return
			}
			if h.msgType() == typeData {
				if _, err := io.CopyN(io.Discard, c, int64(h.length())); err != nil {
					return
				}
			}
			ch <- h
		}
	}()
	return ch
}

// TestCloseFailsPending: closing a mux session ends its streams' blocked
// reads (io.EOF, after the data already received) and writes
// (ErrSessionShutdown).
func TestCloseFailsPending(t *testing.T) {
	forEach(t, defaults, func(t *testing.T, p *pair) {
		ms, other := p.client, p.server
		if !p.cImpl.mux {
			ms, other = p.server, p.client
		}
		a, _ := streamPair(t, ms, other)
		kept, keptPeer := streamPair(t, ms, other)
		if _, err := keptPeer.Write([]byte("kept")); err != nil {
			t.Fatal(err)
		}
		if _, err := ms.Ping(); err != nil { // the data came before the answer
			t.Fatal(err)
		}
		readErr := make(chan error, 1)
		go func() { _, err := a.Read(make([]byte, 1)); readErr <- err }()
		writeErr := make(chan error, 1)
		go func() { _, err := a.Write(make([]byte, 1<<20)); writeErr <- err }() // beyond the window: blocks
		_ = ms.Close()
		if err := <-readErr; err != io.EOF {
			t.Fatalf("blocked read: %v, want io.EOF", err)
		}
		if err := <-writeErr; !errors.Is(err, ErrSessionShutdown) {
			t.Fatalf("blocked write: %v, want ErrSessionShutdown", err)
		}
		if _, err := a.Read(nil); err != io.EOF {
			t.Fatalf("read after close: %v", err)
		}
		if _, err := a.Write([]byte("x")); !errors.Is(err, ErrSessionShutdown) {
			t.Fatalf("write after close: %v", err)
		}
		if got, err := io.ReadAll(kept); err != nil || string(got) != "kept" {
			t.Fatalf("data received before the close: %q, %v", got, err)
		}
	})
}

func TestDeadlines(t *testing.T) {
	forEach(t, defaults, func(t *testing.T, p *pair) {
		a, b := streamPair(t, p.client, p.server)
		for _, st := range []stream{a, b} {
			_ = st.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if _, err := st.Read(make([]byte, 1)); !isTimeout(err) {
				t.Fatalf("read past the deadline: %v, want a timeout", err)
			}
			_ = st.SetReadDeadline(time.Time{})
		}
		for _, st := range []stream{a, b} {
			// A write that exhausts the window blocks, until the deadline.
			_ = st.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
			if _, err := st.Write(make([]byte, 2*defaults.window)); !isTimeout(err) {
				t.Fatalf("write past the deadline: %v, want a timeout", err)
			}
			_ = st.SetWriteDeadline(time.Time{})
		}
		// A deadline set while a Read waits wakes it.
		done := make(chan error, 1)
		c, _ := streamPair(t, p.client, p.server)
		go func() { _, err := c.Read(nil); done <- err }()
		_ = c.SetDeadline(time.Unix(1, 0))
		if err := <-done; !isTimeout(err) {
			t.Fatalf("read woken by a past deadline: %v", err)
		}
	})
}

var _ net.Conn = (*Stream)(nil)

func TestMuxTimeoutError(t *testing.T) {
	if !errors.Is(ErrTimeout, os.ErrDeadlineExceeded) || !isTimeout(ErrTimeout) {
		t.Fatal("ErrTimeout is not a timeout")
	}
}

// TestManyStreams: 200 streams at once, byte-exact, both directions.
func TestManyStreams(t *testing.T) {
	forEach(t, defaults, func(t *testing.T, p *pair) {
		const n = 200
		var wg sync.WaitGroup
		errs := make(chan error, 2*n)
		go func() {
			for range n {
				b, err := p.server.accept()
				if err != nil {
					return
				}
				go echo(b)
			}
		}()
		for i := range n {
			wg.Go(func() {
				st, err := p.client.open()
				if err != nil {
					errs <- err
					return
				}
				msg := pattern(uint64(i), 8<<10+i)
				got, err := exchange(st, msg)
				if err == nil && !bytes.Equal(got, msg) {
					err = fmt.Errorf("stream %d: got %d bytes, want %d, corrupted", i, len(got), len(msg))
				}
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	})
}

// TestHeadOfLine: a stream nobody reads fills its window; its writer
// blocks and the other streams carry on.
func TestHeadOfLine(t *testing.T) {
	forEach(t, defaults, func(t *testing.T, p *pair) {
		stuck, stuckPeer := streamPair(t, p.client, p.server)
		blocked := make(chan error, 1)
		go func() { _, err := stuck.Write(make([]byte, 4*defaults.window)); blocked <- err }()
		for i := range 5 {
			a, b := streamPair(t, p.client, p.server)
			go echo(b)
			msg := pattern(uint64(i), 100<<10)
			if got, err := exchange(a, msg); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("stream %d beside a stalled one: %v", i, err)
			}
		}
		select {
		case err := <-blocked:
			t.Fatalf("the stalled stream's write returned: %v", err)
		default:
		}
		// Reading the stalled stream lets its writer finish.
		go func() { _, _ = io.Copy(io.Discard, stuckPeer) }()
		if err := <-blocked; err != nil {
			t.Fatal(err)
		}
		_ = stuck.Close()
	})
}

// TestStalledPeer: the peer sends but does not read. The receive
// goroutine goes on reading (it queues the pings' answers and the
// refusals, never writes them itself); once the peer reads, every answer
// is there; while it does not, Close returns (it gives up on the GoAway).
func TestStalledPeer(t *testing.T) {
	for _, resume := range []bool{true, false} {
		t.Run(fmt.Sprintf("resume=%v", resume), func(t *testing.T) {
			c, peer := net.Pipe()
			defer peer.Close()
			cfg := DefaultConfig()
			cfg.AcceptBacklog = 1
			s, err := Server(c, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			const pings = 1000
			buf := appendFrame(nil, typeWindowUpdate, flagSYN, 1, 0, nil)
			buf = appendFrame(buf, typeWindowUpdate, flagSYN, 3, 0, nil) // beyond the backlog: RST
			for i := range pings {
				buf = appendFrame(buf, typePing, flagSYN, 0, uint32(i), nil)
			}
			// net.Pipe is unbuffered: the write completes only if the
			// session reads it all, while its own writes are stuck.
			_ = peer.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := peer.Write(buf); err != nil {
				t.Fatal("the session stopped reading:", err)
			}
			st, err := s.AcceptStream()
			if err != nil || st.StreamID() != 1 {
				t.Fatalf("accept: %v", err)
			}
			if !resume {
				_ = s.Close() // within closeFlushTimeout
				if _, err := st.Write([]byte("x")); !errors.Is(err, ErrSessionShutdown) {
					t.Fatal(err)
				}
				return
			}
			frames := readFrames(peer)
			acks, rst, ack := 0, false, false
			for !(acks == pings && rst && ack) {
				h, ok := <-frames
				if !ok {
					t.Fatalf("connection ended after %d ping answers (rst %v, ack %v)", acks, rst, ack)
				}
				switch {
				case h.msgType() == typePing && h.flags() == flagACK && h.length() == uint32(acks):
					acks++
				case h.msgType() == typeWindowUpdate && h.streamID() == 3 && h.flags() == flagRST:
					rst = true
				case h.msgType() == typeWindowUpdate && h.streamID() == 1 && h.flags() == flagACK:
					ack = true
				default:
					t.Fatalf("unexpected frame % x", h[:])
				}
			}
			_ = s.Close()
			peer.Close()
			for range frames {
			}
		})
	}
}

// TestWriteTimeout: a write blocked on the connection for
// ConnectionWriteTimeout closes the session.
func TestWriteTimeout(t *testing.T) {
	c, peer := net.Pipe()
	defer peer.Close()
	cfg := DefaultConfig()
	cfg.ConnectionWriteTimeout = 50 * time.Millisecond
	s, err := Client(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The SYN's write blocks (nobody reads the pipe).
	if _, err := s.OpenStream(); !errors.Is(err, ErrSessionShutdown) || !errors.Is(err, ErrConnectionWriteTimeout) {
		t.Fatalf("open: %v", err)
	}
	<-s.CloseChan()
	if _, err := s.AcceptStream(); !errors.Is(err, ErrConnectionWriteTimeout) {
		t.Fatalf("session ended with %v, want ErrConnectionWriteTimeout", err)
	}
}

// TestPingTimeout: an unanswered ping closes the session.
func TestPingTimeout(t *testing.T) {
	c, peer := net.Pipe()
	frames := readFrames(peer) // reads, never answers
	cfg := DefaultConfig()
	cfg.ConnectionWriteTimeout = 50 * time.Millisecond
	s, err := Client(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Ping(); !errors.Is(err, ErrTimeout) {
		t.Fatalf("ping: %v, want ErrTimeout", err)
	}
	if !s.IsClosed() {
		t.Fatal("session still open")
	}
	if _, err := s.AcceptStream(); !errors.Is(err, ErrKeepAliveTimeout) {
		t.Fatalf("session ended with %v", err)
	}
	peer.Close()
	for range frames {
	}
}

// TestProtocolErrors: a peer breaking the protocol ends the session with
// the error, after a GoAway with the protocol error code.
func TestProtocolErrors(t *testing.T) {
	syn := appendFrame(nil, typeWindowUpdate, flagSYN, 1, 0, nil)
	cases := []struct {
		name  string
		wire  []byte
		want  error
		proto bool
	}{
		{"version", []byte{1, typePing, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}, ErrInvalidVersion, true},
		{"type", []byte{0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, ErrInvalidMsgType, true},
		{"window", append(append([]byte{}, syn...), appendFrame(nil, typeData, 0, 1, initialStreamWindow+1, make([]byte, initialStreamWindow+1))...), ErrRecvWindowExceeded, true},
		{"duplicate", append(append([]byte{}, syn...), syn...), ErrDuplicateStream, true},
		{"fin twice", append(append([]byte{}, syn...), append(appendFrame(nil, typeWindowUpdate, flagFIN, 1, 0, nil), appendFrame(nil, typeWindowUpdate, flagFIN, 1, 0, nil)...)...), ErrUnexpectedFlag, true},
		{"remote error", appendFrame(nil, typeGoAway, 0, 0, goAwayProtoErr, nil), ErrRemoteProtocol, false},
		{"peer closed", nil, io.EOF, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, peer := net.Pipe()
			s, err := Server(c, DefaultConfig())
			if err != nil {
				t.Fatal(err)
			}
			frames := readFrames(peer)
			if tc.wire == nil {
				peer.Close()
			} else {
				_, _ = peer.Write(tc.wire) // fails if the session closes before reading it all
			}
			<-s.CloseChan()
			if _, err := s.AcceptStream(); !errors.Is(err, tc.want) {
				t.Fatalf("session ended with %v, want %v", err, tc.want)
			}
			sawGoAway := false
			for h := range frames {
				if h.msgType() == typeGoAway && h.length() == goAwayProtoErr {
					sawGoAway = true
				}
			}
			if sawGoAway != tc.proto {
				t.Fatalf("GoAway(protocol error) sent: %v, want %v", sawGoAway, tc.proto)
			}
			peer.Close()
		})
	}
}

// TestConfig refuses what yamux refuses.
func TestConfig(t *testing.T) {
	c, peer := net.Pipe()
	defer c.Close()
	defer peer.Close()
	for _, cfg := range []*Config{nil, {}, {AcceptBacklog: 1, MaxStreamWindowSize: 1, ConnectionWriteTimeout: time.Second}} {
		if _, err := Client(c, cfg); err == nil {
			t.Fatalf("config %+v accepted", cfg)
		}
	}
}

// BenchmarkPingPong: streams each doing 1 KiB request/response round trips
// over TLS 1.3 on loopback; ns/op is per round trip (all streams
// together).
func BenchmarkPingPong(b *testing.B) {
	for _, n := range []int{100, 1000} {
		for _, im := range []impl{yamuxImpl, muxImpl} {
			b.Run(fmt.Sprintf("%s/streams=%d", im.name, n), func(b *testing.B) { benchPingPong(b, im, n) })
		}
	}
}

func benchPingPong(b *testing.B, im impl, n int) {
	sconf, cconf := linktest.TLS(b)
	sconf.MinVersion, cconf.MinVersion = tls.VersionTLS13, tls.VersionTLS13
	cc, sc := tcpPair(b)
	tc, ts := tls.Client(cc, cconf), tls.Server(sc, sconf)
	cfg := testConfig{backlog: 4096, window: 4 << 20, timeout: 10 * time.Second}
	client := im.start(b, tc, true, cfg)
	server := im.start(b, ts, false, cfg)
	go func() {
		for {
			st, err := server.accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 1024)
				for {
					if _, err := io.ReadFull(st, buf); err != nil {
						_ = st.Close()
						return
					}
					if _, err := st.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	sts := make([]stream, n)
	for i := range sts {
		st, err := client.open()
		if err != nil {
			b.Fatal(err)
		}
		sts[i] = st
	}
	per := (b.N + n - 1) / n
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for _, st := range sts {
		wg.Go(func() {
			buf := make([]byte, 1024)
			for range per {
				if _, err := st.Write(buf); err != nil {
					b.Error(err)
					return
				}
				if _, err := io.ReadFull(st, buf); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	for _, st := range sts {
		_ = st.Close()
	}
}

// hookConn is a connection whose writes run a hook, and whose reads wait
// for Close.
type hookConn struct {
	mu      sync.Mutex
	writes  int
	onWrite func(n int)
	once    sync.Once
	closed  chan struct{}
}

func (c *hookConn) Read([]byte) (int, error) { <-c.closed; return 0, io.EOF }
func (c *hookConn) Close() error             { c.once.Do(func() { close(c.closed) }); return nil }
func (c *hookConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	n := c.writes
	c.mu.Unlock()
	c.onWrite(n)
	return len(p), nil
}

// TestWriterHandsOff: a caller that became the writer while others keep
// appending returns after a few batches; a goroutine writes the rest.
func TestWriterHandsOff(t *testing.T) {
	release := make(chan struct{})
	c := &hookConn{closed: make(chan struct{})}
	var s *Session
	c.onWrite = func(n int) {
		if n < 100 {
			// Another goroutine appended while this batch was written.
			_, _ = s.push(typePing, flagACK, 0, uint32(n), nil, modeControl)
		}
		if n == 10 {
			<-release // the writer is the caller: it would never return
		}
	}
	var err error
	s, err = Client(c, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	opened := make(chan error, 1)
	go func() { _, err := s.OpenStream(); opened <- err }()
	select {
	case err := <-opened:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OpenStream is still writing the frames of others")
	}
	close(release)
	waitFor(t, "the flusher to write the rest", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.writes >= 100
	})
	_ = s.Close()
}

// TestReadEmptyWaits: Read of an empty slice waits for data and takes
// none (native's WaitRead relies on it, as on yamux).
func TestReadEmptyWaits(t *testing.T) {
	forEach(t, defaults, func(t *testing.T, p *pair) {
		a, b := streamPair(t, p.client, p.server)
		done := make(chan error, 1)
		go func() { _, err := b.Read(nil); done <- err }()
		if _, err := a.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2)
		if n, err := b.Read(buf); err != nil || string(buf[:n]) != "x" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
		_ = a.Close()
		if n, err := b.Read(nil); n != 0 || err != io.EOF {
			t.Fatalf("after FIN: %d, %v", n, err)
		}
	})
}

// TestWirePattern: for the same reads, mux sends the same frames as yamux:
// the SYN of an open, the ACK of an accept, and the window updates of a
// reader (a yamux peer sees the same flow control).
func TestWirePattern(t *testing.T) {
	const window = 1 << 20
	cfg := testConfig{backlog: 16, window: window, timeout: 10 * time.Second}
	run := func(im impl) []header {
		c, peer := net.Pipe()
		s := im.start(t, c, false, cfg)
		// Collect the window updates the server sends; those of stream 1
		// give the peer its credit.
		var got []header
		updates := make(chan uint32, 1024)
		collected := make(chan struct{})
		go func() {
			defer close(collected)
			for h := range readFrames(peer) {
				if h.msgType() != typeWindowUpdate {
					continue
				}
				got = append(got, h)
				if h.streamID() == 1 {
					updates <- h.length()
				}
			}
		}()
		if _, err := s.open(); err != nil { // the server's SYN
			t.Fatal(err)
		}
		// The peer opens stream 1 and sends 3 MiB as the window allows;
		// the server accepts it (ACK) and reads 4 KiB at a time.
		const total = 3 << 20
		sent := make(chan error, 1)
		go func() {
			_, err := peer.Write(appendFrame(nil, typeWindowUpdate, flagSYN, 1, 0, nil))
			credit := initialStreamWindow
			for off := 0; off < total && err == nil; {
				for credit == 0 {
					credit += <-updates
				}
				n := min(16<<10, int(credit), total-off)
				_, err = peer.Write(appendFrame(nil, typeData, 0, 1, uint32(n), make([]byte, n)))
				credit -= uint32(n)
				off += n
			}
			sent <- err
		}()
		st, err := s.accept()
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4<<10)
		for read := 0; read < total; read += len(buf) {
			if _, err := io.ReadFull(st, buf); err != nil {
				t.Fatal(err)
			}
		}
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
		_ = s.Close()
		peer.Close()
		<-collected
		return got
	}
	want, got := run(yamuxImpl), run(muxImpl)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("mux sent\n%v\nyamux sent\n%v", got, want)
	}
	if len(want) < 6 {
		t.Fatalf("only %d frames: the test did not exercise window updates", len(want))
	}
}

// TestNotifyReadable: the callback comes once a Read would not wait (data,
// the read deadline, the peer's FIN, the session's end), once per call,
// and not before; NotifyReadable refuses while a Read would not wait. The
// peer is mux or yamux.
func TestNotifyReadable(t *testing.T) {
	forEach(t, defaults, func(t *testing.T, p *pair) {
		for _, dir := range []struct {
			name     string
			from, to session
		}{{"client-to-server", p.client, p.server}, {"server-to-client", p.server, p.client}} {
			if _, ok := dir.to.(muxSession); !ok {
				continue // the reading end is yamux's
			}
			t.Run(dir.name, func(t *testing.T) {
				a, s := streamPair(t, dir.from, dir.to)
				b := s.(*Stream)
				calls := make(chan struct{}, 4)
				f := func() { calls <- struct{}{} }
				called := func(what string) {
					t.Helper()
					select {
					case <-calls:
					case <-time.After(10 * time.Second):
						t.Fatalf("no callback after %s", what)
					}
					select {
					case <-calls:
						t.Fatalf("a second callback after %s", what)
					default:
					}
				}
				notCalled := func(what string) {
					t.Helper()
					select {
					case <-calls:
						t.Fatalf("a callback after %s, with nothing to read", what)
					default:
					}
				}

				if !b.NotifyReadable(f) {
					t.Fatal("NotifyReadable refused with nothing to read")
				}
				_ = b.SetReadDeadline(time.Time{}) // wakes readers, but nothing is readable
				_ = b.SetReadDeadline(time.Now().Add(time.Hour))
				notCalled("deadline changes")
				_ = b.SetReadDeadline(time.Time{})

				if _, err := a.Write([]byte("xy")); err != nil {
					t.Fatal(err)
				}
				called("data")
				if b.NotifyReadable(f) {
					t.Fatal("NotifyReadable accepted with data to read")
				}
				buf := make([]byte, 1)
				for range 2 {
					if _, err := b.Read(buf); err != nil {
						t.Fatal(err)
					}
				}
				if !b.NotifyReadable(f) {
					t.Fatal("NotifyReadable refused once the data was read")
				}
				_ = b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				called("the read deadline")
				if _, err := b.Read(buf); !isTimeout(err) {
					t.Fatalf("read after the deadline callback: %v, want a timeout", err)
				}
				_ = b.SetReadDeadline(time.Time{})

				if !b.NotifyReadable(f) {
					t.Fatal("NotifyReadable refused after the deadline was removed")
				}
				_ = a.Close()
				called("the peer's FIN")
				if _, err := b.Read(buf); err != io.EOF {
					t.Fatalf("read after the FIN callback: %v, want EOF", err)
				}
			})
		}

		// The session's end, at the end that closes and at its peer.
		c, d := streamPair(t, p.client, p.server)
		var waits []chan struct{}
		for _, st := range []stream{c, d} {
			if ms, ok := st.(*Stream); ok {
				ch := make(chan struct{}, 2)
				if !ms.NotifyReadable(func() { ch <- struct{}{} }) {
					t.Fatal("NotifyReadable refused on a new stream")
				}
				waits = append(waits, ch)
			}
		}
		_ = p.client.Close()
		for _, ch := range waits {
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
				t.Fatal("no callback after the session's end")
			}
		}
		for _, st := range []stream{c, d} {
			if ms, ok := st.(*Stream); ok && ms.NotifyReadable(func() {}) {
				t.Fatal("NotifyReadable accepted on a stream of a closed session")
			}
		}
	})
}

// TestReadNowInCallback: a reader that only ever reads in its
// NotifyReadable callback, with ReadNow, gets a transfer eight times the
// window whole: the window updates ReadNow owes go out though the
// callback never writes (it runs on the receive goroutine). ReadNow of a
// stream with nothing buffered returns 0 and no error, also after the
// peer's FIN (Read then says EOF). The writer is mux or yamux.
func TestReadNowInCallback(t *testing.T) {
	cfg := defaults
	forEach(t, cfg, func(t *testing.T, p *pair) {
		if _, ok := p.server.(muxSession); !ok {
			t.Skip("the reading end is yamux's")
		}
		a, s := streamPair(t, p.client, p.server)
		b := s.(*Stream)
		if n, err := b.ReadNow(make([]byte, 8)); n != 0 || err != nil {
			t.Fatalf("ReadNow with nothing buffered: %d, %v; want 0, nil", n, err)
		}
		msg := pattern(7, 8*int(cfg.window))
		var got []byte // touched only by the callback, one at a time
		done := make(chan struct{})
		buf := make([]byte, 16<<10)
		var f func()
		f = func() {
			for {
				n, err := b.ReadNow(buf)
				if err != nil {
					t.Errorf("ReadNow: %v", err)
				}
				got = append(got, buf[:n]...)
				if len(got) == len(msg) {
					close(done)
					return
				}
				if n == 0 || b.NotifyReadable(f) {
					return // n == 0: not data (the test fails below)
				}
			}
		}
		if !b.NotifyReadable(f) {
			t.Fatal("NotifyReadable refused with nothing to read")
		}
		go func() { _, _ = a.Write(msg) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of %d bytes read by the callback; the writer waits for a window update", len(got), len(msg))
		}
		if !bytes.Equal(got, msg) {
			t.Fatal("the bytes read by ReadNow differ from those written")
		}
		_ = a.Close()
		_ = b.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := b.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("Read after the peer's FIN: %v, want EOF", err)
		}
		if n, err := b.ReadNow(buf); n != 0 || err != nil {
			t.Fatalf("ReadNow after the peer's FIN: %d, %v; want 0, nil", n, err)
		}
		_ = b.Close()
	})
}

// TestOpenStreamWith: a stream opened with its first bytes delivers them
// whole to the peer (mux or yamux), small ones (a dial's request) and
// ones beyond a window, which wait for the peer to read; opened gets the
// stream, once, before OpenStreamWith returns it.
func TestOpenStreamWith(t *testing.T) {
	forEach(t, defaults, func(t *testing.T, p *pair) {
		ms, ok := p.client.(muxSession)
		if !ok {
			t.Skip("the opening end is yamux's")
		}
		for _, size := range []int{3 + len("10.0.0.5:443"), 2*int(defaults.window) + 17} {
			msg := pattern(uint64(size), size)
			type opened struct {
				st  *Stream
				err error
				cb  []*Stream
			}
			res := make(chan opened, 1)
			go func() {
				var o opened
				o.st, o.err = ms.OpenStreamWith(msg, func(st *Stream) { o.cb = append(o.cb, st) })
				res <- o
			}()
			b, err := p.server.accept()
			if err != nil {
				t.Fatal("accept:", err)
			}
			got := make([]byte, size)
			_ = b.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(b, got); err != nil {
				t.Fatalf("%d bytes: read: %v", size, err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("%d bytes: the first bytes arrived changed", size)
			}
			o := <-res
			if o.err != nil || len(o.cb) != 1 || o.cb[0] != o.st {
				t.Fatalf("%d bytes: OpenStreamWith: %v, opened called with %v for stream %p", size, o.err, o.cb, o.st)
			}
			_ = o.st.Close()
			_ = b.Close()
		}
	})
}

// Every goroutine waiting in Read on one stream returns when the deadline
// passes or the peer's FIN comes: what ends one Read ends them all, though
// a wake-up wakes one.
func TestManyReadersAllWoken(t *testing.T) {
	forEach(t, defaults, func(t *testing.T, p *pair) {
		for _, why := range []string{"deadline", "fin"} {
			a, b := streamPair(t, p.client, p.server)
			const readers = 8
			done := make(chan error, readers)
			for range readers {
				go func() { _, err := b.Read(make([]byte, 16)); done <- err }()
			}
			if st, ok := b.(*Stream); ok { // ours: wait until all of them wait
				waitFor(t, "every reader to wait", func() bool {
					st.mu.Lock()
					defer st.mu.Unlock()
					return st.readers == readers
				})
			} else {
				time.Sleep(50 * time.Millisecond)
			}
			switch why {
			case "deadline":
				_ = b.SetReadDeadline(time.Now().Add(5 * time.Millisecond)) // one timer, one wake-up
			case "fin":
				_ = a.Close()
			}
			for i := range readers {
				select {
				case err := <-done:
					if why == "deadline" && !isTimeout(err) || why == "fin" && err != io.EOF {
						t.Fatalf("%s: reader %d: %v", why, i, err)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("%s: %d of %d readers still wait", why, readers-i, readers)
				}
			}
			_ = a.Close()
			_ = b.Close()
		}
	})
}
