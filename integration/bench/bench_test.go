// Package bench measures isthmus next to direct loopback TCP and upstream
// ANP, in the same run, interleaved: `make bench`. Absolute numbers vary
// from run to run; the ratios are the figures to read.
package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"isthmus.dev/integration/harness"
)

// Sizes: small enough for a 2-core machine to finish in a few minutes.
var (
	transferBytes = envInt("BENCH_BYTES", 256<<20)
	holSeconds    = envInt("BENCH_HOL_SECONDS", 15)
	rounds        = envInt("BENCH_ROUNDS", 3)
	dials         = envInt("BENCH_DIALS", 500)
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// path is one way to reach the backend.
type path struct {
	name  string
	dial  func(ctx context.Context, addr string) (net.Conn, error)
	procs []*harness.Proc // server and agent, for CPU accounting
}

// BenchmarkTunnel prints the comparison table. It runs once whatever b.N is.
func BenchmarkTunnel(b *testing.B) {
	bins, err := harness.Build(false)
	if err != nil {
		b.Fatal(err)
	}
	defer harness.Cleanup()
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
			paths = append(paths, &path{name: name, dial: s.Dial, procs: []*harness.Proc{s.Proc, a.Proc}})
		}
	}

	type result struct {
		up, down   []float64 // MB/s
		cuts       []string  // transfers that failed, and why
		cpuPerGiB  []float64 // server+agent CPU seconds per GiB moved up
		dialLat    []time.Duration
		dialErrors int
	}
	res := make([]result, len(paths))
	ctx := context.Background()
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
			b.Logf("round %d %s: up %.0f MB/s down %.0f MB/s", r+1, p.name, up, down)
		}
	}
	// Dial-to-first-byte, interleaved in blocks of 50.
	for done := 0; done < dials; done += 50 {
		for i, p := range paths {
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

	// Head-of-line: while A does not read (its backend floods), B on the
	// same agent does 1 KiB round trips. Not for the direct path.
	type hol struct {
		p99, gap time.Duration
		trips    int
		err      string
	}
	hols := make([]hol, len(paths))
	for i, p := range paths[1:] {
		h, err := headOfLine(ctx, p, backend.Addr(), time.Duration(holSeconds)*time.Second)
		if err != nil {
			h.err = err.Error()
		}
		hols[i+1] = h
	}

	direct := res[0]
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "path\tclient->backend MB/s\tvs direct\tbackend->client MB/s\tvs direct\tCPU s/GiB (server+agent)\tdial p50\tdial p99\tdial errors\tfailed transfers\t\n")
	for i, p := range paths {
		r := res[i]
		cpu := "-"
		if len(r.cpuPerGiB) > 0 {
			cpu = fmt.Sprintf("%.2f", median(r.cpuPerGiB))
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.3f\t%.0f\t%.3f\t%s\t%v\t%v\t%d\t%d\t\n", p.name,
			median(r.up), median(r.up)/median(direct.up), median(r.down), median(r.down)/median(direct.down), cpu,
			pct(r.dialLat, 50), pct(r.dialLat, 99), r.dialErrors, len(r.cuts))
	}
	tw.Flush()
	fmt.Fprintf(&sb, "\nHead-of-line: client A stops reading for %d s while its backend floods; client B on the same agent does 1 KiB round trips:\n\n", holSeconds)
	tw = tabwriter.NewWriter(&sb, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "path\tB round trips\tB p99\tB longest gap\tnote\t\n")
	for i, p := range paths[1:] {
		h := hols[i+1]
		fmt.Fprintf(tw, "%s\t%d\t%v\t%v\t%s\t\n", p.name, h.trips, h.p99, h.gap, h.err)
	}
	tw.Flush()
	for i, p := range paths {
		for _, c := range res[i].cuts {
			fmt.Fprintf(&sb, "FAILED TRANSFER %s, %s\n", p.name, c)
		}
	}
	fmt.Printf("\nOne connection, %d MiB each way, median of %d interleaved rounds; dial-to-first-byte over %d dials each (2 cores, race detector off):\n\n%s\n",
		transferBytes>>20, rounds, dials, sb.String())
	b.ReportMetric(median(res[1].up)/median(direct.up), "isthmus-connect-up/direct")
}

// serveBench is the backend. It serves one request: 'W' n (client writes n
// bytes, backend acks with one byte), 'R' n (backend writes n bytes) or 'P'
// (backend answers one byte: a dial-latency probe). It never speaks first:
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

// transfer moves transferBytes one way on one connection and returns MB/s.
func transfer(ctx context.Context, p *path, addr string, dir byte) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c, err := p.dial(ctx, addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
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
