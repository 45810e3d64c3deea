package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	authv1 "k8s.io/api/authentication/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	ns       = "kube-system"
	sa       = "konnectivity-agent"
	audience = "system:konnectivity-server"
	agentSA  = "system:serviceaccount:" + ns + ":" + sa
)

// apiServer answers TokenReviews as kube-apiserver would for the tokens
// it knows; an unknown token is not authenticated. It counts the reviews
// it was asked for, and holds them while gate is set and not closed.
type apiServer struct {
	mu      sync.Mutex
	answers map[string]authv1.TokenReviewStatus
	fail    error         // every review fails with it
	gate    chan struct{} // non-nil: reviews wait for it (or their context)
	calls   int
	seen    []string // audiences asked for
}

func (s *apiServer) Review(ctx context.Context, token string, audiences []string) (authv1.TokenReviewStatus, error) {
	s.mu.Lock()
	s.calls++
	s.seen = append(s.seen, audiences...)
	gate, fail := s.gate, s.fail
	st, ok := s.answers[token]
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return authv1.TokenReviewStatus{}, ctx.Err()
		}
	}
	if fail != nil {
		return authv1.TokenReviewStatus{}, fail
	}
	if !ok {
		return authv1.TokenReviewStatus{Authenticated: false, Error: "invalid bearer token"}, nil
	}
	return st, nil
}

func (s *apiServer) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func authenticated(user string, audiences ...string) authv1.TokenReviewStatus {
	return authv1.TokenReviewStatus{Authenticated: true, User: authv1.UserInfo{Username: user}, Audiences: audiences}
}

func newAuth(t *testing.T, api *apiServer, mut func(*Config)) *Authenticator {
	t.Helper()
	cfg := Config{Reviewer: api, Namespace: ns, ServiceAccount: sa, Audience: audience, Registerer: prometheus.NewRegistry()}
	if mut != nil {
		mut(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (a *Authenticator) count(source, result string) int {
	return int(testutil.ToFloat64(a.metrics.reviews.WithLabelValues(source, result)))
}

// jwt is a token whose payload carries claims; nothing checks its signature.
func jwt(claims string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(claims)) + ".c2ln"
}

func TestEveryReason(t *testing.T) {
	api := &apiServer{answers: map[string]authv1.TokenReviewStatus{
		"good":          authenticated(agentSA, audience),
		"no-audience":   authenticated(agentSA),
		"other-aud":     authenticated(agentSA, "https://kubernetes.default.svc"),
		"other-ns":      authenticated("system:serviceaccount:default:"+sa, audience),
		"other-sa":      authenticated("system:serviceaccount:"+ns+":default", audience),
		"user":          authenticated("admin", audience),
		"node":          authenticated("system:node:worker-1", audience),
		"sa-extra-part": authenticated(agentSA+":x", audience),
	}}
	a := newAuth(t, api, nil)
	if err := a.Authenticate(t.Context(), "a1", "good"); err != nil {
		t.Fatalf("good token refused: %v", err)
	}
	if len(api.seen) != 1 || api.seen[0] != audience {
		t.Fatalf("reviews asked for audiences %q, want [%q]", api.seen, audience)
	}
	for _, tc := range []struct {
		token string
		want  Reason
		says  string
	}{
		{"", NoToken, "--service-account-token-path"},
		{"has space", MalformedToken, "bytes"},
		{"tab\there", MalformedToken, "bytes"},
		{strings.Repeat("x", maxTokenBytes+1), MalformedToken, "bytes"},
		{"garbage", TokenInvalid, "invalid bearer token"},
		{"no-audience", WrongAudience, "--authentication-audience"},
		{"other-aud", WrongAudience, "kubernetes.default.svc"},
		{"other-ns", WrongNamespace, "default/" + sa},
		{"other-sa", WrongServiceAccount, ns + "/default"},
		{"user", NotServiceAccount, "admin"},
		{"node", NotServiceAccount, "system:node:worker-1"},
		{"sa-extra-part", NotServiceAccount, agentSA + ":x"},
	} {
		err := a.Authenticate(t.Context(), "a1", tc.token)
		var re *RefusedError
		if !errors.As(err, &re) || re.Reason != tc.want {
			t.Errorf("token %.20q: %v, want reason %s", tc.token, err, tc.want)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, TokenRefusedPrefix+string(tc.want)) || !strings.Contains(msg, tc.says) {
			t.Errorf("token %.20q: message %q, want it to start with %q and say %q", tc.token, msg, TokenRefusedPrefix+string(tc.want), tc.says)
		}
	}
	// The review itself failing is no verdict on the token.
	api.fail = errors.New("connection refused")
	err := newAuth(t, api, nil).Authenticate(t.Context(), "a1", "good")
	var re *RefusedError
	if !errors.As(err, &re) || re.Reason != ReviewFailed || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("failed review: %v, want review_failed with the cause", err)
	}
	bad := (&RefusedError{Reason: BadMetadata, Detail: "no agentID"}).Error()
	if bad != "agent refused: bad_metadata: no agentID" {
		t.Errorf("bad metadata message %q", bad)
	}
}

func TestCacheHitAndMiss(t *testing.T) {
	api := &apiServer{answers: map[string]authv1.TokenReviewStatus{
		"t1": authenticated(agentSA, audience), "t2": authenticated(agentSA, audience)}}
	a := newAuth(t, api, nil)
	for range 3 {
		if err := a.Authenticate(t.Context(), "a1", "t1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Authenticate(t.Context(), "a2", "t2"); err != nil {
		t.Fatal(err)
	}
	if api.Calls() != 2 {
		t.Errorf("%d TokenReviews for two tokens, want 2", api.Calls())
	}
	if a.count("api", "allowed") != 2 || a.count("cache", "allowed") != 2 {
		t.Errorf("api %d, cache %d; want 2 and 2", a.count("api", "allowed"), a.count("cache", "allowed"))
	}
}

func TestTTLNeverPastTheTokensExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		now := time.Now()
		soon := jwt(fmt.Sprintf(`{"exp":%d,"sub":"x"}`, now.Add(10*time.Second).Unix()))
		past := jwt(fmt.Sprintf(`{"exp":%d}`, now.Add(-time.Second).Unix()))
		noExp := jwt(`{"sub":"x"}`)
		api := &apiServer{answers: map[string]authv1.TokenReviewStatus{
			soon: authenticated(agentSA, audience), past: authenticated(agentSA, audience), noExp: authenticated(agentSA, audience)}}
		a := newAuth(t, api, func(c *Config) { c.TTL = time.Minute })
		check := func(token string, wantCalls int) {
			t.Helper()
			if err := a.Authenticate(t.Context(), "a1", token); err != nil {
				t.Fatal(err)
			}
			if api.Calls() != wantCalls {
				t.Fatalf("at %v: %d reviews, want %d", time.Since(now), api.Calls(), wantCalls)
			}
		}
		check(soon, 1)
		check(noExp, 2)
		check(past, 3) // an expired token is never cached
		check(past, 4)
		time.Sleep(9 * time.Second)
		check(soon, 4) // still within its exp
		time.Sleep(time.Second)
		check(soon, 5) // exp reached: reviewed again although TTL is a minute
		check(noExp, 5)
		time.Sleep(50 * time.Second)
		check(noExp, 6) // TTL over
	})
}

func TestRefusalsAreCachedShorter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := &apiServer{answers: map[string]authv1.TokenReviewStatus{}}
		a := newAuth(t, api, func(c *Config) { c.TTL = time.Minute; c.RefusalTTL = 5 * time.Second })
		refused := func() {
			t.Helper()
			var re *RefusedError
			if err := a.Authenticate(t.Context(), "a1", "tok"); !errors.As(err, &re) || re.Reason != TokenInvalid {
				t.Fatalf("%v, want token_invalid", err)
			}
		}
		refused()
		refused()
		if api.Calls() != 1 || a.count("cache", "refused") != 1 {
			t.Fatalf("%d reviews, %d from cache; want 1 and 1", api.Calls(), a.count("cache", "refused"))
		}
		// The service account is created: seen once the refusal expires.
		api.mu.Lock()
		api.answers["tok"] = authenticated(agentSA, audience)
		api.mu.Unlock()
		time.Sleep(5 * time.Second)
		if err := a.Authenticate(t.Context(), "a1", "tok"); err != nil {
			t.Fatalf("after the refusal TTL: %v", err)
		}
		if api.Calls() != 2 {
			t.Fatalf("%d reviews, want 2", api.Calls())
		}
	})
}

func TestFailedReviewsAreNotCached(t *testing.T) {
	api := &apiServer{answers: map[string]authv1.TokenReviewStatus{"tok": authenticated(agentSA, audience)},
		fail: errors.New("kube-apiserver unavailable")}
	a := newAuth(t, api, nil)
	for range 2 {
		var re *RefusedError
		if err := a.Authenticate(t.Context(), "a1", "tok"); !errors.As(err, &re) || re.Reason != ReviewFailed {
			t.Fatalf("%v, want review_failed", err)
		}
	}
	api.mu.Lock()
	api.fail = nil
	api.mu.Unlock()
	if err := a.Authenticate(t.Context(), "a1", "tok"); err != nil {
		t.Fatalf("after kube-apiserver came back: %v", err)
	}
	if api.Calls() != 3 || a.count("api", "error") != 2 || a.count("api", "allowed") != 1 {
		t.Fatalf("reviews %d, errors %d, allowed %d; want 3, 2, 1", api.Calls(), a.count("api", "error"), a.count("api", "allowed"))
	}
}

// TestConcurrentReviewsCoalesce: N agents with one token connecting at once
// cost one TokenReview; the others wait for its answer.
func TestConcurrentReviewsCoalesce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 200
		api := &apiServer{answers: map[string]authv1.TokenReviewStatus{"tok": authenticated(agentSA, audience)},
			gate: make(chan struct{})}
		a := newAuth(t, api, nil)
		errs := make(chan error, n)
		for i := range n {
			go func() { errs <- a.Authenticate(context.Background(), fmt.Sprintf("agent-%d", i), "tok") }()
		}
		synctest.Wait() // all n are blocked: one in the review, the rest waiting for it
		if api.Calls() != 1 {
			t.Fatalf("%d TokenReviews in flight, want 1", api.Calls())
		}
		close(api.gate)
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if api.Calls() != 1 || a.count("api", "allowed") != 1 || a.count("coalesced", "allowed") != n-1 {
			t.Fatalf("reviews %d, api %d, coalesced %d; want 1, 1, %d",
				api.Calls(), a.count("api", "allowed"), a.count("coalesced", "allowed"), n-1)
		}
	})
}

// TestCallerLeavingDoesNotFailOthers: the caller whose review runs goes
// away; the review goes on for those still waiting.
func TestCallerLeavingDoesNotFailOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := &apiServer{answers: map[string]authv1.TokenReviewStatus{"tok": authenticated(agentSA, audience)},
			gate: make(chan struct{})}
		a := newAuth(t, api, nil)
		ctx, cancel := context.WithCancel(context.Background())
		first, second := make(chan error, 1), make(chan error, 1)
		go func() { first <- a.Authenticate(ctx, "leaver", "tok") }()
		synctest.Wait()
		go func() { second <- a.Authenticate(context.Background(), "stayer", "tok") }()
		synctest.Wait()
		cancel()
		var re *RefusedError
		if err := <-first; !errors.As(err, &re) || re.Reason != ReviewFailed || !errors.Is(err, context.Canceled) {
			t.Fatalf("caller that left: %v, want review_failed (context canceled)", err)
		}
		close(api.gate)
		if err := <-second; err != nil {
			t.Fatalf("caller that stayed: %v", err)
		}
		if api.Calls() != 1 {
			t.Fatalf("%d reviews, want 1", api.Calls())
		}
	})
}

func TestReviewIsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := &apiServer{gate: make(chan struct{})} // never answers
		a := newAuth(t, api, func(c *Config) { c.ReviewTimeout = 3 * time.Second })
		start := time.Now()
		err := a.Authenticate(context.Background(), "a1", "tok")
		var re *RefusedError
		if !errors.As(err, &re) || re.Reason != ReviewFailed || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%v, want review_failed (deadline exceeded)", err)
		}
		if took := time.Since(start); took != 3*time.Second {
			t.Fatalf("review gave up after %v, want the 3s timeout", took)
		}
	})
}

func TestCacheIsBounded(t *testing.T) {
	api := &apiServer{answers: map[string]authv1.TokenReviewStatus{}}
	a := newAuth(t, api, func(c *Config) { c.MaxEntries = 3 })
	for i := range 10 {
		api.answers[fmt.Sprint("t", i)] = authenticated(agentSA, audience)
		if err := a.Authenticate(t.Context(), "a1", fmt.Sprint("t", i)); err != nil {
			t.Fatal(err)
		}
	}
	a.mu.Lock()
	n := len(a.cache)
	a.mu.Unlock()
	if n > 3 {
		t.Fatalf("cache holds %d entries, bound is 3", n)
	}
}

func TestNewRefusesIncompleteConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no reviewer":  {Namespace: ns, ServiceAccount: sa, Audience: audience},
		"no audience":  {Reviewer: &apiServer{}, Namespace: ns, ServiceAccount: sa},
		"negative TTL": {Reviewer: &apiServer{}, Namespace: ns, ServiceAccount: sa, Audience: audience, TTL: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestExpiry(t *testing.T) {
	for _, tc := range []struct {
		token string
		want  int64 // 0: none
	}{
		{jwt(`{"exp":1700000000}`), 1700000000},
		{jwt(`{"exp":1700000000.5}`), 1700000000},
		{jwt(`{"sub":"x"}`), 0},
		{jwt(`{"exp":"soon"}`), 0},
		{jwt(`{"exp":-5}`), 0},
		{"a.b", 0},
		{"a.!!!.c", 0},
		{"garbage", 0},
	} {
		exp, ok := expiry(tc.token)
		if (tc.want == 0) == ok || (ok && exp.Unix() != tc.want) {
			t.Errorf("%q: %v %v, want %d", tc.token, exp, ok, tc.want)
		}
	}
}
