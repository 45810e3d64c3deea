package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/splice"
)

// Metric names keep ANP's konnectivity_network_proxy_agent_* where ANP has
// the metric.
const (
	namespace = "konnectivity_network_proxy"
	subsystem = "agent"
)

type metrics struct {
	reg             *prometheus.Registry
	dialDuration    prometheus.Histogram
	dialFailures    *prometheus.CounterVec
	connectFailures prometheus.Counter
	bytes           *prometheus.CounterVec
}

func newMetrics(a *Agent) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		dialDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "dial_duration_seconds",
			Help:    "Latency of successful backend dials.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}),
		dialFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "endpoint_dial_failure_total",
			Help: "Backend dials that failed, by reason.",
		}, []string{"reason"}),
		connectFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "server_connect_failures_total",
			Help: "Attempts to connect to a proxy-server that failed.",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "endpoint_bytes_total",
			Help: "Bytes moved between tunnels and backends, by direction (to_backend, from_backend), counted when a connection ends.",
		}, []string{"direction"}),
	}
	m.reg.MustRegister(m.dialDuration, m.dialFailures, m.connectFailures, m.bytes,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "open_server_connections",
			Help: "Tunnels to proxy-servers currently held.",
		}, func() float64 { held, _, _ := a.Ready(); return float64(held) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "known_server_count",
			Help: "Proxy-servers the agent wants to hold.",
		}, func() float64 { _, exp, _ := a.Ready(); return float64(exp) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "open_endpoint_connections",
			Help: "Tunneled connections currently open to backends.",
		}, func() float64 { return float64(a.Active()) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

func (m *metrics) onDial(r link.Reason, took time.Duration) {
	if r == "" {
		m.dialDuration.Observe(took.Seconds())
		return
	}
	m.dialFailures.WithLabelValues(string(r)).Inc()
}

func (m *metrics) onSplice(_ string, r splice.Result) {
	m.bytes.WithLabelValues("to_backend").Add(float64(r.AtoB))
	m.bytes.WithLabelValues("from_backend").Add(float64(r.BtoA))
}
