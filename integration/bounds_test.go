package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	kclient "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"

	"isthmus.dev/integration/harness"
)

// The bounds of issue 11, each held to with the real binaries: the answer a
// client gets, the metric, the log line, and the rest still served.

const (
	boundsServerHits = "konnectivity_network_proxy_server_limit_hits_total"
	boundsAgentHits  = "konnectivity_network_proxy_agent_limit_hits_total"
	boundsPending    = "konnectivity_network_proxy_server_pending_backend_dials"
)

// boundsRawConnect writes raw to the server's CONNECT socket (from a
// goroutine: the server may stop reading) and returns the whole answer.
func boundsRawConnect(t *testing.T, s *harness.Server, raw func(io.Writer)) (int, string) {
	t.Helper()
	c, err := net.Dial("unix", s.UDS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	sent := make(chan struct{})
	go func() { defer close(sent); raw(c) }()
	answer, _ := io.ReadAll(io.LimitReader(c, 1<<20))
	c.Close()
	<-sent
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(answer)), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("answer %.200q: %v", answer, err)
	}
	resp.Body.Close()
	return resp.StatusCode, string(answer)
}

// boundsLogLines are the lines of out that contain every one of subs.
func boundsLogLines(out string, subs ...string) []string {
	var lines []string
	for line := range strings.Lines(out) {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			lines = append(lines, line)
		}
	}
	return lines
}

// A CONNECT with an 8 MiB host (what a new user tried) gets a short 431
// after a bounded read, logged in one short line; a slowloris client gets
// 408 after --connect-header-timeout; the server serves on.
func TestBoundConnectHeader(t *testing.T) {
	pki := harness.NewPKI(t)
	s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.HTTPConnect, Extra: []string{"--connect-header-timeout=1s"}})
	harness.StartAgent(t, bins, s, harness.AgentOpts{})
	s.WaitReady(t)
	echo := harness.StartBackend(t, harness.Echo)

	host := strings.Repeat("a", 8<<20)
	start := time.Now()
	code, answer := boundsRawConnect(t, s, func(w io.Writer) { fmt.Fprintf(w, "CONNECT %s:443 HTTP/1.1\r\nHost: x\r\n\r\n", host) })
	t.Logf("8 MiB host: %d after %v, %d bytes: %q", code, time.Since(start), len(answer), answer)
	if code != http.StatusRequestHeaderFieldsTooLarge || len(answer) > 512 || strings.Contains(answer, "aaaaaaaa") {
		t.Fatalf("8 MiB host: %d, %d bytes; want a short 431 that does not echo the request", code, len(answer))
	}
	harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), boundsServerHits, 1, "limit", "connect_header_bytes")
	out := s.Output()
	if lines := boundsLogLines(out, "connect_header_bytes"); len(lines) != 1 || len(lines[0]) > 1024 {
		t.Fatalf("%d log lines about the 431 (want one short line): %.3000q", len(lines), lines)
	}
	if strings.Contains(out, strings.Repeat("a", 1024)) {
		t.Fatal("the server's log holds the 8 MiB host (1 KiB of it at least)")
	}

	// Slowloris: one byte at a time, never the end of the header.
	stop := make(chan struct{})
	start = time.Now()
	code, answer = boundsRawConnect(t, s, func(w io.Writer) {
		for i := 0; ; i++ {
			if _, err := w.Write([]byte("CONNECT 10.0.0.1:443 HTTP/1.1\r\nX-Slow: ")[i%40 : i%40+1]); err != nil {
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	close(stop)
	took := time.Since(start)
	if code != http.StatusRequestTimeout || !strings.Contains(answer, "--connect-header-timeout") || took < time.Second {
		t.Fatalf("slowloris: %d after %v: %q; want 408 naming the flag, after the 1s timeout", code, took, answer)
	}
	harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), boundsServerHits, 1, "limit", "connect_header_time")

	// The server serves on.
	s.DialEcho(t, echo.Addr(), "still serving")
}

// boundsTCPClient dials the server's TCP frontend from the local address
// ip (a loopback address: each is another client to the server).
type boundsTCPClient struct {
	s  *harness.Server
	ip string
}

func (b boundsTCPClient) dialer() *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(b.ip)}}
}

// connect opens a CONNECT tunnel as kube-apiserver does (TLS with the
// client certificate).
func (b boundsTCPClient) connect(ctx context.Context, target string) (net.Conn, error) {
	cfg, err := harness.ClientTLS(b.s.PKI)
	if err != nil {
		return nil, err
	}
	c, err := (&tls.Dialer{NetDialer: b.dialer(), Config: cfg}).DialContext(ctx, "tcp", b.s.Frontend)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", target)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		c.Close()
		return nil, &harness.ConnectError{Status: resp.StatusCode, StatusLine: resp.Status, Line: line}
	}
	return c, nil
}

// grpcDial dials target with konnectivity-client's single-use tunnel, as
// kube-apiserver does.
func (b boundsTCPClient) grpcDial(ctx context.Context, target string) (net.Conn, error) {
	cfg, err := harness.ClientTLS(b.s.PKI)
	if err != nil {
		return nil, err
	}
	d := b.dialer()
	tun, err := kclient.CreateSingleUseGrpcTunnelWithContext(ctx, context.Background(), b.s.Frontend,
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }))
	if err != nil {
		return nil, err
	}
	return tun.DialContext(ctx, "tcp", target)
}

func (b boundsTCPClient) dial(ctx context.Context, mode, target string) (net.Conn, error) {
	if mode == harness.HTTPConnect {
		return b.connect(ctx, target)
	}
	return b.grpcDial(ctx, target)
}

// boundsHold starts n dials to target that hang (a black hole), and
// returns once the server counts them pending; cancel ends them.
func boundsHold(t *testing.T, s *harness.Server, n int, dial func(context.Context) (net.Conn, error)) (cancel func()) {
	t.Helper()
	before, err := harness.MetricSum(s.MetricsURL(), boundsPending)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c, err := dial(ctx); err == nil {
				c.Close()
			}
		}()
	}
	harness.WaitMetric(t, 20*time.Second, s.MetricsURL(), boundsPending, before+float64(n))
	cancel = func() { stop(); wg.Wait() }
	t.Cleanup(cancel)
	return cancel
}

// boundsExpectRefusal checks a dial refused by a bound: the CONNECT
// status, or a DIAL_RSP error, carrying want.
func boundsExpectRefusal(t *testing.T, mode string, err error, status int, want string) {
	t.Helper()
	faultExpectDialError(t, mode, err, status)
	var ce *harness.ConnectError
	if errors.As(err, &ce) {
		if !strings.Contains(ce.StatusLine+ce.Line, want) {
			t.Fatalf("CONNECT %d %q: want %q in the reason", ce.Status, ce.StatusLine, want)
		}
		return
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("gRPC dial error %q: want %q in it", err, want)
	}
}

// One client (an IP address on the TCP frontend) may have at most
// --max-pending-dials-per-client dials waiting: its next is refused at once
// (429 over CONNECT), while another client's dials go through.
func TestBoundPendingDialsPerClient(t *testing.T) {
	bh := harness.NewBlackhole(t)
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	for _, mode := range []string{harness.HTTPConnect, harness.GRPC} {
		t.Run(mode, func(t *testing.T) {
			s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: mode, Transport: harness.TCP,
				Extra: []string{"--max-pending-dials-per-client=3", "--backend-dial-timeout=2m"}})
			harness.StartAgent(t, bins, s, harness.AgentOpts{Extra: []string{"--backend-dial-timeout=2m"}})
			s.WaitReady(t)
			a, b := boundsTCPClient{s, "127.0.0.1"}, boundsTCPClient{s, "127.0.0.2"}
			release := boundsHold(t, s, 3, func(ctx context.Context) (net.Conn, error) { return a.dial(ctx, mode, bh.Addr(443)) })

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := a.dial(ctx, mode, echo.Addr())
			if err == nil {
				c.Close()
			}
			boundsExpectRefusal(t, mode, err, http.StatusTooManyRequests, "--max-pending-dials-per-client")
			harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), boundsServerHits, 1, "limit", "pending_dials_client")
			if lines := boundsLogLines(s.Output(), "limit=pending_dials_client", "client=127.0.0.1"); len(lines) != 1 {
				t.Errorf("%d log lines about the refusal, want 1 naming the client", len(lines))
			}

			// Another client is not held up.
			c, err = b.dial(ctx, mode, echo.Addr())
			if err != nil {
				t.Fatalf("another client's dial: %v", err)
			}
			harness.CheckEcho(t, c, "other client")
			c.Close()
			// The held dials end; the first client dials again.
			release()
			harness.WaitMetric(t, 20*time.Second, s.MetricsURL(), boundsPending, 0)
			c, err = a.dial(ctx, mode, echo.Addr())
			if err != nil {
				t.Fatalf("the first client once its dials ended: %v", err)
			}
			harness.CheckEcho(t, c, "room again")
			c.Close()
		})
	}
}

// An agent with --max-pending-dials-per-agent dials waiting is passed
// over: a dial only it can carry is refused at once as busy (503 over
// CONNECT), the waiting ones stay, and another agent's dials go through.
// Each frontend is paired with one link, so both links are covered.
func TestBoundPendingDialsPerAgent(t *testing.T) {
	bh := harness.NewBlackhole(t)
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	for _, tc := range []struct{ mode, link string }{{harness.HTTPConnect, "native"}, {harness.GRPC, "anp"}} {
		mode, link := tc.mode, tc.link
		t.Run(mode+"/"+link, func(t *testing.T) {
			s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: mode,
				Extra: []string{"--max-pending-dials-per-agent=2", "--backend-dial-timeout=2m", "--proxy-strategies=destHost"}})
			// Only "slow" carries dials to the black hole, only "local" to loopback.
			harness.StartAgent(t, bins, s, harness.AgentOpts{ID: "slow", Identifiers: "ipv4=" + bh.NSAddr.String(),
				Extra: []string{"--backend-dial-timeout=2m", "--link=" + link}})
			harness.StartAgent(t, bins, s, harness.AgentOpts{ID: "local", Identifiers: "ipv4=127.0.0.1", Extra: []string{"--link=" + link}})
			s.WaitAgents(t, 2)
			boundsHold(t, s, 2, func(ctx context.Context) (net.Conn, error) { return s.Dial(ctx, bh.Addr(443)) })

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := s.Dial(ctx, bh.Addr(443))
			if err == nil {
				c.Close()
			}
			boundsExpectRefusal(t, mode, err, http.StatusServiceUnavailable, "--max-pending-dials-per-agent")
			harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), boundsServerHits, 1, "limit", "pending_dials_agent")
			harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), "konnectivity_network_proxy_server_dial_failure_count", 1, "reason", "busy")
			if v, _ := harness.MetricSum(s.MetricsURL(), boundsPending); v != 2 {
				t.Errorf("%v dials pending after the refusal, want the 2 held ones", v)
			}
			s.DialEcho(t, echo.Addr(), "another agent carries this")
		})
	}
}
