// Package native is the isthmus-to-isthmus agent link: one TLS connection
// (ALPN "isthmus/1") carrying a yamux session, with a control stream and one
// yamux stream per tunneled connection. Each stream has its own flow-control
// window, so a stalled reader never delays another connection, and streams
// carry raw bytes with half-close: no per-packet framing.
//
// Protocol flow (agent A dials the server S):
//
//	A -> S  opens the control stream (the first stream of the session)
//	A -> S  ctl {t: hello, agentID, identifiers, token, version}
//	S -> A  ctl {t: welcome, serverID, serverCount} or {t: refuse, error}
//	S -> A  opens a data stream: header [magic 'D'][u16 len][address]
//	A -> S  answer [code][u16 len][message]; code 0: connected, then raw
//	        bytes both ways; other codes: the dial's reason, and the end
//	S -> A  closing the stream before the answer cancels the dial
//	both    ctl {t: abort, stream}: the sender closed the stream (its FIN
//	        went first) while the peer may still send: the peer's writes
//	        fail (yamux has no public reset)
//	both    ctl {t: abort, stream, error: "cut"}: the sender cut the stream:
//	        the peer's reads end with an error after what arrived, never
//	        EOF; the peer answers with an abort, and only then does the
//	        sender's FIN follow (a FIN ahead of it would read as an end)
//	A -> S  ctl {t: drain}: prefer other agents for new dials
//
// Control messages are JSON in frames of [u32 length][body], at most
// Config.MaxControlMessage bytes (default MaxControlFrame) as the receiver
// bounds them; a larger one (ErrControlTooLarge) or anything else on the
// control stream ends the session.
package native

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/yamux"

	"isthmus.dev/tunnel/link"
)

// ALPN is the protocol name the agent port negotiates for this link.
const ALPN = "isthmus/1"

// Version of the control protocol.
const Version = 1

// MaxControlFrame is the default bound of a control message a link
// receives (Config.MaxControlMessage). A hello with a service-account
// token and identifiers is a few KiB.
const MaxControlFrame = 64 << 10

// Bounds of Config.MaxControlMessage.
const (
	MinControlMessage = 4 << 10
	MaxControlMessage = 16 << 20
)

// Control message types.
const (
	msgHello   = "hello"
	msgWelcome = "welcome"
	msgRefuse  = "refuse"
	msgDrain   = "drain"
	msgAbort   = "abort"
)

// abortCut is the error of an abort that cuts the stream.
const abortCut = "cut"

// ctl is a control message.
type ctl struct {
	T           string `json:"t"`
	Version     int    `json:"version,omitempty"`
	AgentID     string `json:"agentID,omitempty"`
	Identifiers string `json:"identifiers,omitempty"`
	Token       string `json:"token,omitempty"`
	ServerID    string `json:"serverID,omitempty"`
	ServerCount int    `json:"serverCount,omitempty"`
	Stream      uint32 `json:"stream,omitempty"`
	Error       string `json:"error,omitempty"`
}

// ErrProtocol marks a peer that broke the protocol.
var ErrProtocol = errors.New("native link: protocol violation")

// ErrControlTooLarge marks a control message above the receiver's bound
// (Config.MaxControlMessage); it wraps ErrProtocol. The session ends; the
// link leaves the logging to its owner, which counts the bound hit.
var ErrControlTooLarge = fmt.Errorf("%w: control message too large", ErrProtocol)

func writeCtl(w io.Writer, m ctl) error {
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	buf := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	copy(buf[4:], body)
	_, err = w.Write(buf)
	return err
}

// readCtl reads one control message of at most limit bytes (0 =
// MaxControlFrame). The body is allocated only once its length passed the
// bound.
func readCtl(r io.Reader, limit int) (ctl, error) {
	var m ctl
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return m, err
	}
	if limit <= 0 {
		limit = MaxControlFrame
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 {
		return m, fmt.Errorf("%w: empty control frame", ErrProtocol)
	}
	if uint64(n) > uint64(limit) {
		return m, fmt.Errorf("%w: %d bytes, the bound is %d", ErrControlTooLarge, n, limit)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return m, err
	}
	if err := json.Unmarshal(body, &m); err != nil || m.T == "" {
		return m, fmt.Errorf("%w: control frame is not a message", ErrProtocol)
	}
	return m, nil
}

// Data stream header and answer.
const (
	dialMagic  = 'D'
	maxAddress = 1024
)

// Answer codes: 0 is success; the others carry the dial's reason, so the
// server never reads an error's words.
var answerReasons = []link.Reason{
	1: link.ReasonRefused,
	2: link.ReasonUnreachable,
	3: link.ReasonTimeout,
	4: link.ReasonPolicy,
	5: link.ReasonError,
	6: link.ReasonCancelled,
}

func answerCode(r link.Reason) byte {
	for i, x := range answerReasons {
		if i > 0 && x == r {
			return byte(i)
		}
	}
	return 5
}

// dialHeader is a data stream's first bytes: the dial request.
func dialHeader(address string) ([]byte, error) {
	if len(address) == 0 || len(address) > maxAddress {
		return nil, fmt.Errorf("dial address of %d bytes: the native link carries host:port addresses of 1 to %d bytes; check the address the client asked for", len(address), maxAddress)
	}
	buf := make([]byte, 3+len(address))
	buf[0] = dialMagic
	binary.BigEndian.PutUint16(buf[1:], uint16(len(address)))
	copy(buf[3:], address)
	return buf, nil
}

func readHeader(r io.Reader) (string, error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", err
	}
	n := binary.BigEndian.Uint16(hdr[1:])
	if hdr[0] != dialMagic || n == 0 || n > maxAddress {
		return "", fmt.Errorf("%w: bad dial header", ErrProtocol)
	}
	addr := make([]byte, n)
	if _, err := io.ReadFull(r, addr); err != nil {
		return "", err
	}
	return string(addr), nil
}

func writeAnswer(w io.Writer, code byte, msg string) error {
	if len(msg) > 4096 {
		msg = msg[:4096]
	}
	buf := make([]byte, 3+len(msg))
	buf[0] = code
	binary.BigEndian.PutUint16(buf[1:], uint16(len(msg)))
	copy(buf[3:], msg)
	_, err := w.Write(buf)
	return err
}

func readAnswer(r io.Reader) (code byte, msg string, err error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, "", err
	}
	if int(hdr[0]) >= len(answerReasons) {
		return 0, "", fmt.Errorf("%w: answer code %d", ErrProtocol, hdr[0])
	}
	m := make([]byte, binary.BigEndian.Uint16(hdr[1:]))
	if _, err := io.ReadFull(r, m); err != nil {
		return 0, "", err
	}
	return hdr[0], string(m), nil
}

// Config tunes the link's session. Zero values take the defaults.
type Config struct {
	// Mux is the implementation of the session layer at this end:
	// MuxYamux (hashicorp/yamux, the default) or MuxIsthmus (package mux,
	// a prototype that speaks the same frames with fewer goroutine
	// hand-offs). Either end may use either: the wire is the same.
	Mux string
	// StreamWindow is the largest receive window of one tunneled connection:
	// what it may have in flight. Default 4 MiB, which fills a 1 Gbit/s link
	// at 20 ms round trip (bandwidth x delay = 2.5 MB).
	StreamWindow uint32
	// KeepAlive is the interval of session pings (default DefaultKeepAlive).
	KeepAlive time.Duration
	// WriteTimeout ends a session whose connection takes no write, or whose
	// ping gets no answer, for this long (default DefaultWriteTimeout).
	WriteTimeout time.Duration
	// HandshakeTimeout bounds hello and welcome (default 10 s).
	HandshakeTimeout time.Duration
	// MaxControlMessage bounds a control message this end receives
	// (default MaxControlFrame); a larger one ends the session with
	// ErrControlTooLarge.
	MaxControlMessage int
}

// Config.Mux values.
const (
	MuxYamux   = "yamux"
	MuxIsthmus = "isthmus"
)

// CheckMux says what is wrong with a Config.Mux value, or nil.
func CheckMux(m string) error {
	switch m {
	case "", MuxYamux, MuxIsthmus:
		return nil
	}
	return fmt.Errorf("native link session layer %q: want %q (the default) or %q (the prototype)", m, MuxYamux, MuxIsthmus)
}

// DefaultStreamWindow: see Config.StreamWindow.
const DefaultStreamWindow = 4 << 20

// DefaultKeepAlive and DefaultWriteTimeout: a link whose path is gone
// (black-holed: no RST, no FIN) is dropped by each end within their sum.
const (
	DefaultKeepAlive    = 10 * time.Second
	DefaultWriteTimeout = 20 * time.Second
)

func (c Config) yamux() *yamux.Config {
	y := yamux.DefaultConfig()
	y.AcceptBacklog = 4096
	y.MaxStreamWindowSize = c.StreamWindow
	if y.MaxStreamWindowSize == 0 {
		y.MaxStreamWindowSize = DefaultStreamWindow
	}
	// The session pings on a timer of ours (session.keepAlive), not from a
	// goroutine of yamux's: an idle link then holds no goroutine for it,
	// and the pings of many links are spread out.
	y.EnableKeepAlive = false
	y.KeepAliveInterval = c.keepAlive()
	y.ConnectionWriteTimeout = c.WriteTimeout
	if y.ConnectionWriteTimeout == 0 {
		y.ConnectionWriteTimeout = DefaultWriteTimeout
	}
	// A stream's open is bounded by its dial's context, not by yamux, which
	// would close the whole session; streams are closed by their owners and
	// dropped ones are aborted on the control stream, not on a timer.
	y.StreamOpenTimeout = 0
	y.StreamCloseTimeout = 0
	y.LogOutput = io.Discard
	return y
}

func (c Config) keepAlive() time.Duration {
	if c.KeepAlive > 0 {
		return c.KeepAlive
	}
	return DefaultKeepAlive
}

func (c Config) handshakeTimeout() time.Duration {
	if c.HandshakeTimeout > 0 {
		return c.HandshakeTimeout
	}
	return 10 * time.Second
}
