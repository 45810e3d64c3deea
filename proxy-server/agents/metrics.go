package agents

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"isthmus.dev/proxy-server/auth"
)

// Metrics of the agent port. A nil *Metrics measures nothing.
type Metrics struct {
	links    *prometheus.GaugeVec
	refusals *prometheus.CounterVec
}

// NewMetrics makes the agent port's metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		links: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "konnectivity_network_proxy", Subsystem: "server", Name: "agent_links",
			Help: "Agent links currently connected, by link (native or anp).",
		}, []string{"link"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "konnectivity_network_proxy", Subsystem: "server", Name: "agent_refusals_total",
			Help: "Agents refused on the agent port, by link (native or anp) and reason (no_token, malformed_token, token_invalid, wrong_audience, wrong_namespace, wrong_service_account, not_service_account, review_failed, bad_metadata, too_many_links).",
		}, []string{"link", "reason"}),
	}
	for _, l := range []string{LinkNative, LinkANP} {
		m.links.WithLabelValues(l)
		for _, r := range append(auth.Reasons[:len(auth.Reasons):len(auth.Reasons)], TooManyLinks) {
			m.refusals.WithLabelValues(l, string(r))
		}
	}
	for _, c := range []prometheus.Collector{m.links, m.refusals} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("agent port metrics: %w", err)
		}
	}
	return m, nil
}

func (m *Metrics) refused(kind string, r auth.Reason) {
	if m != nil {
		m.refusals.WithLabelValues(kind, string(r)).Inc()
	}
}

func (m *Metrics) linkUp(kind string) {
	if m != nil {
		m.links.WithLabelValues(kind).Inc()
	}
}

func (m *Metrics) linkDown(kind string) {
	if m != nil {
		m.links.WithLabelValues(kind).Dec()
	}
}
