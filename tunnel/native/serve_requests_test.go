package native

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/link/linktest"
)

// ServeRequests runs the handler for every dial (with yamux, whose dial
// header comes after the SYN, and with package mux, whose comes with it),
// and returns, once the link ended, only after every call has returned.
func TestServeRequests(t *testing.T) {
	for _, mux := range []string{MuxYamux, MuxIsthmus} {
		t.Run(mux, func(t *testing.T) {
			so := opts
			so.Config.Mux = mux
			e := connect(t, so, AgentOptions{Config: Config{Mux: mux}}, nil)
			echo := linktest.StartBackend(t, linktest.Echo)
			var running, calls atomic.Int32
			served := make(chan struct{})
			go func() {
				defer close(served)
				e.agent.ServeRequests(context.Background(), func(r link.Request) {
					calls.Add(1)
					running.Add(1)
					defer running.Add(-1)
					linktest.ServeOne(r, linktest.LoopbackDial)
				})
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			const dials = 5
			for i := range dials {
				c, err := e.server.Dial(ctx, echo.Addr())
				if err != nil {
					t.Fatalf("dial %d: %v", i, err)
				}
				if _, err := c.Write([]byte("ping")); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 4)
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Read(buf); err != nil || string(buf) != "ping" {
					t.Fatalf("dial %d: echo %q, %v", i, buf, err)
				}
				if i < dials-1 {
					_ = c.Close()
				} // the last stays open: the link's end must end its handler
			}
			e.close()
			select {
			case <-served:
			case <-time.After(20 * time.Second):
				t.Fatal("ServeRequests did not return after the link ended")
			}
			if n := running.Load(); n != 0 {
				t.Fatalf("ServeRequests returned with %d handler calls under way", n)
			}
			if n := calls.Load(); n != dials {
				t.Fatalf("handler called %d times for %d dials", n, dials)
			}
		})
	}
}
