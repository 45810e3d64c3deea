package harness

import (
	"fmt"
	"os"
	"sync"
	"testing"
)

// Shared is a fixture made once per test process, by the first test that
// asks for it, and shared by every test that asks after (run them with
// t.Parallel). It lives in the package scope, not in that first test: its
// processes, files and other cleanups end when Main has run every test.
// A fixture that failed to start fails (or skips) every test that asks.
type Shared[T any] struct {
	once  sync.Once
	val   T
	abort *scopeAbort
}

// Get returns the fixture, making it with start on the first call. start
// gets the package scope's testing.TB: its Cleanup runs after the last
// test, its Fatal and Skip end start (and fail or skip the asking test).
func (s *Shared[T]) Get(t testing.TB, start func(testing.TB) T) T {
	t.Helper()
	s.once.Do(func() {
		defer func() {
			if r := recover(); r != nil {
				a, ok := r.(scopeAbort)
				if !ok {
					panic(r)
				}
				s.abort = &a
			}
		}()
		s.val = start(pkgScope)
	})
	if s.abort != nil {
		if s.abort.skip {
			t.Skip("shared fixture: " + s.abort.msg)
		}
		t.Fatal("shared fixture failed to start: " + s.abort.msg)
	}
	return s.val
}

// pkgScope is the testing.TB of Shared fixtures; Main ends it.
var pkgScope = &scope{}

// scopeAbort is how Fatal and Skip in the package scope end a start func.
type scopeAbort struct {
	msg  string
	skip bool
}

// scope implements the testing.TB methods the harness calls. The embedded
// interface is nil: any other method panics, which a harness change that
// needs it will see at once.
type scope struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	failed   bool
	logs     []string
}

func (s *scope) Helper()      {}
func (s *scope) Name() string { return "shared-fixtures" }

func (s *scope) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, f)
}

func (s *scope) Logf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logs = append(s.logs, fmt.Sprintf(format, args...))
}

func (s *scope) Log(args ...any) { s.Logf("%s", fmt.Sprint(args...)) }

// Errorf marks the scope failed: Main then fails the run and prints the
// scope's log.
func (s *scope) Errorf(format string, args ...any) {
	s.Logf(format, args...)
	s.mu.Lock()
	s.failed = true
	s.mu.Unlock()
}

func (s *scope) Error(args ...any) { s.Errorf("%s", fmt.Sprint(args...)) }

func (s *scope) Failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

func (s *scope) Fatalf(format string, args ...any) {
	panic(scopeAbort{msg: fmt.Sprintf(format, args...)})
}

func (s *scope) Fatal(args ...any) { panic(scopeAbort{msg: fmt.Sprint(args...)}) }
func (s *scope) FailNow()          { panic(scopeAbort{msg: "FailNow"}) }
func (s *scope) Skipf(format string, args ...any) {
	panic(scopeAbort{msg: fmt.Sprintf(format, args...), skip: true})
}
func (s *scope) Skip(args ...any) { panic(scopeAbort{msg: fmt.Sprint(args...), skip: true}) }
func (s *scope) SkipNow()         { panic(scopeAbort{msg: "SkipNow", skip: true}) }

// TempDir is a new directory removed when the scope ends.
func (s *scope) TempDir() string {
	dir, err := os.MkdirTemp("", "isthmus-shared-")
	if err != nil {
		s.Fatalf("shared fixture temp dir: %v", err)
	}
	s.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// end runs the cleanups, last registered first, and reports whether the
// scope stayed clean; its log goes to stderr when it did not.
func (s *scope) end() bool {
	s.mu.Lock()
	cleanups := s.cleanups
	s.cleanups = nil
	s.mu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	if !s.Failed() {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.logs {
		fmt.Fprintln(os.Stderr, l)
	}
	return false
}
