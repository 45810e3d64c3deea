package integration

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
)

// TestFrontendsAndTransports runs one echo exchange through every frontend
// on every transport, with our server and our agent.
func TestFrontendsAndTransports(t *testing.T) {
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	for _, mode := range []string{harness.GRPC, harness.HTTPConnect} {
		for _, tr := range []string{harness.UDS, harness.TCP} {
			t.Run(mode+"/"+tr, func(t *testing.T) {
				harness.LeakCheck(t)
				s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: mode, Transport: tr})
				a := harness.StartAgent(t, bins, s, harness.AgentOpts{})
				a.WaitReady(t)
				s.WaitReady(t)
				// Between isthmus peers the native link is the default.
				if !strings.Contains(s.Output(), "link=native") || !strings.Contains(a.Output(), "link=native") {
					t.Fatalf("our agent and server did not pick the native link:\n%s\n%s", s.Output(), a.Output())
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				c, err := s.Dial(ctx, echo.Addr())
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				defer c.Close()
				msg := []byte("hello through " + mode + " over " + tr)
				if _, err := c.Write(msg); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(c, got); err != nil {
					t.Fatal(err)
				}
				if string(got) != string(msg) {
					t.Fatalf("echo: got %q want %q", got, msg)
				}
			})
		}
	}
}
