package integration

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
	"isthmus.dev/isthmus/demo"
)

// TestDemo runs what `make demo` runs, against the binaries under test, and
// checks that both requests crossed the tunnel and everything stopped.
func TestDemo(t *testing.T) {
	harness.LeakCheck(t)
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := demo.Run(ctx, demo.Options{BinDir: filepath.Dir(bins.ProxyServer), AgentPort: harness.FreePort(t), Out: &out})
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"CONNECT", "200 Connection established", "GET /via/http-connect -> 200 OK",
		"DIAL_RSP (connected)", "GET /via/grpc -> 200 OK",
		"agent reconnected", "proxy-agent stopped cleanly", "proxy-server stopped cleanly", "demo OK",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}
