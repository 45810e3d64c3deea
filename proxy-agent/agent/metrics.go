package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc/status"
	commonmetrics "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/common/metrics"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/tunnel/buildinfo"
	"isthmus.dev/tunnel/limits"
	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/splice"
)

// Metric names keep ANP's konnectivity_network_proxy_agent_* where ANP has
// the metric, with ANP's labels and label values where the meaning is the
// same.
const (
	namespace = "konnectivity_network_proxy"
	subsystem = "agent"
)

type metrics struct {
	reg             *prometheus.Registry
	dialDuration    prometheus.Histogram
	dialFailures    *prometheus.CounterVec
	connectFailures *prometheus.CounterVec
	streamFailures  *prometheus.CounterVec
	bytes           *prometheus.CounterVec
	packets         *packetMetrics
	limits          *limits.Hits // bounds hit (limit_hits_total), logged rate limited
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
			Help: "Backend dials that failed, by reason: timeout, refused, unreachable, policy (refused by --allowed-destinations), cancelled (by the server) or unknown.",
		}, []string{"reason"}),
		connectFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "server_connect_failures_total",
			Help: "Attempts to connect to a proxy-server that failed, by result: refused (the server did not accept this agent's credentials) or failed (anything else).",
		}, []string{"result"}),
		streamFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "server_connection_failure_count",
			Help: "Failures to send to (to_server) or receive from (from_server) a proxy-server on the ANP gRPC link.",
		}, []string{"direction"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "endpoint_bytes_total",
			Help: "Bytes moved between tunnels and backends, by direction (to_backend, from_backend), counted when a connection ends.",
		}, []string{"direction"}),
	}
	m.packets = newPacketMetrics(m.streamFailures)
	var err error
	if m.limits, err = limits.New(limits.Config{Registerer: m.reg, Subsystem: subsystem, Limits: limits.AgentLimits, Log: a.log}); err != nil {
		panic(err) // a fresh registry: as MustRegister below
	}
	bi := buildinfo.Get()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "build_info",
		Help: "The running build of proxy-agent (always 1).",
	}, []string{"version", "commit", "goversion"})
	build.WithLabelValues(bi.Version, bi.Commit, bi.GoVersion).Set(1)
	m.reg.MustRegister(m.dialDuration, m.dialFailures, m.connectFailures, m.streamFailures, m.bytes, build,
		m.packets.packets, m.packets.errors, m.packets.stalled,
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
	for _, r := range []link.Reason{link.ReasonTimeout, link.ReasonRefused, link.ReasonUnreachable, link.ReasonPolicy, link.ReasonCancelled, link.ReasonError} {
		m.dialFailures.WithLabelValues(dialFailureLabel(r)) // present at 0 from the start
	}
	for _, r := range []string{"refused", "failed"} {
		m.connectFailures.WithLabelValues(r)
	}
	return m
}

// MetricsRegistry is the agent's own registry, served on /metrics (for
// tools that list its metrics, such as the docs generator; nothing else
// should register on it).
func (a *Agent) MetricsRegistry() *prometheus.Registry { return a.metrics.reg }

// dialFailureLabel is a reason as ANP's agent labels it where the meaning
// is the same ("unknown" for anything else).
func dialFailureLabel(r link.Reason) string {
	if r == link.ReasonError || r == "" {
		return "unknown"
	}
	return string(r)
}

func (m *metrics) dialed(took time.Duration) { m.dialDuration.Observe(took.Seconds()) }

func (m *metrics) dialFailed(r link.Reason) {
	m.dialFailures.WithLabelValues(dialFailureLabel(r)).Inc()
}

func (m *metrics) spliced(r splice.Result) {
	m.bytes.WithLabelValues("to_backend").Add(float64(r.AtoB))
	m.bytes.WithLabelValues("from_backend").Add(float64(r.BtoA))
}

// packetMetrics are ANP's stream_packets_total and stream_errors_total for
// the agent's ANP links (segments from_agent: sent; to_agent: received).
// It implements anp.Observer; the counters of each packet type are looked
// up once, not per packet.
type packetMetrics struct {
	packets, errors *prometheus.CounterVec
	failures        *prometheus.CounterVec
	stalled         prometheus.Counter
	sent, received  map[client.PacketType]prometheus.Counter
}

func newPacketMetrics(failures *prometheus.CounterVec) *packetMetrics {
	p := &packetMetrics{
		packets:  commonmetrics.MakeStreamPacketsTotalMetric(namespace, subsystem),
		errors:   commonmetrics.MakeStreamErrorsTotalMetric(namespace, subsystem),
		failures: failures,
		stalled: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Subsystem: subsystem, Name: "stalled_connections_total",
			Help: "Connections on ANP links closed alone because their backend took no data for --conn-stall-timeout with a full receive queue (--conn-queue-bytes): the ANP wire has no flow control."}),
		sent:     map[client.PacketType]prometheus.Counter{},
		received: map[client.PacketType]prometheus.Counter{},
	}
	for t := range client.PacketType_name {
		pt := client.PacketType(t)
		p.sent[pt] = p.packets.WithLabelValues(string(commonmetrics.SegmentFromAgent), pt.String())
		p.received[pt] = p.packets.WithLabelValues(string(commonmetrics.SegmentToAgent), pt.String())
	}
	return p
}

func (p *packetMetrics) Packet(sent bool, t client.PacketType) {
	m := p.received
	if sent {
		m = p.sent
	}
	if c, ok := m[t]; ok {
		c.Inc()
	}
}

func (p *packetMetrics) StreamError(sent bool, t client.PacketType, err error) {
	segment, direction, pt := commonmetrics.SegmentToAgent, "from_server", "Unknown"
	if sent {
		segment, direction = commonmetrics.SegmentFromAgent, "to_server"
	}
	if _, ok := client.PacketType_name[int32(t)]; ok {
		pt = t.String()
	}
	p.errors.WithLabelValues(string(segment), status.Code(err).String(), pt).Inc()
	p.failures.WithLabelValues(direction).Inc()
}

func (p *packetMetrics) Stalled() { p.stalled.Inc() }
