package leases

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

const metricsNamespace = "konnectivity_network_proxy"

// controllerMetrics are ANP v0.36.0's lease metrics of proxy-server
// (pkg/server/metrics): same names, labels and buckets. They count the
// garbage collector's calls.
type controllerMetrics struct {
	culled  prometheus.Counter
	lists   calls
	deletes calls
}

func newControllerMetrics(reg prometheus.Registerer) (*controllerMetrics, error) {
	m := &controllerMetrics{
		culled: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: "server", Name: "culled_leases_count",
			Help: "Count of expired leases that the lease garbage collection controller has culled."}),
		lists: newCalls(callOpts{subsystem: "server", codeLabel: "http_status_code",
			total:       "lease_list_total",
			totalHelp:   "Count of lease list calls by the garbage collection controller. Labeled by HTTP status code and reason.",
			latency:     "lease_list_latency_seconds",
			latencyHelp: "Latency of lease list calls by the garbage collection controller in seconds."}),
		deletes: newCalls(callOpts{subsystem: "server", codeLabel: "http_status_code",
			total:       "lease_delete_total",
			totalHelp:   "Count of lease deletion calls by the garbage collection controller. Labeled by HTTP status code and reason.",
			latency:     "lease_delete_latency_seconds",
			latencyHelp: "Latency of lease deletion calls by the garbage collection controller in seconds."}),
	}
	if err := register(reg, m.culled, m.deletes.latency, m.deletes.total, m.lists.latency, m.lists.total); err != nil {
		return nil, fmt.Errorf("server leases: %w", err)
	}
	return m, nil
}

// observeDelete counts a delete of an expired lease, and a cull when it
// succeeded.
func (m *controllerMetrics) observeDelete(ctx context.Context, err error, took time.Duration) {
	m.deletes.observe(ctx, err, took)
	if err == nil {
		m.culled.Inc()
	}
}

// counterMetrics are ANP v0.36.0's lease metrics of proxy-agent
// (pkg/agent/metrics): same names, labels and buckets. ANP counts its watch
// calls into lease_lists_total by mistake; here they go to
// lease_watches_total.
type counterMetrics struct {
	lists   calls
	watches calls
}

// ANP's agent latency buckets.
var counterLatencyBuckets = []float64{0.005, 0.025, 0.1, 0.5, 2.5, 10, 30}

func newCounterMetrics(reg prometheus.Registerer) (*counterMetrics, error) {
	m := &counterMetrics{
		lists: newCalls(callOpts{subsystem: "agent", codeLabel: "http_response_code",
			total:       "lease_lists_total",
			totalHelp:   "Count of server lease list calls made by the agent to the k8s apiserver, labeled by HTTP response code and reason",
			latency:     "lease_list_latency_seconds",
			latencyHelp: "Latency of server lease listing in seconds",
			buckets:     counterLatencyBuckets}),
		watches: newCalls(callOpts{subsystem: "agent", codeLabel: "http_response_code",
			total:     "lease_watches_total",
			totalHelp: "Count of server lease watch calls made by the agent to the k8s apiserver, labeled by HTTP response code and reason"}),
	}
	if err := register(reg, m.lists.total, m.watches.total, m.lists.latency); err != nil {
		return nil, fmt.Errorf("server lease counter: %w", err)
	}
	return m, nil
}

// calls counts one kind of kube-apiserver call by its outcome, labelled as
// ANP does (HTTP status code and reason), and measures its latency.
type calls struct {
	total   *prometheus.CounterVec   // labels: code, reason
	latency *prometheus.HistogramVec // label: code; nil: not measured
}

type callOpts struct {
	subsystem string // "server" or "agent"
	codeLabel string // ANP's name of the status code label
	total     string
	totalHelp string
	// latency names the histogram; "": none.
	latency, latencyHelp string
	buckets              []float64 // nil: Prometheus' default buckets
}

func newCalls(o callOpts) calls {
	c := calls{total: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: o.subsystem,
		Name: o.total, Help: o.totalHelp}, []string{o.codeLabel, "reason"})}
	if o.latency != "" {
		c.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: metricsNamespace, Subsystem: o.subsystem,
			Name: o.latency, Help: o.latencyHelp, Buckets: o.buckets}, []string{o.codeLabel})
	}
	return c
}

// observe counts a call that ended with err after took; a call abandoned
// because ctx ended is not counted.
func (c calls) observe(ctx context.Context, err error, took time.Duration) {
	code, reason, ok := statusOf(ctx, err)
	if !ok {
		return
	}
	c.total.WithLabelValues(strconv.Itoa(code), reason).Inc()
	if c.latency != nil {
		c.latency.WithLabelValues(strconv.Itoa(code)).Observe(took.Seconds())
	}
}

// register registers every collector on reg (nil: none), or none of them.
func register(reg prometheus.Registerer, all ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	for i, c := range all {
		if err := reg.Register(c); err != nil {
			for _, done := range all[:i] {
				reg.Unregister(done)
			}
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}

// noAnswer is the status label of a call that got no HTTP answer (refused,
// timed out, TLS failure). ANP does not count those calls at all.
const (
	noAnswerCode   = 0
	noAnswerReason = "NoResponse"
)

// statusOf is the HTTP status code and reason of a kube-apiserver call's
// outcome, as ANP labels them: 200 and "" for success. counted is false for
// a call abandoned because ctx ended (shutdown), which is not counted.
func statusOf(ctx context.Context, err error) (code int, reason string, counted bool) {
	if err == nil {
		return 200, "", true
	}
	var s apierrors.APIStatus
	if errors.As(err, &s) {
		st := s.Status()
		return int(st.Code), string(st.Reason), true
	}
	if ctx.Err() != nil {
		return 0, "", false
	}
	return noAnswerCode, noAnswerReason, true
}
