package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"isthmus.dev/certs"
	"isthmus.dev/integration/harness"
)

// agentCounts are the numbers of agents of the agents-per-server rows;
// BENCH_QUICK=1 keeps the smallest, BENCH_AGENTS=N measures N alone.
func agentCounts() []int {
	if n := envInt("BENCH_AGENTS", 0); n > 0 {
		return []int{n}
	}
	if os.Getenv("BENCH_QUICK") == "1" {
		return []int{1000}
	}
	return []int{1000, 10000}
}

// agentTarget is a proxy-server and the link its agents speak.
type agentTarget struct {
	name string
	impl harness.Impl
	link string // agentload --link
	mux  string // the native link's session layer at both ends, "" for yamux
}

// agentRow is what connecting n agents to one server cost it.
type agentRow struct {
	target                  string
	agents, connected       int
	connect                 time.Duration
	rssKiB, goroutines      float64 // the server's, with the agents connected
	baseRSS, baseGoroutines float64 // the server's, before
	stack, baseStack        float64 // goroutine stacks (go_memstats_stack_inuse_bytes), with and before
	err                     error
}

func (r agentRow) perAgentKiB() float64 { return (r.rssKiB - r.baseRSS) / float64(r.agents) }
func (r agentRow) perAgentStackKiB() float64 {
	return (r.stack - r.baseStack) / 1024 / float64(r.agents)
}
func (r agentRow) perAgentG() float64 {
	return (r.goroutines - r.baseGoroutines) / float64(r.agents)
}

// BenchmarkAgents connects 1,000 and 10,000 agents (one process,
// bench/agentload) to one proxy-server on each link, and to upstream
// ANP's server, and prints what each connected agent costs the server:
// resident memory and goroutines, and the time for all to connect. It
// runs once whatever b.N is.
func BenchmarkAgents(b *testing.B) {
	counts := agentCounts()
	if _, err := raiseNofile(); err != nil {
		b.Fatal(err)
	}
	bins, err := harness.Build(false)
	if err != nil {
		b.Fatal(err)
	}
	load := filepath.Join(b.TempDir(), "agentload")
	if out, err := exec.Command("go", "build", "-o", load, "isthmus.dev/integration/bench/agentload").CombinedOutput(); err != nil {
		b.Fatalf("build agentload: %v\n%s", err, out)
	}
	cfg, err := benchConfig()
	if err != nil {
		b.Fatal(err)
	}
	pki := harness.NewPKI(b)
	targets := []agentTarget{
		{"isthmus, native link", harness.Isthmus, "native", ""},
		{"isthmus, native link, mux prototype", harness.Isthmus, "native", "isthmus"},
		{"isthmus, ANP link", harness.Isthmus, "anp", ""},
		{"upstream ANP", harness.Upstream, "anp", ""},
	}
	var rows []agentRow
	for _, n := range counts {
		for _, tg := range targets {
			if !cfg.wants(tg.name) && tg.impl != harness.Upstream {
				continue // BENCH_PATHS; upstream's row stays, every ratio needs it
			}
			r := connectAgents(b, bins, pki, load, tg, n)
			rows = append(rows, r)
			if r.err != nil {
				b.Logf("%s, %d agents: %v", tg.name, n, r.err)
			}
		}
	}
	b.Logf("agents per server (one server per row, agents from one process; per agent: the server's growth over its idle state divided by the agents):\n%s", agentTable(rows))
}

// connectAgents starts a server for tg, connects n agents to it from
// agentload, and measures the server once they are all connected.
func connectAgents(b *testing.B, bins harness.Binaries, pki *certs.Bundle, load string, tg agentTarget, n int) agentRow {
	b.Helper()
	r := agentRow{target: tg.name, agents: n}
	// BENCH_PROFILE_DIR: isthmus's server serves /debug/pprof, and its heap
	// and goroutine profiles with the agents connected are saved there.
	profileDir := os.Getenv("BENCH_PROFILE_DIR")
	var extra []string
	var adminPort int
	if profileDir != "" && tg.impl == harness.Isthmus {
		if err := os.MkdirAll(profileDir, 0o755); err != nil {
			b.Fatalf("BENCH_PROFILE_DIR: %v", err)
		}
		adminPort = harness.FreePort(b)
		extra = []string{"--enable-profiling", "--admin-port=" + strconv.Itoa(adminPort)}
	}
	loadMux := "yamux"
	if tg.mux != "" {
		extra = append(extra, "--native-mux="+tg.mux)
		loadMux = tg.mux
	}
	s := harness.StartServer(b, bins, pki, harness.ServerOpts{Impl: tg.impl, Mode: harness.HTTPConnect, Transport: harness.UDS, Extra: extra})
	defer s.Stop(30 * time.Second)
	if _, _, err := ensureNofile(s.Pid(), uint64(n)+256); err != nil {
		r.err = err
		return r
	}
	procs, urls := []*harness.Proc{s.Proc}, []string{s.MetricsURL()}
	time.Sleep(2 * time.Second) // settled
	var err error
	if r.baseRSS, err = rssKiB(procs); err == nil {
		r.baseGoroutines, err = goroutines(urls)
	}
	if err == nil {
		r.baseStack, err = harness.MetricSum(urls[0], "go_memstats_stack_inuse_bytes")
	}
	if err != nil {
		r.err = err
		return r
	}

	cmd := exec.Command(load, "--server=127.0.0.1:"+strconv.Itoa(s.AgentPort), "--server-name=127.0.0.1",
		"--link="+tg.link, "--native-mux="+loadMux, "--agents="+strconv.Itoa(n), "--id-prefix="+tg.link+"-",
		"--ca-cert="+pki.CACert, "--agent-cert="+pki.AgentCert, "--agent-key="+pki.AgentKey)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		r.err = err
		return r
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		r.err = err
		return r
	}
	var errOut harness.SyncBuffer
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		r.err = err
		return r
	}
	defer func() {
		stdin.Close() // agentload closes its agents and exits
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(2 * time.Minute):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var rep struct {
		Connected  int     `json:"connected"`
		Failed     int     `json:"failed"`
		Seconds    float64 `json:"seconds"`
		FirstError string  `json:"first_error"`
	}
	select {
	case l, ok := <-line:
		if !ok {
			r.err = fmt.Errorf("agentload ended without a report: %s", errOut.String())
			return r
		}
		if err := json.Unmarshal([]byte(l), &rep); err != nil {
			r.err = fmt.Errorf("agentload's report %q: %w", l, err)
			return r
		}
	case <-time.After(15 * time.Minute):
		r.err = fmt.Errorf("agentload did not report within 15 minutes: %s", errOut.String())
		return r
	}
	r.connected, r.connect = rep.Connected, time.Duration(rep.Seconds*float64(time.Second))
	if rep.Failed > 0 {
		r.err = fmt.Errorf("%d of %d agents failed to connect, first: %s", rep.Failed, n, rep.FirstError)
	}
	time.Sleep(3 * time.Second) // what the connecting left behind settles
	if r.rssKiB, err = rssKiB(procs); err == nil {
		r.goroutines, err = goroutines(urls)
	}
	if err == nil {
		r.stack, err = harness.MetricSum(urls[0], "go_memstats_stack_inuse_bytes")
	}
	if err != nil && r.err == nil {
		r.err = err
	}
	if adminPort != 0 {
		file := filepath.Join(profileDir, fmt.Sprintf("%s%s-%d.heap", tg.link, tg.mux, n))
		if err := saveURL(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/heap", adminPort), file); err != nil {
			b.Logf("heap profile of %s: %v", tg.name, err)
		}
		file = filepath.Join(profileDir, fmt.Sprintf("%s%s-%d.goroutines", tg.link, tg.mux, n))
		if err := saveURL(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/goroutine?debug=1", adminPort), file); err != nil {
			b.Logf("goroutine profile of %s: %v", tg.name, err)
		}
	}
	return r
}

// saveURL writes what url answers to file.
func saveURL(url, file string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(file, body, 0o644)
}

func agentTable(rows []agentRow) string {
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "server, link\tagents\tconnected\tall connected in\tserver RSS/agent\tvs upstream\tof which stacks\tgoroutines/agent\tvs upstream\t")
	upstream := map[int]agentRow{}
	for _, r := range rows {
		if r.target == "upstream ANP" && r.err == nil {
			upstream[r.agents] = r
		}
	}
	for _, r := range rows {
		if r.err != nil && r.connected == 0 {
			fmt.Fprintf(tw, "%s\t%d\t%d\t-\t-\t-\t-\t-\t-\t\n", r.target, r.agents, r.connected)
			continue
		}
		up, ok := upstream[r.agents]
		rssRatio, gRatio := "-", "-"
		if ok {
			rssRatio, gRatio = ratio(r.perAgentKiB(), up.perAgentKiB()), ratio(r.perAgentG(), up.perAgentG())
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%v\t%.1f KiB\t%s\t%.1f KiB\t%.2f\t%s\t\n", r.target, r.agents, r.connected,
			r.connect.Round(10*time.Millisecond), r.perAgentKiB(), rssRatio, r.perAgentStackKiB(), r.perAgentG(), gRatio)
	}
	tw.Flush()
	return sb.String()
}
