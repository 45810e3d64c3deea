package kubetraffic

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
)

const (
	floodPort = 8081 // on the worker's loopback: a backend that writes without end
	floodSeed = 99
)

// flood is a backend that writes a Pattern stream to each connection until
// the connection ends (at most 4 GiB), counting what the worker's kernel
// took: once the reader stops, the count stops too.
type flood struct {
	written atomic.Int64
}

func (f *flood) handle(c net.Conn) {
	_ = harness.NewPattern(floodSeed).WriteChunks(countingWriter{c, &f.written}, 4<<30, 64<<10)
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (cw countingWriter) Write(b []byte) (int, error) {
	n, err := cw.w.Write(b)
	cw.n.Add(int64(n))
	return n, err
}

// stallQuiet is how long the flood's count must stand still to be taken
// as stalled. A second was not enough on a loaded 2-core machine (four
// kube-apiservers and their tunnels in parallel, beside other packages'
// tests): the flood paused for over a second at 14 MiB, the probes ran,
// and meanwhile it took 10 MiB more, so the probes had not run against a
// full stream.
const stallQuiet = 3 * time.Second

// waitStalled waits until f's count has not moved for stallQuiet (the
// stream is full from the flood to the port-forward's client, which does
// not read) and returns it; at most d.
func (f *flood) waitStalled(ctx context.Context, d time.Duration) (int64, error) {
	deadline := time.Now().Add(d)
	last, since := f.written.Load(), time.Now()
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if n := f.written.Load(); n != last {
			last, since = n, time.Now()
		} else if n > 0 && time.Since(since) >= stallQuiet {
			return n, nil
		}
	}
	return 0, fmt.Errorf("the flood never stalled within %v (%d bytes written)", d, f.written.Load())
}

// execSession is a running `kubectl exec -i -- cat`: each line written
// comes back.
type execSession struct {
	*running
	in    io.WriteCloser
	lines chan string   // what cat sent back; closed at its end
	quit  chan struct{} // closed by close: what comes after is dropped
}

func (s *stack) startExec(ctx context.Context) (*execSession, error) {
	cmd := s.command(ctx, "exec", "-i", podName, "-c", container, "--", "cat")
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	r, err := s.startCmd(cmd)
	if err != nil {
		return nil, err
	}
	e := &execSession{running: r, in: in, lines: make(chan string, 16), quit: make(chan struct{})}
	go func() {
		defer close(e.lines)
		sc := bufio.NewScanner(r.stdout)
		for sc.Scan() { // to kubectl's end, so that it never blocks on its output
			select {
			case e.lines <- sc.Text():
			case <-e.quit:
			}
		}
	}()
	return e, nil
}

// roundTrip sends line and waits up to d for it to come back.
func (e *execSession) roundTrip(line string, d time.Duration) error {
	if _, err := io.WriteString(e.in, line+"\n"); err != nil {
		return fmt.Errorf("write to kubectl exec: %w (%s)", err, tailOf(e.errOut.String()))
	}
	select {
	case got, ok := <-e.lines:
		switch {
		case !ok:
			return fmt.Errorf("kubectl exec ended before %q came back (%s)", line, tailOf(e.errOut.String()))
		case got != line:
			return fmt.Errorf("kubectl exec: %q came back for %q", got, line)
		}
		return nil
	case <-time.After(d):
		return fmt.Errorf("%q did not come back through kubectl exec within %v", line, d)
	}
}

func (e *execSession) close() {
	close(e.quit)
	_ = e.in.Close()
	e.stop()
}

// portForward starts `kubectl port-forward` to port of the pod and
// returns it with the local address it listens on.
func (s *stack) portForward(ctx context.Context, port int) (*running, string, error) {
	k, err := s.start(ctx, "port-forward", "--address=127.0.0.1", "pod/"+podName, fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, "", err
	}
	local := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(k.stdout)
		for sc.Scan() {
			if m := forwarding.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case local <- net.JoinHostPort("127.0.0.1", m[1]):
				default:
				}
			}
		}
	}()
	select {
	case addr := <-local:
		return k, addr, nil
	case err := <-k.exited:
		k.exited <- err // for stop
		k.stop()
		return nil, "", fmt.Errorf("kubectl port-forward exited: %v: %s", err, tailOf(k.errOut.String()))
	case <-time.After(time.Minute):
		k.stop()
		return nil, "", fmt.Errorf("kubectl port-forward did not say where it listens within a minute: %s", tailOf(k.errOut.String()))
	}
}

// probe is one kind of request that goes on while a stream is stalled.
type probe struct {
	name  string
	round func(ctx context.Context, i int) error
}

// probeResult is what a probe did: rounds that succeeded and failed, the
// first failure, and the longest time without a success (from the start
// to the first, between two, or from the last to the end).
type probeResult struct {
	name       string
	ok, failed int
	gap        time.Duration
	err        error
}

func (r probeResult) String() string {
	s := fmt.Sprintf("%s %v", r.name, r.gap.Round(time.Millisecond))
	if r.failed > 0 {
		s += fmt.Sprintf(" (%d of %d rounds failed)", r.failed, r.ok+r.failed)
	}
	return s
}

// runProbe runs rounds rounds of p, each within perRound, going on after a
// failed one, until ctx ends.
func runProbe(ctx context.Context, p probe, rounds int, perRound time.Duration) probeResult {
	res := probeResult{name: p.name}
	last := time.Now()
	for i := 0; i < rounds && ctx.Err() == nil; i++ {
		rctx, cancel := context.WithTimeout(ctx, perRound)
		err := p.round(rctx, i)
		cancel()
		if err != nil {
			res.failed++
			if res.err == nil {
				res.err = fmt.Errorf("%s, round %d: %w", p.name, i, err)
			}
			continue
		}
		res.ok++
		now := time.Now()
		res.gap = max(res.gap, now.Sub(last))
		last = now
	}
	res.gap = max(res.gap, time.Since(last))
	if res.ok+res.failed < rounds && res.err == nil {
		res.err = fmt.Errorf("%s: %d of %d rounds done in the time given", p.name, res.ok+res.failed, rounds)
	}
	return res
}

// holScenario is head-of-line blocking at kube-apiserver's level: a
// `kubectl port-forward` whose local client stops reading while its remote
// end floods, so that the stream fills from the worker to kubectl; while it
// stays stalled, exec round trips (over a running `kubectl exec -i`),
// webhook calls (ConfigMap creates) and aggregated API requests go through
// the same agent. Each kind must complete its rounds while the stall holds,
// and the stalled stream must then deliver its bytes in order. The note
// has the longest gap between two completions of each kind.
func holScenario(t *testing.T, s *stack) (string, error) {
	const (
		rounds   = 30
		perRound = 20 * time.Second
		window   = 30 * time.Second // for all the rounds of every kind
	)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	if err := s.waitAPIServiceAvailable(ctx, 2*time.Minute); err != nil {
		return "", err
	}
	o, err := s.openStreams(ctx, floodPort, "before the stall")
	if err != nil {
		return "", err
	}
	defer o.close()
	ex, pf, stalled := o.exec, o.pf, o.conn
	// Nothing reads stalled until the probes are done.
	held, err := s.flood.waitStalled(ctx, time.Minute)
	if err != nil {
		return "", fmt.Errorf("%w (kubectl port-forward: %s)", err, tailOf(pf.errOut.String()))
	}

	probes := []probe{
		{"exec", func(ctx context.Context, i int) error {
			d, _ := ctx.Deadline()
			return ex.roundTrip("round "+strconv.Itoa(i), time.Until(d))
		}},
		{"webhook", func(ctx context.Context, i int) error { return s.createAnswered(ctx, "hol-"+strconv.Itoa(i)) }},
		{"aggregated", func(ctx context.Context, i int) error { return s.getPing(ctx, "hol-"+strconv.Itoa(i)) }},
	}
	results := make([]probeResult, len(probes))
	var wg sync.WaitGroup
	start := time.Now()
	pctx, pcancel := context.WithTimeout(ctx, window)
	for i, p := range probes {
		wg.Go(func() { results[i] = runProbe(pctx, p, rounds, perRound) })
	}
	wg.Wait()
	pcancel()
	took := time.Since(start)
	moved := s.flood.written.Load() - held

	note := fmt.Sprintf("stalled after %.1f MiB; %d rounds of each in %v, longest gap:", float64(held)/(1<<20), rounds, took.Round(10*time.Millisecond))
	var errs []error
	for _, r := range results {
		note += " " + r.String()
		if r.err != nil {
			errs = append(errs, r.err)
		}
	}
	if moved != 0 {
		// The stall was broken while the probes ran: the stalled stream
		// was cut, or something read it.
		errs = append(errs, fmt.Errorf("the stalled stream did not stay stalled: %d more bytes were taken from the flood while the probes ran", moved))
	}
	// Then the client reads: the stream resumes where it stopped, in order.
	const resume = 4 << 20
	_ = stalled.SetReadDeadline(time.Now().Add(time.Minute))
	if got := harness.NewPattern(floodSeed).ReadVerify(stalled, resume); got.Err != nil || got.N != resume {
		errs = append(errs, fmt.Errorf("the stalled stream, read at last: %v", got))
	}
	if err := errors.Join(errs...); err != nil {
		return note, err
	}
	return note + "; the stream then resumed in order", nil
}

// openStreams is a running `kubectl exec -i -- cat` and a connection
// through a `kubectl port-forward`, open through the agent.
type openStreams struct {
	exec *execSession
	pf   *running
	conn net.Conn
}

// openStreams starts an exec and checks it with a round trip of line, then
// a port-forward to port of the pod, and connects through it.
func (s *stack) openStreams(ctx context.Context, port int, line string) (*openStreams, error) {
	ex, err := s.startExec(ctx)
	if err != nil {
		return nil, err
	}
	if err := ex.roundTrip(line, time.Minute); err != nil {
		ex.close()
		return nil, err
	}
	pf, addr, err := s.portForward(ctx, port)
	if err != nil {
		ex.close()
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		pf.stop()
		ex.close()
		return nil, fmt.Errorf("connect to the port-forward: %w", err)
	}
	return &openStreams{exec: ex, pf: pf, conn: c}, nil
}

func (o *openStreams) close() {
	_ = o.conn.Close()
	o.pf.stop()
	o.exec.close()
}
