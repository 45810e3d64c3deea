package server

import (
	"context"
	"net"
	"path"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/proxy-server/frontend"
	"isthmus.dev/proxy-server/routing"
	"isthmus.dev/tunnel/buildinfo"
	"isthmus.dev/tunnel/link"
)

// Metric names keep ANP's konnectivity_network_proxy_server_* so that
// existing dashboards work; label values are ANP's where the meaning is.
const (
	namespace = "konnectivity_network_proxy"
	subsystem = "server"
)

// ANP's stream segments (konnectivity-client pkg/common/metrics).
const (
	segmentFromClient = "from_client"
	segmentToClient   = "to_client"
	segmentFromAgent  = "from_agent"
	segmentToAgent    = "to_agent"
)

type metrics struct {
	reg           *prometheus.Registry
	dialDuration  prometheus.Histogram
	dialFailures  *prometheus.CounterVec
	frontendDial  *prometheus.CounterVec
	pendingDials  prometheus.Gauge
	grpcConns     *prometheus.GaugeVec
	streamPackets *prometheus.CounterVec
	streamErrors  *prometheus.CounterVec
	stalled       prometheus.Counter
}

func opts(name, help string) prometheus.Opts {
	return prometheus.Opts{Namespace: namespace, Subsystem: subsystem, Name: name, Help: help}
}

// newMetrics makes the server's registry and its own metrics; the
// packages it assembles register theirs on m.reg.
func newMetrics(cfg *Config, registry *routing.Registry, tracker *frontend.Tracker) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		dialDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "dial_duration_seconds",
			Help:    "Latency of successful dials through the tunnel, from request to the agent's answer.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25},
		}),
		dialFailures: prometheus.NewCounterVec(prometheus.CounterOpts(opts("dial_failure_count",
			"Dials through the tunnel that failed, by reason: no_agent and frontend_close (the client gave up) as in ANP; refused, unreachable, timeout, link_closed, policy, busy (refused by --max-pending-dials-per-client or --max-pending-dials-per-agent), error.")), []string{"reason"}),
		frontendDial: prometheus.NewCounterVec(prometheus.CounterOpts(opts("frontend_dials_total",
			"Dials requested by frontend clients, by frontend and result (ok or the failure reason).")), []string{"frontend", "result"}),
		stalled: prometheus.NewCounter(prometheus.CounterOpts(opts("stalled_connections_total",
			"Connections on ANP agent links closed alone because their client took no data for --conn-stall-timeout with a full receive queue (--conn-queue-bytes): the ANP wire has no flow control."))),
		pendingDials: prometheus.NewGauge(prometheus.GaugeOpts(opts("pending_backend_dials",
			"Dials through the tunnel waiting for the agent's answer."))),
		grpcConns: prometheus.NewGaugeVec(prometheus.GaugeOpts(opts("grpc_connections",
			"gRPC streams currently open, by service method (Proxy: frontend clients; Connect: agents on the ANP link).")), []string{"service_method"}),
		streamPackets: prometheus.NewCounterVec(prometheus.CounterOpts(opts("stream_packets_total",
			"ANP packets on gRPC streams, by segment (from_client, to_client, from_agent, to_agent) and packet type.")), []string{"segment", "packet_type"}),
		streamErrors: prometheus.NewCounterVec(prometheus.CounterOpts(opts("stream_errors_total",
			"gRPC stream errors, by segment, gRPC code and packet type (Unknown for a failed receive).")), []string{"segment", "code", "packet_type"}),
	}
	bi := buildinfo.Get()
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Subsystem: subsystem, Name: "build_info",
		Help:        "The running build: always 1, with its version, commit and Go version as labels.",
		ConstLabels: prometheus.Labels{"version": bi.Version, "commit": bi.Commit, "goversion": bi.GoVersion}})
	buildInfo.Set(1)
	for _, method := range []string{"Proxy", "Connect"} {
		m.grpcConns.WithLabelValues(method)
	}
	m.reg.MustRegister(m.dialDuration, m.dialFailures, m.frontendDial, m.pendingDials, m.grpcConns, m.stalled,
		m.streamPackets, m.streamErrors, buildInfo,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts("ready_backend_connections",
			"Agent links the server can route to (deprecated upstream: see ready_backends).")),
			func() float64 { return float64(registry.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts("established_connections",
			"Frontend connections currently open.")), func() float64 { return float64(tracker.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts("http_connections",
			"HTTP CONNECT connections currently open (0 in grpc mode).")), func() float64 {
			if cfg.Mode != ModeHTTPConnect {
				return 0
			}
			return float64(tracker.Len())
		}),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	for _, s := range cfg.ProxyStrategies {
		o := prometheus.GaugeOpts(opts("ready_backends", "Agents connected that a proxy strategy can choose, by strategy."))
		o.ConstLabels = prometheus.Labels{"proxy_strategy": s}
		m.reg.MustRegister(prometheus.NewGaugeFunc(o, func() float64 { return float64(registry.Serving(s)) }))
	}
	return m
}

// MetricsRegistry is the server's own registry, served on /metrics (for
// tools that list its metrics, such as the docs generator; nothing else
// should register on it).
func (s *Server) MetricsRegistry() *prometheus.Registry { return s.metrics.reg }

func (m *metrics) observeDial(frontend string, r link.Reason, took time.Duration) {
	if r == "" {
		m.dialDuration.Observe(took.Seconds())
		m.frontendDial.WithLabelValues(frontend, "ok").Inc()
		return
	}
	m.dialFailures.WithLabelValues(anpDialFailure(r)).Inc()
	m.frontendDial.WithLabelValues(frontend, string(r)).Inc()
}

// anpDialFailure is the dial_failure_count reason: ANP's label where ANP
// has the same meaning.
func anpDialFailure(r link.Reason) string {
	if r == link.ReasonCancelled {
		return "frontend_close" // ANP: DIAL_CLS from the frontend before the dial completed
	}
	return string(r)
}

// countStreams is a gRPC interceptor for grpc_connections: the method's
// last path element (Proxy, Connect) is the label, as in ANP.
func (m *metrics) countStreams(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	g := m.grpcConns.WithLabelValues(path.Base(info.FullMethod))
	g.Inc()
	defer g.Dec()
	return h(srv, ss)
}

// pendingDialer counts the dials waiting for their agent's answer.
type pendingDialer struct {
	frontend.Dialer
	pending prometheus.Gauge
}

func (d pendingDialer) Dial(ctx context.Context, address string) (net.Conn, error) {
	d.pending.Inc()
	defer d.pending.Dec()
	return d.Dialer.Dial(ctx, address)
}

// streamObserver counts the packets and errors of gRPC streams for one
// pair of segments (the client's, or the agents'). It implements
// anp.Observer.
type streamObserver struct {
	m              *metrics
	sentTo, recvFm string
}

func (o streamObserver) segment(sent bool) string {
	if sent {
		return o.sentTo
	}
	return o.recvFm
}

func (o streamObserver) Packet(sent bool, t client.PacketType) {
	o.m.streamPackets.WithLabelValues(o.segment(sent), t.String()).Inc()
}

func (o streamObserver) StreamError(sent bool, t client.PacketType, err error) {
	pt := "Unknown" // a failed receive has no packet, as ANP labels it
	if t >= 0 {
		pt = t.String()
	}
	o.m.streamErrors.WithLabelValues(o.segment(sent), status.Code(err).String(), pt).Inc()
}

func (o streamObserver) Stalled() { o.m.stalled.Inc() }
