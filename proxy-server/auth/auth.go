// Package auth authenticates agents by their service-account token, as
// ANP's proxy-server does with --agent-namespace, --agent-service-account
// and --authentication-audience: a TokenReview must show an authenticated
// system:serviceaccount:<namespace>:<name> and list the audience.
//
// Reviews are cached by the token's SHA-256 (never past the token's own
// expiry; refusals for a shorter time; failed reviews not at all), and
// concurrent reviews of one token are made once, so that a mass reconnect
// of agents sharing a token costs kube-apiserver one TokenReview.
package auth

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
)

// Defaults of Config.
const (
	DefaultReviewTimeout = 10 * time.Second
	DefaultTTL           = time.Minute
	DefaultRefusalTTL    = 5 * time.Second
	DefaultMaxEntries    = 10000
)

// Config of token authentication.
type Config struct {
	Reviewer       Reviewer // required: ClientReviewer in production
	Namespace      string   // --agent-namespace (required)
	ServiceAccount string   // --agent-service-account (required)
	Audience       string   // --authentication-audience (required)

	// ReviewTimeout bounds one TokenReview; 0 = DefaultReviewTimeout.
	ReviewTimeout time.Duration
	// TTL: how long an accepted token is trusted without a new review,
	// never past the token's expiry; 0 = DefaultTTL.
	TTL time.Duration
	// RefusalTTL: how long a refused token stays refused without a new
	// review (a service account created later is seen after that);
	// 0 = DefaultRefusalTTL.
	RefusalTTL time.Duration
	// MaxEntries bounds the cache; 0 = DefaultMaxEntries.
	MaxEntries int

	Log        *slog.Logger          // nil: discard
	Registerer prometheus.Registerer // nil: metrics are kept but not exported
}

// Authenticator checks agents' tokens. It is safe for concurrent use.
type Authenticator struct {
	cfg     Config
	group   singleflight.Group
	metrics *metrics

	mu    sync.Mutex
	cache map[[sha256.Size]byte]entry
}

type entry struct {
	until   time.Time
	refused *RefusedError // nil: accepted
}

// New checks cfg and returns an Authenticator.
func New(cfg Config) (*Authenticator, error) {
	var errs []error
	if cfg.Reviewer == nil {
		errs = append(errs, errors.New("token authentication: no TokenReview client"))
	}
	if cfg.Namespace == "" || cfg.ServiceAccount == "" || cfg.Audience == "" {
		errs = append(errs, errors.New("token authentication needs --agent-namespace, --agent-service-account and --authentication-audience"))
	}
	if cfg.ReviewTimeout < 0 || cfg.TTL < 0 || cfg.RefusalTTL < 0 || cfg.MaxEntries < 0 {
		errs = append(errs, errors.New("token authentication: negative timeout, TTL or cache size"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.ReviewTimeout = cmp(cfg.ReviewTimeout, DefaultReviewTimeout)
	cfg.TTL = cmp(cfg.TTL, DefaultTTL)
	cfg.RefusalTTL = cmp(cfg.RefusalTTL, DefaultRefusalTTL)
	cfg.MaxEntries = cmp(cfg.MaxEntries, DefaultMaxEntries)
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Authenticator{cfg: cfg, metrics: m, cache: make(map[[sha256.Size]byte]entry)}, nil
}

func cmp[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Authenticate checks the token agentID sent ("" when none). It returns nil
// or a *RefusedError whose message is meant for the agent.
func (a *Authenticator) Authenticate(ctx context.Context, agentID, token string) error {
	if token == "" {
		return refuse(NoToken, "the agent sent no token; give it --service-account-token-path, a token of service account %s/%s for audience %q",
			a.cfg.Namespace, a.cfg.ServiceAccount, a.cfg.Audience)
	}
	if !wellFormed(token) {
		return refuse(MalformedToken, "the token has %d bytes, or bytes a token never has (spaces, control characters, non-ASCII)", len(token))
	}
	key := sha256.Sum256([]byte(token))
	if e, ok := a.lookup(key); ok {
		a.metrics.observe(sourceCache, e.refused)
		return asError(e.refused)
	}
	var leader atomic.Bool
	ch := a.group.DoChan(string(key[:]), func() (any, error) {
		leader.Store(true)
		return a.review(ctx, agentID, key, token), nil
	})
	select {
	case r := <-ch:
		res := r.Val.(*RefusedError)
		if !leader.Load() {
			a.metrics.observe(sourceCoalesced, res)
		}
		return asError(res)
	case <-ctx.Done():
		return &RefusedError{Reason: ReviewFailed, Detail: "gave up waiting for the TokenReview", Err: ctx.Err()}
	}
}

// asError keeps a nil *RefusedError from becoming a non-nil error.
func asError(r *RefusedError) error {
	if r == nil {
		return nil
	}
	return r
}

// review runs once per token at a time (the singleflight leader). It is
// not bound to the caller's lifetime: others may wait for its answer.
func (a *Authenticator) review(ctx context.Context, agentID string, key [sha256.Size]byte, token string) *RefusedError {
	// A review that finished just before this one started left its answer.
	if e, ok := a.lookup(key); ok {
		a.metrics.observe(sourceCache, e.refused)
		return e.refused
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ReviewTimeout)
	defer cancel()
	start := time.Now()
	st, err := a.cfg.Reviewer.Review(rctx, token, []string{a.cfg.Audience})
	a.metrics.latency.Observe(time.Since(start).Seconds())
	if err != nil {
		res := &RefusedError{Reason: ReviewFailed, Detail: "the TokenReview failed, the token was not checked (is kube-apiserver reachable through --kubeconfig, and may this server create tokenreviews?)", Err: err}
		a.metrics.observe(sourceAPI, res)
		return res // not cached: the next connect asks again
	}
	res := a.judge(st)
	a.metrics.observe(sourceAPI, res)
	a.store(key, token, res)
	a.cfg.Log.Debug("TokenReview", "agent", agentID, "user", st.User.Username, "refused", res != nil)
	return res
}

func (a *Authenticator) lookup(key [sha256.Size]byte) (entry, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.cache[key]
	if !ok {
		return entry{}, false
	}
	if !time.Now().Before(e.until) {
		delete(a.cache, key)
		return entry{}, false
	}
	return e, true
}

func (a *Authenticator) store(key [sha256.Size]byte, token string, res *RefusedError) {
	now := time.Now()
	until := now.Add(a.cfg.RefusalTTL)
	if res == nil {
		until = now.Add(a.cfg.TTL)
		if exp, ok := expiry(token); ok && exp.Before(until) {
			until = exp
		}
	}
	if !now.Before(until) {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cache) >= a.cfg.MaxEntries {
		for k, e := range a.cache {
			if !now.Before(e.until) {
				delete(a.cache, k)
			}
		}
		for k := range a.cache { // still full: drop any
			if len(a.cache) < a.cfg.MaxEntries {
				break
			}
			delete(a.cache, k)
		}
	}
	a.cache[key] = entry{until: until, refused: res}
}
