//go:build linux

package idle

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// poller waits for idle sockets to become readable on one epoll
// instance, so that an idle connection needs no goroutine parked in Go's
// poller. Its one goroutine runs only while some socket waits.
//
// Each wait is one-shot and level-triggered: re-arming a socket that
// already has bytes (they came between the read that found none and the
// re-arm) fires at once, so no wake-up is lost. A closed socket leaves
// the epoll set by itself; whoever closes it cancels its wait, since no
// event will come for it.
type poller struct {
	mu      sync.Mutex
	epfd    int // 0 until first used
	wakefd  int // an eventfd that wakes the loop to see it has nothing left
	waiters map[uint64]func()
	next    uint64 // tokens: 0 is the wake-up's, never a waiter's
	running bool
}

var epoll poller

// Supported: this system has the epoll set.
const Supported = true

// Wait arranges for f to be called once, on the epoll set's goroutine, when
// rc's socket is readable, hung up or failed; f must not block (it starts
// the reader's goroutine). added is the caller's record, one per socket, of
// whether the socket is in the epoll set already (Wait sets it). Wait
// returns the wait's token, for Cancel, and ok. Not ok with no error: the
// epoll set failed for this socket (said once per process in the log);
// its reader should stay in Go's poller from now on. An error: the socket
// is closed.
func Wait(rc syscall.RawConn, added *bool, f func()) (tok uint64, ok bool, err error) {
	tok, err = epoll.wait(rc, added, f)
	if err == nil {
		return tok, true, nil
	}
	if cerr := rc.Control(func(uintptr) {}); cerr != nil {
		return 0, false, cerr // closed
	}
	logFailed(err)
	return 0, false, nil
}

// Cancel takes back the wait tok, for a socket closed under it; it reports
// false if its event came first (then its callback runs, or ran).
func Cancel(tok uint64) bool { return epoll.cancel(tok) }

// Waiting is the number of sockets waiting in the epoll set.
func Waiting() int { return epoll.waiting() }

// setup creates the epoll instance and the wake-up; p.mu is held.
func (p *poller) setup() error {
	if p.epfd != 0 {
		return nil
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("idle: epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return fmt.Errorf("idle: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN} // token 0
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(wakefd)
		return fmt.Errorf("idle: epoll_ctl of the wake-up: %w", err)
	}
	p.epfd, p.wakefd, p.waiters = epfd, wakefd, make(map[uint64]func())
	return nil
}

// wait arranges for f to be called once rc's socket is readable (or hung
// up, or failed). added says whether the socket is in the epoll set
// already (wait sets it). It returns the wait's token, for cancel; an
// error if the socket is closed or epoll fails.
func (p *poller) wait(rc syscall.RawConn, added *bool, f func()) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.setup(); err != nil {
		return 0, err
	}
	p.next++
	tok := p.next
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(tok)), Pad: int32(uint32(tok >> 32))}
	var cerr error
	// Under Control the descriptor cannot be closed (and its number
	// reused) while epoll_ctl runs.
	err := rc.Control(func(fd uintptr) {
		op := unix.EPOLL_CTL_MOD
		if !*added {
			op = unix.EPOLL_CTL_ADD
		}
		cerr = unix.EpollCtl(p.epfd, op, int(fd), &ev)
		if cerr == nil {
			*added = true
		}
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	p.waiters[tok] = f
	if !p.running {
		p.running = true
		go p.loop(p.epfd)
	}
	return tok, nil
}

// cancel takes back the wait tok; it reports false if its event came
// first (then its callback runs, or ran).
func (p *poller) cancel(tok uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.waiters[tok]; !ok {
		return false
	}
	delete(p.waiters, tok)
	if len(p.waiters) == 0 && p.running {
		// Wake the loop so that it ends: nothing is left to wait for.
		var one = [8]byte{1}
		_, _ = unix.Write(p.wakefd, one[:])
	}
	return true
}

// waiting is the number of sockets waiting.
func (p *poller) waiting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.waiters)
}

// loop calls the callbacks of the sockets that became readable, until
// none waits.
func (p *poller) loop(epfd int) {
	events := make([]unix.EpollEvent, 128)
	var ready []func()
	for {
		n, err := unix.EpollWait(epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		p.mu.Lock()
		if err != nil {
			// Should not happen; if it does, wake every waiter: each
			// reads its socket, finds it idle and waits again (a new
			// loop, which may fail the same way and say so again).
			slog.Error("idle: epoll_wait failed; idle connections are woken and wait again (nothing lost). If this repeats, report it with this error", "err", err)
			for tok, f := range p.waiters {
				delete(p.waiters, tok)
				ready = append(ready, f)
			}
		}
		for _, ev := range events[:n] {
			tok := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if tok == 0 {
				var b [8]byte
				_, _ = unix.Read(p.wakefd, b[:])
				continue
			}
			if f, ok := p.waiters[tok]; ok {
				delete(p.waiters, tok)
				ready = append(ready, f)
			}
		}
		stop := len(p.waiters) == 0
		if stop {
			p.running = false
		}
		p.mu.Unlock()
		for i, f := range ready {
			f()
			ready[i] = nil
		}
		ready = ready[:0]
		if stop {
			return
		}
	}
}
