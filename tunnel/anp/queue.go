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
	wake     chan struct{} // capacity 1: "something changed"
}

func newQueue(limit int) *queue {
	return &queue{limit: limit, wake: make(chan struct{}, 1)}
}

func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// push queues b. It reports false when b does not fit under the limit; the
// caller then closes the connection. Data for a closed queue is dropped.
func (q *queue) push(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return true
	}
	if q.n+len(b) > q.limit {
		return false
	}
	q.bufs = append(q.bufs, b)
	q.n += len(b)
	q.signal()
	return true
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
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
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
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			timeout = timer.C
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-timeout:
		}
	}
}
