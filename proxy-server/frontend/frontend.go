// Package frontend serves the clients of proxy-server (kube-apiserver and
// anything else using konnectivity-client or HTTP CONNECT). A frontend only
// parses its protocol and asks a Dialer for the tunneled connection.
package frontend

import (
	"context"
	"net"
	"sync"
	"time"
)

// Dialer gives a tunneled connection to address ("host:port").
type Dialer interface {
	Dial(ctx context.Context, address string) (net.Conn, error)
}

// DefaultDialTimeout bounds a dial through the tunnel when the caller gives
// no shorter deadline.
const DefaultDialTimeout = 15 * time.Second

// Tracker counts live frontend connections, for graceful shutdown and
// metrics. The zero value is ready to use.
type Tracker struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0
}

// Add counts one connection in; the returned func counts it out.
func (t *Tracker) Add() (done func()) {
	t.mu.Lock()
	t.n++
	t.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			t.mu.Lock()
			t.n--
			if t.n == 0 && t.idle != nil {
				close(t.idle)
				t.idle = nil
			}
			t.mu.Unlock()
		})
	}
}

// Len is the number of live connections.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

// Wait blocks until no connection is live or ctx ends.
func (t *Tracker) Wait(ctx context.Context) error {
	t.mu.Lock()
	if t.n == 0 {
		t.mu.Unlock()
		return nil
	}
	if t.idle == nil {
		t.idle = make(chan struct{})
	}
	idle := t.idle
	t.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
