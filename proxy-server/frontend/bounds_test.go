package frontend

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"isthmus.dev/tunnel/limits"
	"isthmus.dev/tunnel/link"
)

// syncLog collects log output from many goroutines.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// bounded is a CONNECT frontend with its bounds' counter and log.
type bounded struct {
	addr string
	hits *limits.Hits
	reg  *prometheus.Registry
	logs *syncLog
}

// count reads limit_hits_total{limit}.
func (b *bounded) count(limit string) float64 {
	mfs, err := b.reg.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "limit" && l.GetValue() == limit {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// serveBounded serves s (its Log and Limits set here) on loopback TCP
// until cleanup.
func serveBounded(t *testing.T, s *Connect) *bounded {
	t.Helper()
	b := &bounded{reg: prometheus.NewRegistry(), logs: &syncLog{}}
	log := slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var err error
	if b.hits, err = limits.New(limits.Config{Registerer: b.reg, Subsystem: "server", Limits: limits.ServerLimits, Log: log}); err != nil {
		t.Fatal(err)
	}
	s.Log, s.Limits = log, b.hits
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done; _ = s.Close() })
	return b
}

// readAnswer reads a CONNECT answer whole (status line, headers, body)
// and returns it with its status code.
func readAnswer(t *testing.T, c net.Conn) (int, string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	raw, err := io.ReadAll(io.LimitReader(c, 1<<20))
	if err != nil && len(raw) == 0 {
		t.Fatalf("read the answer: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("answer %q: %v", raw, err)
	}
	resp.Body.Close()
	return resp.StatusCode, string(raw)
}

// The 8 MiB host a new user tried: a short 431 after a bounded read, fast,
// never echoing the request; one short log line; the frontend keeps
// serving.
func TestConnectHeaderTooLarge(t *testing.T) {
	b := serveBounded(t, &Connect{Dialer: directDialer{}})
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	host := strings.Repeat("a", 8<<20)
	sent := make(chan error, 1)
	go func() {
		_, err := fmt.Fprintf(c, "CONNECT %s:443 HTTP/1.1\r\nHost: x\r\n\r\n", host)
		sent <- err
	}()
	code, answer := readAnswer(t, c)
	if code != http.StatusRequestHeaderFieldsTooLarge || len(answer) > 512 || strings.Contains(answer, "aaaaaaaa") ||
		!strings.Contains(answer, "--connect-max-header-bytes") {
		t.Fatalf("answer %d of %d bytes: %.300q; want a short 431 naming the flag and no echo", code, len(answer), answer)
	}
	<-sent // the server may have stopped reading: an error is fine, a hang is not
	if n := b.count(limits.ConnectHeaderBytes); n != 1 {
		t.Fatalf("connect_header_bytes hits %v, want 1", n)
	}
	logs := b.logs.String()
	if lines := strings.Count(logs, "\n"); lines != 1 || len(logs) > 1024 {
		t.Fatalf("%d log lines, %d bytes, want one short line:\n%.2000s", lines, len(logs), logs)
	}
	// Still serving.
	echo := echoBackend(t)
	code, _, _, conn, _ := roundTrip(t, b.addr, "CONNECT "+echo+" HTTP/1.1\r\nHost: x\r\n\r\n")
	if code != http.StatusOK {
		t.Fatalf("a normal CONNECT after the large one: %d", code)
	}
	conn.Close()
}

// echoBackend echoes on loopback until cleanup.
func echoBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// A client that sends its header a byte at a time (slowloris), or nothing
// at all, is answered 408 and cut once the header timeout has passed.
func TestConnectHeaderTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	b := serveBounded(t, &Connect{Dialer: directDialer{}, HeaderTimeout: timeout})
	for i, trickle := range []bool{true, false} {
		// The server's clock starts when it accepts, which may be before
		// Dial returns: ours starts before Dial.
		start := time.Now()
		c, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		if trickle {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, ch := range []byte("CONNECT 10.0.0.1:443 HTTP/1.1\r\nX-Slow: ") {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
					if _, err := c.Write([]byte{ch}); err != nil {
						return
					}
				}
				for { // then nothing more, ever
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
						_, _ = c.Write([]byte("x"))
					}
				}
			}()
		}
		code, answer := readAnswer(t, c)
		took := time.Since(start)
		close(stop)
		wg.Wait()
		c.Close()
		if code != http.StatusRequestTimeout || !strings.Contains(answer, "--connect-header-timeout") || took < timeout {
			t.Fatalf("trickle=%v: %d after %v: %q; want 408 naming the flag, not before %v; log:\n%s", trickle, code, took, answer, timeout, b.logs)
		}
		if n := b.count(limits.ConnectHeaderTime); n != float64(i+1) {
			t.Fatalf("connect_header_time hits %v, want %d", n, i+1)
		}
	}
}

// A malformed request or a target that cannot be host:port is answered
// 400 without echoing what was sent.
func TestConnectMalformedIsNotEchoed(t *testing.T) {
	b := serveBounded(t, &Connect{Dialer: directDialer{}})
	marker := "ECHOMARKER"
	for _, raw := range []string{
		"\x01\x02" + marker + "\r\n\r\n",
		"CONNECT " + strings.Repeat(marker, 200) + ":443 HTTP/1.1\r\nHost: x\r\n\r\n", // 2 KiB: under the header bound, over any host
	} {
		c, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
		code, answer := readAnswer(t, c)
		c.Close()
		if code != http.StatusBadRequest || strings.Count(answer, marker) > 0 {
			t.Fatalf("%.40q: %d %q; want 400 without the request in it", raw, code, answer)
		}
	}
	if logs := b.logs.String(); strings.Count(logs, marker) > 1 {
		t.Fatalf("the log repeats the request:\n%s", logs)
	}
}

// gatedDialer holds every dial until its gate is closed, then dials
// loopback.
type gatedDialer struct {
	gate    chan struct{}
	started atomic.Int64
}

func (d *gatedDialer) Dial(ctx context.Context, address string) (net.Conn, error) {
	d.started.Add(1)
	select {
	case <-d.gate:
	case <-ctx.Done():
		return nil, &link.DialError{Address: address, Reason: link.ReasonOf(ctx.Err()), Err: ctx.Err()}
	}
	return directDialer{}.Dial(ctx, address)
}

// One client may have at most MaxPendingPerClient dials waiting: more are
// answered 429 at once, the waiting ones go through, and room comes back.
func TestConnectPendingDialsPerClient(t *testing.T) {
	echo := echoBackend(t)
	d := &gatedDialer{gate: make(chan struct{})}
	b := serveBounded(t, &Connect{Dialer: d, MaxPendingPerClient: 2})
	req := "CONNECT " + echo + " HTTP/1.1\r\nHost: x\r\n\r\n"
	type result struct {
		code int
		c    net.Conn
	}
	held := make(chan result, 2)
	for range 2 {
		go func() {
			c, err := net.Dial("tcp", b.addr)
			if err != nil {
				held <- result{}
				return
			}
			_, _ = io.WriteString(c, req)
			resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
			if err != nil {
				c.Close()
				held <- result{}
				return
			}
			held <- result{resp.StatusCode, c}
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for d.started.Load() != 2 {
		if time.Now().After(deadline) {
			t.Fatal("the two dials never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	code, status, line, _, _ := roundTrip(t, b.addr, req)
	if code != http.StatusTooManyRequests || !strings.Contains(status, "--max-pending-dials-per-client") || !strings.Contains(line, "2 dials waiting") {
		t.Fatalf("third dial: %d %q %q; want 429 naming the flag and the count", code, status, line)
	}
	if n := b.count(limits.PendingDialsClient); n != 1 {
		t.Fatalf("pending_dials_client hits %v, want 1", n)
	}
	close(d.gate)
	for range 2 {
		r := <-held
		if r.code != http.StatusOK {
			t.Fatalf("a dial within the bound: %d", r.code)
		}
		r.c.Close()
	}
	code, _, _, c, _ := roundTrip(t, b.addr, req)
	if code != http.StatusOK {
		t.Fatalf("a dial once room came back: %d", code)
	}
	c.Close()
}

func TestBusyIsServiceUnavailable(t *testing.T) {
	if got := statusFor(link.ReasonBusy); got != http.StatusServiceUnavailable {
		t.Fatalf("statusFor(busy) = %d, want 503", got)
	}
}

// The client of a Unix socket is its peer process; over TCP, the IP.
func TestClientOf(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", dir+"/s.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := net.Dial("unix", dir+"/s.sock"); err == nil {
			defer c.Close()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := fmt.Sprintf("pid %d (uid ", os.Getpid())
	if got := clientOf(c); !strings.HasPrefix(got, want) {
		t.Fatalf("clientOf(unix) = %q, want %q...", got, want)
	}
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tln.Close()
	go func() {
		if c, err := net.Dial("tcp", tln.Addr().String()); err == nil {
			defer c.Close()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	tc, err := tln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if got := clientOf(tc); got != "127.0.0.1" {
		t.Fatalf("clientOf(tcp) = %q, want 127.0.0.1 (the port is no part of the client)", got)
	}
}
