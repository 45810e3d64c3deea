package limits

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestHitCountsEveryHitAndLogsAFew(t *testing.T) {
	var buf bytes.Buffer
	reg := prometheus.NewRegistry()
	h, err := New(Config{Registerer: reg, Subsystem: "server", Limits: ServerLimits,
		Log: slog.New(slog.NewTextHandler(&buf, nil)), Every: time.Hour, Burst: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		h.Hit(PendingDialsAgent, "dial refused", "agent", "a1", "i", i)
	}
	if n := testutil.ToFloat64(h.counter.WithLabelValues(PendingDialsAgent)); n != 1000 {
		t.Fatalf("counted %v hits, want 1000", n)
	}
	if n := strings.Count(buf.String(), "\n"); n != 2 {
		t.Fatalf("%d log lines for a flood of 1000 hits, want 2 (the burst):\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "limit="+PendingDialsAgent) {
		t.Fatalf("log line does not name the limit: %s", buf.String())
	}
	// Every label is there from the start, at 0.
	if n, err := testutil.GatherAndCount(reg, "konnectivity_network_proxy_server_limit_hits_total"); err != nil || n != len(ServerLimits) {
		t.Fatalf("%d series (%v), want %d", n, err, len(ServerLimits))
	}
}

func TestRateLogSaysHowManyItDropped(t *testing.T) {
	var buf bytes.Buffer
	r := NewRateLog(slog.New(slog.NewTextHandler(&buf, nil)), time.Minute, 1)
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	for range 5 {
		r.Log(slog.LevelWarn, "k", "hit")
	}
	r.Log(slog.LevelWarn, "other", "hit") // keys are limited apart
	now = now.Add(time.Minute)
	r.Log(slog.LevelWarn, "k", "hit")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3:\n%s", len(lines), buf.String())
	}
	if strings.Contains(lines[0], "suppressed") || !strings.HasSuffix(lines[2], "suppressed=4") {
		t.Fatalf("want the first line plain and the one after the window to say suppressed=4:\n%s", buf.String())
	}
	var nilLog *RateLog
	nilLog.Log(slog.LevelWarn, "k", "nothing") // a nil RateLog is silent
	var nilHits *Hits
	nilHits.Hit(PendingDialsAgent, "nothing")
}

func TestClip(t *testing.T) {
	long := strings.Repeat("a", 8<<20) + ":443"
	got := Clip(long)
	if len(got) > DefaultClip+32 || !strings.HasSuffix(got, "(8388612 bytes)") {
		t.Fatalf("Clip of an 8 MiB address: %d bytes, %q", len(got), got[len(got)-20:])
	}
	if Clip("10.0.0.1:10250") != "10.0.0.1:10250" {
		t.Fatal("a short address must come back unchanged")
	}
	// Never cut inside a rune.
	s := strings.Repeat("é", 100)
	if got := ClipTo(s, 5); !strings.HasPrefix(got, "éé...") {
		t.Fatalf("ClipTo cut a rune: %q", got)
	}
}
