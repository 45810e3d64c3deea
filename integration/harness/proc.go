package harness

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Proc is a daemon started by a test. Its output is kept and shown when the
// test fails; it is killed and reaped at cleanup.
type Proc struct {
	Name string
	// DumpOnFailure: at the cleanup of a failed test the process is sent
	// SIGQUIT before it is killed, so that a Go program prints the stack
	// of every goroutine: where it was stuck.
	DumpOnFailure bool
	t             testing.TB
	cmd           *exec.Cmd
	out           *SyncBuffer
	done          chan struct{}
	err           error
}

// SyncBuffer is a bytes.Buffer that many goroutines may write and read.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start runs bin with args. The process is killed at test cleanup, and its
// output is logged if the test failed or the process reported a data race.
func Start(t testing.TB, name, bin string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Name: name, t: t, out: &SyncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		lines := 200
		if t.Failed() && p.DumpOnFailure {
			select {
			case <-p.done:
			default:
				p.Signal(syscall.SIGQUIT)
				_ = p.Wait(5 * time.Second)
				lines = 1000
			}
		}
		p.Kill()
		out := checkSecrets(t, name, p.out.String()) // masked, if it held any
		if strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race:\n%s", name, out)
		} else if t.Failed() {
			t.Logf("--- output of %s (%s):\n%s", name, p.cmd, tail(out, lines))
		}
	})
	return p
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = append([]string{fmt.Sprintf("[... %d lines cut]", len(l)-lines)}, l[len(l)-lines:]...)
	}
	return strings.Join(l, "\n")
}

// Output is what the process printed so far.
func (p *Proc) Output() string { return p.out.String() }

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig.
func (p *Proc) Signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// Exited is closed when the process has ended.
func (p *Proc) Exited() <-chan struct{} { return p.done }

// Wait waits up to d for the process to end and returns its exit error.
func (p *Proc) Wait(d time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		return fmt.Errorf("%s still running after %v", p.Name, d)
	}
}

// Stop sends SIGTERM and waits up to d, then kills.
func (p *Proc) Stop(d time.Duration) error {
	p.Signal(syscall.SIGTERM)
	if err := p.Wait(d); err != nil && !isSignalExit(err) {
		p.Kill()
		return err
	}
	return nil
}

func isSignalExit(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && !ee.Exited()
}

// Kill kills the process and reaps it.
func (p *Proc) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// FreePort returns a TCP port free on 127.0.0.1 at the time of the call,
// and never one it returned before in this test process: the kernel may
// hand the same free port out twice in a row (seen as a server started with
// the same --health-port and --admin-port).
func FreePort(t testing.TB) int {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		givenMu.Lock()
		seen := givenPorts[port]
		givenPorts[port] = true
		givenMu.Unlock()
		if !seen {
			return port
		}
	}
	t.Fatal("FreePort: no port not handed out before after 100 tries")
	return 0
}

var (
	givenMu    sync.Mutex
	givenPorts = map[int]bool{}
)

// WaitFor polls cond every 20 ms until it holds or d passes.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// HTTPStatus GETs url and returns the status code, or 0 on error.
func HTTPStatus(url string) int {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
