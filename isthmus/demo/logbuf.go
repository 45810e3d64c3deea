package demo

import (
	"strings"
	"sync"
)

// logBuf keeps a daemon's output in memory for the narration.
type logBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// linesSince returns the complete lines written after offset.
func (l *logBuf) linesSince(offset int) []string {
	l.mu.Lock()
	s := l.b.String()
	l.mu.Unlock()
	if offset > len(s) {
		return nil
	}
	s = strings.TrimRight(s[offset:], "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}
