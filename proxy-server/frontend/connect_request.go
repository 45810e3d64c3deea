package frontend

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"isthmus.dev/tunnel/limits"
)

// readRequest reads the CONNECT request within the header bounds. When it
// fails it has answered (431, 408 or 400; nothing to a failed TLS handshake
// or a client that left without a word), counted and logged (rate
// limited), and closed c.
func (s *Connect) readRequest(c net.Conn, client string) (*http.Request, *bufio.Reader, bool) {
	timeout := s.HeaderTimeout
	if timeout <= 0 {
		timeout = DefaultHeaderTimeout
	}
	max := s.MaxHeaderBytes
	if max <= 0 {
		max = DefaultMaxHeaderBytes
	}
	// The TLS handshake (TCP frontend) writes too: both directions are
	// under the header's deadline until the request is in.
	_ = c.SetDeadline(time.Now().Add(timeout))
	if tc, ok := c.(*tls.Conn); ok {
		if err := tc.Handshake(); err != nil {
			if isTimeout(err) {
				s.Limits.Hit(limits.ConnectHeaderTime, "http-connect client cut: TLS handshake not finished within --connect-header-timeout (a slow or idle client)",
					"client", client, "timeout", timeout)
			} else {
				s.Limits.Log().Log(slog.LevelInfo, "connect_tls", "TLS handshake failed on the http-connect frontend", "client", client, "err", err)
			}
			_ = c.Close()
			return nil, nil, false
		}
	}
	_ = c.SetWriteDeadline(time.Time{})
	hr := &headerReader{r: c, left: max}
	br := readers.Get().(*bufio.Reader)
	br.Reset(hr)
	req, err := http.ReadRequest(br)
	if err == nil {
		hr.lifted = true // what follows the header belongs to the tunnel
		return req, br, true
	}
	putReader(br)
	switch {
	case hr.over:
		s.Limits.Hit(limits.ConnectHeaderBytes, "CONNECT refused with 431: request header larger than --connect-max-header-bytes",
			"client", client, "max", max, "start", hr.start())
		s.refuse(c, http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("request header larger than %d bytes (proxy-server --connect-max-header-bytes)", max))
	case hr.timedOut || isTimeout(err):
		s.Limits.Hit(limits.ConnectHeaderTime, "CONNECT refused with 408: request header not complete within --connect-header-timeout (a slow or idle client)",
			"client", client, "timeout", timeout, "read", hr.n, "start", hr.start())
		s.refuse(c, http.StatusRequestTimeout, fmt.Sprintf("request header not complete within %v (proxy-server --connect-header-timeout)", timeout))
	case hr.n == 0 && errors.Is(err, io.EOF):
		s.Log.Debug("http-connect client left without a request", "client", client)
		_ = c.Close()
	default:
		s.Limits.Log().Log(slog.LevelInfo, "connect_malformed", "CONNECT refused with 400: malformed request",
			"client", client, "err", limits.ClipTo(err.Error(), 96)) // the parser's error quotes the bad line
		s.refuse(c, http.StatusBadRequest, `malformed request: want "CONNECT host:port HTTP/1.1"`)
	}
	return nil, nil, false
}

// readers are the buffers requests are parsed in: a connection holds one
// only until its tunnel is set up (putReader), so that a thousand clients
// dialing at once do not leave a thousand behind as garbage.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// putReader gives br back to readers once nothing reads it any more.
func putReader(br *bufio.Reader) {
	br.Reset(nil)
	readers.Put(br)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// errHeaderTooLarge ends the header read at the bound.
var errHeaderTooLarge = errors.New("request header too large")

// headerReader passes at most left bytes of a request header to the
// parser and keeps its first bytes for the log. Once lifted (the header is
// in), reads pass straight through.
type headerReader struct {
	r        io.Reader
	left     int
	n        int  // bytes read before lifted
	over     bool // the bound was hit
	timedOut bool // a read hit the deadline (the parser may not say so: bufio drops errors after a partial line)
	lifted   bool
	first    []byte
}

func (h *headerReader) Read(p []byte) (int, error) {
	if h.lifted {
		return h.r.Read(p)
	}
	if h.left <= 0 {
		h.over = true
		return 0, errHeaderTooLarge
	}
	if len(p) > h.left {
		p = p[:h.left]
	}
	n, err := h.r.Read(p)
	h.left -= n
	h.n += n
	h.timedOut = h.timedOut || isTimeout(err)
	if keep := min(n, 64-len(h.first)); keep > 0 {
		h.first = append(h.first, p[:keep]...)
	}
	return n, err
}

// start is the request's first bytes, for a log line (quoted by slog).
func (h *headerReader) start() string { return string(h.first) }

// Lingering close: see refuse.
const (
	lingerTimeout = 500 * time.Millisecond
	lingerBytes   = 16 << 20
)

// refuse answers a request that will not be served, then closes c once the
// client could read the answer: closing with request bytes unread makes
// TCP reset the connection, and a reset can destroy the answer before the
// client reads it (net/http's lingering close, bounded the same way).
func (s *Connect) refuse(c net.Conn, code int, msg string) {
	reply(c, code, msg)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(lingerTimeout))
	_, _ = io.CopyN(io.Discard, c, lingerBytes)
	_ = c.Close()
}
