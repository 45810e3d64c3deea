package anp

import (
	"io"
	"os"
	"sync"
	"time"
)

// queue holds DATA received for one connection until its reader takes it.
// push never blocks: the link's reader must not wait on one connection.
type queue struct {
	mu       sync.Mutex
	bufs     [][]byte // FIFO; bufs[0] may be partly read (off)
	off      int
	n        int // bytes queued
	limit    int
	err      error // set once: io.EOF, net.ErrClosed, or why the conn died
	deadline time.Time
	wake     chan struct{} // capacity 1: "something changed" (for the reader)
	space    chan struct{} // capacity 1: "the reader took data, or the queue ended" (for the pusher)
}

func newQueue(limit int) *queue {
	return &queue{limit: limit, wake: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

func (q *queue) signalSpace() {
	select {
	case q.space <- struct{}{}:
	default:
	}
}

func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// push queues b. When b does not fit under the limit, push waits for the
// reader to take data, for as long as the reader keeps taking some at least
// every stall; it reports false when the reader stalled that long (the
// caller then closes the connection), and true once b is queued, or dropped
// because the queue ended or done closed. A queue that is empty takes b
// whatever its size.
func (q *queue) push(b []byte, stall time.Duration, done <-chan struct{}) bool {
	if len(b) == 0 {
		return true
	}
	var timer lazyTimer
	defer timer.stop()
	for {
		q.mu.Lock()
		if q.err != nil {
			q.mu.Unlock()
			return true
		}
		if q.n == 0 || q.n+len(b) <= q.limit {
			q.bufs = append(q.bufs, b)
			q.n += len(b)
			q.mu.Unlock()
			q.signal()
			return true
		}
		q.mu.Unlock()
		if stall <= 0 {
			return false
		}
		select {
		case <-q.space: // progress: try again, with a fresh stall bound
		case <-timer.after(stall):
			return false
		case <-done:
			return true
		}
	}
}

// fail ends the queue: readers get err once the queued data is read (io.EOF)
// or at once (any other error drops what is queued).
func (q *queue) fail(err error) {
	q.mu.Lock()
	if q.err == nil {
		q.err = err
		if err != io.EOF {
			q.bufs, q.off, q.n = nil, 0, 0
		}
	}
	q.mu.Unlock()
	q.signal()
	q.signalSpace()
}

func (q *queue) setDeadline(t time.Time) {
	q.mu.Lock()
	q.deadline = t
	q.mu.Unlock()
	q.signal()
}

func (q *queue) read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var timer lazyTimer
	defer timer.stop()
	for {
		q.mu.Lock()
		if len(q.bufs) > 0 {
			n := 0
			for n < len(p) && len(q.bufs) > 0 {
				c := copy(p[n:], q.bufs[0][q.off:])
				n += c
				q.off += c
				if q.off == len(q.bufs[0]) {
					q.bufs[0] = nil
					q.bufs = q.bufs[1:]
					q.off = 0
				}
			}
			q.n -= n
			if len(q.bufs) == 0 {
				q.bufs = nil // let the backing array go
			}
			q.mu.Unlock()
			q.signalSpace()
			return n, nil
		}
		if q.err != nil {
			err := q.err
			q.mu.Unlock()
			return 0, err
		}
		var timeout <-chan time.Time
		if !q.deadline.IsZero() {
			d := time.Until(q.deadline)
			if d <= 0 {
				q.mu.Unlock()
				return 0, os.ErrDeadlineExceeded
			}
			timeout = timer.after(d)
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-timeout:
		}
	}
}

// lazyTimer is a timer made at first use, reset at each later one.
type lazyTimer struct{ t *time.Timer }

func (l *lazyTimer) after(d time.Duration) <-chan time.Time {
	if l.t == nil {
		l.t = time.NewTimer(d)
	} else {
		l.t.Reset(d)
	}
	return l.t.C
}

func (l *lazyTimer) stop() {
	if l.t != nil {
		l.t.Stop()
	}
}
