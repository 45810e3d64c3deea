package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"isthmus.dev/tunnel/link"
)

// Metric names keep ANP's konnectivity_network_proxy_server_* so that
// existing dashboards work.
const (
	namespace = "konnectivity_network_proxy"
	subsystem = "server"
)

type metrics struct {
	reg          *prometheus.Registry
	dialDuration prometheus.Histogram
	dialFailures *prometheus.CounterVec
	frontendDial *prometheus.CounterVec
	agentLinks   prometheus.Gauge
}

func newMetrics(backends, frontendConns func() float64) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		dialDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "dial_duration_seconds",
			Help:    "Latency of successful dials through the tunnel, from request to the agent's answer.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25},
		}),
		dialFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "dial_failure_count",
			Help: "Dials through the tunnel that failed, by reason.",
		}, []string{"reason"}),
		frontendDial: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "frontend_dials_total",
			Help: "Dials requested by frontend clients, by frontend and result (ok or the failure reason).",
		}, []string{"frontend", "result"}),
		agentLinks: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "agent_links",
			Help: "Agent links currently connected.",
		}),
	}
	m.reg.MustRegister(m.dialDuration, m.dialFailures, m.frontendDial, m.agentLinks,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "ready_backend_connections",
			Help: "Agent connections the server can route to.",
		}, backends),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "established_connections",
			Help: "Frontend connections currently open.",
		}, frontendConns),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

func (m *metrics) observeDial(frontend string, r link.Reason, took time.Duration) {
	if r == "" {
		m.dialDuration.Observe(took.Seconds())
		m.frontendDial.WithLabelValues(frontend, "ok").Inc()
		return
	}
	m.dialFailures.WithLabelValues(string(r)).Inc()
	m.frontendDial.WithLabelValues(frontend, string(r)).Inc()
}
