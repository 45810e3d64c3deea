package bench

import (
	"bufio"

	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"isthmus.dev/certs"
	"isthmus.dev/integration/harness"
)

// backendProc is loadgen's backend, a process of its own.
type backendProc struct {
	addr  string // where it serves
	stats string // its stats page, host:port
}

// startBackend starts loadgen's backend; it ends at cleanup.
func startBackend(b *testing.B, bin string) *backendProc {
	b.Helper()
	cmd := exec.Command(bin, "backend")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	var errOut harness.SyncBuffer
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		b.Fatalf("start loadgen backend: %v", err)
	}
	b.Cleanup(func() {
		stdin.Close() // the backend closes its connections and exits
		if !waitCmd(cmd, 30*time.Second) {
			b.Logf("loadgen backend did not end within 30 s of its stdin closing; killed. Its stderr: %s", errOut.String())
		}
	})
	var hello struct{ Addr, Stats string }
	line, err := readLine(bufio.NewReader(stdout), 30*time.Second)
	if err == nil {
		err = json.Unmarshal(line, &hello)
	}
	if err != nil || hello.Addr == "" {
		b.Fatalf("loadgen backend did not say where it serves: %v (line %q, stderr %s)", err, line, errOut.String())
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return &backendProc{addr: hello.Addr, stats: hello.Stats}
}

// open is the number of connections the backend has open.
func (bp *backendProc) open() (int, error) {
	resp, err := http.Get("http://" + bp.stats + "/open")
	if err != nil {
		return 0, fmt.Errorf("backend stats: %w", err)
	}
	defer resp.Body.Close()
	var v struct{ Open int }
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return 0, fmt.Errorf("backend stats: %w", err)
	}
	return v.Open, nil
}

// drained waits up to 15 s for the backend to have no connection open
// (the client's closes travel through the tunnel); it returns how many
// were still open then.
func (bp *backendProc) drained() int {
	deadline := time.Now().Add(15 * time.Second)
	for {
		n, err := bp.open()
		if (err == nil && n == 0) || time.Now().After(deadline) {
			if err != nil {
				return -1
			}
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readLine reads one line within d.
func readLine(r *bufio.Reader, d time.Duration) ([]byte, error) {
	type got struct {
		b   []byte
		err error
	}
	ch := make(chan got, 1)
	go func() {
		b, err := r.ReadBytes('\n')
		ch <- got{b, err}
	}()
	select {
	case g := <-ch:
		return g.b, g.err
	case <-time.After(d):
		return nil, fmt.Errorf("no line within %v", d)
	}
}

// waitCmd waits up to d for cmd to exit, then kills it; false if it had
// to be killed.
func waitCmd(cmd *exec.Cmd, d time.Duration) bool {
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		_ = cmd.Process.Kill()
		<-done
		return false
	}
}

// Ready and Result are loadgen's lines (bench/loadgen).
type Ready struct {
	Conns      int    `json:"conns"`
	Failed     int    `json:"failed"`
	FirstError string `json:"first_error"`
}

type Result struct {
	MBps       float64 `json:"mbps"`
	Trips      int     `json:"trips"`
	Seconds    float64 `json:"seconds"`
	P50        int64   `json:"p50_ns"`
	P99        int64   `json:"p99_ns"`
	Gap        int64   `json:"gap_ns"`
	Latencies  []int64 `json:"lat_ns"`
	Errors     int     `json:"errors"`
	FirstError string  `json:"first_error"`
}

// clientRun is one loadgen client process: ready, then go, then its
// result, then finish.
type clientRun struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader
	errOut *harness.SyncBuffer
	what   string
}

type loadgenRunner struct {
	bin        string
	backend    *backendProc
	profileDir string // BENCH_PROFILE_DIR
}

// profile takes a CPU profile of each of p's daemons for the next seconds
// into profileDir, when p serves /debug/pprof and this is round 1, and an
// execution trace as well (go tool trace) for the ops named in
// BENCH_TRACE (a comma-separated list: rr, dials); wait waits for them
// (and reports a failure as a note).
func (lg *loadgenRunner) profile(p *path, res *result, op string, round int, seconds float64) (wait func()) {
	if lg.profileDir == "" || len(p.pprof) == 0 || round != 0 {
		return func() {}
	}
	slug := strings.NewReplacer(" ", "-", ",", "").Replace(p.name)
	secs := max(1, int(seconds+0.5))
	kinds := []string{"profile"}
	if slices.Contains(strings.Split(os.Getenv("BENCH_TRACE"), ","), op) {
		kinds = append(kinds, "trace")
	}
	errs := make(chan error, len(p.pprof)*len(kinds))
	for k, u := range p.pprof {
		who := []string{"server", "agent"}[k]
		for _, kind := range kinds {
			ext := map[string]string{"profile": "pprof", "trace": "trace"}[kind]
			go func() {
				url := fmt.Sprintf("%s/%s?seconds=%d", u, kind, secs)
				errs <- saveURL(url, filepath.Join(lg.profileDir, fmt.Sprintf("%s-%s-%s.%s", slug, who, op, ext)))
			}()
		}
	}
	return func() {
		for range cap(errs) {
			if err := <-errs; err != nil {
				res.note("CPU profile or trace of %s: %v", op, err)
			}
		}
	}
}

// start runs a loadgen client for p and waits (up to 10 minutes) for it
// to be ready.
func (lg *loadgenRunner) start(p *path, op string, args ...string) (*clientRun, Ready, error) {
	args = append([]string{"client", "--via=" + p.via, "--backend=" + lg.backend.addr, "--op=" + op}, args...)
	if p.proxy != "" {
		args = append(args, "--proxy="+p.proxy)
	}
	c := &clientRun{cmd: exec.Command(lg.bin, args...), errOut: &harness.SyncBuffer{}, what: "loadgen " + op}
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c.cmd.Stderr = c.errOut
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		return nil, Ready{}, err
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, Ready{}, err
	}
	c.out = bufio.NewReader(stdout)
	if err := c.cmd.Start(); err != nil {
		return nil, Ready{}, fmt.Errorf("start %s: %w", c.what, err)
	}
	var r Ready
	if err := c.line(10*time.Minute, &r); err != nil {
		c.finish()
		return nil, r, err
	}
	return c, r, nil
}

// line reads one JSON line of the client into v.
func (c *clientRun) line(d time.Duration, v any) error {
	l, err := readLine(c.out, d)
	if err != nil {
		_ = c.cmd.Process.Kill()
		return fmt.Errorf("%s: %w; its stderr: %s", c.what, err, strings.Join(strings.Fields(c.errOut.String()), " "))
	}
	if err := json.Unmarshal(l, v); err != nil {
		return fmt.Errorf("%s printed %q: %w", c.what, l, err)
	}
	return nil
}

// run tells the client to go and returns its result (within d).
func (c *clientRun) run(d time.Duration) (Result, error) {
	var r Result
	if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
		return r, fmt.Errorf("%s: %w; its stderr: %s", c.what, err, strings.Join(strings.Fields(c.errOut.String()), " "))
	}
	return r, c.line(d, &r)
}

// finish closes the client's stdin (it closes its connections and exits)
// and waits up to 2 minutes for it.
func (c *clientRun) finish() { c.finishWithin(2 * time.Minute) }

// finishWithin is finish, killing the client after d.
func (c *clientRun) finishWithin(d time.Duration) {
	c.stdin.Close()
	go func() { _, _ = io.Copy(io.Discard, c.out) }()
	waitCmd(c.cmd, d)
}

// idleResult is the server+agent cost of idle tunneled connections.
type idleResult struct {
	opened       int
	rssKiB       float64 // VmRSS growth per connection
	goroutines   float64 // go_goroutines growth per connection
	goroutinesOK bool
	notes        []string
}

// idle opens n connections through p (each probed once, so set up end to
// end), leaves them idle for 2 s and measures how much the server's and
// agent's RSS and goroutines grew, per connection.
func (lg *loadgenRunner) idle(p *path, n int) (r idleResult) {
	rss0, err := rssKiB(p.procs)
	if err != nil {
		r.notes = append(r.notes, err.Error())
		return r
	}
	g0, gerr := goroutines(p.metrics)
	c, ready, err := lg.start(p, "idle", "--conns="+strconv.Itoa(n))
	if err != nil {
		r.notes = append(r.notes, err.Error())
		return r
	}
	defer func() {
		c.finish()
		if left := lg.backend.drained(); left != 0 {
			r.notes = append(r.notes, fmt.Sprintf("%d backend connections still open 15 s after the client closed them", left))
		}
	}()
	if ready.Failed > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d of %d dials failed, first: %s", ready.Failed, n, ready.FirstError))
	}
	if r.opened = ready.Conns; r.opened == 0 {
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

// bulk moves the bytes up, down and echoed once each through p, and the
// daemons' CPU time for up and down together.
func (lg *loadgenRunner) bulk(p *path, res *result, bytes, round int) {
	var cpu float64
	measured := 0 // of up and down
	for _, op := range []string{"up", "down", "echo"} {
		c, _, err := lg.start(p, op, "--bytes="+strconv.Itoa(bytes))
		if err != nil {
			res.note("round %d %s: %v", round+1, op, err)
			continue
		}
		cpu0 := cpuSeconds(p.procs)
		r, err := c.run(10 * time.Minute)
		used := cpuSeconds(p.procs) - cpu0
		c.finish()
		if err != nil {
			// On the ANP wire a connection whose reader falls too far
			// behind is cut: reported, not fatal.
			res.note("round %d %s: %v", round+1, op, err)
			continue
		}
		switch op {
		case "up":
			res.up = append(res.up, r.MBps)
		case "down":
			res.down = append(res.down, r.MBps)
		case "echo":
			res.echo = append(res.echo, r.MBps)
		}
		if op != "echo" {
			cpu += used
			measured++
		}
	}
	if measured == 2 && p.procs != nil {
		res.cpuPerGiB = append(res.cpuPerGiB, cpu/(2*float64(bytes)/(1<<30)))
	}
}

// roundTrips runs conns connections of 1 KiB round trips through p for
// seconds, and the daemons' CPU time per round trip.
func (lg *loadgenRunner) roundTrips(p *path, res *result, conns int, seconds float64, round int) {
	c, ready, err := lg.start(p, "rr", "--conns="+strconv.Itoa(conns), "--seconds="+strconv.FormatFloat(seconds, 'f', -1, 64))
	if err != nil {
		res.note("round %d round trips: %v", round+1, err)
		return
	}
	defer func() {
		c.finish()
		if left := lg.backend.drained(); left != 0 {
			res.note("round %d round trips: %d backend connections still open 15 s after the client closed them", round+1, left)
		}
	}()
	if ready.Failed > 0 {
		res.note("round %d round trips: %d of %d dials failed, first: %s", round+1, ready.Failed, conns, ready.FirstError)
	}
	res.rrConns = ready.Conns
	wait := lg.profile(p, res, "rr", round, seconds)
	cpu0 := cpuSeconds(p.procs)
	r, err := c.run(time.Duration(seconds)*time.Second + 2*time.Minute)
	cpu := cpuSeconds(p.procs) - cpu0
	wait()
	if err != nil {
		res.note("round %d round trips: %v", round+1, err)
		return
	}
	if r.Errors > 0 {
		res.note("round %d round trips: %d of %d connections failed, first: %s", round+1, r.Errors, ready.Conns, r.FirstError)
	}
	if r.Trips == 0 || r.Seconds == 0 {
		res.note("round %d round trips: none completed", round+1)
		return
	}
	res.rr = append(res.rr, float64(r.Trips)/r.Seconds)
	res.rrP99 = append(res.rrP99, float64(r.P99)/1e6)
	if p.procs != nil {
		res.cpuPerRT = append(res.cpuPerRT, cpu*1e6/float64(r.Trips))
	}
}

// pingPong is one connection doing 1 KiB round trips one after another
// for seconds: the latency of a message through p when nothing else
// moves, and so what one hop between processes costs here (the direct
// path's round trip is two hops; a tunnel's, six).
func (lg *loadgenRunner) pingPong(p *path, res *result, seconds float64, round int) {
	c, ready, err := lg.start(p, "rr", "--conns=1", "--seconds="+strconv.FormatFloat(seconds, 'f', -1, 64))
	if err != nil {
		res.note("round %d one-connection round trips: %v", round+1, err)
		return
	}
	defer func() {
		c.finish()
		if left := lg.backend.drained(); left != 0 {
			res.note("round %d one-connection round trips: %d backend connections still open 15 s after the client closed them", round+1, left)
		}
	}()
	if ready.Conns != 1 {
		res.note("round %d one-connection round trips: dial failed: %s", round+1, ready.FirstError)
		return
	}
	r, err := c.run(time.Duration(seconds)*time.Second + time.Minute)
	switch {
	case err != nil:
		res.note("round %d one-connection round trips: %v", round+1, err)
	case r.Errors > 0:
		res.note("round %d one-connection round trips: %s", round+1, r.FirstError)
	case r.Trips > 0:
		res.pingP50 = append(res.pingP50, float64(r.P50)/1e3)
	}
}

// dials makes n dials through p one at a time, and the daemons' CPU time
// per dial.
func (lg *loadgenRunner) dials(p *path, res *result, n, round int) {
	if p.floor && p.dialProxy == "" {
		return
	}
	dp := p
	if p.dialProxy != "" {
		if err := fillFloorPool(p.dialProxy); err != nil {
			res.note("round %d dials: %v", round+1, err)
			return
		}
		dp = &path{via: "connect", proxy: p.dialProxy}
	}
	c, _, err := lg.start(dp, "dials", "--count="+strconv.Itoa(n))
	if err != nil {
		res.note("round %d dials: %v", round+1, err)
		return
	}
	// The profile runs about as long as the dials (a millisecond each).
	wait := lg.profile(p, res, "dials", round, float64(n)/1000)
	cpu0 := cpuSeconds(p.procs)
	r, err := c.run(10 * time.Minute)
	cpu := cpuSeconds(p.procs) - cpu0
	c.finish()
	wait()
	if err != nil {
		res.note("round %d dials: %v", round+1, err)
		return
	}
	res.dialErrors += r.Errors
	if r.Errors > 0 {
		res.note("round %d dials: %d of %d failed, first: %s", round+1, r.Errors, n, r.FirstError)
	}
	if len(r.Latencies) == 0 {
		return
	}
	lat := make([]time.Duration, len(r.Latencies))
	for k, l := range r.Latencies {
		lat[k] = time.Duration(l)
	}
	res.dialP50 = append(res.dialP50, float64(pct(lat, 50))/1e6)
	res.dialP99 = append(res.dialP99, float64(pct(lat, 99))/1e6)
	if p.procs != nil && !p.floor {
		res.cpuPerDial = append(res.cpuPerDial, cpu*1e6/float64(len(lat)))
	}
}

// holResult is B's experience while A is stalled.
type holResult struct {
	p99, gap time.Duration
	trips    int
	err      string
}

func (lg *loadgenRunner) headOfLine(p *path, seconds float64, setup time.Duration) (h holResult) {
	c, _, err := lg.start(p, "hol", "--seconds="+strconv.FormatFloat(seconds, 'f', -1, 64), "--setup-timeout="+setup.String())
	if err != nil {
		h.err = err.Error()
		return h
	}
	// Closing A, full of the flood, cannot be quick through any server:
	// konnectivity-client's reader is parked handing A's DATA to a read
	// queue A never empties, so it takes nothing more from the stream
	// (CLOSE_RSP included) until its 10 s read timeout closes the tunnel.
	// (Through upstream that has often happened already, while B waited
	// behind A.) The measurement is over, so the client is killed after 2 s.
	defer c.finishWithin(2 * time.Second)
	r, err := c.run(time.Duration(seconds)*time.Second + 2*time.Minute)
	if err != nil {
		h.err = err.Error()
		return h
	}
	h.trips, h.p99, h.gap = r.Trips, time.Duration(r.P99).Round(time.Microsecond), time.Duration(r.Gap).Round(time.Millisecond)
	return h
}

// cpuSeconds sums the CPU time (user and system, every thread, live or
// ended) of the processes, to the nanosecond: the process CPU clock of
// each, read with clock_gettime (/proc's utime and stime count in 10 ms
// ticks, too coarse for a few hundred dials).
func cpuSeconds(procs []*harness.Proc) float64 {
	var total float64
	for _, p := range procs {
		// MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED), as clock_getcpuclockid(3) makes it.
		clk := int32(^uint32(p.Pid())<<3 | 2)
		var ts syscall.Timespec
		if _, _, e := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, uintptr(clk), uintptr(unsafe.Pointer(&ts)), 0); e != 0 {
			continue
		}
		total += float64(ts.Sec) + float64(ts.Nsec)/1e9
	}
	return total
}

// fillFloorPool has the floor's near relay set up its TLS connections to
// the far one before the dials that take them (see tlsfloor).
func fillFloorPool(sock string) error {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return fmt.Errorf("fill the floor's pool: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := io.WriteString(c, "CONNECT fill.pool.tlsfloor:0 HTTP/1.1\r\n\r\n"); err != nil {
		return fmt.Errorf("fill the floor's pool: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("fill the floor's pool: %w", err)
	}
	if !strings.HasPrefix(line, "HTTP/1.1 204") {
		return fmt.Errorf("fill the floor's pool: tlsfloor answered %q (its log says why)", strings.TrimSpace(line))
	}
	return nil
}

// startFloor starts the two tlsfloor relays (bin) in front of the backend
// at addr.
func startFloor(b *testing.B, bin string, pki *certs.Bundle, addr string, dials int) *path {
	b.Helper()
	farAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(harness.FreePort(b)))
	farDials := net.JoinHostPort("127.0.0.1", strconv.Itoa(harness.FreePort(b)))
	far := harness.Start(b, "tlsfloor-far", bin, "--role=far", "--listen="+farAddr, "--to="+addr, "--connect-listen="+farDials,
		"--cert="+pki.AgentPortCert, "--key="+pki.AgentPortKey)
	sockDir, err := os.MkdirTemp("", "isthmus-floor-") // short: socket paths are limited to 108 bytes
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(sockDir) })
	sock, dialSock := filepath.Join(sockDir, "near.sock"), filepath.Join(sockDir, "dials.sock")
	// One pooled TLS connection per dial of a round: the pool tops itself
	// up between rounds, never beside a dial.
	near := harness.Start(b, "tlsfloor-near", bin, "--role=near", "--listen="+sock, "--to="+farAddr, "--ca="+pki.CACert,
		"--connect-listen="+dialSock, "--dial-to="+farDials, "--pool="+strconv.Itoa(dials+16))
	harness.WaitFor(b, 30*time.Second, "the tlsfloor relays", func() bool {
		c, err := net.Dial("unix", sock)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return &path{name: "TLS floor: 2 relays, no mux", floor: true, via: "unix", proxy: sock, dialProxy: dialSock, procs: []*harness.Proc{near, far}}
}
