package auth

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Where an answer came from: the token_reviews_total source label.
const (
	sourceAPI       = "api"       // a TokenReview made for it
	sourceCache     = "cache"     // a cached review
	sourceCoalesced = "coalesced" // another caller's concurrent review
)

// Results: the token_reviews_total result label.
const (
	resultAllowed = "allowed"
	resultRefused = "refused"
	resultError   = "error" // the review failed
)

type metrics struct {
	reviews *prometheus.CounterVec
	latency prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "konnectivity_network_proxy", Subsystem: "server", Name: "token_reviews_total",
			Help: "Agent token checks, by where the answer came from (api: a TokenReview was made; cache: a cached review; coalesced: a concurrent review of the same token) and result (allowed, refused, error: the review failed).",
		}, []string{"source", "result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "konnectivity_network_proxy", Subsystem: "server", Name: "token_review_duration_seconds",
			Help:    "Latency of the TokenReviews made for agent tokens, failed ones included.",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}),
	}
	for _, s := range []string{sourceAPI, sourceCache, sourceCoalesced} {
		for _, r := range []string{resultAllowed, resultRefused, resultError} {
			m.reviews.WithLabelValues(s, r)
		}
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.reviews, m.latency} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("token authentication metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *metrics) observe(source string, res *RefusedError) {
	result := resultAllowed
	switch {
	case res == nil:
	case res.Reason == ReviewFailed:
		result = resultError
	default:
		result = resultRefused
	}
	m.reviews.WithLabelValues(source, result).Inc()
}
