package frontend

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"isthmus.dev/proxy-server/routing"
	"isthmus.dev/tunnel/link"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// directDialer dials loopback itself: the frontend's contract does not
// depend on what carries the connection.
type directDialer struct{}

func (directDialer) Dial(ctx context.Context, address string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		return nil, &link.DialError{Address: address, Reason: link.Classify(err), Err: err}
	}
	return c, nil
}

func startConnect(t *testing.T, d Dialer, timeout time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Connect{Dialer: d, DialTimeout: timeout, Log: slog.New(slog.DiscardHandler), Tracker: &Tracker{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done; _ = s.Close() })
	return ln.Addr().String()
}

// roundTrip sends raw and returns the status code, the status line, the
// body, and the connection with its reader.
func roundTrip(t *testing.T, proxy, raw string) (int, string, string, net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	line := ""
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		line = string(b)
	}
	return resp.StatusCode, resp.Status, line, c, br
}

func TestConnectSuccessHasNothingAfterHeader(t *testing.T) {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	go func() {
		c, err := backend.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = c.Write([]byte("backend speaks first"))
		_, _ = io.Copy(c, c)
	}()
	proxy := startConnect(t, directDialer{}, 0)
	// Early data after the header is forwarded, not lost.
	code, _, _, c, br := roundTrip(t, proxy, fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nearly", backend.Addr()))
	if code != 200 {
		t.Fatalf("status %d", code)
	}
	got := make([]byte, len("backend speaks first")+len("early"))
	if _, err := io.ReadFull(br, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != "backend speaks firstearly" {
		t.Fatalf("got %q", got)
	}
	c.Close()
}

func TestConnectFailureStatuses(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	direct := startConnect(t, directDialer{}, 0)
	noAgents := startConnect(t, routing.NewRegistry([]string{routing.Default}, nil), 0)
	expired := startConnect(t, directDialer{}, time.Nanosecond)
	policy := startConnect(t, policyDialer{}, 0)
	for _, tc := range []struct {
		name, proxy, raw string
		code             int
		line             string
	}{
		{"not CONNECT", direct, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 405, "only CONNECT"},
		{"no port", direct, "CONNECT example HTTP/1.1\r\nHost: x\r\n\r\n", 400, "not host:port"},
		{"garbage", direct, "\x00\x01\x02\r\n\r\n", 400, "malformed"},
		{"refused", direct, "CONNECT " + closedAddr + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 502, "refused"},
		{"no agent", noAgents, "CONNECT " + closedAddr + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 503, "no agent"},
		{"timeout", expired, "CONNECT " + closedAddr + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 504, "timeout"},
		{"policy", policy, "CONNECT 10.0.0.1:22 HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n", 403, "not allowed by policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, status, line, _, _ := roundTrip(t, tc.proxy, tc.raw)
			if code != tc.code || !strings.Contains(line, tc.line) || strings.Count(line, "\n") != 1 {
				t.Fatalf("got %d %q, want %d and one line containing %q", code, line, tc.code, tc.line)
			}
			// kube-apiserver shows the status line, not the body.
			if !strings.Contains(status, tc.line) {
				t.Fatalf("status line %q does not carry the reason %q", status, tc.line)
			}
		})
	}
}

// policyDialer refuses every address as an agent's destination policy does.
type policyDialer struct{}

func (policyDialer) Dial(_ context.Context, address string) (net.Conn, error) {
	return nil, &link.DialError{Address: address, Agent: "a1", Reason: link.ReasonPolicy,
		Err: fmt.Errorf("%s is not allowed by policy", address)}
}

func TestStatusForEveryReason(t *testing.T) {
	for r, want := range map[link.Reason]int{
		link.ReasonRefused:     http.StatusBadGateway,
		link.ReasonUnreachable: http.StatusBadGateway,
		link.ReasonTimeout:     http.StatusGatewayTimeout,
		link.ReasonNoAgent:     http.StatusServiceUnavailable,
		link.ReasonLinkClosed:  http.StatusBadGateway,
		link.ReasonCancelled:   http.StatusBadGateway,
		link.ReasonPolicy:      http.StatusForbidden,
		link.ReasonError:       http.StatusBadGateway,
	} {
		if got := statusFor(r); got != want {
			t.Errorf("statusFor(%s) = %d, want %d", r, got, want)
		}
	}
}
