// Package limits counts and reports the bounds a daemon enforces (header
// sizes, pending dials, links per agent, handshake times, control message
// sizes): each hit is one sample of limit_hits_total{limit} and, rate
// limited, one log line that names the bound and the flag that sets it. A
// flood of hits is counted exactly and logged a few lines at a time.
package limits

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// The bounds, as the limit label of limit_hits_total names them.
const (
	// proxy-server
	ConnectHeaderBytes    = "connect_header_bytes"     // CONNECT request header too large (431)
	ConnectHeaderTime     = "connect_header_time"      // CONNECT request header too slow (408)
	PendingDialsClient    = "pending_dials_client"     // one frontend client's dials waiting for an answer
	PendingDialsAgent     = "pending_dials_agent"      // dials waiting for one agent's answer
	AgentLinksPerIdentity = "agent_links_per_identity" // links of one agent id
	AgentHandshakeTime    = "agent_handshake_time"     // TLS (and link) handshake on the agent port
	// both daemons
	ControlMessageBytes = "control_message_bytes" // a native link control message too large
	// proxy-agent
	AgentPendingDials = "agent_pending_dials" // dial requests from one server in flight on the agent
)

// Flags names the flag that sets each bound (the same name on both
// daemons for ControlMessageBytes). A bound's time or size is the flag's
// default unless set.
var Flags = map[string]string{
	ConnectHeaderBytes:    "connect-max-header-bytes",
	ConnectHeaderTime:     "connect-header-timeout",
	PendingDialsClient:    "max-pending-dials-per-client",
	PendingDialsAgent:     "max-pending-dials-per-agent",
	AgentLinksPerIdentity: "max-links-per-agent",
	AgentHandshakeTime:    "agent-handshake-timeout",
	ControlMessageBytes:   "max-control-message-bytes",
	AgentPendingDials:     "max-pending-dials-per-server",
}

// ServerLimits and AgentLimits are the label values each daemon reports
// (all present at 0 from the start).
var (
	ServerLimits = []string{ConnectHeaderBytes, ConnectHeaderTime, PendingDialsClient, PendingDialsAgent,
		AgentLinksPerIdentity, AgentHandshakeTime, ControlMessageBytes}
	AgentLimits = []string{AgentPendingDials, ControlMessageBytes}
)

// Defaults of the log rate limit: per key, at most DefaultBurst lines in
// each DefaultEvery.
const (
	DefaultEvery = 10 * time.Second
	DefaultBurst = 3
)

// Config configures Hits.
type Config struct {
	Registerer prometheus.Registerer
	Namespace  string   // default konnectivity_network_proxy
	Subsystem  string   // "server" or "agent"
	Limits     []string // label values to report at 0 from the start
	Log        *slog.Logger
	Every      time.Duration // 0 = DefaultEvery
	Burst      int           // 0 = DefaultBurst
}

// Hits counts and logs the bounds hit. A nil *Hits does nothing.
type Hits struct {
	counter *prometheus.CounterVec
	log     *RateLog
}

// New makes the limit_hits_total counter, registered with cfg.Registerer.
func New(cfg Config) (*Hits, error) {
	ns := cfg.Namespace
	if ns == "" {
		ns = "konnectivity_network_proxy"
	}
	h := &Hits{
		counter: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: cfg.Subsystem, Name: "limit_hits_total",
			Help: "Times a bound refused or cut something, by limit (" + strings.Join(cfg.Limits, ", ") +
				"); each hit is also logged, at most a few lines per 10 s per limit, naming the flag that sets the bound.",
		}, []string{"limit"}),
		log: NewRateLog(cfg.Log, cfg.Every, cfg.Burst),
	}
	for _, l := range cfg.Limits {
		h.counter.WithLabelValues(l)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(h.counter); err != nil {
			return nil, fmt.Errorf("limit_hits_total: %w", err)
		}
	}
	return h, nil
}

// Hit counts one hit of limit and logs msg at Warn level, rate limited per
// limit; args are slog key-value pairs (client-supplied strings clipped by
// the caller, see Clip).
func (h *Hits) Hit(limit, msg string, args ...any) {
	if h == nil {
		return
	}
	h.counter.WithLabelValues(limit).Inc()
	h.log.Log(slog.LevelWarn, limit, msg, append(args, "limit", limit)...)
}

// Log is the rate-limited logger Hit writes to, for lines that are no
// bound (a malformed request, a refused client) but come in floods too.
func (h *Hits) Log() *RateLog {
	if h == nil {
		return nil
	}
	return h.log
}

// RateLog writes at most Burst lines per key in each Every window; the
// first line after a window in which lines were dropped says how many
// ("suppressed"). Keys are fixed strings (a bounded set). A nil *RateLog
// logs nothing.
type RateLog struct {
	log   *slog.Logger
	every time.Duration
	burst int
	now   func() time.Time

	mu   sync.Mutex
	keys map[string]*window
}

type window struct {
	start      time.Time
	n          int // lines written in this window
	suppressed int // lines dropped since the last one written
}

// NewRateLog returns a RateLog writing to log (nil: nowhere); zero every
// and burst take the defaults.
func NewRateLog(log *slog.Logger, every time.Duration, burst int) *RateLog {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if every <= 0 {
		every = DefaultEvery
	}
	if burst <= 0 {
		burst = DefaultBurst
	}
	return &RateLog{log: log, every: every, burst: burst, now: time.Now, keys: map[string]*window{}}
}

// Log writes msg at level unless key already had Burst lines in the
// current window.
func (r *RateLog) Log(level slog.Level, key, msg string, args ...any) {
	if r == nil {
		return
	}
	r.mu.Lock()
	now := r.now()
	w := r.keys[key]
	if w == nil {
		w = &window{start: now}
		r.keys[key] = w
	}
	if now.Sub(w.start) >= r.every {
		w.start, w.n = now, 0
	}
	if w.n >= r.burst {
		w.suppressed++
		r.mu.Unlock()
		return
	}
	w.n++
	suppressed := w.suppressed
	w.suppressed = 0
	r.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	r.log.Log(context.Background(), level, msg, args...)
}

// DefaultClip is how many bytes of a client-supplied string Clip keeps.
const DefaultClip = 128

// Clip shortens a client-supplied string (an address, a request line) for a
// log line or an error: at most DefaultClip bytes, cut at a rune boundary,
// then how long it was. Short strings come back unchanged.
func Clip(s string) string { return ClipTo(s, DefaultClip) }

// ClipTo is Clip with a bound of n bytes.
func ClipTo(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s...(%d bytes)", s[:cut], len(s))
}
