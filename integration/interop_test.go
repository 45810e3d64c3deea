package integration

// Interop with upstream apiserver-network-proxy v0.36.0 (ANP): an upstream
// agent against our proxy-server, and our proxy-agent against an upstream
// proxy-server, carrying HTTP CONNECT and gRPC (konnectivity-client)
// traffic over a Unix socket and TCP+mTLS, plus the connect metadata each
// side must accept from the other.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
)

// The lab backend speaks a one-byte command protocol, so one backend serves
// every check of a pair.
const (
	labEcho     = 'E' // echo everything until EOF
	labUpload   = 'U' // then 8-byte length n: read n bytes, answer their SHA-256, wait for EOF
	labDownload = 'D' // then 8-byte length n and 8-byte seed: send n bytes of labStream(seed), close
	labBye      = 'B' // answer "bye\n" and close at once: the backend closes first
)

// labConnLimit bounds every backend connection, so a lost close cannot keep
// a handler alive past the test.
const labConnLimit = 2 * time.Minute

func labHandler(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(labConnLimit))
	var op [1]byte
	if _, err := io.ReadFull(c, op[:]); err != nil {
		return
	}
	switch op[0] {
	case labEcho:
		_, _ = io.Copy(c, c)
	case labUpload:
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		h := sha256.New()
		if _, err := io.CopyN(h, c, int64(binary.BigEndian.Uint64(hdr[:]))); err != nil {
			return
		}
		if _, err := c.Write(h.Sum(nil)); err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, c) // the client closes first
	case labDownload:
		var hdr [16]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := int64(binary.BigEndian.Uint64(hdr[:8]))
		_, _ = io.CopyN(c, labStream(binary.BigEndian.Uint64(hdr[8:])), n)
	case labBye:
		_, _ = c.Write([]byte("bye\n"))
	}
}

// labStream is a deterministic byte stream.
func labStream(seed uint64) io.Reader {
	var key [32]byte
	binary.BigEndian.PutUint64(key[:], seed)
	return rand.NewChaCha8(key)
}

func labBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	_, _ = io.ReadFull(labStream(seed), b)
	return b
}

// dialFunc opens a tunneled connection through a frontend.
type dialFunc func(ctx context.Context, addr string) (net.Conn, error)

// opLimit bounds each check's data phase: a stuck tunnel is closed under
// it. konnectivity-client's conns have no deadlines, hence a watchdog.
const opLimit = 60 * time.Second

// labDial dials addr and sends the command header. The connection is
// closed by the returned stop (or at cleanup), and by a watchdog after
// opLimit.
func labDial(t testing.TB, dial dialFunc, addr string, header []byte) (net.Conn, func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := dial(ctx, addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	watchdog := time.AfterFunc(opLimit, func() { _ = c.Close() })
	var once sync.Once
	stop := func() {
		once.Do(func() {
			watchdog.Stop()
			_ = c.Close()
		})
	}
	t.Cleanup(stop)
	if _, err := c.Write(header); err != nil {
		t.Fatalf("write command: %v", err)
	}
	return c, stop
}

// waitBackendIdle waits until the backend has no open connection: every
// tunneled connection closed so far reached it.
func waitBackendIdle(t testing.TB, b *harness.Backend) {
	t.Helper()
	harness.WaitFor(t, 15*time.Second, "the backend's connections to close", func() bool { return b.Open() == 0 })
}

// writeChunks writes p in chunks: konnectivity-client sends one DATA packet
// per Write, and upstream's server refuses packets over 4 MiB.
func writeChunks(c net.Conn, p []byte) error {
	const chunk = 64 << 10
	for len(p) > 0 {
		n := min(chunk, len(p))
		if _, err := c.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// readEOF checks that the next read ends the connection.
func readEOF(c net.Conn) error {
	var b [1]byte
	n, err := c.Read(b[:])
	if n > 0 {
		return fmt.Errorf("read %q after the end of the data, want EOF", b[:n])
	}
	if !errors.Is(err, io.EOF) {
		return fmt.Errorf("want EOF, got %v", err)
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// checkEcho runs a few echo exchanges of a few KiB on several concurrent
// connections.
func checkEcho(t *testing.T, dial dialFunc, addr string) {
	const conns, rounds = 4, 3
	errs := make(chan error, conns)
	cs := make([]net.Conn, conns)
	for i := range cs {
		var stop func()
		cs[i], stop = labDial(t, dial, addr, []byte{labEcho})
		defer stop()
	}
	for i, c := range cs {
		go func() {
			errs <- func() error {
				for r := range rounds {
					msg := labBytes(uint64(100*i+r), 1<<10+rand.IntN(7<<10))
					if err := writeChunks(c, msg); err != nil {
						return fmt.Errorf("conn %d round %d: write: %w", i, r, err)
					}
					got := make([]byte, len(msg))
					if _, err := io.ReadFull(c, got); err != nil {
						return fmt.Errorf("conn %d round %d: read: %w", i, r, err)
					}
					if !bytes.Equal(got, msg) {
						return fmt.Errorf("conn %d round %d: echo differs at byte %d of %d", i, r, firstDiff(got, msg), len(msg))
					}
				}
				return nil
			}()
		}()
	}
	for range conns {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func uploadHeader(size int) []byte {
	hdr := []byte{labUpload, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint64(hdr[1:], uint64(size))
	return hdr
}

func downloadHeader(size int, seed uint64) []byte {
	hdr := make([]byte, 17)
	hdr[0] = labDownload
	binary.BigEndian.PutUint64(hdr[1:], uint64(size))
	binary.BigEndian.PutUint64(hdr[9:], seed)
	return hdr
}

// upload sends size bytes of labStream(seed) in writes of chunk bytes and
// compares the backend's digest of what it received.
func upload(c net.Conn, size, chunk int, seed uint64) error {
	data := labBytes(seed, size)
	for p := data; len(p) > 0; {
		n := min(chunk, len(p))
		if _, err := c.Write(p[:n]); err != nil {
			return fmt.Errorf("upload: write: %w", err)
		}
		p = p[n:]
	}
	var got [sha256.Size]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		return fmt.Errorf("upload: read the backend's digest: %w", err)
	}
	if want := sha256.Sum256(data); got != want {
		return fmt.Errorf("upload of %d bytes: the backend received other bytes (sha256 %x, want %x)", size, got, want)
	}
	return nil
}

// download reads size bytes, compares them with labStream(seed), and then
// wants EOF: the backend closes after its last byte.
func download(c net.Conn, size int, seed uint64) error {
	got := make([]byte, size)
	if n, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("download: read %d of %d bytes: %w", n, size, err)
	}
	if want := labBytes(seed, size); !bytes.Equal(got, want) {
		return fmt.Errorf("download of %d bytes differs at byte %d", size, firstDiff(got, want))
	}
	if err := readEOF(c); err != nil {
		return fmt.Errorf("download: after the backend closed: %w", err)
	}
	return nil
}

// checkUpload sends size bytes in 1 MiB writes: through konnectivity-client
// each is one DATA packet of 1 MiB, which the receiving side must take.
func checkUpload(t *testing.T, dial dialFunc, addr string, size int) {
	c, stop := labDial(t, dial, addr, uploadHeader(size))
	defer stop()
	if err := upload(c, size, 1<<20, 7); err != nil {
		t.Fatal(err)
	}
}

// checkDownload receives size bytes; the backend closes after the last one.
func checkDownload(t *testing.T, dial dialFunc, addr string, size int) {
	c, stop := labDial(t, dial, addr, downloadHeader(size, 42))
	defer stop()
	if err := download(c, size, 42); err != nil {
		t.Fatal(err)
	}
}

// checkParallel runs two uploads and two downloads at once: their DATA
// packets interleave on the one agent stream. Each transfer starts as soon
// as it is dialed: upstream's server forwards an agent's packets in order,
// so a download nobody reads would hold up the dial answers behind it (ANP's
// head-of-line blocking) and the test would deadlock itself.
func checkParallel(t *testing.T, dial dialFunc, addr string, size int) {
	const transfers = 4
	errs := make(chan error, transfers)
	for i := range transfers {
		seed := uint64(1000 + i)
		if i%2 == 0 {
			c, stop := labDial(t, dial, addr, uploadHeader(size))
			defer stop()
			go func() { errs <- upload(c, size, 64<<10, seed) }()
		} else {
			c, stop := labDial(t, dial, addr, downloadHeader(size, seed))
			defer stop()
			go func() { errs <- download(c, size, seed) }()
		}
	}
	for range transfers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// checkBackendClosesFirst: the backend answers and closes; the client sees
// the data, then EOF.
func checkBackendClosesFirst(t *testing.T, dial dialFunc, addr string) {
	c, stop := labDial(t, dial, addr, []byte{labBye})
	defer stop()
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "bye\n" {
		t.Fatalf("read %q, %v; want \"bye\\n\"", got, err)
	}
	if err := readEOF(c); err != nil {
		t.Fatalf("after the backend closed: %v", err)
	}
}

// agentEndpoints is the gauge of the agent's open backend connections;
// both implementations export it.
const agentEndpoints = "konnectivity_network_proxy_agent_open_endpoint_connections"

// checkClientClosesFirst: the client closes an idle, working connection;
// the agent must close its backend connection, and the backend see it end.
func checkClientClosesFirst(t *testing.T, dial dialFunc, addr string, b *harness.Backend, a *harness.Agent) {
	c, stop := labDial(t, dial, addr, []byte{labEcho})
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("read %q, %v; want \"ping\"", got, err)
	}
	if b.Open() != 1 {
		t.Fatalf("backend has %d connections open, want 1", b.Open())
	}
	harness.WaitMetric(t, 10*time.Second, a.MetricsURL(), agentEndpoints, 1)
	stop()
	waitBackendIdle(t, b)
	harness.WaitMetric(t, 10*time.Second, a.MetricsURL(), agentEndpoints, 0)
}

// checkFailedDial dials a closed loopback port: CONNECT answers 502, gRPC
// fails the dial; either way the reason reaches the client.
func checkFailedDial(t *testing.T, s *harness.Server) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	_ = ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := s.Dial(ctx, closed)
	if err == nil {
		c.Close()
		t.Fatalf("dial of the closed port %s succeeded", closed)
	}
	if s.Opts.Mode == harness.HTTPConnect {
		var ce *harness.ConnectError
		if !errors.As(err, &ce) || ce.Status != http.StatusBadGateway {
			t.Fatalf("CONNECT to a closed port: %v; want a 502 answer", err)
		}
	}
	if !strings.Contains(err.Error(), "refused") {
		t.Errorf("the dial error does not say the connection was refused: %v", err)
	}
}

// checkReusable runs echo exchanges through one reusable gRPC tunnel
// (konnectivity-client's CreateGRPCTunnel: one stream per dial).
func checkReusable(t *testing.T, s *harness.Server, addr string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tun, err := s.ReusableTunnel(ctx)
	if err != nil {
		t.Fatalf("reusable tunnel: %v", err)
	}
	defer tun.Close()
	dial := func(ctx context.Context, addr string) (net.Conn, error) { return tun.DialContext(ctx, "tcp", addr) }
	for i := range 3 {
		c, stop := labDial(t, dial, addr, []byte{labEcho})
		msg := labBytes(uint64(i), 3<<10)
		if err := writeChunks(c, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("dial %d: read: %v", i, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("dial %d: echo differs at byte %d", i, firstDiff(got, msg))
		}
		stop()
	}
}

// transferSize is the size of each bulk transfer, each way.
const transferSize = 8 << 20

// runTraffic runs every traffic check through s and a to a fresh lab
// backend.
func runTraffic(t *testing.T, s *harness.Server, a *harness.Agent) {
	b := harness.StartBackend(t, labHandler)
	addr := b.Addr()
	dial := dialFunc(s.Dial)
	type step struct {
		name string
		f    func(t *testing.T)
	}
	steps := []step{
		{"echo", func(t *testing.T) { checkEcho(t, dial, addr) }},
		{"upload", func(t *testing.T) { checkUpload(t, dial, addr, transferSize) }},
		{"download", func(t *testing.T) { checkDownload(t, dial, addr, transferSize) }},
		{"parallel", func(t *testing.T) { checkParallel(t, dial, addr, transferSize/4) }},
		{"backend-closes-first", func(t *testing.T) { checkBackendClosesFirst(t, dial, addr) }},
		{"client-closes-first", func(t *testing.T) { checkClientClosesFirst(t, dial, addr, b, a) }},
		{"failed-dial", func(t *testing.T) { checkFailedDial(t, s) }},
	}
	if s.Opts.Mode == harness.GRPC {
		steps = append(steps, step{"reusable-tunnel", func(t *testing.T) { checkReusable(t, s, addr) }})
	}
	for _, st := range steps {
		ok := t.Run(st.name, func(t *testing.T) {
			st.f(t)
			waitBackendIdle(t, b)
		})
		if !ok {
			return // a wedged tunnel would only fail the later steps too
		}
	}
	// Every tunneled connection of the pair has ended at the backend, and
	// the agent (either implementation exports the gauge) holds none.
	if n := b.Open(); n != 0 {
		t.Errorf("backend has %d connections open at the end", n)
	}
	harness.WaitMetric(t, 15*time.Second, a.MetricsURL(), agentEndpoints, 0)
}

// interopMatrix runs runTraffic for every frontend mode and transport with
// the given server and agent implementations.
func interopMatrix(t *testing.T, server, agent harness.Impl) {
	pki := harness.NewPKI(t)
	for _, mode := range []string{harness.GRPC, harness.HTTPConnect} {
		for _, tr := range []string{harness.UDS, harness.TCP} {
			t.Run(mode+"/"+tr, func(t *testing.T) {
				harness.LeakCheck(t)
				s := harness.StartServer(t, bins, pki, harness.ServerOpts{Impl: server, Mode: mode, Transport: tr})
				a := harness.StartAgent(t, bins, s, harness.AgentOpts{Impl: agent})
				a.WaitReady(t)
				s.WaitReady(t)
				runTraffic(t, s, a)
			})
		}
	}
}

// TestInteropUpstreamAgent: upstream's konnectivity-agent against our
// proxy-server.
func TestInteropUpstreamAgent(t *testing.T) {
	interopMatrix(t, harness.Isthmus, harness.Upstream)
}

// TestInteropUpstreamServer: our proxy-agent against upstream's
// konnectivity-server.
func TestInteropUpstreamServer(t *testing.T) {
	interopMatrix(t, harness.Upstream, harness.Isthmus)
}

// echoOnce runs one echo exchange to addr through s.
func echoOnce(t *testing.T, s *harness.Server, addr string) {
	t.Helper()
	c, stop := labDial(t, s.Dial, addr, []byte{labEcho})
	defer stop()
	msg := []byte("hello across implementations")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: read %q, %v; want %q", got, err, msg)
	}
}

// TestInteropServerHeaders: the serverID and serverCount headers our
// server sends are accepted and understood by upstream's agent.
func TestInteropServerHeaders(t *testing.T) {
	harness.LeakCheck(t)
	pki := harness.NewPKI(t)
	b := harness.StartBackend(t, labHandler)
	id := "isthmus-interop-" + strconv.Itoa(harness.FreePort(t))
	// A count above the servers that exist: the agent must take it from our
	// header and keep looking for more servers.
	const count = 3
	s := harness.StartServer(t, bins, pki, harness.ServerOpts{ID: id, Count: count})
	a := harness.StartAgent(t, bins, s, harness.AgentOpts{Impl: harness.Upstream, Extra: []string{"-v=2"}})
	a.WaitReady(t)
	s.WaitReady(t)

	// The agent's count comes from our header (upstream's default is 1).
	harness.WaitMetric(t, 15*time.Second, a.MetricsURL(), "konnectivity_network_proxy_agent_known_server_count", count)
	// It holds one connection: the others it opens reach the same serverID
	// and are dropped as duplicates.
	if v, err := harness.MetricSum(a.MetricsURL(), "konnectivity_network_proxy_agent_open_server_connections"); err != nil || v != 1 {
		t.Errorf("upstream agent's open_server_connections = %v (%v), want 1", v, err)
	}
	want := fmt.Sprintf("serverID=%q", id)
	harness.WaitFor(t, 10*time.Second, "the upstream agent to log our serverID", func() bool {
		return strings.Contains(a.Output(), want)
	})
	echoOnce(t, s, b.Addr())
	waitBackendIdle(t, b)
}

// TestInteropAgentIdentifiers: agentID and agentIdentifiers are accepted
// across implementations and drive destHost routing on both servers.
func TestInteropAgentIdentifiers(t *testing.T) {
	pki := harness.NewPKI(t)
	// ipv4 routes the dials below; host and cidr check that the other keys
	// parse on the receiving side.
	const idents = "host=node-a.interop.test&ipv4=127.0.0.1&cidr=127.0.0.0/8"
	const unknownHost = "node-b.interop.test:80" // no agent names it

	t.Run("isthmus-agent/upstream-server", func(t *testing.T) {
		harness.LeakCheck(t)
		b := harness.StartBackend(t, labHandler)
		// destHost alone: a dial reaches an agent only through its identifiers.
		s := harness.StartServer(t, bins, pki, harness.ServerOpts{Impl: harness.Upstream,
			Extra: []string{"--proxy-strategies=destHost", "-v=2"}})
		agentID := "isthmus-agent-" + strconv.Itoa(harness.FreePort(t))
		a := harness.StartAgent(t, bins, s, harness.AgentOpts{ID: agentID, Identifiers: idents})
		a.WaitReady(t)
		// Upstream's readiness counts the agents of its first strategy: ready
		// means our agent was filed under its destHost identifiers.
		s.WaitReady(t)
		want := fmt.Sprintf("%q agentID=%q", "Connect request from agent", agentID)
		harness.WaitFor(t, 10*time.Second, "the upstream server to log our agentID", func() bool {
			return strings.Contains(s.Output(), want)
		})
		echoOnce(t, s, b.Addr())
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if c, err := s.Dial(ctx, unknownHost); err == nil {
			c.Close()
			t.Fatalf("dial of %s succeeded; no agent identifies that host", unknownHost)
		}
		waitBackendIdle(t, b)
	})

	t.Run("upstream-agent/isthmus-server", func(t *testing.T) {
		harness.LeakCheck(t)
		b := harness.StartBackend(t, labHandler)
		s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.HTTPConnect,
			Extra: []string{"--proxy-strategies=destHost"}})
		a := harness.StartAgent(t, bins, s, harness.AgentOpts{Impl: harness.Upstream, Identifiers: idents})
		a.WaitReady(t)
		s.WaitReady(t)
		echoOnce(t, s, b.Addr())
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := s.Dial(ctx, unknownHost)
		if err == nil {
			c.Close()
			t.Fatalf("dial of %s succeeded; no agent identifies that host", unknownHost)
		}
		var ce *harness.ConnectError
		if !errors.As(err, &ce) || ce.Status != http.StatusServiceUnavailable {
			t.Fatalf("CONNECT to %s: %v; want 503 (no agent for this destination)", unknownHost, err)
		}
		waitBackendIdle(t, b)
	})
}
