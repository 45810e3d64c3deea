package anp

import (
	"os"
	"sync"
	"time"
)

// queue holds DATA received for one connection until its reader takes it.
// push never blocks: the link's reader must not wait on one connection.
// Any number of goroutines may read or wait at once (net.Conn allows it):
// every change wakes them all.
type queue struct {
	mu       sync.Mutex
	bufs     [][]byte // FIFO; bufs[0] may be partly read (off)
	off      int
	n        int // bytes queued
	limit    int
	err      error // set once: why the queue ended (read after the data if keep)
	deadline time.Time
	waiters  int           // readers waiting on changed
	changed  chan struct{} // closed, and replaced, when something changes while readers wait
	space    chan struct{} // capacity 1: "the reader took data, or the queue ended" (for the pusher)
}

func newQueue(limit int) *queue {
	return &queue{limit: limit, changed: make(chan struct{}), space: make(chan struct{}, 1)}
}

func (q *queue) signalSpace() {
	select {
	case q.space <- struct{}{}:
	default:
	}
}

// broadcast wakes every waiting reader; q.mu is held.
func (q *queue) broadcast() {
	if q.waiters > 0 {
		close(q.changed)
		q.changed = make(chan struct{})
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
			q.broadcast()
			q.mu.Unlock()
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

// fail ends the queue: readers get err at once, and what is queued is
// dropped.
func (q *queue) fail(err error) { q.end(err, false) }

// end ends the queue with err; with keep, readers get what is queued
// first (the peer's close, a cut or the link's end after data that did
// arrive).
func (q *queue) end(err error, keep bool) {
	q.mu.Lock()
	if q.err == nil {
		q.err = err
		if !keep {
			q.bufs, q.off, q.n = nil, 0, 0
		}
		q.broadcast()
	}
	q.mu.Unlock()
	q.signalSpace()
}

func (q *queue) setDeadline(t time.Time) {
	q.mu.Lock()
	q.deadline = t
	q.broadcast()
	q.mu.Unlock()
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
			n := q.take(p)
			q.mu.Unlock()
			q.signalSpace()
			return n, nil
		}
		if err := q.block(&timer); err != nil {
			return 0, err
		}
	}
}

// wait waits until data or the queue's end can be read, or the read
// deadline passes, taking nothing (the reader then holds no buffer while
// the connection is idle). What ended the queue comes again from read.
func (q *queue) wait() error {
	var timer lazyTimer
	defer timer.stop()
	for {
		q.mu.Lock()
		if len(q.bufs) > 0 || q.err != nil {
			q.mu.Unlock()
			return nil
		}
		if err := q.block(&timer); err != nil {
			return err
		}
	}
}

// take copies queued data into p; q.mu is held and data is queued.
func (q *queue) take(p []byte) int {
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
	return n
}

// block is called with q.mu held and nothing queued. It returns the
// queue's end or the deadline's error, or nil (with q.mu released) once
// something changed.
func (q *queue) block(timer *lazyTimer) error {
	if q.err != nil {
		err := q.err
		q.mu.Unlock()
		return err
	}
	var timeout <-chan time.Time
	if !q.deadline.IsZero() {
		d := time.Until(q.deadline)
		if d <= 0 {
			q.mu.Unlock()
			return os.ErrDeadlineExceeded
		}
		timeout = timer.after(d)
	}
	q.waiters++
	changed := q.changed
	q.mu.Unlock()
	select {
	case <-changed:
	case <-timeout:
	}
	q.mu.Lock()
	q.waiters--
	q.mu.Unlock()
	return nil
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
