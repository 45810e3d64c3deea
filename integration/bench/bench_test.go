// Package bench measures isthmus next to direct loopback TCP, a TLS floor
// and upstream ANP, in the same run, interleaved: `make bench`. The client
// and the backend are processes of their own (bench/loadgen), as
// kube-apiserver and a kubelet are, so the daemons are what is measured.
// Absolute numbers vary from run to run on a shared machine; the ratios
// are the figures to read.
package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"
	"unsafe"

	"isthmus.dev/integration/harness"
)

// config is how much each phase does. BENCH_QUICK=1 makes everything
// small (a look in under 3 minutes); each BENCH_* variable overrides one
// figure.
type config struct {
	bytes     int // per bulk transfer
	rounds    int
	dials     int // per path and round
	rrConns   int
	rrSeconds float64
	idleConns int
	holSecs   float64
	pingSecs  float64 // one connection's round trips, one after another
	holSetup  time.Duration
	paths     *regexp.Regexp // BENCH_PATHS: the daemons' rows to run; all if nil
}

// wants reports whether the row named name is to run (see BENCH_PATHS).
// The direct path and the TLS floor always run: every ratio needs them.
func (c config) wants(name string) bool { return c.paths == nil || c.paths.MatchString(name) }

func benchConfig() (config, error) {
	c := config{bytes: 256 << 20, rounds: 5, dials: 400, rrConns: 1000, rrSeconds: 5, idleConns: 1000, holSecs: 10, pingSecs: 2, holSetup: 20 * time.Second}
	if os.Getenv("BENCH_QUICK") == "1" {
		c = config{bytes: 32 << 20, rounds: 3, dials: 100, rrConns: 200, rrSeconds: 1, idleConns: 300, holSecs: 2, pingSecs: 0.5, holSetup: 5 * time.Second}
	}
	c.bytes = envInt("BENCH_BYTES", c.bytes)
	c.rounds = envInt("BENCH_ROUNDS", c.rounds)
	c.dials = envInt("BENCH_DIALS", c.dials)
	c.rrConns = envInt("BENCH_RR_CONNS", c.rrConns)
	c.rrSeconds = float64(envInt("BENCH_RR_SECONDS", int(c.rrSeconds)))
	c.idleConns = envInt("BENCH_IDLE_CONNS", c.idleConns)
	c.holSecs = float64(envInt("BENCH_HOL_SECONDS", int(c.holSecs)))
	if re := os.Getenv("BENCH_PATHS"); re != "" {
		var err error
		if c.paths, err = regexp.Compile(re); err != nil {
			return c, fmt.Errorf("BENCH_PATHS is a regular expression over the rows' names (such as 'mux|^anp'): %w", err)
		}
	}
	return c, nil
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// path is one way from the client to the backend.
type path struct {
	name    string
	impl    harness.Impl // "" for the direct path and the floor
	mode    string       // frontend: harness.HTTPConnect or harness.GRPC
	via     string       // loadgen client --via
	proxy   string       // loadgen client --proxy
	procs   []*harness.Proc
	metrics []string // the daemons' /metrics URLs
	pprof   []string // with BENCH_PROFILE_DIR: the daemons' /debug/pprof URLs, server first
	floor   bool     // the bare TLS relays
	// dialProxy, when set, is where the path's dials go, by HTTP CONNECT
	// (the floor's relays take dials on a socket of their own).
	dialProxy string
}

// TestMain removes the binaries the benchmarks share (harness.Build builds
// them once per process) after the last one.
func TestMain(m *testing.M) {
	code := m.Run()
	harness.Cleanup()
	os.Exit(code)
}

// series is one figure of a path, a value per round.
type series []float64

func (s series) median() float64 { return median(s) }

// spread is "median (min-max)" with format f, or "-" without values.
func (s series) spread(f string) string {
	if len(s) == 0 {
		return "-"
	}
	return fmt.Sprintf(f+" ("+f+"-"+f+")", median(s), slices.Min(s), slices.Max(s))
}

// result is what the bench measured of one path.
type result struct {
	up, down, echo series // MB/s, a value per round
	cpuPerGiB      series // server+agent CPU seconds per GiB, up and down together
	rr             series // round trips per second
	cpuPerRT       series // server+agent CPU µs per round trip
	rrP99          series // ms
	rrConns        int
	pingP50        series // µs, one connection's round trip
	dialP50        series // ms, the round's median
	dialP99        series // ms
	cpuPerDial     series // server+agent CPU µs per dial
	dialErrors     int
	idle           idleResult
	hol            holResult
	notes          []string // what failed, and why
}

func (r *result) note(format string, a ...any) { r.notes = append(r.notes, fmt.Sprintf(format, a...)) }

// BenchmarkTunnel prints the comparison tables. It runs once whatever b.N is.
func BenchmarkTunnel(b *testing.B) {
	cfg, err := benchConfig()
	if err != nil {
		b.Fatal(err)
	}
	profileDir := os.Getenv("BENCH_PROFILE_DIR")
	if profileDir != "" {
		if err := os.MkdirAll(profileDir, 0o755); err != nil {
			b.Fatalf("BENCH_PROFILE_DIR: %v", err)
		}
	}
	nofile, err := raiseNofile()
	if err != nil {
		b.Fatal(err)
	}
	bins, err := harness.Build(false)
	if err != nil {
		b.Fatal(err)
	}
	tools := b.TempDir()
	loadgen := buildTool(b, tools, "loadgen")
	backend := startBackend(b, loadgen)
	pki := harness.NewPKI(b)

	paths := []*path{{name: "direct loopback TCP", via: "direct"}, startFloor(b, buildTool(b, tools, "tlsfloor"), pki, backend.addr, cfg.dials)}
	for _, v := range []struct {
		impl harness.Impl
		link string // our agent's --link; "" for upstream
		mux  string // the native link's session layer at both ends; "" for yamux
	}{{harness.Isthmus, "native", ""}, {harness.Isthmus, "native", "isthmus"}, {harness.Isthmus, "anp", ""}, {harness.Upstream, "", ""}} {
		for _, mode := range []string{harness.HTTPConnect, harness.GRPC} {
			// BENCH_PROFILE_DIR: the daemons serve /debug/pprof on their
			// admin ports, for CPU profiles of round 1 (see profiler).
			name := fmt.Sprintf("%s, %s", v.impl, mode)
			switch {
			case v.mux != "":
				name = fmt.Sprintf("%s %s link (mux prototype), %s", v.impl, v.link, mode)
			case v.link != "":
				name = fmt.Sprintf("%s %s link, %s", v.impl, v.link, mode)
			}
			if !cfg.wants(name) {
				continue
			}
			var sExtra, aExtra, pprof []string
			if profileDir != "" {
				port := harness.FreeRegisteredPort // upstream refuses ports above 49151
				sp, ap := port(b), port(b)
				sExtra = []string{"--enable-profiling", "--admin-port=" + strconv.Itoa(sp)}
				aExtra = []string{"--enable-profiling", "--admin-server-port=" + strconv.Itoa(ap)}
				pprof = []string{fmt.Sprintf("http://127.0.0.1:%d/debug/pprof", sp), fmt.Sprintf("http://127.0.0.1:%d/debug/pprof", ap)}
			}
			if v.mux != "" {
				sExtra = append(sExtra, "--native-mux="+v.mux)
			}
			s := harness.StartServer(b, bins, pki, harness.ServerOpts{Impl: v.impl, Mode: mode, Transport: harness.UDS, Extra: sExtra})
			ao := harness.AgentOpts{Impl: v.impl, Extra: aExtra}
			if v.link != "" {
				ao.Extra = append(ao.Extra, "--link="+v.link)
			}
			if v.mux != "" {
				ao.Extra = append(ao.Extra, "--native-mux="+v.mux)
			}
			a := harness.StartAgent(b, bins, s, ao)
			s.WaitReady(b)
			via := "connect"
			if mode == harness.GRPC {
				via = "grpc"
			}
			paths = append(paths, &path{name: name, impl: v.impl, mode: mode, via: via, proxy: s.UDS,
				procs: []*harness.Proc{s.Proc, a.Proc}, metrics: []string{s.MetricsURL(), a.MetricsURL()}, pprof: pprof})
		}
	}
	// Each daemon must be able to hold every connection of the largest
	// phase (plus its listeners and links); raise a soft limit that is too
	// low.
	need := uint64(max(cfg.rrConns, cfg.idleConns) + 256)
	var notes []string
	for _, p := range paths {
		for _, pr := range p.procs {
			if _, note, err := ensureNofile(pr.Pid(), need); err != nil {
				notes = append(notes, fmt.Sprintf("open-file limit of %s: %v", pr.Name, err))
			} else if note != "" {
				notes = append(notes, fmt.Sprintf("open-file limit of %s: %s", pr.Name, note))
			}
		}
	}
	if nofile.Cur < need {
		notes = append(notes, fmt.Sprintf("open-file limit of the test process is %d (hard %d), below the %d its clients need", nofile.Cur, nofile.Max, need))
	}
	lg := &loadgenRunner{bin: loadgen, backend: backend, profileDir: profileDir}
	res := make([]result, len(paths))
	var phases []string // how long each phase took
	phase := func(name string, t0 time.Time) {
		phases = append(phases, fmt.Sprintf("%s %v", name, time.Since(t0).Round(time.Second)))
	}

	// Idle memory first, while every daemon is fresh: memory a previous
	// phase freed but the runtime kept would hide the cost of new
	// connections.
	t0 := time.Now()
	for i, p := range paths {
		if p.procs == nil || p.floor {
			continue
		}
		res[i].idle = lg.idle(p, cfg.idleConns)
		b.Logf("idle %s: %.1f KiB/conn, %.2f goroutines/conn", p.name, res[i].idle.rssKiB, res[i].idle.goroutines)
	}
	phase("idle memory", t0)

	// Rounds: every path does each measurement once per round, the paths
	// in an order that turns by one each round.
	bulkT, rrT, dialT := time.Duration(0), time.Duration(0), time.Duration(0)
	for r := range cfg.rounds {
		order := make([]int, len(paths))
		for k := range order {
			order[k] = (k + r) % len(paths)
		}
		t0 := time.Now()
		for _, i := range order {
			lg.bulk(paths[i], &res[i], cfg.bytes, r)
		}
		bulkT += time.Since(t0)
		t0 = time.Now()
		for _, i := range order {
			lg.roundTrips(paths[i], &res[i], cfg.rrConns, cfg.rrSeconds, r)
		}
		rrT += time.Since(t0)
		t0 = time.Now()
		for _, i := range order {
			lg.pingPong(paths[i], &res[i], cfg.pingSecs, r)
			lg.dials(paths[i], &res[i], cfg.dials, r)
		}
		dialT += time.Since(t0)
		b.Logf("round %d of %d done", r+1, cfg.rounds)
	}
	phases = append(phases, fmt.Sprintf("transfers %v", bulkT.Round(time.Second)),
		fmt.Sprintf("round trips %v", rrT.Round(time.Second)), fmt.Sprintf("one-connection round trips and dials %v", dialT.Round(time.Second)))

	// Head-of-line: while A does not read (its backend floods), B on the
	// same agent does 1 KiB round trips.
	t0 = time.Now()
	for i, p := range paths {
		if p.procs == nil || p.floor {
			continue
		}
		res[i].hol = lg.headOfLine(p, cfg.holSecs, cfg.holSetup)
	}
	phase("head-of-line", t0)

	fmt.Printf("\n(2 cores, race detector off; client and backend in processes of their own)\n%s", report(cfg, paths, res))
	fmt.Printf("\nOpen-file limit (soft) of the test process: %d. Phases took: %s.\n", nofile.Cur, strings.Join(phases, ", "))
	for _, n := range notes {
		fmt.Printf("NOTE %s\n", n)
	}
	for i, p := range paths {
		for _, n := range res[i].notes {
			fmt.Printf("FAILED %s: %s\n", p.name, n)
		}
	}
	if profileDir != "" {
		fmt.Printf("CPU profiles of round 1 (round trips, dials) of every daemon are in %s: go tool pprof -top <file>\n", profileDir)
	}
	fmt.Println()
	for i, p := range paths {
		if p.name != "isthmus native link, http-connect" {
			continue
		}
		if f, u := res[1].up.median(), res[i].up.median(); f > 0 && u > 0 {
			b.ReportMetric(u/f, "native-connect-up/floor")
		}
	}
}

// report is the tables: throughput, small messages, idle and head-of-line.
func report(cfg config, paths []*path, res []result) string {
	floor := -1
	for i, p := range paths {
		if p.floor {
			floor = i
		}
	}
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
	vsANP := func(i int, f func(result) series) string {
		u := upstreamOf(paths[i])
		if u < 0 {
			return "-"
		}
		return ratio(f(res[i]).median(), f(res[u]).median())
	}
	vsFloor := func(i int, f func(result) series) string {
		if floor < 0 || i == floor || paths[i].procs == nil {
			return "-"
		}
		return ratio(f(res[i]).median(), f(res[floor]).median())
	}
	up := func(r result) series { return r.up }
	down := func(r result) series { return r.down }
	cpuGiB := func(r result) series { return r.cpuPerGiB }
	rr := func(r result) series { return r.rr }
	cpuRT := func(r result) series { return r.cpuPerRT }
	dial50 := func(r result) series { return r.dialP50 }
	ping := func(r result) series { return r.pingP50 }
	cpuDial := func(r result) series { return r.cpuPerDial }
	idleRSS := func(r result) series {
		if r.idle.opened == 0 {
			return nil
		}
		return series{r.idle.rssKiB}
	}

	var sb strings.Builder
	fmt.Fprintf(&sb, "\nBulk: one connection, %d MiB each way (echo: written and read back at once, MB/s each way); CPU: server+agent (or the two relays) seconds per GiB moved, up and down together. Median of %d interleaved rounds (min-max):\n\n",
		cfg.bytes>>20, cfg.rounds)
	tw := tabwriter.NewWriter(&sb, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "path\tclient->backend MB/s\tvs floor\tvs ANP\tbackend->client MB/s\tvs floor\tvs ANP\techo MB/s\tCPU s/GiB\tvs floor\tvs ANP\t\n")
	for i, p := range paths {
		r := res[i]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", p.name,
			r.up.spread("%.0f"), vsFloor(i, up), vsANP(i, up),
			r.down.spread("%.0f"), vsFloor(i, down), vsANP(i, down),
			r.echo.spread("%.0f"),
			r.cpuPerGiB.spread("%.2f"), vsFloor(i, cpuGiB), vsANP(i, cpuGiB))
	}
	tw.Flush()

	fmt.Fprintf(&sb, "\nSmall messages: round trips (RT): %d connections at once, each doing 1 KiB request/response for %.0f s. CPU: server+agent (or the two relays) µs per round trip. Median of %d interleaved rounds (min-max):\n\n",
		cfg.rrConns, cfg.rrSeconds, cfg.rounds)
	tw = tabwriter.NewWriter(&sb, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "path\tRT/s\tvs floor\tvs ANP\tCPU µs/RT\tvs floor\tvs ANP\tRT p99 ms\t\n")
	for i, p := range paths {
		r := res[i]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", p.name,
			r.rr.spread("%.0f"), vsFloor(i, rr), vsANP(i, rr),
			r.cpuPerRT.spread("%.1f"), vsFloor(i, cpuRT), vsANP(i, cpuRT),
			r.rrP99.spread("%.1f"))
	}
	tw.Flush()

	fmt.Fprintf(&sb, "\nLatency: one connection's 1 KiB round trips one after another for %.1f s (p50); dials: %d a round, one at a time, each from dial to the backend's first byte. CPU: server+agent µs per dial. Median of %d interleaved rounds (min-max):\n\n",
		cfg.pingSecs, cfg.dials, cfg.rounds)
	tw = tabwriter.NewWriter(&sb, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "path\tone-conn RT p50 µs\tvs floor\tvs ANP\tdial p50 ms\tvs floor\tvs ANP\tdial p99 ms\tCPU µs/dial\tvs ANP\tdial errors\t\n")
	for i, p := range paths {
		r := res[i]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t\n", p.name,
			r.pingP50.spread("%.0f"), vsFloor(i, ping), vsANP(i, ping),
			r.dialP50.spread("%.3f"), vsFloor(i, dial50), vsANP(i, dial50), r.dialP99.spread("%.3f"),
			r.cpuPerDial.spread("%.0f"), vsANP(i, cpuDial), r.dialErrors)
	}
	tw.Flush()

	fmt.Fprintf(&sb, "\nIdle: %d tunneled connections open (each probed once) and idle for 2 s; server+agent growth per connection, measured once, on fresh daemons:\n\n", cfg.idleConns)
	tw = tabwriter.NewWriter(&sb, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "path\tRSS KiB/conn\tvs ANP\tgoroutines/conn\tconns opened\t\n")
	for i, p := range paths {
		if p.procs == nil || p.floor {
			continue
		}
		r := res[i].idle
		rss, g := "-", "-"
		if r.opened > 0 {
			rss = fmt.Sprintf("%.1f", r.rssKiB)
			if r.goroutinesOK {
				g = fmt.Sprintf("%.2f", r.goroutines)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t\n", p.name, rss, vsANP(i, idleRSS), g, r.opened)
	}
	tw.Flush()

	fmt.Fprintf(&sb, "\nHead-of-line: client A stops reading while its backend floods; client B on the same agent does 1 KiB round trips for %.0f s:\n\n", cfg.holSecs)
	tw = tabwriter.NewWriter(&sb, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "path\tB round trips\tB p99\tB longest gap\tnote\t\n")
	for i, p := range paths {
		if p.procs == nil || p.floor {
			continue
		}
		h := res[i].hol
		fmt.Fprintf(tw, "%s\t%d\t%v\t%v\t%s\t\n", p.name, h.trips, h.p99, h.gap, h.err)
	}
	tw.Flush()
	fmt.Fprintf(&sb, "\nTLS floor: two relay processes that only copy (Unix socket -> TLS 1.3 over loopback TCP -> the backend), one TLS connection per tunneled connection, no multiplexing, framing or flow control: what any TLS tunnel pays on this machine, in the same run. Its round trips ride connections it set up beforehand. Its dials are the least a reverse tunnel's dial does: the relays read an HTTP CONNECT, send the address over a TLS connection to the far relay that was set up before the dial (as a tunnel's link is), the far relay dials the backend and answers one byte, and the near one answers \"200\": the same process hops as a tunnel's dial, and nothing else (its CPU per dial is not shown: it sets its connections up between dials).\n")
	fmt.Fprintf(&sb, "vs floor: the path's figure over the floor's; vs ANP: an isthmus figure over upstream ANP's with the same frontend (http-connect or grpc). Above 1 is better for MB/s and RT/s, below 1 for CPU, latency and RSS.\n")
	return sb.String()
}

// ratio is a/b with three decimals, or "-" when either is missing.
func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", a/b)
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

// buildTool builds the bench's program bench/<name> into dir.
func buildTool(b *testing.B, dir, name string) string {
	b.Helper()
	bin := filepath.Join(dir, name)
	if out, err := exec.Command("go", "build", "-o", bin, "isthmus.dev/integration/bench/"+name).CombinedOutput(); err != nil {
		b.Fatalf("build %s: %v\n%s", name, err, out)
	}
	return bin
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
