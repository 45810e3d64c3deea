package frontend

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"isthmus.dev/tunnel/limits"
	"isthmus.dev/tunnel/link"
)

// fuzzDialer is the Dialer of FuzzConnectRequest: it records the address
// and succeeds (with a socket pair for the backend) or fails as told.
type fuzzDialer struct {
	fail    link.Reason // "": succeed
	mu      sync.Mutex
	called  []string
	backend net.Conn // the far end of the last success
}

func (d *fuzzDialer) Dial(_ context.Context, address string) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.called = append(d.called, address)
	if d.fail != "" {
		return nil, &link.DialError{Address: address, Reason: d.fail, Err: errors.New("fuzz")}
	}
	near, far, err := socketPair()
	if err != nil {
		return nil, err
	}
	d.backend = far
	return near, nil
}

// socketPair is a connected pair of Unix stream sockets: buffered, with
// half-close, like the TCP and UDS connections of the frontend.
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		_ = f.Close()
		if err != nil {
			if i == 1 {
				_ = conns[0].Close()
			}
			return nil, nil, err
		}
		conns[i] = c
	}
	return conns[0], conns[1], nil
}

var fuzzFailures = []link.Reason{"", "", link.ReasonRefused, link.ReasonTimeout, link.ReasonNoAgent, link.ReasonPolicy, link.ReasonBusy, link.ReasonLinkClosed}

// maxAnswer bounds a refusal: a status line and a body that may quote a
// dial target (at most maxAddress), never the request.
const maxAnswer = 4 << 10

// FuzzConnectRequest sends any bytes as a CONNECT client and checks the
// frontend against Go's own request parser: it dials exactly the host:port
// of a well-formed CONNECT whose header fits the bound, and nothing else;
// a dial that succeeds is answered 200 and every byte after the header
// reaches the backend, none of the header; anything else gets one short
// HTTP answer (never the request echoed back) and the connection closes;
// and nothing is left running.
func FuzzConnectRequest(f *testing.F) {
	for _, s := range []string{
		"CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\n",
		"CONNECT [fd00::1]:10250 HTTP/1.1\r\nHost: [fd00::1]:10250\r\nUser-Agent: kube-apiserver\r\n\r\nearly tunnel bytes",
		"CONNECT kubernetes.default.svc:443 HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "CONNECT nohostport HTTP/1.1\r\n\r\n", "CONNECT 10.0.0.1:443 HTTP/1.1\r\n",
		"CONNECT 10.0.0.1:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", "CONNECT http://10.0.0.1:443/ HTTP/1.1\r\n\r\n",
		"CONNECT 10.0.0.1:443 HTTP/1.1\r\nX: " + strings.Repeat("a", 5000) + "\r\n\r\n", "\r\n\r\n", "",
	} {
		for _, mode := range []byte{0, 2} {
			f.Add([]byte(s), mode)
		}
	}
	hits, err := limits.New(limits.Config{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, input []byte, mode byte) {
		base := runtime.NumGoroutine()
		d := &fuzzDialer{fail: fuzzFailures[int(mode)%len(fuzzFailures)]}
		s := &Connect{Dialer: d, Log: slog.New(slog.DiscardHandler), Limits: hits, HeaderTimeout: 5 * time.Second}
		server, client, err := socketPair()
		if err != nil {
			t.Fatal(err)
		}
		// The client sends everything and half-closes, then reads the
		// answer to its end.
		answer := make(chan []byte, 1)
		go func() {
			_, _ = client.Write(input)
			_ = client.(*net.UnixConn).CloseWrite()
			_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
			b, _ := io.ReadAll(io.LimitReader(client, 1<<20))
			answer <- b
		}()
		tc := s.connect(server, "fuzz")
		if tc != nil {
			checkTunnel(t, input, d, server, tc)
			_ = tc.Close()
			_ = d.backend.Close()
		}
		_ = server.Close()
		checkAnswer(t, input, d, tc != nil, <-answer)
		_ = client.Close()
		deadline := time.Now().Add(10 * time.Second)
		for i := 0; runtime.NumGoroutine() > base; i++ {
			if time.Now().After(deadline) {
				t.Fatalf("%d goroutines left running, %d before", runtime.NumGoroutine(), base)
			}
			if i < 100 {
				runtime.Gosched()
			} else {
				time.Sleep(100 * time.Microsecond)
			}
		}
	})
}

// reference parses input as Go's server does: the request, or nil, and
// how many bytes its header took.
func reference(input []byte) (*http.Request, int) {
	r := bytes.NewReader(input)
	br := bufio.NewReader(r)
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, 0
	}
	return req, len(input) - r.Len() - br.Buffered()
}

// checkTunnel: a dial succeeded; the client's bytes after the header,
// and only those, go to the backend (what the frontend read ahead at
// once, the rest later through the splice).
func checkTunnel(t *testing.T, input []byte, d *fuzzDialer, server, tc net.Conn) {
	t.Helper()
	req, n := reference(input)
	if req == nil || req.Method != http.MethodConnect || len(d.called) != 1 || d.called[0] != req.Host {
		t.Fatalf("%q: tunneled, dials %q", input, d.called)
	}
	_ = tc.(*net.UnixConn).CloseWrite()
	_ = d.backend.SetReadDeadline(time.Now().Add(10 * time.Second))
	early, _ := io.ReadAll(d.backend)
	_ = server.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, _ := io.ReadAll(server)
	if got := append(early, rest...); !bytes.Equal(got, input[n:]) {
		t.Fatalf("%q: the header is %d bytes; the tunnel carried %q, want %q", input, n, got, input[n:])
	}
}

// checkAnswer: the client got 200 for a tunnel, else one short answer
// with an error status, and only a well-formed CONNECT that fits was
// dialed.
func checkAnswer(t *testing.T, input []byte, d *fuzzDialer, tunneled bool, answer []byte) {
	t.Helper()
	req, n := reference(input)
	dialable := req != nil && req.Method == http.MethodConnect && n <= DefaultMaxHeaderBytes && checkAddress(req.Host) == nil
	if dialable != (len(d.called) == 1) || len(d.called) > 1 || len(d.called) == 1 && d.called[0] != req.Host {
		t.Fatalf("%q: dialable %v (%d header bytes), dials %q", input, dialable, n, d.called)
	}
	if len(answer) == 0 {
		if req != nil || len(bytes.TrimLeft(input, "\r\n")) != 0 {
			t.Fatalf("%q: no answer", input)
		}
		return // a client that left without a request gets none
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(answer)), nil)
	if err != nil {
		t.Fatalf("%q: answer %q: %v", input, answer, err)
	}
	_ = resp.Body.Close()
	if tunneled != (resp.StatusCode == http.StatusOK) {
		t.Fatalf("%q: tunneled %v, answer %q", input, tunneled, answer)
	}
	if !tunneled && (len(answer) > maxAnswer || resp.StatusCode < 400) {
		t.Fatalf("%q: refused with %d bytes: %q", input, len(answer), answer[:min(len(answer), 200)])
	}
}
