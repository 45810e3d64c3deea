package reliability

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Row is one line of the reliability table: a scenario on one link and
// frontend, what it checked, how it went, and what it measured.
type Row struct {
	Scenario string
	Link     string // native or anp
	Frontend string // grpc or http-connect
	Checked  string
	Result   string // "ok", or the first failure
	Figures  []string
	Usage    []Usage // the load tests: processes before, at peak, after
}

func (r Row) key() string { return r.Scenario + "|" + r.Link + "|" + r.Frontend }

// row is a Row being filled by a running scenario: its checks fail the
// test and keep the first failure for the table.
type row struct {
	t  *testing.T
	mu sync.Mutex
	r  Row
}

func newRow(t *testing.T, scenario, link, frontend, checked string) *row {
	return &row{t: t, r: Row{Scenario: scenario, Link: link, Frontend: frontend, Checked: checked}}
}

// check fails the test (and the row) unless ok.
func (w *row) check(ok bool, format string, args ...any) bool {
	w.t.Helper()
	if ok {
		return true
	}
	msg := fmt.Sprintf(format, args...)
	w.t.Error(msg)
	w.mu.Lock()
	if w.r.Result == "" {
		w.r.Result = "FAIL: " + msg
	}
	w.mu.Unlock()
	return false
}

// figure records a measured value.
func (w *row) figure(format string, args ...any) {
	w.mu.Lock()
	w.r.Figures = append(w.r.Figures, fmt.Sprintf(format, args...))
	w.mu.Unlock()
}

func (w *row) usage(u Usage) {
	w.mu.Lock()
	w.r.Usage = append(w.r.Usage, u)
	w.mu.Unlock()
}

// done is the finished row; a test that failed without a check (a Fatal
// in the set-up) is a failure too.
func (w *row) done() Row {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.r
	switch {
	case r.Result == "" && w.t.Failed():
		r.Result = "FAIL (see the test log)"
	case r.Result == "":
		r.Result = "ok"
	}
	return r
}

// scenario is what the tests and the soak run: it fills a row.
type scenario struct {
	name     string
	link     string
	frontend string
	run      func(t *testing.T, w *row, o opts)
}

// opts scale a scenario: the short version for `make test`, the long one
// for the soak.
type opts struct {
	long bool
}

// runScenario runs sc as a parallel subtest of t and hands its row to out
// once it has ended (its cleanups run: processes and namespaces gone).
func runScenario(t *testing.T, sc scenario, o opts, out func(Row)) {
	name := sc.name
	if sc.link != "" {
		name += "/" + sc.link
	}
	if sc.frontend != "" {
		name += "/" + sc.frontend
	}
	t.Run(name, func(t *testing.T) {
		t.Parallel()
		w := newRow(t, sc.name, sc.link, sc.frontend, "")
		t.Cleanup(func() {
			r := w.done()
			t.Logf("row: %s | %s", r.Result, strings.Join(r.Figures, "; "))
			out(r)
		})
		sc.run(t, w, o)
	})
}

// tally is the soak's table: the rows of every round, by scenario.
type tally struct {
	mu    sync.Mutex
	order []string
	rows  map[string]*tallied
}

type tallied struct {
	last   Row
	runs   int
	failed int
	fails  []string
	peak   map[string]Sample // highest peak of each process over the runs
}

func (ta *tally) add(r Row) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	if ta.rows == nil {
		ta.rows = map[string]*tallied{}
	}
	k := r.key()
	e, ok := ta.rows[k]
	if !ok {
		e = &tallied{peak: map[string]Sample{}}
		ta.rows[k] = e
		ta.order = append(ta.order, k)
	}
	e.runs++
	if r.Result != "ok" {
		e.failed++
		if len(e.fails) < 3 {
			e.fails = append(e.fails, r.Result)
		}
	}
	for _, u := range r.Usage {
		e.peak[u.Process] = e.peak[u.Process].max(u.Peak)
	}
	e.last = r
}

// render prints the table of done-when 2: each fault, what was checked,
// the result; the load tests with goroutines, descriptors and RSS before,
// at peak and after.
func (ta *tally) render(elapsed time.Duration) string {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	keys := append([]string(nil), ta.order...)
	sort.SliceStable(keys, func(i, j int) bool { return ta.rows[keys[i]].last.Scenario < ta.rows[keys[j]].last.Scenario })
	var b strings.Builder
	fmt.Fprintf(&b, "\nReliability: faults and load (%v)\n\n", elapsed.Round(time.Second))
	b.WriteString("| scenario | link | frontend | checked | runs | result | figures (last run) |\n|---|---|---|---|---|---|---|\n")
	for _, k := range keys {
		e := ta.rows[k]
		res := "ok"
		if e.failed > 0 {
			res = fmt.Sprintf("%d of %d FAILED: %s", e.failed, e.runs, strings.Join(e.fails, " / "))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %s | %s |\n", e.last.Scenario, dash(e.last.Link), dash(e.last.Frontend),
			e.last.Checked, e.runs, res, strings.Join(e.last.Figures, "; "))
	}
	b.WriteString("\nLoad: the processes' go_goroutines, process_open_fds and process_resident_memory_bytes (last run; peak: highest of all runs)\n\n")
	b.WriteString("| scenario | link | frontend | process | goroutines before / peak / after | fds before / peak / after | RSS MiB before / peak / after |\n|---|---|---|---|---|---|---|\n")
	for _, k := range keys {
		e := ta.rows[k]
		for _, u := range e.last.Usage {
			p := e.peak[u.Process]
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %.0f / %.0f / %.0f | %.0f / %.0f / %.0f | %.1f / %.1f / %.1f |\n",
				e.last.Scenario, dash(e.last.Link), dash(e.last.Frontend), u.Process,
				u.Before.Goroutines, p.Goroutines, u.After.Goroutines, u.Before.FDs, p.FDs, u.After.FDs,
				mib(u.Before.RSS), mib(p.RSS), mib(u.After.RSS))
		}
	}
	return b.String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func mib(b float64) float64 { return b / (1 << 20) }
