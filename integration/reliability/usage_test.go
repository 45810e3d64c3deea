package reliability

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Sample is what a daemon's /metrics says of its process.
type Sample struct {
	Goroutines float64 // go_goroutines
	FDs        float64 // process_open_fds
	RSS        float64 // process_resident_memory_bytes
	Heap       float64 // go_memstats_heap_inuse_bytes
}

func (s Sample) max(o Sample) Sample {
	return Sample{max(s.Goroutines, o.Goroutines), max(s.FDs, o.FDs), max(s.RSS, o.RSS), max(s.Heap, o.Heap)}
}

func (s Sample) String() string {
	return fmt.Sprintf("%.0f goroutines, %.0f fds, %.1f MiB RSS, %.1f MiB heap", s.Goroutines, s.FDs, mib(s.RSS), mib(s.Heap))
}

// Usage is a process before a load, at its peak and after it.
type Usage struct {
	Process             string
	Before, Peak, After Sample
}

// gauges reads the unlabelled samples of names from a Prometheus text
// page at url.
func gauges(c *http.Client, url string, names ...string) (map[string]float64, error) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	got := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || !want[f[0]] {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %w", url, sc.Text(), err)
		}
		got[f[0]] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, n := range names {
		if _, ok := got[n]; !ok {
			return nil, fmt.Errorf("%s has no %s", url, n)
		}
	}
	return got, nil
}

// gauge is one unlabelled sample of a /metrics page.
func gauge(c *http.Client, url, name string) (float64, error) {
	g, err := gauges(c, url, name)
	return g[name], err
}

// proc is a daemon whose usage a scenario watches.
type proc struct {
	name   string
	url    string // its /metrics
	gcURL  string // its /debug/pprof/heap?gc=1, which runs a garbage collection
	client *http.Client
}

func (p proc) sample() (Sample, error) {
	g, err := gauges(p.client, p.url, "go_goroutines", "process_open_fds", "process_resident_memory_bytes", "go_memstats_heap_inuse_bytes")
	if err != nil {
		return Sample{}, err
	}
	return Sample{g["go_goroutines"], g["process_open_fds"], g["process_resident_memory_bytes"], g["go_memstats_heap_inuse_bytes"]}, nil
}

// collected is a sample taken right after a garbage collection: its heap
// is what is live.
func (p proc) collected() (Sample, error) {
	resp, err := p.client.Get(p.gcURL)
	if err != nil {
		return Sample{}, fmt.Errorf("garbage collection through %s: %w", p.gcURL, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Sample{}, fmt.Errorf("garbage collection through %s: %s", p.gcURL, resp.Status)
	}
	return p.sample()
}

// watch samples processes every 250 ms from start to finish, for their
// peaks.
type watch struct {
	procs  []proc
	before []Sample
	mu     sync.Mutex
	peak   []Sample
	stop   chan struct{}
	done   chan struct{}
}

// startWatch takes each process's baseline and starts sampling.
func startWatch(t *testing.T, procs ...proc) *watch {
	t.Helper()
	u := &watch{procs: procs, stop: make(chan struct{}), done: make(chan struct{})}
	for _, p := range procs {
		s, err := p.collected()
		if err != nil {
			t.Fatalf("%s before the load: %v", p.name, err)
		}
		u.before = append(u.before, s)
	}
	u.peak = append([]Sample(nil), u.before...)
	go u.loop()
	t.Cleanup(u.end)
	return u
}

func (u *watch) loop() {
	defer close(u.done)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-u.stop:
			return
		case <-tick.C:
		}
		for i, p := range u.procs {
			if s, err := p.sample(); err == nil {
				u.mu.Lock()
				u.peak[i] = u.peak[i].max(s)
				u.mu.Unlock()
			}
		}
	}
}

func (u *watch) end() {
	select {
	case <-u.stop:
	default:
		close(u.stop)
	}
	<-u.done
}

// settleLimit is how long a process gets to return near its baseline.
const settleLimit = 90 * time.Second

// finish stops sampling and waits (up to settleLimit) for every process
// to be back near its baseline: goroutines within 10 (or 5%), descriptors
// within 5, and the live heap (after a collection) within 8 MiB or a
// quarter. Resident memory is recorded, not checked: the daemons under
// test are race-enabled builds, whose race detector keeps the shadow of
// every heap page ever used resident, and Go hands freed memory back to
// the system only slowly anyway. It records each process's before, peak
// and after in w, and fails w for a process that stays above.
func (u *watch) finish(t *testing.T, w *row) {
	t.Helper()
	u.end()
	deadline := time.Now().Add(settleLimit)
	for i, p := range u.procs {
		before, peak := u.before[i], u.peak[i]
		var after Sample
		var why string
		for {
			s, err := p.collected()
			if err == nil {
				after, why = s, nearBaseline(before, peak.max(s), s)
				if why == "" {
					break
				}
			} else {
				why = err.Error()
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		peak = peak.max(after)
		w.usage(Usage{Process: p.name, Before: before, Peak: peak, After: after})
		w.check(why == "", "%s not back near its baseline %v after the load: %s (peak %v)", p.name, settleLimit, why, peak)
	}
}

// nearBaseline says why after is not near before ("" when it is).
func nearBaseline(before, peak, after Sample) string {
	var why []string
	if after.Goroutines > before.Goroutines+max(10, before.Goroutines/20) {
		why = append(why, fmt.Sprintf("goroutines %.0f, baseline %.0f", after.Goroutines, before.Goroutines))
	}
	if after.FDs > before.FDs+5 {
		why = append(why, fmt.Sprintf("open fds %.0f, baseline %.0f", after.FDs, before.FDs))
	}
	if after.Heap > before.Heap+max(8<<20, before.Heap/4) {
		why = append(why, fmt.Sprintf("live heap %.1f MiB, baseline %.1f MiB, peak %.1f MiB", mib(after.Heap), mib(before.Heap), mib(peak.Heap)))
	}
	return strings.Join(why, "; ")
}
