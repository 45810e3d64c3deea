// Package leasestest holds what the tests of package leases and the tests
// of its users against a real kube-apiserver share: a recorder of the log
// lines the Controller and the Counter write, to assert on them.
package leasestest

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Logs records log lines as "LEVEL msg k=v ...", with the record's own
// attributes only (those added by Logger.With are left out). It is safe for
// concurrent use.
type Logs struct {
	mu    sync.Mutex
	lines []string
}

// NewLogs returns a recorder whose lines are shown when t fails.
func NewLogs(t testing.TB) *Logs {
	t.Helper()
	l := &Logs{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", strings.Join(l.All(), "\n"))
		}
	})
	return l
}

// Logger writes into l.
func (l *Logs) Logger() *slog.Logger { return slog.New(l) }

// Enabled, WithAttrs, WithGroup and Handle make Logs a slog.Handler.
func (l *Logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *Logs) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *Logs) WithGroup(string) slog.Handler            { return l }
func (l *Logs) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	})
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}

// All returns every line recorded (and not taken) so far.
func (l *Logs) All() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// Take returns the lines recorded since the last Take and forgets them.
func (l *Logs) Take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.lines
	l.lines = nil
	return out
}

// Matching counts the lines (not taken) that contain every part.
func (l *Logs) Matching(parts ...string) int {
	n := 0
	for _, line := range l.All() {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			n++
		}
	}
	return n
}
