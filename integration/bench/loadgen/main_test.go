package main

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"
)

// startServe serves the bench's requests on a loopback port until the test
// ends.
func startServe(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { defer c.Close(); serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// TestOperations runs every client operation directly against the backend
// and checks what each reports.
func TestOperations(t *testing.T) {
	addr := startServe(t)
	o := clientOpts{via: "direct", backend: addr, bytes: 4 << 20, count: 20, conns: 20, seconds: 0.3, concurrency: 5, setupTimeout: 20 * time.Second}
	dial, err := dialer(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, name := range []string{"up", "down", "echo", "dials", "rr", "idle", "hol"} {
		t.Run(name, func(t *testing.T) {
			o := o
			o.op = name
			op, err := newOperation(o)
			if err != nil {
				t.Fatal(err)
			}
			ready, err := op.prepare(ctx, dial)
			defer op.close()
			if err != nil {
				t.Fatal(err)
			}
			if ready.Failed != 0 {
				t.Fatalf("%d dials failed, first: %s", ready.Failed, ready.FirstError)
			}
			r, err := op.run(ctx, dial)
			if err != nil {
				t.Fatal(err)
			}
			switch name {
			case "up", "down", "echo":
				if r.MBps <= 0 || r.Seconds <= 0 {
					t.Errorf("%+v: want a rate", r)
				}
			case "dials":
				if len(r.Latencies) != o.count || r.Errors != 0 {
					t.Errorf("%d latencies, %d errors (%s), want %d and none", len(r.Latencies), r.Errors, r.FirstError, o.count)
				}
			case "rr":
				if ready.Conns != o.conns || r.Trips < o.conns || r.Errors != 0 || r.P99 <= 0 {
					t.Errorf("ready %+v, result %+v: want %d connections each with round trips, no errors", ready, r, o.conns)
				}
			case "idle":
				if ready.Conns != o.conns {
					t.Errorf("%d connections opened, want %d", ready.Conns, o.conns)
				}
			case "hol":
				if r.Trips == 0 || r.Gap <= 0 || r.Gap < r.P99 {
					t.Errorf("%+v: want round trips of B, and a longest gap at least its p99", r)
				}
			}
		})
	}
}

// TestBadRequests: the backend ignores what it does not understand, and a
// client without its flags says what is missing.
func TestBadRequests(t *testing.T) {
	addr := startServe(t)
	for _, hdr := range [][]byte{header('?', 1), header('E', 0), header('E', 1<<30)} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(hdr); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if n, err := c.Read(b[:]); err == nil || n != 0 {
			t.Errorf("request %q: read %d bytes, %v; want the backend to close", hdr, n, err)
		}
		c.Close()
	}
	if _, err := dialer(clientOpts{via: "connect", backend: addr}); err == nil {
		t.Error("--via=connect without --proxy: no error")
	}
	if _, err := dialer(clientOpts{via: "carrier-pigeon", backend: addr}); err == nil {
		t.Error("--via=carrier-pigeon: no error")
	}
	if _, err := newOperation(clientOpts{op: "teleport"}); err == nil {
		t.Error("--op=teleport: no error")
	}
}
