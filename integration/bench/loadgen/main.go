// Command loadgen is the bench's client and its backend, each run as a
// process of its own, as kube-apiserver and a kubelet are: what the bench
// measures is then the daemons between them, not a test process that
// shares its 2 cores with the load it makes.
//
//	loadgen backend
//	loadgen client --via=connect --proxy=/run/x.sock --backend=127.0.0.1:8080 --op=rr --conns=1000 --seconds=5
//
// The backend listens on a loopback port, prints one JSON line with its
// address and that of its stats page (GET /open: the connections it has
// open), and serves until its stdin ends.
//
// A client runs one operation and speaks with the bench in lines:
//  1. it prepares (rr, idle and hol open their connections first) and
//     prints a JSON line with "ready": true;
//  2. it waits for a line on stdin (the bench reads the daemons' CPU time
//     first); stdin ending instead means "stop here";
//  3. it runs the operation and prints its result as one JSON line;
//  4. it holds its connections until stdin ends, closes them all and exits.
//
// Requests to the backend are a 9-byte header: an operation byte and a
// big-endian 64-bit size. 'W' n: the client writes n bytes, the backend
// acks with one byte. 'R' n: the backend writes n bytes. 'C' n: the
// backend streams the next n bytes back as they arrive. 'E' n: the backend
// echoes n-byte messages until EOF. 'F': the backend floods until the
// connection breaks. 'P': the backend answers one byte (a dial probe). The
// backend never speaks first: upstream ANP's HTTP CONNECT frontend can
// deliver a backend's first bytes before its "200" header.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"isthmus.dev/integration/harness"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "backend":
		err = backend(os.Args[2:])
	case "client":
		err = client(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: loadgen backend | loadgen client --via=direct|connect|grpc|unix [--proxy=SOCKET] --backend=HOST:PORT --op=up|down|echo|dials|rr|idle|hol [flags]; loadgen client -h lists them")
	os.Exit(2)
}

// raiseNofile raises the soft open-file limit to the hard one: a client
// holds 1000 connections, the backend as many.
func raiseNofile() error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return fmt.Errorf("raise the open-file limit to %d: %w", l.Max, err)
		}
	}
	return nil
}

// backend serves the bench's requests until stdin ends.
func backend(args []string) error {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to serve the bench's requests on")
	_ = fs.Parse(args)
	if err := raiseNofile(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *listen, err)
	}
	statsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen for the stats page: %w", err)
	}
	var open atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			open.Add(1)
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					c.Close()
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					open.Add(-1)
				}()
				serve(c)
			})
		}
	})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /open", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]int64{"open": open.Load()})
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(statsLn) }()
	if err := json.NewEncoder(os.Stdout).Encode(map[string]string{"addr": ln.Addr().String(), "stats": statsLn.Addr().String()}); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	ln.Close()
	_ = hs.Close()
	mu.Lock()
	for c := range conns {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	return nil
}

// serve answers one request (see the package comment), then reads until
// the client closes.
func serve(c net.Conn) {
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
	case 'F':
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	case 'C':
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
	case 'E':
		if n < 1 || n > 1<<20 {
			return
		}
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
	default:
		return
	}
	_, _ = io.Copy(io.Discard, c)
}

// discard reads exactly n bytes with buf (io.Discard's ReadFrom reads in
// 8 KiB steps and would make the direct baseline look slow).
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

func header(op byte, n int64) []byte {
	h := make([]byte, 9)
	h[0] = op
	binary.BigEndian.PutUint64(h[1:], uint64(n))
	return h
}

// Ready is the line a client prints once prepared.
type Ready struct {
	Ready      bool   `json:"ready"`
	Conns      int    `json:"conns"`  // connections opened
	Failed     int    `json:"failed"` // dials (and first requests) that failed
	FirstError string `json:"first_error,omitempty"`
}

// Result is the line a client prints after its operation.
type Result struct {
	MBps       float64 `json:"mbps,omitempty"`    // up, down, echo (each way)
	Trips      int     `json:"trips,omitempty"`   // rr, hol
	Seconds    float64 `json:"seconds,omitempty"` // how long the operation ran
	P50        int64   `json:"p50_ns,omitempty"`  // rr, hol: round trip
	P99        int64   `json:"p99_ns,omitempty"`  // rr, hol: round trip
	Gap        int64   `json:"gap_ns,omitempty"`  // hol: longest time without a reply
	Latencies  []int64 `json:"lat_ns,omitempty"`  // dials: each dial's time to first byte
	Errors     int     `json:"errors,omitempty"`  // dials that failed, connections that failed in rr
	FirstError string  `json:"first_error,omitempty"`
}

type clientOpts struct {
	via, proxy, backend, op string
	bytes                   int64
	count, conns            int
	seconds                 float64
	concurrency             int
	setupTimeout            time.Duration
}

func client(args []string) error {
	var o clientOpts
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	fs.StringVar(&o.via, "via", "direct", "direct (TCP to the backend), unix (a relay's socket that leads to the backend), connect (HTTP CONNECT on --proxy) or grpc (konnectivity-client on --proxy)")
	fs.StringVar(&o.proxy, "proxy", "", "the proxy-server's (or relay's) Unix socket")
	fs.StringVar(&o.backend, "backend", "", "the backend's HOST:PORT")
	fs.StringVar(&o.op, "op", "", "up, down, echo (one connection, --bytes), dials (--count dials to first byte, one at a time), rr (--conns connections doing 1 KiB round trips for --seconds), idle (--conns connections, each probed once, held), hol (a flooded connection left unread while another does 1 KiB round trips for --seconds)")
	fs.Int64Var(&o.bytes, "bytes", 256<<20, "bytes to move (up, down, echo)")
	fs.IntVar(&o.count, "count", 400, "dials (dials)")
	fs.IntVar(&o.conns, "conns", 1000, "connections (rr, idle)")
	fs.Float64Var(&o.seconds, "seconds", 5, "how long the round trips run (rr, hol)")
	fs.IntVar(&o.concurrency, "concurrency", 50, "dials in flight when opening many connections")
	fs.DurationVar(&o.setupTimeout, "setup-timeout", 20*time.Second, "hol: how long A's flood and B's dial may take; a B that cannot dial for this long is stuck behind A")
	_ = fs.Parse(args)
	if o.backend == "" || o.op == "" {
		return errors.New("--backend and --op are required")
	}
	if err := raiseNofile(); err != nil {
		return err
	}
	dial, err := dialer(o)
	if err != nil {
		return err
	}
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	op, err := newOperation(o)
	if err != nil {
		return err
	}
	ready, err := op.prepare(ctx, dial)
	defer op.close()
	if err != nil {
		return err
	}
	ready.Ready = true
	if err := out.Encode(ready); err != nil {
		return err
	}
	if !in.Scan() { // stdin ended: stop here
		return nil
	}
	res, err := op.run(ctx, dial)
	if err != nil {
		return err
	}
	if err := out.Encode(res); err != nil {
		return err
	}
	for in.Scan() { // hold the connections until stdin ends
	}
	return nil
}

type dialFunc func(ctx context.Context) (net.Conn, error)

// dialer is how the client reaches the backend.
func dialer(o clientOpts) (dialFunc, error) {
	var d net.Dialer
	switch o.via {
	case "direct":
		return func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", o.backend) }, nil
	case "unix":
		if o.proxy == "" {
			return nil, errors.New("--via=unix needs --proxy")
		}
		return func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "unix", o.proxy) }, nil
	case "connect", "grpc":
		if o.proxy == "" {
			return nil, fmt.Errorf("--via=%s needs --proxy, the proxy-server's Unix socket", o.via)
		}
		mode := harness.HTTPConnect
		if o.via == "grpc" {
			mode = harness.GRPC
		}
		s := &harness.Server{UDS: o.proxy, Opts: harness.ServerOpts{Mode: mode}}
		return func(ctx context.Context) (net.Conn, error) { return s.Dial(ctx, o.backend) }, nil
	}
	return nil, fmt.Errorf("--via=%q: want direct, unix, connect or grpc", o.via)
}

// newOperation is the measurement o.op names.
func newOperation(o clientOpts) (operation, error) {
	switch o.op {
	case "up", "down", "echo":
		return &bulk{o: o}, nil
	case "dials":
		return &dials{o: o}, nil
	case "rr":
		return &roundTrips{o: o}, nil
	case "idle":
		return &idle{o: o}, nil
	case "hol":
		return &headOfLine{o: o}, nil
	}
	return nil, fmt.Errorf("--op=%q: want up, down, echo, dials, rr, idle or hol", o.op)
}

// operation is one of the client's measurements.
type operation interface {
	prepare(ctx context.Context, dial dialFunc) (Ready, error)
	run(ctx context.Context, dial dialFunc) (Result, error)
	close()
}

// bulk moves --bytes on one connection: up (client to backend), down, or
// echo (written and read back at once; MB/s each way).
type bulk struct {
	o clientOpts
	c net.Conn
}

func (b *bulk) prepare(context.Context, dialFunc) (Ready, error) { return Ready{}, nil }

func (b *bulk) run(ctx context.Context, dial dialFunc) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := dial(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("dial: %w", err)
	}
	b.c = c
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	n := b.o.bytes
	buf := make([]byte, 256<<10)
	switch b.o.op {
	case "up":
		if _, err := c.Write(header('W', n)); err != nil {
			return Result{}, err
		}
		if err := write(c, n, buf); err != nil {
			return Result{}, err
		}
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err != nil {
			return Result{}, fmt.Errorf("the backend's ack: %w", err)
		}
	case "down":
		if _, err := c.Write(header('R', n)); err != nil {
			return Result{}, err
		}
		if err := discard(c, n, buf); err != nil {
			return Result{}, err
		}
	case "echo":
		if _, err := c.Write(header('C', n)); err != nil {
			return Result{}, err
		}
		werr := make(chan error, 1)
		go func() { werr <- write(c, n, make([]byte, 256<<10)) }()
		if err := discard(c, n, buf); err != nil {
			c.Close() // ends the writer
			<-werr
			return Result{}, fmt.Errorf("read back: %w", err)
		}
		if err := <-werr; err != nil {
			return Result{}, err
		}
	}
	el := time.Since(start).Seconds()
	return Result{MBps: float64(n) / el / 1e6, Seconds: el}, nil
}

func (b *bulk) close() {
	if b.c != nil {
		b.c.Close()
	}
}

func write(w io.Writer, n int64, buf []byte) error {
	for n > 0 {
		k := min(int64(len(buf)), n)
		if _, err := w.Write(buf[:k]); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		n -= k
	}
	return nil
}

// dials measures --count dials one after another, each from its start to
// the backend's answer to a one-byte probe.
type dials struct{ o clientOpts }

func (d *dials) prepare(context.Context, dialFunc) (Ready, error) { return Ready{}, nil }

func (d *dials) run(ctx context.Context, dial dialFunc) (Result, error) {
	var r Result
	start := time.Now()
	probe := header('P', 0)
	for range d.o.count {
		lat, err := func() (time.Duration, error) {
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			t0 := time.Now()
			c, err := dial(ctx)
			if err != nil {
				return 0, fmt.Errorf("dial: %w", err)
			}
			defer c.Close()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			if _, err := c.Write(probe); err != nil {
				return 0, err
			}
			var one [1]byte
			if _, err := io.ReadFull(c, one[:]); err != nil {
				return 0, fmt.Errorf("probe: %w", err)
			}
			return time.Since(t0), nil
		}()
		if err != nil {
			r.Errors++
			if r.FirstError == "" {
				r.FirstError = err.Error()
			}
			continue
		}
		r.Latencies = append(r.Latencies, int64(lat))
	}
	r.Seconds = time.Since(start).Seconds()
	return r, nil
}

func (d *dials) close() {}

// many is a set of connections opened at once, --concurrency dials in
// flight, each with a first request written (and, for a probe, answered).
type many struct {
	conns []net.Conn
}

func (m *many) open(ctx context.Context, dial dialFunc, n, concurrency int, first func(net.Conn) error) Ready {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var r Ready
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(1, concurrency))
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := func() (net.Conn, error) {
				ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				c, err := dial(ctx)
				if err != nil {
					return nil, fmt.Errorf("dial: %w", err)
				}
				stop := context.AfterFunc(ctx, func() { c.Close() })
				err = first(c)
				if !stop() && err == nil {
					err = ctx.Err()
				}
				if err != nil {
					c.Close()
					return nil, fmt.Errorf("first request: %w", err)
				}
				return c, nil
			}()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				r.Failed++
				if r.FirstError == "" {
					r.FirstError = err.Error()
				}
				return
			}
			m.conns = append(m.conns, c)
		})
	}
	wg.Wait()
	r.Conns = len(m.conns)
	return r
}

// close closes every connection at once: a konnectivity-client connection
// waits for the server's answer to its CLOSE_REQ.
func (m *many) close() {
	var wg sync.WaitGroup
	for _, c := range m.conns {
		wg.Go(func() { _ = c.Close() })
	}
	wg.Wait()
}

// roundTrips: --conns connections, each doing 1 KiB round trips (write,
// read the echo) for --seconds, all at once.
type roundTrips struct {
	o clientOpts
	many
}

func (r *roundTrips) prepare(ctx context.Context, dial dialFunc) (Ready, error) {
	hdr := header('E', 1024)
	return r.open(ctx, dial, r.o.conns, r.o.concurrency, func(c net.Conn) error {
		_, err := c.Write(hdr)
		return err
	}), nil
}

func (r *roundTrips) run(ctx context.Context, _ dialFunc) (Result, error) {
	d := time.Duration(r.o.seconds * float64(time.Second))
	ctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		for _, c := range r.conns {
			c.Close()
		}
	})
	defer stop()
	lat := make([][]time.Duration, len(r.conns))
	errs := make([]error, len(r.conns))
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for i, c := range r.conns {
		wg.Go(func() { lat[i], errs[i] = roundTripsUntil(c, end, nil) })
	}
	wg.Wait()
	var res Result
	res.Seconds = time.Since(start).Seconds()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	res.Trips = len(all)
	res.P50 = int64(pct(all, 50))
	res.P99 = int64(pct(all, 99))
	for _, e := range errs {
		if e != nil {
			res.Errors++
			if res.FirstError == "" {
				res.FirstError = e.Error()
			}
		}
	}
	return res, nil
}

func (r *roundTrips) close() { r.many.close() }

// roundTripsUntil does 1 KiB round trips on c (write, read the echo)
// until end and returns their times; done, if set, is called after each
// with the time it ended.
func roundTripsUntil(c net.Conn, end time.Time, done func(time.Time)) ([]time.Duration, error) {
	msg := make([]byte, 1024)
	var rtts []time.Duration
	for time.Now().Before(end) {
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return rtts, fmt.Errorf("write after %d round trips: %w", len(rtts), err)
		}
		if _, err := io.ReadFull(c, msg); err != nil {
			return rtts, fmt.Errorf("read after %d round trips: %w", len(rtts), err)
		}
		now := time.Now()
		rtts = append(rtts, now.Sub(t0))
		if done != nil {
			done(now)
		}
	}
	return rtts, nil
}

// idle: --conns connections, each with one probe answered so that it is
// set up end to end, then held idle.
type idle struct {
	o clientOpts
	many
}

func (i *idle) prepare(ctx context.Context, dial dialFunc) (Ready, error) {
	probe := header('P', 0)
	return i.open(ctx, dial, i.o.conns, i.o.concurrency, func(c net.Conn) error {
		if _, err := c.Write(probe); err != nil {
			return err
		}
		var one [1]byte
		_, err := io.ReadFull(c, one[:])
		return err
	}), nil
}

func (i *idle) run(context.Context, dialFunc) (Result, error) { return Result{}, nil }

func (i *idle) close() { i.many.close() }

// headOfLine: connection A's backend floods and A stops reading after
// 1 MiB; then B, through the same path, does 1 KiB round trips for
// --seconds. The result is B's p99 and its longest gap without a reply.
type headOfLine struct {
	o    clientOpts
	a, b net.Conn
}

func (h *headOfLine) prepare(ctx context.Context, dial dialFunc) (Ready, error) {
	// A B that cannot even dial within --setup-timeout is stuck behind A
	// (upstream's HTTP CONNECT frontend is, at times).
	ctx, cancel := context.WithTimeout(ctx, h.o.setupTimeout)
	defer cancel()
	a, err := dial(ctx)
	if err != nil {
		return Ready{}, fmt.Errorf("dial A: %w", err)
	}
	h.a = a
	if _, err := a.Write(header('F', 0)); err != nil {
		return Ready{}, fmt.Errorf("A: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { a.Close() })
	err = discard(a, 1<<20, make([]byte, 64<<10)) // the flood runs; then A stops reading
	if !stop() || err != nil {
		return Ready{}, fmt.Errorf("A's flood: %w", errors.Join(err, ctx.Err()))
	}
	b, err := dial(ctx)
	if err != nil {
		return Ready{}, fmt.Errorf("dial B: %w", err)
	}
	h.b = b
	if _, err := b.Write(header('E', 1024)); err != nil {
		return Ready{}, fmt.Errorf("B: %w", err)
	}
	return Ready{Conns: 2}, nil
}

func (h *headOfLine) run(ctx context.Context, _ dialFunc) (Result, error) {
	d := time.Duration(h.o.seconds * float64(time.Second))
	ctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { h.b.Close() })
	defer stop()
	var res Result
	start := time.Now()
	last := start
	rtts, err := roundTripsUntil(h.b, start.Add(d), func(now time.Time) {
		res.Gap = max(res.Gap, int64(now.Sub(last)))
		last = now
	})
	if err != nil {
		return res, fmt.Errorf("B: %w", err)
	}
	res.Trips = len(rtts)
	res.P99 = int64(pct(rtts, 99))
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

func (h *headOfLine) close() {
	for _, c := range []net.Conn{h.a, h.b} {
		if c != nil {
			c.Close()
		}
	}
}

func pct(v []time.Duration, p int) time.Duration {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}
