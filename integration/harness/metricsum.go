package harness

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// MetricSum reads url (a Prometheus text /metrics page) and returns the sum
// of the samples of the metric name whose labels include every labels pair
// ("key", "value", "key2", "value2", ...). A metric with no matching sample
// sums to 0; err is set only when the page cannot be read.
func MetricSum(url, name string, labels ...string) (float64, error) {
	if len(labels)%2 != 0 {
		return 0, fmt.Errorf("MetricSum: labels must be key, value pairs, got %q", labels)
	}
	want := make([]string, 0, len(labels)/2)
	for i := 0; i < len(labels); i += 2 {
		want = append(want, labels[i]+"="+strconv.Quote(labels[i+1]))
	}
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		var lbls []string
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			// Label values of our metrics hold no commas or quotes.
			lbls = strings.Split(rest[1:end], ",")
			rest = rest[end+1:]
		}
		match := true
		for _, w := range want {
			found := false
			for _, l := range lbls {
				if l == w {
					found = true
					break
				}
			}
			if !found {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		sum += v
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return sum, nil
}

// WaitMetric polls MetricSum until it equals want or d passes.
func WaitMetric(t testing.TB, d time.Duration, url, name string, want float64, labels ...string) {
	t.Helper()
	var last float64
	var lastErr error
	deadline := time.Now().Add(d)
	for {
		last, lastErr = MetricSum(url, name, labels...)
		if lastErr == nil && last == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s%v == %v at %s: last %v (err %v)", d, name, labels, want, url, last, lastErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
