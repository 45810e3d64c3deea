// Package bench measures isthmus next to direct loopback TCP and upstream
// ANP, in the same run, interleaved: `make bench`. Absolute numbers vary
// from run to run; the ratios are the figures to read.
package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"
	"unsafe"

	"isthmus.dev/certs"
	"isthmus.dev/integration/harness"
)

// Sizes: small enough for a 2-core machine to finish in a few minutes.
var (
	transferBytes = envInt("BENCH_BYTES", 256<<20)
	holSeconds    = envInt("BENCH_HOL_SECONDS", 15)
	rounds        = envInt("BENCH_ROUNDS", 3)
	dials         = envInt("BENCH_DIALS", 2000)
	rrConns       = envInt("BENCH_RR_CONNS", 1000)
	rrSeconds     = envInt("BENCH_RR_SECONDS", 10)
	idleConns     = envInt("BENCH_IDLE_CONNS", 1000)
)

// dialConcurrency bounds the dials in flight when many connections are
// opened at once (round trips, idle memory).
const dialConcurrency = 50

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// path is one way to reach the backend.
type path struct {
	name    string
	impl    harness.Impl // "" for the direct path
	mode    string       // frontend: harness.HTTPConnect or harness.GRPC
	dial    func(ctx context.Context, addr string) (net.Conn, error)
	procs   []*harness.Proc // server and agent, for CPU and memory accounting
	metrics []string        // their /metrics URLs
	floor   bool            // the bare TLS relays: throughput rows only
}

// TestMain removes the binaries the benchmarks share (harness.Build builds
// them once per process) after the last one.
func TestMain(m *testing.M) {
	code := m.Run()
	harness.Cleanup()
	os.Exit(code)
}

// BenchmarkTunnel prints the comparison table. It runs once whatever b.N is.
func BenchmarkTunnel(b *testing.B) {
	// 1000 connections at once need about 2000 descriptors here (client and
	// backend ends) and 1000 in each daemon; the daemons inherit this limit.
	nofile, err := raiseNofile()
	if err != nil {
		b.Fatal(err)
	}
	bins, err := harness.Build(false)
	if err != nil {
		b.Fatal(err)
	}
	backend := harness.StartBackend(b, serveBench)
	pki := harness.NewPKI(b)

	paths := []*path{{name: "direct loopback TCP", dial: func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}}}
	for _, v := range []struct {
		impl harness.Impl
		link string // our agent's --link; "" for upstream
	}{{harness.Isthmus, "native"}, {harness.Isthmus, "anp"}, {harness.Upstream, ""}} {
		for _, mode := range []string{harness.HTTPConnect, harness.GRPC} {
			s := harness.StartServer(b, bins, pki, harness.ServerOpts{Impl: v.impl, Mode: mode, Transport: harness.UDS})
			ao := harness.AgentOpts{Impl: v.impl}
			name := fmt.Sprintf("%s, %s over UDS", v.impl, mode)
			if v.link != "" {
				ao.Extra = []string{"--link=" + v.link}
				name = fmt.Sprintf("%s %s link, %s over UDS", v.impl, v.link, mode)
			}
			a := harness.StartAgent(b, bins, s, ao)
			s.WaitReady(b)
			paths = append(paths, &path{name: name, impl: v.impl, mode: mode, dial: s.Dial,
				procs: []*harness.Proc{s.Proc, a.Proc}, metrics: []string{s.MetricsURL(), a.MetricsURL()}})
		}
	}
	// The floor: what two processes that only relay through TLS cost here.
	paths = slices.Insert(paths, 1, startFloor(b, pki, backend.Addr()))
	// Each daemon must be able to hold every connection of the largest phase
	// (plus its listeners and links); raise a soft limit that is too low.
	need := uint64(max(rrConns, idleConns) + 256)
	var notes []string
	daemonMin := uint64(0)
	for _, p := range paths {
		for _, pr := range p.procs {
			cur, note, err := ensureNofile(pr.Pid(), need)
			if err != nil {
				notes = append(notes, fmt.Sprintf("open-file limit of %s: %v", pr.Name, err))
			} else if note != "" {
				notes = append(notes, fmt.Sprintf("open-file limit of %s: %s", pr.Name, note))
			}
			if daemonMin == 0 || cur < daemonMin {
				daemonMin = cur
			}
		}
	}
	if nofile.Cur < 2*need {
		notes = append(notes, fmt.Sprintf("open-file limit of the test process is %d (hard %d), below the %d the many-connection phases need", nofile.Cur, nofile.Max, 2*need))
	}

	type result struct {
		up, down, echo []float64 // MB/s
		cuts           []string  // transfers that failed, and why
		cpuPerGiB      []float64 // server+agent CPU seconds per GiB moved up
		dialLat        []time.Duration
		dialErrors     int
		rr             rrResult
		idle           idleResult
	}
	res := make([]result, len(paths))
	ctx := context.Background()

	var phases []string // how long each phase took
	phase := func(name string, t0 time.Time) {
		phases = append(phases, fmt.Sprintf("%s %v", name, time.Since(t0).Round(time.Second)))
	}

	// Idle memory first, while every daemon is fresh: memory a previous
	// phase freed but the runtime kept would hide the cost of new
	// connections. One path at a time (each has its own daemons).
	t0 := time.Now()
	for i, p := range paths[1:] {
		if p.floor {
			continue
		}
		res[i+1].idle = idleMemory(ctx, p, backend, idleConns)
		b.Logf("idle %s: %.1f KiB/conn, %.2f goroutines/conn", p.name, res[i+1].idle.rssKiB, res[i+1].idle.goroutines)
	}

	phase("idle memory", t0)

	t0 = time.Now()
	for r := range rounds {
		for i, p := range paths {
			// A transfer that fails is reported, not fatal: on the ANP
			// wire a connection whose reader falls too far behind is cut.
			cpu0 := cpuSeconds(p.procs)
			up, err := transfer(ctx, p, backend.Addr(), 'W')
			if err != nil {
				res[i].cuts = append(res[i].cuts, fmt.Sprintf("round %d client->backend: %v", r+1, err))
			} else {
				res[i].up = append(res[i].up, up)
				if p.procs != nil {
					res[i].cpuPerGiB = append(res[i].cpuPerGiB, (cpuSeconds(p.procs)-cpu0)/(float64(transferBytes)/(1<<30)))
				}
			}
			down, err := transfer(ctx, p, backend.Addr(), 'R')
			if err != nil {
				res[i].cuts = append(res[i].cuts, fmt.Sprintf("round %d backend->client: %v", r+1, err))
			} else {
				res[i].down = append(res[i].down, down)
			}
			echo, err := echoTransfer(ctx, p, backend.Addr())
			if err != nil {
				res[i].cuts = append(res[i].cuts, fmt.Sprintf("round %d echo: %v", r+1, err))
			} else {
				res[i].echo = append(res[i].echo, echo)
			}
			b.Logf("round %d %s: up %.0f MB/s down %.0f MB/s echo %.0f MB/s", r+1, p.name, up, down, echo)
		}
	}
	phase("transfers", t0)
	// Dial-to-first-byte, interleaved in blocks of 50.
	t0 = time.Now()
	for done := 0; done < dials; done += 50 {
		for i, p := range paths {
			if p.floor {
				continue
			}
			for range min(50, dials-done) {
				d, err := dialFirstByte(ctx, p, backend.Addr())
				if err != nil {
					res[i].dialErrors++
					continue
				}
				res[i].dialLat = append(res[i].dialLat, d)
			}
		}
	}

	phase("dials", t0)
	// Many connections, each doing 1 KiB round trips, direct path included.
	t0 = time.Now()
	for i, p := range paths {
		if p.floor {
			continue
		}
		res[i].rr = requestResponse(ctx, p, backend, rrConns, time.Duration(rrSeconds)*time.Second)
		b.Logf("round trips %s: %.0f/s p99 %v", p.name, res[i].rr.rate, res[i].rr.p99)
	}

	phase("round trips", t0)
	// Head-of-line: while A does not read (its backend floods), B on the
	// same agent does 1 KiB round trips. Not for the direct path.
	t0 = time.Now()
	type hol struct {
		p99, gap time.Duration
		trips    int
		err      string
	}
	hols := make([]hol, len(paths))
	for i, p := range paths[1:] {
		if p.floor {
			continue
		}
		h, err := headOfLine(ctx, p, backend.Addr(), time.Duration(holSeconds)*time.Second)
		if err != nil {
			h.err = err.Error()
		}
		hols[i+1] = h
	}
	phase("head-of-line", t0)

	// upstreamOf is the index of the upstream row with p's frontend.
	upstreamOf := func(p *path) int {
		if p.impl != harness.Isthmus {
			return -1
		}
		for i, q := range paths {
			if q.impl == harness.Upstream && q.mode == p.mode {
				return i
			}
		}
		return -1
	}
	// vsANP is an isthmus figure over upstream's, or "-".
	vsANP := func(i int, f func(result) float64) string {
		u := upstreamOf(paths[i])
		if u < 0 {
			return "-"
		}
		return ratio(f(res[i]), f(res[u]))
	}
	up := func(r result) float64 { return median(r.up) }
	cpu := func(r result) float64 { return median(r.cpuPerGiB) }
	dialP50 := func(r result) float64 { return float64(pct(r.dialLat, 50)) }
	rrRate := func(r result) float64 { return r.rr.rate }
	idleRSS := func(r result) float64 {
		if r.idle.opened == 0 {
			return 0
		}
		return r.idle.rssKiB
	}

	direct := res[0]
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nThroughput and CPU: one connection, %d MiB each way (echo: %d MiB written and read back at once, MB/s each way), median of %d interleaved rounds; CPU: server+agent seconds per GiB client->backend:\n\n",
		transferBytes>>20, transferBytes>>20, rounds)
	tw := tabwriter.NewWriter(&sb, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "path\tclient->backend MB/s\tvs direct\tvs ANP\tbackend->client MB/s\tvs direct\techo MB/s\tvs direct\tCPU s/GiB\tvs ANP\tfailed transfers\t\n")
	for i, p := range paths {
		r := res[i]
		cpuS := "-"
		if len(r.cpuPerGiB) > 0 {
			cpuS = fmt.Sprintf("%.2f", median(r.cpuPerGiB))
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%.0f\t%s\t%.0f\t%s\t%s\t%s\t%d\t\n", p.name,
			median(r.up), ratio(median(r.up), median(direct.up)), vsANP(i, up),
			median(r.down), ratio(median(r.down), median(direct.down)),
			median(r.echo), ratio(median(r.echo), median(direct.echo)),
			cpuS, vsANP(i, cpu), len(r.cuts))
	}
	tw.Flush()

	fmt.Fprintf(&sb, "\nLatency, concurrency, memory: dial-to-first-byte over %d dials each (interleaved in blocks of 50); round trips (RT): %d connections at once, each doing 1 KiB request/response for %d s; idle: %d tunneled connections open and idle for 2 s, server+agent growth per connection; conns: connections opened for RT / idle:\n\n",
		dials, rrConns, rrSeconds, idleConns)
	tw = tabwriter.NewWriter(&sb, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "path\tdial p50\tvs ANP\tdial p99\tdial errors\tRT/s\tvs direct\tvs ANP\tRT p99\tidle RSS KiB/conn\tvs ANP\tgoroutines/conn\tconns\t\n")
	for i, p := range paths {
		if p.floor {
			continue
		}
		r := res[i]
		rssS, gorS, idleN, idleVs := "-", "-", "-", "-"
		if i > 0 {
			idleN = strconv.Itoa(r.idle.opened)
			if r.idle.opened > 0 {
				rssS = fmt.Sprintf("%.1f", r.idle.rssKiB)
				idleVs = vsANP(i, idleRSS)
				if r.idle.goroutinesOK {
					gorS = fmt.Sprintf("%.2f", r.idle.goroutines)
				}
			}
		}
		fmt.Fprintf(tw, "%s\t%v\t%s\t%v\t%d\t%.0f\t%s\t%s\t%v\t%s\t%s\t%s\t%d/%s\t\n", p.name,
			pct(r.dialLat, 50), vsANP(i, dialP50), pct(r.dialLat, 99), r.dialErrors,
			r.rr.rate, ratio(r.rr.rate, direct.rr.rate), vsANP(i, rrRate), r.rr.p99,
			rssS, idleVs, gorS, r.rr.conns, idleN)
	}
	tw.Flush()
	fmt.Fprintf(&sb, "\nTLS floor: two relay processes that only copy (Unix socket -> TLS 1.3 over loopback TCP -> the backend), one TLS connection per tunneled connection, no multiplexing or dial protocol: what any TLS tunnel pays on this machine, in the same run. Throughput rows only.\n")
	fmt.Fprintf(&sb, "\nvs direct: the path's figure over direct TCP's; vs ANP: an isthmus figure over upstream ANP's with the same frontend (http-connect or grpc). Above 1 is better for MB/s and round trips/s, below 1 for CPU, dial p50 and RSS.\n")

	fmt.Fprintf(&sb, "\nHead-of-line: client A stops reading for %d s while its backend floods; client B on the same agent does 1 KiB round trips:\n\n", holSeconds)
	tw = tabwriter.NewWriter(&sb, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "path\tB round trips\tB p99\tB longest gap\tnote\t\n")
	for i, p := range paths[1:] {
		if p.floor {
			continue
		}
		h := hols[i+1]
		fmt.Fprintf(tw, "%s\t%d\t%v\t%v\t%s\t\n", p.name, h.trips, h.p99, h.gap, h.err)
	}
	tw.Flush()
	fmt.Fprintf(&sb, "\nOpen-file limit (soft): test process %d, daemons at least %d. Phases took: %s.\n", nofile.Cur, daemonMin, strings.Join(phases, ", "))
	for _, n := range notes {
		fmt.Fprintf(&sb, "NOTE %s\n", n)
	}
	for i, p := range paths {
		for _, c := range res[i].cuts {
			fmt.Fprintf(&sb, "FAILED TRANSFER %s, %s\n", p.name, c)
		}
		for _, n := range res[i].rr.notes {
			fmt.Fprintf(&sb, "ROUND TRIPS %s: %s\n", p.name, n)
		}
		for _, n := range res[i].idle.notes {
			fmt.Fprintf(&sb, "IDLE %s: %s\n", p.name, n)
		}
	}
	fmt.Printf("\n(2 cores, race detector off)\n%s\n", sb.String())
	b.ReportMetric(median(res[2].up)/median(direct.up), "isthmus-connect-up/direct")
}

// ratio is a/b with three decimals, or "-" when either is missing.
func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", a/b)
}

// serveBench is the backend. It serves one request: 'W' n (client writes n
// bytes, backend acks with one byte), 'R' n (backend writes n bytes), 'C' n
// (backend sends back the next n bytes as they arrive), 'E' n (echo n-byte
// messages), 'F' (flood) or 'P' (backend answers one byte: a dial-latency
// probe). It never speaks first:
// upstream's HTTP CONNECT frontend can deliver a backend's first bytes
// before its "200" header.
func serveBench(c net.Conn) {
	var hdr [9]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	n := int64(binary.BigEndian.Uint64(hdr[1:]))
	switch hdr[0] {
	case 'W':
		if err := discard(c, n, make([]byte, 256<<10)); err != nil {
			return
		}
		_, _ = c.Write([]byte{'.'})
	case 'P':
		_, _ = c.Write([]byte{'.'})
	case 'F': // flood until the connection breaks
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	case 'C': // stream n bytes back as they come
		buf := make([]byte, 256<<10)
		for n > 0 {
			k, err := c.Read(buf[:min(int64(len(buf)), n)])
			if k > 0 {
				if _, werr := c.Write(buf[:k]); werr != nil {
					return
				}
				n -= int64(k)
			}
			if err != nil {
				return
			}
		}
	case 'E': // echo n-byte messages until EOF
		buf := make([]byte, n)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	case 'R':
		buf := make([]byte, 256<<10)
		for n > 0 {
			k := min(int64(len(buf)), n)
			if _, err := c.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	}
	_, _ = io.Copy(io.Discard, c) // until the client closes
}

// dialBulk opens a connection for one bulk transfer, closed after 5
// minutes at the latest; done releases it.
func dialBulk(ctx context.Context, p *path, addr string) (net.Conn, func(), error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	c, err := p.dial(ctx, addr)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	return c, func() { stop(); c.Close(); cancel() }, nil
}

// transfer moves transferBytes one way on one connection and returns MB/s.
func transfer(ctx context.Context, p *path, addr string, dir byte) (float64, error) {
	c, done, err := dialBulk(ctx, p, addr)
	if err != nil {
		return 0, err
	}
	defer done()
	var one [1]byte
	var hdr [9]byte
	hdr[0] = dir
	binary.BigEndian.PutUint64(hdr[1:], uint64(transferBytes))
	buf := make([]byte, 256<<10)
	start := time.Now()
	if _, err := c.Write(hdr[:]); err != nil {
		return 0, err
	}
	switch dir {
	case 'W':
		for left := transferBytes; left > 0; {
			k := min(len(buf), left)
			if _, err := c.Write(buf[:k]); err != nil {
				return 0, err
			}
			left -= k
		}
		if _, err := io.ReadFull(c, one[:]); err != nil {
			return 0, fmt.Errorf("ack: %w", err)
		}
	case 'R':
		if err := discard(c, int64(transferBytes), buf); err != nil {
			return 0, err
		}
	}
	return float64(transferBytes) / time.Since(start).Seconds() / 1e6, nil
}

// headOfLine stalls a flooded connection A for d while B does round trips
// on the same path; it returns B's p99 and its longest gap without a reply.
func headOfLine(ctx context.Context, p *path, addr string, d time.Duration) (h struct {
	p99, gap time.Duration
	trips    int
	err      string
}, err error) {
	ctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	defer cancel()
	a, err := p.dial(ctx, addr)
	if err != nil {
		return h, err
	}
	defer a.Close()
	var hdr [9]byte
	hdr[0] = 'F'
	if _, err := a.Write(hdr[:]); err != nil {
		return h, err
	}
	if err := discard(a, 1<<20, make([]byte, 64<<10)); err != nil { // the flood runs; then A stops reading
		return h, fmt.Errorf("flood: %w", err)
	}
	b, err := p.dial(ctx, addr)
	if err != nil {
		return h, fmt.Errorf("B: %w", err)
	}
	defer b.Close()
	stop := context.AfterFunc(ctx, func() { b.Close() })
	defer stop()
	hdr[0] = 'E'
	binary.BigEndian.PutUint64(hdr[1:], 1024)
	if _, err := b.Write(hdr[:]); err != nil {
		return h, err
	}
	msg := make([]byte, 1024)
	var rtts []time.Duration
	last := time.Now()
	end := last.Add(d)
	for time.Now().Before(end) {
		t0 := time.Now()
		if _, err := b.Write(msg); err != nil {
			return h, fmt.Errorf("B after %d round trips: %w", len(rtts), err)
		}
		if _, err := io.ReadFull(b, msg); err != nil {
			return h, fmt.Errorf("B after %d round trips: %w", len(rtts), err)
		}
		now := time.Now()
		rtts = append(rtts, now.Sub(t0))
		h.gap = max(h.gap, now.Sub(last))
		last = now
	}
	h.trips = len(rtts)
	h.p99 = pct(rtts, 99)
	h.gap = h.gap.Round(time.Millisecond)
	return h, nil
}

// discard reads exactly n bytes with buf (io.Discard's ReadFrom would read
// in 8 KiB steps and make the direct baseline look slow).
func discard(r io.Reader, n int64, buf []byte) error {
	for n > 0 {
		k, err := r.Read(buf[:min(int64(len(buf)), n)])
		n -= int64(k)
		if err != nil && n > 0 {
			return err
		}
	}
	return nil
}

// dialFirstByte is the time from dial start to the backend's first byte
// (the answer to a one-byte probe).
func dialFirstByte(ctx context.Context, p *path, addr string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	c, err := p.dial(ctx, addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	var probe [9]byte
	probe[0] = 'P'
	if _, err := c.Write(probe[:]); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c, probe[:1]); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// cpuSeconds sums user+system CPU time of the processes (from /proc).
func cpuSeconds(procs []*harness.Proc) float64 {
	var total float64
	for _, p := range procs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid()))
		if err != nil {
			continue
		}
		// Fields after the command (which is in parentheses): utime is 14th, stime 15th overall.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		total += (ut + st) / 100 // USER_HZ
	}
	return total
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func pct(v []time.Duration, p int) time.Duration {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)].Round(time.Microsecond)
}

// header is a request to serveBench.
func header(op byte, n int64) []byte {
	h := make([]byte, 9)
	h[0] = op
	binary.BigEndian.PutUint64(h[1:], uint64(n))
	return h
}

// echoTransfer writes transferBytes on one connection while it reads them
// back from the backend, and returns MB/s (each way).
func echoTransfer(ctx context.Context, p *path, addr string) (float64, error) {
	c, done, err := dialBulk(ctx, p, addr)
	if err != nil {
		return 0, err
	}
	defer done()
	start := time.Now()
	if _, err := c.Write(header('C', int64(transferBytes))); err != nil {
		return 0, err
	}
	werr := make(chan error, 1)
	go func() {
		buf := make([]byte, 256<<10)
		for left := transferBytes; left > 0; {
			k := min(len(buf), left)
			if _, err := c.Write(buf[:k]); err != nil {
				werr <- fmt.Errorf("write: %w", err)
				return
			}
			left -= k
		}
		werr <- nil
	}()
	if err := discard(c, int64(transferBytes), make([]byte, 256<<10)); err != nil {
		c.Close() // ends the writer
		<-werr
		return 0, fmt.Errorf("read back: %w", err)
	}
	if err := <-werr; err != nil {
		return 0, err
	}
	return float64(transferBytes) / time.Since(start).Seconds() / 1e6, nil
}

// dialMany opens n connections through p, at most dialConcurrency dials at
// a time, and runs prep on each (a request header, a probe). Failures are
// counted, not fatal; the first one's error is returned for the report.
func dialMany(ctx context.Context, p *path, addr string, n int, prep func(net.Conn) error) (conns []net.Conn, failed int, firstErr error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, dialConcurrency)
	for range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dialPrep(ctx, p, addr, prep)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	return conns, failed, firstErr
}

// dialPrep dials and runs prep within 30 s.
func dialPrep(ctx context.Context, p *path, addr string, prep func(net.Conn) error) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := p.dial(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	err = prep(c)
	if !stop() && err == nil {
		err = ctx.Err() // closed by the timeout
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("first request: %w", err)
	}
	return c, nil
}

// closeAll closes conns concurrently (a konnectivity-client connection
// waits for the server's CLOSE_RSP) and waits until the backend has seen
// them all end, up to 15 s. It returns how many backend connections were
// still open then.
func closeAll(conns []net.Conn, backend *harness.Backend) int {
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.Close()
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(15 * time.Second)
	for backend.Open() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	return backend.Open()
}

// rrResult is what many connections doing round trips at once achieved.
type rrResult struct {
	rate  float64 // round trips per second, all connections together
	p99   time.Duration
	conns int // connections that were open for the round trips
	notes []string
}

// requestResponse opens n connections through p, then each does 1 KiB
// round trips (write, read the echo) for d, all at once.
func requestResponse(ctx context.Context, p *path, backend *harness.Backend, n int, d time.Duration) (r rrResult) {
	hdr := header('E', 1024)
	conns, failed, err := dialMany(ctx, p, backend.Addr(), n, func(c net.Conn) error {
		_, err := c.Write(hdr)
		return err
	})
	if failed > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d of %d dials failed, first: %v", failed, n, err))
	}
	r.conns = len(conns)
	defer func() {
		if left := closeAll(conns, backend); left > 0 {
			r.notes = append(r.notes, fmt.Sprintf("%d backend connections still open 15 s after the clients closed", left))
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		for _, c := range conns {
			c.Close()
		}
	})
	defer stop()
	lat := make([][]time.Duration, len(conns))
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, 1024)
			for time.Now().Before(end) {
				t0 := time.Now()
				if _, err := c.Write(msg); err != nil {
					errs[i] = fmt.Errorf("write after %d round trips: %w", len(lat[i]), err)
					return
				}
				if _, err := io.ReadFull(c, msg); err != nil {
					errs[i] = fmt.Errorf("read after %d round trips: %w", len(lat[i]), err)
					return
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	r.rate = float64(len(all)) / elapsed.Seconds()
	r.p99 = pct(all, 99)
	var nerr int
	var first error
	for _, e := range errs {
		if e != nil {
			nerr++
			if first == nil {
				first = e
			}
		}
	}
	if nerr > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d of %d connections failed during the round trips, first: %v", nerr, len(conns), first))
	}
	return r
}

// idleResult is the server+agent cost of idle tunneled connections.
type idleResult struct {
	opened       int
	rssKiB       float64 // VmRSS growth per connection
	goroutines   float64 // go_goroutines growth per connection
	goroutinesOK bool
	notes        []string
}

// idleMemory opens n connections through p, each with one probe round trip
// so it is fully set up, leaves them idle for 2 s and measures how much the
// server's and agent's RSS and goroutines grew, per connection.
func idleMemory(ctx context.Context, p *path, backend *harness.Backend, n int) (r idleResult) {
	rss0, err := rssKiB(p.procs)
	if err != nil {
		r.notes = append(r.notes, err.Error())
		return r
	}
	g0, gerr := goroutines(p.metrics)
	probe := header('P', 0)
	conns, failed, err := dialMany(ctx, p, backend.Addr(), n, func(c net.Conn) error {
		if _, err := c.Write(probe); err != nil {
			return err
		}
		var one [1]byte
		_, err := io.ReadFull(c, one[:])
		return err
	})
	if failed > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d of %d dials failed, first: %v", failed, n, err))
	}
	r.opened = len(conns)
	defer func() {
		if left := closeAll(conns, backend); left > 0 {
			r.notes = append(r.notes, fmt.Sprintf("%d backend connections still open 15 s after the clients closed", left))
		}
	}()
	if r.opened == 0 {
		return r
	}
	time.Sleep(2 * time.Second)
	rss1, err := rssKiB(p.procs)
	if err != nil {
		r.notes = append(r.notes, err.Error())
		r.opened = 0
		return r
	}
	r.rssKiB = (rss1 - rss0) / float64(r.opened)
	g1, gerr1 := goroutines(p.metrics)
	if gerr == nil && gerr1 == nil {
		r.goroutines = (g1 - g0) / float64(r.opened)
		r.goroutinesOK = true
	} else {
		r.notes = append(r.notes, fmt.Sprintf("no goroutine count: %v", errors.Join(gerr, gerr1)))
	}
	return r
}

// rssKiB sums VmRSS of the processes (from /proc/<pid>/status).
func rssKiB(procs []*harness.Proc) (float64, error) {
	var total float64
	for _, p := range procs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
		if err != nil {
			return 0, fmt.Errorf("RSS of %s: %w", p.Name, err)
		}
		found := false
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				f := strings.Fields(v) // "12345 kB"
				if len(f) == 0 {
					break
				}
				kb, err := strconv.ParseFloat(f[0], 64)
				if err != nil {
					return 0, fmt.Errorf("RSS of %s: %w", p.Name, err)
				}
				total += kb
				found = true
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("RSS of %s: no VmRSS line", p.Name)
		}
	}
	return total, nil
}

// goroutines sums the go_goroutines gauge of the /metrics pages.
func goroutines(urls []string) (float64, error) {
	var total float64
	for _, u := range urls {
		// A page without the gauge sums to 0; a live Go process has at
		// least one goroutine, so 0 means the gauge is missing.
		v, err := harness.MetricSum(u, "go_goroutines")
		if err != nil {
			return 0, fmt.Errorf("go_goroutines at %s: %w", u, err)
		}
		if v == 0 {
			return 0, fmt.Errorf("no go_goroutines at %s", u)
		}
		total += v
	}
	return total, nil
}

// raiseNofile raises this process's soft RLIMIT_NOFILE to its hard limit
// and returns the limits now in force.
func raiseNofile() (syscall.Rlimit, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return l, fmt.Errorf("getrlimit: %w", err)
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return l, fmt.Errorf("setrlimit NOFILE to %d: %w", l.Max, err)
		}
	}
	return l, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
}

// ensureNofile reads pid's open-file limits from /proc/<pid>/limits and,
// when the soft limit is below need, raises it to the hard limit with
// prlimit(2). It returns the soft limit in force and a note if it changed it.
func ensureNofile(pid int, need uint64) (uint64, string, error) {
	soft, hard, err := nofileOf(pid)
	if err != nil || soft >= need {
		return soft, "", err
	}
	l := syscall.Rlimit{Cur: hard, Max: hard}
	if _, _, e := syscall.RawSyscall6(syscall.SYS_PRLIMIT64, uintptr(pid), uintptr(syscall.RLIMIT_NOFILE), uintptr(unsafe.Pointer(&l)), 0, 0, 0); e != 0 {
		return soft, "", fmt.Errorf("soft limit %d below %d, and prlimit failed: %w", soft, need, e)
	}
	now, _, err := nofileOf(pid)
	if err != nil {
		return soft, "", err
	}
	return now, fmt.Sprintf("soft limit was %d, raised to %d", soft, now), nil
}

// nofileOf parses the "Max open files" line of /proc/<pid>/limits.
func nofileOf(pid int) (soft, hard uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("limits: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Max open files")
		if !ok {
			continue
		}
		f := strings.Fields(rest) // soft hard "files"
		if len(f) < 2 {
			break
		}
		parse := func(s string) (uint64, error) {
			if s == "unlimited" {
				return ^uint64(0), nil
			}
			return strconv.ParseUint(s, 10, 64)
		}
		if soft, err = parse(f[0]); err != nil {
			return 0, 0, fmt.Errorf("limits of %d: %w", pid, err)
		}
		if hard, err = parse(f[1]); err != nil {
			return 0, 0, fmt.Errorf("limits of %d: %w", pid, err)
		}
		return soft, hard, nil
	}
	return 0, 0, fmt.Errorf("limits of %d: no \"Max open files\" line", pid)
}

// startFloor builds and starts the two tlsfloor relays in front of the
// backend at addr; its dial ignores the address (the relays go to addr).
func startFloor(b *testing.B, pki *certs.Bundle, addr string) *path {
	b.Helper()
	dir := b.TempDir()
	bin := filepath.Join(dir, "tlsfloor")
	if out, err := exec.Command("go", "build", "-o", bin, "isthmus.dev/integration/bench/tlsfloor").CombinedOutput(); err != nil {
		b.Fatalf("build tlsfloor: %v\n%s", err, out)
	}
	farAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(harness.FreePort(b)))
	far := harness.Start(b, "tlsfloor-far", bin, "--role=far", "--listen="+farAddr, "--to="+addr,
		"--cert="+pki.AgentPortCert, "--key="+pki.AgentPortKey)
	sockDir, err := os.MkdirTemp("", "isthmus-floor-") // short: socket paths are limited to 108 bytes
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "near.sock")
	near := harness.Start(b, "tlsfloor-near", bin, "--role=near", "--listen="+sock, "--to="+farAddr, "--ca="+pki.CACert)
	harness.WaitFor(b, 30*time.Second, "the tlsfloor relays", func() bool {
		c, err := net.Dial("unix", sock)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return &path{name: "TLS floor: 2 relays, no mux, over UDS", floor: true,
		dial: func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		procs: []*harness.Proc{near, far}}
}
