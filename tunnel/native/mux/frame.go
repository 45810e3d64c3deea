package mux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"sync"
	"time"
)

// The wire is yamux's (spec.md of github.com/hashicorp/yamux v0.1.2): a
// 12-byte header (version, type, flags, stream id, length), followed by
// length bytes of body for a data frame.
const (
	protoVersion uint8 = 0

	typeData         uint8 = 0
	typeWindowUpdate uint8 = 1
	typePing         uint8 = 2
	typeGoAway       uint8 = 3

	flagSYN uint16 = 1 << 0
	flagACK uint16 = 1 << 1
	flagFIN uint16 = 1 << 2
	flagRST uint16 = 1 << 3

	goAwayNormal      uint32 = 0
	goAwayProtoErr    uint32 = 1
	goAwayInternalErr uint32 = 2

	headerSize = 12

	// initialStreamWindow is the window every stream starts with at both
	// ends, before any window update: fixed by the protocol.
	initialStreamWindow uint32 = 256 << 10
)

// header is a frame's header as read.
type header [headerSize]byte

func (h *header) msgType() uint8   { return h[1] }
func (h *header) flags() uint16    { return binary.BigEndian.Uint16(h[2:4]) }
func (h *header) streamID() uint32 { return binary.BigEndian.Uint32(h[4:8]) }
func (h *header) length() uint32   { return binary.BigEndian.Uint32(h[8:12]) }

func appendFrame(b []byte, typ uint8, flags uint16, id, length uint32, body []byte) []byte {
	b = append(b, protoVersion, typ)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint32(b, id)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, body...)
}

// Errors, with the meaning of yamux's errors of the same names.
var (
	// ErrSessionShutdown: the session is closed (or closing).
	ErrSessionShutdown = errors.New("mux: session shutdown")
	// ErrStreamClosed: a write on a stream this side closed.
	ErrStreamClosed = errors.New("mux: stream closed")
	// ErrConnectionReset: the stream was reset (RST), e.g. refused by a
	// peer whose accept backlog was full.
	ErrConnectionReset = errors.New("mux: connection reset")
	// ErrRemoteGoAway: the peer sent GoAway; it accepts no new streams.
	ErrRemoteGoAway = errors.New("mux: remote end is not accepting connections")
	// ErrStreamsExhausted: no stream id is left to open a stream with.
	ErrStreamsExhausted = errors.New("mux: streams exhausted")
	// ErrConnectionWriteTimeout: a write to the connection was blocked for
	// Config.ConnectionWriteTimeout; the session is closed.
	ErrConnectionWriteTimeout = errors.New("mux: connection write timeout")
	// ErrKeepAliveTimeout: a Ping got no answer within
	// Config.ConnectionWriteTimeout; the session is closed.
	ErrKeepAliveTimeout = errors.New("mux: keepalive timeout")
	// ErrRemoteProtocol: the peer ended the session saying this side broke
	// the protocol (GoAway with the protocol error code), or reported an
	// internal error.
	ErrRemoteProtocol = errors.New("mux: the peer ended the session with an error")

	// ErrProtocol: the peer broke the protocol; the session is closed
	// (after a GoAway with the protocol error code). Every error below
	// wraps it.
	ErrProtocol           = errors.New("mux: protocol error")
	ErrInvalidVersion     = fmt.Errorf("%w: invalid protocol version", ErrProtocol)
	ErrInvalidMsgType     = fmt.Errorf("%w: invalid msg type", ErrProtocol)
	ErrRecvWindowExceeded = fmt.Errorf("%w: recv window exceeded", ErrProtocol)
	ErrDuplicateStream    = fmt.Errorf("%w: duplicate stream initiated", ErrProtocol)
	ErrUnexpectedFlag     = fmt.Errorf("%w: unexpected flag", ErrProtocol)

	// ErrTimeout is what reads and writes return at their deadline, and
	// Ping when unanswered. It is a net.Error whose Timeout() is true (as
	// yamux's ErrTimeout) and it matches os.ErrDeadlineExceeded with
	// errors.Is, as net.Conn deadline errors do.
	ErrTimeout error = timeoutError{}

	// errPeerNotReading: frames the receive goroutine must send (pings'
	// answers, refusals) pile up beyond maxUrgent: the peer sends and
	// does not read.
	errPeerNotReading = fmt.Errorf("%w: the peer sends but does not read", ErrConnectionWriteTimeout)
)

type timeoutError struct{}

func (timeoutError) Error() string        { return "mux: i/o deadline reached" }
func (timeoutError) Timeout() bool        { return true }
func (timeoutError) Temporary() bool      { return true }
func (timeoutError) Is(target error) bool { return target == os.ErrDeadlineExceeded }

// Config tunes a session: the subset of yamux.Config that mux implements.
type Config struct {
	// AcceptBacklog bounds the streams the peer opened that AcceptStream
	// has not taken yet; beyond it the peer's SYN is answered with RST. It
	// also bounds the streams this side opened that the peer has not
	// acknowledged yet: OpenStream waits beyond it (as yamux does).
	AcceptBacklog int
	// MaxStreamWindowSize is the receive window of a stream (and so the
	// most a stream buffers). Streams start at 256 KiB, the protocol's
	// initial window, and the SYN or its ACK grows it to this size.
	MaxStreamWindowSize uint32
	// ConnectionWriteTimeout closes the session when a write to the
	// connection is blocked this long, or a Ping is unanswered this long.
	ConnectionWriteTimeout time.Duration
}

// DefaultConfig returns yamux's defaults for the same settings.
func DefaultConfig() *Config {
	return &Config{
		AcceptBacklog:          256,
		MaxStreamWindowSize:    initialStreamWindow,
		ConnectionWriteTimeout: 10 * time.Second,
	}
}

func (c *Config) verify() error {
	switch {
	case c == nil || c.AcceptBacklog <= 0 || c.ConnectionWriteTimeout <= 0:
		return errors.New("mux: the config needs a positive AcceptBacklog and ConnectionWriteTimeout")
	case c.MaxStreamWindowSize < initialStreamWindow:
		return fmt.Errorf("mux: MaxStreamWindowSize must be at least %d", initialStreamWindow)
	}
	return nil
}

// buffer is a byte slice from pools of power-of-two size classes (4 KiB to
// 4 MiB): the write batches and the streams' receive buffers, which are
// taken when data comes and given back when it is gone, so that an idle
// session or stream holds none.
type buffer struct{ b []byte }

const (
	minBufShift = 12
	numClasses  = 11
)

var bufPools [numClasses]sync.Pool

// class is the smallest size class holding n bytes, or -1 if none does.
func class(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	c := bits.Len(uint(n-1)) - minBufShift
	if c >= numClasses {
		return -1
	}
	return c
}

// getBuffer returns an empty buffer of capacity n or more.
func getBuffer(n int) *buffer {
	c := class(n)
	if c < 0 {
		return &buffer{b: make([]byte, 0, n)}
	}
	if p, ok := bufPools[c].Get().(*buffer); ok {
		return p
	}
	return &buffer{b: make([]byte, 0, 1<<(minBufShift+c))}
}

// putBuffer gives p back to its pool; p must not be used after.
func putBuffer(p *buffer) {
	c := class(cap(p.b))
	if c < 0 || cap(p.b) != 1<<(minBufShift+c) {
		return // not from a pool: the GC takes it
	}
	p.b = p.b[:0]
	bufPools[c].Put(p)
}

// grow returns a buffer holding p's bytes with room for n more, p itself if
// it has the room (else p is given back).
func grow(p *buffer, n int) *buffer {
	if cap(p.b)-len(p.b) >= n {
		return p
	}
	nb := getBuffer(len(p.b) + n)
	nb.b = append(nb.b, p.b...)
	putBuffer(p)
	return nb
}

// notify wakes the goroutine waiting on ch, if any, or the next to wait.
func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
