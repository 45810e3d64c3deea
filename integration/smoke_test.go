package integration

import (
	"bytes"
	"context"
	"fmt"
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

// TestNativeMux: the daemons run the session layer --native-mux names,
// and either end may run either: 20 connections at once each echo 1 MiB
// byte-exact through the real server and agent, for the prototype at both
// ends and for each mix with yamux.
func TestNativeMux(t *testing.T) {
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	for _, v := range []struct{ server, agent string }{{"isthmus", "isthmus"}, {"isthmus", "yamux"}, {"yamux", "isthmus"}} {
		t.Run("server-"+v.server+"/agent-"+v.agent, func(t *testing.T) {
			harness.LeakCheck(t)
			s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.HTTPConnect, Transport: harness.UDS, Extra: []string{"--native-mux=" + v.server}})
			a := harness.StartAgent(t, bins, s, harness.AgentOpts{Extra: []string{"--native-mux=" + v.agent}})
			a.WaitReady(t)
			s.WaitReady(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			errs := make(chan error, 20)
			for i := range 20 {
				go func() {
					errs <- func() error {
						c, err := s.Dial(ctx, echo.Addr())
						if err != nil {
							return fmt.Errorf("dial: %w", err)
						}
						defer c.Close()
						stop := context.AfterFunc(ctx, func() { c.Close() })
						defer stop()
						msg := bytes.Repeat([]byte{byte(i)}, 1<<20)
						werr := make(chan error, 1)
						go func() { _, err := c.Write(msg); werr <- err }()
						got := make([]byte, len(msg))
						if _, err := io.ReadFull(c, got); err != nil {
							return fmt.Errorf("read the echo: %w", err)
						}
						if err := <-werr; err != nil {
							return fmt.Errorf("write: %w", err)
						}
						if !bytes.Equal(got, msg) {
							return fmt.Errorf("connection %d: the echo differs", i)
						}
						return nil
					}()
				}()
			}
			for range 20 {
				if err := <-errs; err != nil {
					t.Error(err)
				}
			}
		})
	}
}
