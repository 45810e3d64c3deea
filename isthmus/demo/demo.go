// Package demo runs the whole tunnel on one machine and narrates it: the
// code behind `isthmus demo` and `make demo`.
package demo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kclient "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"

	"isthmus.dev/certs"
)

// Options of a demo run.
type Options struct {
	BinDir    string    // holds proxy-server and proxy-agent
	AgentPort int       // preferred agent port on 127.0.0.1
	Keep      bool      // keep the work directory
	Out       io.Writer // narration
}

type run struct {
	Options
	dir   string
	step  int
	procs []*daemon
}

const steps = 7

func (r *run) say(format string, a ...any) {
	r.step++
	fmt.Fprintf(r.Out, "\n[%d/%d] %s\n", r.step, steps, fmt.Sprintf(format, a...))
}

func (r *run) detail(format string, a ...any) {
	fmt.Fprintf(r.Out, "      %s\n", fmt.Sprintf(format, a...))
}

// Run runs the demo; it stops everything it started before returning.
func Run(ctx context.Context, o Options) (err error) {
	for _, b := range []string{"proxy-server", "proxy-agent"} {
		if _, serr := os.Stat(filepath.Join(o.BinDir, b)); serr != nil {
			return fmt.Errorf("%s not found in %s (build it with 'make build' or pass --bin-dir): %w", b, o.BinDir, serr)
		}
	}
	dir, err := os.MkdirTemp("", "isthmus-demo-")
	if err != nil {
		return err
	}
	r := &run{Options: o, dir: dir}
	defer func() {
		for i := len(r.procs) - 1; i >= 0; i-- {
			r.procs[i].stop(5 * time.Second)
		}
		if o.Keep {
			fmt.Fprintf(o.Out, "\nkept %s (certificates and daemon logs)\n", dir)
		} else {
			_ = os.RemoveAll(dir)
		}
		if err != nil {
			fmt.Fprintf(o.Out, "\ndemo FAILED: %v\n", err)
			for _, p := range r.procs {
				fmt.Fprintf(o.Out, "--- last lines of %s:\n%s\n", p.name, p.tail(20))
			}
		}
	}()
	return r.run(ctx)
}

func (r *run) run(ctx context.Context) error {
	r.say("PKI: a CA and the certificates of every party, in %s", r.dir)
	pki, err := certs.NewBundle(filepath.Join(r.dir, "pki"))
	if err != nil {
		return err
	}
	r.detail("CA %s; agent-port server certificate for localhost/127.0.0.1/::1; the agent's client certificate; ECDSA P-256, keys 0600", pki.CACert)

	r.say("backend: an HTTP server on loopback, standing in for a kubelet or a pod")
	backend, stopBackend, err := startBackend()
	if err != nil {
		return err
	}
	defer stopBackend()
	r.detail("listening on %s", backend)

	agentPort, err := pickPort(r.AgentPort)
	if err != nil {
		return err
	}
	if agentPort != r.AgentPort {
		r.detail("port %d is taken on this machine; the demo uses %d instead", r.AgentPort, agentPort)
	}
	sock := filepath.Join(r.dir, "konnectivity-server.sock")
	healthPort, err := pickPort(0)
	if err != nil {
		return err
	}
	serverArgs := func(mode string) []string {
		return []string{"--mode=" + mode, "--uds-name=" + sock, "--server-port=0",
			"--agent-port=" + strconv.Itoa(agentPort), "--agent-bind-address=127.0.0.1",
			"--cluster-cert=" + pki.AgentPortCert, "--cluster-key=" + pki.AgentPortKey,
			"--cluster-ca-cert=" + pki.CACert, // agents authenticate with client certificates
			"--health-port=" + strconv.Itoa(healthPort), "--health-bind-address=127.0.0.1",
			"--admin-port=0", "--server-id=demo-server", "-v=3"}
	}

	r.say("proxy-server: frontend HTTP CONNECT on a Unix socket, agents on 127.0.0.1:%d (TLS)", agentPort)
	server, err := r.start(ctx, "proxy-server", serverArgs("http-connect"))
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, "http://127.0.0.1:"+strconv.Itoa(healthPort)+"/healthz", 200); err != nil {
		return fmt.Errorf("proxy-server did not come up: %w", err)
	}
	r.detail("socket %s", sock)
	r.detail("agents must authenticate: a client certificate signed by the demo CA (--cluster-ca-cert);")
	r.detail("deployments like kubeadm's use service-account tokens instead (see 'isthmus egress render')")

	agentHealth, err := pickPort(0)
	if err != nil {
		return err
	}
	r.say("proxy-agent: dials OUT to the server (the only direction a firewalled worker needs)")
	r.detail("the agent proves who it is with its client certificate (--agent-cert/--agent-key, signed by the demo CA)")
	mark0 := r.marks()
	start := time.Now()
	if _, err := r.start(ctx, "proxy-agent", []string{"--proxy-server-host=127.0.0.1", "--proxy-server-port=" + strconv.Itoa(agentPort),
		"--ca-cert=" + pki.CACert, "--agent-cert=" + pki.AgentCert, "--agent-key=" + pki.AgentKey,
		"--agent-id=demo-agent", "--agent-identifiers=host=demo-node&ipv4=127.0.0.1",
		"--health-server-port=" + strconv.Itoa(agentHealth), "--health-server-host=127.0.0.1", "--admin-server-port=0",
		"--sync-interval=100ms", "--sync-interval-cap=1s", "-v=3"}); err != nil {
		return err
	}
	agentReady := "http://127.0.0.1:" + strconv.Itoa(agentHealth) + "/readyz"
	if err := waitHTTP(ctx, agentReady, 200); err != nil {
		return fmt.Errorf("proxy-agent did not connect: %w", err)
	}
	r.detail("connected to server demo-server in %v", time.Since(start).Round(time.Millisecond))
	r.hops(mark0)

	r.say("HTTP CONNECT, as kube-apiserver's HTTPConnect egress sends it:\n      client -> %s -> proxy-server -> TLS tunnel -> proxy-agent -> %s", filepath.Base(sock), backend)
	if err := r.viaConnect(ctx, sock, backend); err != nil {
		return err
	}

	r.say("konnectivity-client over gRPC, as kube-apiserver's GRPC egress does it.\n      The server restarts in grpc mode; the agent reconnects by itself")
	server.stop(5 * time.Second)
	if _, err := r.start(ctx, "proxy-server", serverArgs("grpc")); err != nil {
		return err
	}
	start = time.Now()
	if err := waitHTTP(ctx, "http://127.0.0.1:"+strconv.Itoa(healthPort)+"/readyz", 200); err != nil {
		return fmt.Errorf("the agent did not come back: %w", err)
	}
	r.detail("agent reconnected %v after the server came back", time.Since(start).Round(time.Millisecond))
	if err := r.viaGRPC(ctx, sock, backend); err != nil {
		return err
	}

	r.say("shutdown: SIGTERM to the agent (it sends DRAIN and leaves), then to the server")
	for i := len(r.procs) - 1; i >= 0; i-- {
		p := r.procs[i]
		if err := p.stop(10 * time.Second); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		r.detail("%s stopped cleanly", p.name)
	}
	r.procs = nil
	fmt.Fprintln(r.Out, "\ndemo OK: both requests crossed the tunnel.")
	return nil
}

// viaConnect does a CONNECT and a GET through it.
func (r *run) viaConnect(ctx context.Context, sock, backend string) error {
	mark := r.marks()
	start := time.Now()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", backend)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return fmt.Errorf("CONNECT: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("CONNECT answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	r.detail("CONNECT %s -> %s after %v", backend, resp.Status, time.Since(start).Round(time.Microsecond))
	tr := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return &bufConn{c, br}, nil }}
	err = r.get(ctx, tr, backend, "/via/http-connect")
	tr.CloseIdleConnections() // the client hangs up: watch the close cross the tunnel too
	if err != nil {
		return err
	}
	r.hops(mark)
	return nil
}

// viaGRPC does a GET through konnectivity-client's single-use tunnel.
func (r *run) viaGRPC(ctx context.Context, sock, backend string) error {
	mark := r.marks()
	start := time.Now()
	tun, err := kclient.CreateSingleUseGrpcTunnelWithContext(ctx, context.Background(), "passthrough:///"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}))
	if err != nil {
		return fmt.Errorf("konnectivity-client: %w", err)
	}
	c, err := tun.DialContext(ctx, "tcp", backend)
	if err != nil {
		return fmt.Errorf("konnectivity-client dial: %w", err)
	}
	r.detail("DIAL_REQ %s -> DIAL_RSP (connected) after %v", backend, time.Since(start).Round(time.Microsecond))
	tr := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return c, nil }}
	err = r.get(ctx, tr, backend, "/via/grpc")
	tr.CloseIdleConnections()
	if err != nil {
		return err
	}
	r.hops(mark)
	return nil
}

func (r *run) get(ctx context.Context, tr *http.Transport, backend, path string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+backend+path, nil)
	start := time.Now()
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return fmt.Errorf("GET %s through the tunnel: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	r.detail("GET %s -> %s in %v: %q", path, resp.Status, time.Since(start).Round(time.Microsecond), strings.TrimSpace(string(body)))
	return nil
}

// marks records where each daemon's log is, to show what it logged later.
func (r *run) marks() []int {
	m := make([]int, len(r.procs))
	for i, p := range r.procs {
		m[i] = p.out.len()
	}
	return m
}

// hops prints what the daemons logged since marks: each hop in their words.
func (r *run) hops(mark []int) {
	time.Sleep(200 * time.Millisecond) // let the daemons log the close
	for i, p := range r.procs {
		if p.done() {
			continue
		}
		off := 0 // a daemon started after the mark: all it said
		if i < len(mark) {
			off = mark[i]
		}
		for _, line := range p.out.linesSince(off) {
			r.detail("%-12s| %s", p.name, shorten(line))
		}
	}
}

func shorten(line string) string {
	// Drop the timestamp: the narration is in order already.
	if _, rest, ok := strings.Cut(line, " "); ok && strings.HasPrefix(line, "time=") {
		return rest
	}
	return line
}

// bufConn reads first what a bufio.Reader already holds.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func startBackend() (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		fmt.Fprintf(w, "hello from the backend: you asked for %s; the connection came from %s (the agent)\n", req.URL.Path, req.RemoteAddr)
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	return ln.Addr().String(), func() { _ = srv.Close(); <-done }, nil
}

func pickPort(want int) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(want)))
	if err != nil && want != 0 {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func waitHTTP(ctx context.Context, url string, want int) error {
	c := &http.Client{Timeout: time.Second}
	var last error
	for i := 0; i < 600; i++ {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				return nil
			}
			err = fmt.Errorf("%s answered %s", url, resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return last
}

// daemon is a proxy-server or proxy-agent process of the demo.
type daemon struct {
	name   string
	cmd    *exec.Cmd
	out    *logBuf
	exited chan struct{}
	err    error
}

func (r *run) start(ctx context.Context, name string, args []string) (*daemon, error) {
	d := &daemon{name: name, out: &logBuf{}, exited: make(chan struct{})}
	d.cmd = exec.Command(filepath.Join(r.BinDir, name), args...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.exited) }()
	// Replace a stopped daemon of the same name in the list.
	for i, p := range r.procs {
		if p.name == name && p.done() {
			r.procs[i] = d
			return d, nil
		}
	}
	r.procs = append(r.procs, d)
	_ = ctx
	return d, nil
}

func (d *daemon) done() bool {
	select {
	case <-d.exited:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to grace, then kills.
func (d *daemon) stop(grace time.Duration) error {
	if d.done() {
		return nil
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return d.err
	case <-time.After(grace):
		_ = d.cmd.Process.Kill()
		<-d.exited
		return fmt.Errorf("did not stop within %v after SIGTERM; killed", grace)
	}
}

func (d *daemon) tail(n int) string {
	lines := d.out.linesSince(0)
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
