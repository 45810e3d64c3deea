package reliability

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"isthmus.dev/certs"
	"isthmus.dev/integration/harness"
)

// The links and the frontends. "native-mux" is the native link with the
// session layer of package mux at both ends (--native-mux=isthmus).
var (
	links     = []string{"native", "native-mux", "anp"}
	frontends = []string{harness.GRPC, harness.HTTPConnect}
)

// serverFlags and agentFlags are the daemons' flags for link.
func serverFlags(link string) []string {
	if link == "native-mux" {
		return []string{"--native-mux=isthmus"}
	}
	return nil
}

func agentFlags(link string) []string {
	if link == "native-mux" {
		return []string{"--link=native", "--native-mux=isthmus"}
	}
	return []string{"--link=" + link}
}

// rig is a proxy-server on the host, a proxy-agent in a FaultNet's
// namespace dialling the server's address on the pair, and an echo
// backend on the namespace's loopback that only the agent can reach.
type rig struct {
	net     *harness.FaultNet
	pki     *certs.Bundle
	server  *harness.Server
	agent   *harness.Agent
	backend *harness.Backend
	target  string // the backend, as the agent dials it
	link    string
}

// newRig starts the server (its agent port on n's host address) in
// frontend mode and the agent on link, and waits until both are ready.
func newRig(t *testing.T, n *harness.FaultNet, link, frontend string) *rig {
	t.Helper()
	r := newRigParts(t, n, link, n.HostAddr.String())
	r.server = r.startServer(t, frontend, n.HostAddr.String(), 0, "")
	r.agent = r.startAgent(t, n.HostAddr.String())
	r.server.WaitReady(t)
	r.waitAgentLinks(t, 30*time.Second, 1)
	return r
}

// newRigParts is a rig without its processes: the PKI, whose server
// certificate names hosts, and the backend.
func newRigParts(t *testing.T, n *harness.FaultNet, link string, hosts ...string) *rig {
	t.Helper()
	pki, err := certs.NewBundle(filepath.Join(t.TempDir(), "pki"), hosts...)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{net: n, pki: pki, link: link}
	ln, err := n.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.backend = harness.ServeBackend(t, ln, harness.Echo)
	r.target = ln.Addr().String()
	return r
}

// startServer starts a server of the rig's PKI whose agent port is on
// addr (port 0: a free one); id "" is a new id.
func (r *rig) startServer(t *testing.T, frontend, addr string, port int, id string) *harness.Server {
	t.Helper()
	return harness.StartServer(t, bins, r.pki, harness.ServerOpts{Mode: frontend, Transport: harness.UDS, ID: id,
		AgentPort: port, Extra: append(append(profiled(t, "--admin-port"), "--agent-bind-address="+addr), serverFlags(r.link)...)})
}

// startAgent starts the agent in the namespace, dialling hosts on the
// server's agent port.
func (r *rig) startAgent(t *testing.T, hosts string) *harness.Agent {
	t.Helper()
	return harness.StartAgent(t, bins, r.server, harness.AgentOpts{Hosts: hosts, Worker: r.net.Worker(),
		Extra: append(profiled(t, "--admin-server-port"), agentFlags(r.link)...)})
}

// agentGauge reads an unlabelled gauge of the agent, through the
// namespace (also while its pair is black-holed).
func (r *rig) agentGauge(name string) (float64, error) {
	return gauge(r.net.HTTPClient(), r.agent.MetricsURL(), name)
}

// agentLinks is the number of tunnels the agent holds (-1: unreadable).
func (r *rig) agentLinks() float64 {
	n, err := r.agentGauge("konnectivity_network_proxy_agent_open_server_connections")
	if err != nil {
		return -1
	}
	return n
}

func (r *rig) waitAgentLinks(t *testing.T, d time.Duration, want float64) {
	t.Helper()
	harness.WaitFor(t, d, fmt.Sprintf("the agent to hold %v tunnels", want), func() bool { return r.agentLinks() == want })
}

// serverLinks is the number of agent links s holds (-1: unreadable).
func serverLinks(s *harness.Server) float64 {
	n, err := harness.MetricSum(s.MetricsURL(), "konnectivity_network_proxy_server_agent_links")
	if err != nil {
		return -1
	}
	return n
}

// profiled are the flags that serve /debug/pprof on a daemon's admin
// port (flag), on a port of the test's: watch collects garbage through it.
func profiled(t *testing.T, flag string) []string {
	return []string{"--enable-profiling", fmt.Sprintf("%s=%d", flag, harness.FreePort(t))}
}

// gcURL is the admin port's /debug/pprof/heap?gc=1 of a daemon started
// with profiled's flags (args: its command line).
func gcURL(args []string, flag string) string {
	port := ""
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			port = v // the last one counts, as for pflag
		}
	}
	return "http://127.0.0.1:" + port + "/debug/pprof/heap?gc=1"
}

// serverProc is s, for a watch.
func serverProc(s *harness.Server) proc {
	return proc{name: "proxy-server", url: s.MetricsURL(), gcURL: gcURL(s.Args(), "--admin-port"),
		client: &http.Client{Timeout: 10 * time.Second}}
}

// procs are the server and the agent, for a watch.
func (r *rig) procs() []proc {
	c := r.net.HTTPClient()
	c.Timeout = 10 * time.Second
	return []proc{serverProc(r.server),
		{name: "proxy-agent", url: r.agent.MetricsURL(), gcURL: gcURL(r.agent.Opts.Extra, "--admin-server-port"), client: c}}
}

// echo sends size bytes of p through c, an echo connection, in chunks,
// and reads them back, checking every byte. It ends when all came back,
// at the first error, or when ctx ends (c is closed then).
func echo(ctx context.Context, c net.Conn, p *harness.Pattern, size int64, chunk int) harness.Received {
	stop := harness.CloseWhenDone(ctx, c)
	defer stop()
	werr := make(chan error, 1)
	go func() { werr <- p.WriteChunks(c, size, chunk) }()
	got := p.ReadVerify(io.LimitReader(c, size), size)
	if got.Err == nil && got.N < size {
		got.Err = fmt.Errorf("connection ended after %d of %d bytes: %w", got.N, size, io.ErrUnexpectedEOF)
	}
	if err := <-werr; got.Err == nil && err != nil {
		got.Err = err
	}
	if got.Err != nil && ctx.Err() != nil {
		got.Err = fmt.Errorf("%w (%w)", got.Err, ctx.Err())
	}
	return got
}

// patternSeeds is how many streams the load tests share out: a Pattern's
// table is 4 MiB, kept for the process, so a seed per connection of
// 10,000 would hold 40 GiB.
const patternSeeds = 16

// pattern is the stream of seed, one of patternSeeds.
func pattern(seed uint64) *harness.Pattern { return harness.NewPattern(seed % patternSeeds) }

// dialEcho dials target through s, checks one echo of n bytes and closes.
func dialEcho(ctx context.Context, s *harness.Server, target string, seed uint64, n int64) error {
	c, err := s.Dial(ctx, target)
	if err != nil {
		return fmt.Errorf("dial %s through %s: %w", target, s.Name, err)
	}
	defer c.Close()
	if got := echo(ctx, c, pattern(seed), n, int(n)); got.Err != nil {
		return fmt.Errorf("echo through %s: %w", s.Name, got.Err)
	}
	return nil
}

// ended is how an open connection ended during a fault.
type ended struct {
	at  time.Time
	err error
}

// held is a connection left open across a fault, with a reader blocked on
// it (an idle connection) or an echo running on it (a busy one); it
// reports when and how it ended.
type held struct {
	name string
	out  chan ended
}

// holdIdle reads c until it ends.
func holdIdle(name string, c net.Conn) *held {
	h := &held{name: name, out: make(chan ended, 1)}
	go func() {
		_, err := c.Read(make([]byte, 1))
		if err == nil {
			err = errors.New("a byte arrived on an idle echo connection")
		}
		h.out <- ended{time.Now(), err}
	}()
	return h
}

// holdBusy keeps an echo running on c, a chunk at a time, until it fails.
func holdBusy(name string, c net.Conn) *held {
	h := &held{name: name, out: make(chan ended, 1)}
	go func() {
		p := harness.NewPattern(7)
		const chunk = 16 << 10
		for range 1 << 20 { // bounded: 16 GiB
			if got := echo(context.Background(), c, p, chunk, chunk); got.Err != nil {
				h.out <- ended{time.Now(), got.Err}
				return
			}
		}
		h.out <- ended{time.Now(), errors.New("a busy connection ran to its end")}
	}()
	return h
}

// loggedAfter finds the first line of out, a daemon's log (slog text),
// with msg at or after since: its time and its err attribute.
func loggedAfter(out, msg string, since time.Time) (at time.Time, why string, ok bool) {
	want := "msg=" + strconv.Quote(msg)
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, want) {
			continue
		}
		stamp, ok := strings.CutPrefix(strings.Fields(line)[0], "time=")
		if !ok {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, stamp)
		if err != nil || at.Before(since.Truncate(time.Millisecond)) {
			continue
		}
		if _, rest, found := strings.Cut(line, " err="); found {
			if q, err := strconv.QuotedPrefix(rest); err == nil {
				why, _ = strconv.Unquote(q)
			} else {
				why, _, _ = strings.Cut(rest, " ")
			}
		}
		return at, why, true
	}
	return time.Time{}, "", false
}

// p50 is the median of ds.
func p50(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// parallel runs n calls of f on workers goroutines and returns the errors.
func parallel(n, workers int, f func(i int) error) []error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		next = make(chan int)
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return errs
}
