// Command agentload connects many agents to one proxy-server from one
// process, for the bench's agents-per-server rows: what each connected
// agent costs the server (memory, goroutines) and how long it takes to
// connect them all. Each agent is what a proxy-agent holds for one server:
// its own TCP and TLS connection and, on the native link, a yamux session
// with its control stream, or, on the ANP link, a gRPC connection with one
// /AgentService/Connect stream. The agents answer no dials: they stand for
// idle nodes.
//
// It prints one JSON line once every agent has connected or failed, then
// holds the links until SIGTERM or SIGINT (or its stdin ends), and closes
// them.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"

	"isthmus.dev/tunnel/anp"
	"isthmus.dev/tunnel/native"
)

// Report is the line printed once the agents have connected.
type Report struct {
	Agents     int     `json:"agents"`
	Connected  int     `json:"connected"`
	Failed     int     `json:"failed"`
	Seconds    float64 `json:"seconds"` // from the first dial to the last agent connected
	FirstError string  `json:"first_error,omitempty"`
}

type options struct {
	server      string
	serverName  string
	link        string
	mux         string
	agents      int
	concurrency int
	idPrefix    string
	caCert      string
	cert, key   string
	timeout     time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.server, "server", "", "proxy-server's agent port, HOST:PORT")
	flag.StringVar(&o.serverName, "server-name", "", "name to verify the server's certificate against (default: the host of --server)")
	flag.StringVar(&o.link, "link", "native", "native or anp")
	flag.StringVar(&o.mux, "native-mux", "yamux", "native link: the agents' session layer, yamux or isthmus (the prototype)")
	flag.IntVar(&o.agents, "agents", 1000, "agents to connect")
	flag.IntVar(&o.concurrency, "concurrency", 32, "agents connecting at once")
	flag.StringVar(&o.idPrefix, "id-prefix", "load-", "agent IDs are this prefix and a number")
	flag.StringVar(&o.caCert, "ca-cert", "", "CA of the server's certificate")
	flag.StringVar(&o.cert, "agent-cert", "", "the agents' client certificate")
	flag.StringVar(&o.key, "agent-key", "", "its key")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up connecting after this long")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "agentload:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.server == "" || o.agents < 1 || o.concurrency < 1 {
		return errors.New("--server, --agents >= 1 and --concurrency >= 1 are required")
	}
	if o.link != "native" && o.link != "anp" {
		return fmt.Errorf("--link=%q: want native or anp", o.link)
	}
	if err := native.CheckMux(o.mux); err != nil {
		return fmt.Errorf("--native-mux: %w", err)
	}
	if err := raiseNofile(uint64(o.agents) + 256); err != nil {
		return err
	}
	tc, err := clientTLS(o)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() { // the bench ends us by closing our stdin, too
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()

	var (
		wg        sync.WaitGroup
		connected atomic.Int64
		failed    atomic.Int64
		firstErr  atomic.Pointer[error]
		closers   = make([]func(), o.agents)
		sem       = make(chan struct{}, o.concurrency)
	)
	cctx, ccancel := context.WithTimeout(ctx, o.timeout)
	start := time.Now()
	for i := range o.agents {
		select {
		case sem <- struct{}{}:
		case <-cctx.Done():
		}
		if cctx.Err() != nil {
			failed.Add(int64(o.agents - i))
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			id := o.idPrefix + strconv.Itoa(i)
			var closeFn func()
			var err error
			if o.link == "native" {
				closeFn, err = connectNative(ctx, cctx, o, tc, id)
			} else {
				closeFn, err = connectANP(ctx, cctx, o, tc, id)
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, &err)
				return
			}
			closers[i] = closeFn
			connected.Add(1)
		})
	}
	wg.Wait()
	took := time.Since(start)
	ccancel()
	r := Report{Agents: o.agents, Connected: int(connected.Load()), Failed: int(failed.Load()), Seconds: took.Seconds()}
	if e := firstErr.Load(); e != nil {
		r.FirstError = (*e).Error()
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		return err
	}
	<-ctx.Done()
	for _, c := range closers {
		if c != nil {
			c()
		}
	}
	return nil
}

// connectNative connects one agent on the native link: its handshake
// within dctx, its session until ctx ends.
func connectNative(ctx, dctx context.Context, o options, tc *tls.Config, id string) (func(), error) {
	tc = tc.Clone()
	tc.NextProtos = []string{native.ALPN}
	var d net.Dialer
	raw, err := d.DialContext(dctx, "tcp", o.server)
	if err != nil {
		return nil, err
	}
	conn := tls.Client(native.WrapRaw(raw), tc)
	if err := conn.HandshakeContext(dctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS: %w", err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != native.ALPN {
		conn.Close()
		return nil, fmt.Errorf("the server does not offer the native link (ALPN %q): run with --link=anp, or against an isthmus proxy-server", p)
	}
	l, _, err := native.Connect(dctx, conn, native.Hello{AgentID: id}, native.AgentOptions{Config: native.Config{Mux: o.mux}})
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = l.Run(lctx)
	}()
	return func() { cancel(); <-done }, nil
}

// connectANP connects one agent on the ANP link, as proxy-agent
// --link=anp and upstream's agent do: a gRPC connection with keepalive
// every 30 s and one Connect stream.
func connectANP(ctx, dctx context.Context, o options, tc *tls.Config, id string) (func(), error) {
	cc, err := grpc.NewClient("passthrough:///"+o.server,
		grpc.WithTransportCredentials(credentials.NewTLS(tc.Clone())),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 20 * time.Second, PermitWithoutStream: true}),
	)
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, metadata.Pairs(anp.MDAgentID, id)))
	fail := func(err error) (func(), error) {
		cancel()
		cc.Close()
		return nil, err
	}
	stream, err := anp.OpenAgentStream(lctx, cc)
	if err != nil {
		return fail(err)
	}
	// The server sends its headers once it has taken the agent.
	hdr := make(chan error, 1)
	go func() { _, err := stream.Header(); hdr <- err }()
	select {
	case err := <-hdr:
		if err != nil {
			return fail(fmt.Errorf("server headers: %w", err))
		}
	case <-dctx.Done():
		return fail(dctx.Err())
	}
	l := anp.NewAgentLink(stream, anp.AgentOptions{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = l.Run(lctx)
	}()
	return func() { cancel(); <-done; cc.Close() }, nil
}

func clientTLS(o options) (*tls.Config, error) {
	caPEM, err := os.ReadFile(o.caCert)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s: no certificate", o.caCert)
	}
	cert, err := tls.LoadX509KeyPair(o.cert, o.key)
	if err != nil {
		return nil, err
	}
	name := o.serverName
	if name == "" {
		if name, _, err = net.SplitHostPort(o.server); err != nil {
			return nil, err
		}
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: name, MinVersion: tls.VersionTLS12}, nil
}

// raiseNofile raises the soft open-file limit to need (at most the hard
// limit): one descriptor per agent.
func raiseNofile(need uint64) error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	if l.Cur >= need {
		return nil
	}
	if l.Max < need {
		return fmt.Errorf("open-file limit: hard limit %d is below the %d descriptors %d agents need: raise it (ulimit -Hn, as root) or ask for fewer --agents", l.Max, need, need-256)
	}
	l.Cur = need
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
}
