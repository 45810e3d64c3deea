package harness

import (
	"bufio"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Upstream's proxy-server refuses ports outside 1024-49151 ("please do not
// try to use ephemeral port ..."), and Linux hands out ephemeral ports from
// 32768 up. FreeRegisteredPort picks a port below the ephemeral range, where
// neither the kernel nor FreePort hands ports out to others.
const (
	registeredLow  = 20000
	registeredHigh = 32767
)

// FreeRegisteredPort returns a TCP port in 20000-32767 that is free on
// 127.0.0.1 at the time of the call.
func FreeRegisteredPort(t testing.TB) int {
	t.Helper()
	for range 500 {
		p := registeredLow + rand.IntN(registeredHigh-registeredLow+1)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		_ = ln.Close()
		return p
	}
	t.Fatalf("no free port in %d-%d after 500 tries", registeredLow, registeredHigh)
	return 0
}

// freePortFor picks the port chooser that impl's server accepts.
func freePortFor(impl Impl) func(testing.TB) int {
	if impl == Upstream {
		return FreeRegisteredPort
	}
	return FreePort
}

// Metric reads the first sample of the Prometheus metric name (exact name,
// any labels) from url (a /metrics page). ok is false when the page could
// not be read or has no such sample.
func Metric(url, name string) (value float64, ok bool) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, false
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		rest, found := strings.CutPrefix(line, name)
		if !found || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			rest = rest[end+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		return v, true
	}
	return 0, false
}

// MetricsURL is the agent's /metrics on its health port (both
// implementations serve it there).
func (a *Agent) MetricsURL() string {
	return "http://127.0.0.1:" + strconv.Itoa(a.HealthPort) + "/metrics"
}

// MetricsURL is the server's /metrics on its health port (both
// implementations serve it there).
func (s *Server) MetricsURL() string {
	return "http://127.0.0.1:" + strconv.Itoa(s.HealthPort) + "/metrics"
}
