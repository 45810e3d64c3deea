// Package agent is proxy-agent: it dials out to every proxy-server, holds a
// tunnel to each, and dials backends on their behalf.
package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"isthmus.dev/proxy-agent/policy"
	"isthmus.dev/tunnel/anp"
	"isthmus.dev/tunnel/ident"
	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/native"
)

// Config is everything proxy-agent needs; flags map onto it in cmd/.
type Config struct {
	ProxyServerHosts []string // servers (or one load balancer) to hold tunnels to (default 127.0.0.1)
	ProxyServerPort  int      // agent port of the servers (default 8091; deployments use 8132)
	CACert           string   // CA that signs the servers' certificates; empty = system roots
	AgentCert        string   // client certificate, when servers require one
	AgentKey         string
	ALPNProtos       []string // extra ALPN protocols offered (e.g. to share a port with kube-apiserver)
	Link             string   // auto (default: native when offered, else ANP), native, or anp

	AgentID          string // default: $PROXY_AGENT_ID or a random id
	AgentIdentifiers string // URL query: host=..&ipv4=..&ipv6=..&cidr=..&default-route=true
	TokenPath        string // service-account token sent as Bearer, read at every connect

	SyncInterval    time.Duration // first retry delay (default 1 s)
	SyncIntervalCap time.Duration // retry delay cap (default 10 s)
	SyncForever     bool          // keep probing for new servers when all expected are held

	// CountServerLeases takes the number of servers behind the one host
	// from their Leases (ANP's --count-server-leases), watched through
	// Kubeconfig (empty: in-cluster config).
	CountServerLeases  bool
	LeaseNamespace     string // default kube-system
	LeaseLabel         string // label selector of the servers' leases (default k8s-app=konnectivity-server)
	ServerCountSource  string // default (leases when counted, else answers) or max
	Kubeconfig         string
	KubeAPIContentType string        // default application/vnd.kubernetes.protobuf
	KeepaliveTime      time.Duration // gRPC keepalive (default 30 s, the least servers allow; ANP's is 1 h)

	DialTimeout time.Duration // backend dial bound (default 10 s)
	// AllowedDestinations: the destination policy (policy.Parse syntax);
	// empty allows everything.
	AllowedDestinations string
	QueueBytes          int // per-connection receive queue (default 16 MiB)
	// StallTimeout: a full queue whose backend takes nothing this long is closed (default 50 ms).
	StallTimeout time.Duration
	// StreamWindow: native link, receive window per tunneled connection (default 4 MiB).
	StreamWindow uint32
	// NativeMux: native link, the session layer (native.MuxYamux, the
	// default, or native.MuxIsthmus, the prototype).
	NativeMux string
	// MaxPendingDials bounds the dial requests from one server in flight
	// (received, not yet answered) on either link (default 1024); more
	// are refused at once, so that no server can make the agent hold
	// unbounded dials.
	MaxPendingDials int
	// MaxControlMessageBytes bounds a native link control message from a
	// server (default 64 KiB); a larger one ends that link.
	MaxControlMessageBytes int

	HealthHost      string // empty = all interfaces
	HealthPort      int    // /healthz, /readyz, /metrics (default 8093); 0 = off
	AdminHost       string // default 127.0.0.1
	AdminPort       int    // /metrics, /debug/pprof with EnableProfiling (default 8094); 0 = off
	EnableProfiling bool

	GracefulShutdownTimeout time.Duration // after DRAIN, wait this long for open connections; 0 = until they end
}

// Link choices.
const (
	LinkAuto   = "auto"
	LinkNative = "native"
	LinkANP    = "anp"
)

// DefaultConfig returns ANP's defaults (and isthmus's for new settings).
func DefaultConfig() Config {
	id := os.Getenv("PROXY_AGENT_ID")
	if id == "" {
		id = randomID()
	}
	return Config{
		ProxyServerHosts:       []string{"127.0.0.1"},
		ProxyServerPort:        8091,
		Link:                   LinkAuto,
		AgentID:                id,
		SyncInterval:           time.Second,
		LeaseNamespace:         "kube-system",
		LeaseLabel:             "k8s-app=konnectivity-server",
		ServerCountSource:      CountSourceDefault,
		KubeAPIContentType:     "application/vnd.kubernetes.protobuf",
		SyncIntervalCap:        10 * time.Second,
		KeepaliveTime:          30 * time.Second,
		DialTimeout:            anp.DefaultDialTimeout,
		QueueBytes:             anp.DefaultQueueBytes,
		StallTimeout:           anp.DefaultStallTimeout,
		StreamWindow:           native.DefaultStreamWindow,
		MaxPendingDials:        link.DefaultPendingDials,
		MaxControlMessageBytes: native.MaxControlFrame,
		HealthPort:             8093,
		AdminHost:              "127.0.0.1",
		AdminPort:              8094,
	}
}

// Validate checks c and names the flag at fault.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(c.ProxyServerHosts) == 0 {
		bad("--proxy-server-host is empty: give one host, a comma-separated list, or a load balancer")
	}
	seen := map[string]bool{}
	for _, h := range c.ProxyServerHosts {
		if h == "" || strings.ContainsAny(h, " /") {
			bad("--proxy-server-host: %q is not a host name or address", h)
		}
		if _, _, err := net.SplitHostPort(h); err == nil && !strings.HasPrefix(h, "[") && strings.Count(h, ":") == 1 {
			bad("--proxy-server-host: %q carries a port; give the port with --proxy-server-port", h)
		}
		if seen[h] {
			bad("--proxy-server-host: %q listed twice", h)
		}
		seen[h] = true
	}
	switch c.Link {
	case LinkAuto, LinkNative, LinkANP:
	default:
		bad("--link %q: allowed are auto, native and anp", c.Link)
	}
	if c.ProxyServerPort <= 0 || c.ProxyServerPort > 65535 {
		bad("--proxy-server-port %d: want 1-65535", c.ProxyServerPort)
	}
	if (c.AgentCert == "") != (c.AgentKey == "") {
		bad("--agent-cert and --agent-key go together")
	}
	if strings.TrimSpace(c.AgentID) == "" {
		bad("--agent-id is empty")
	}
	if _, err := ident.Parse(c.AgentIdentifiers); err != nil {
		bad("--agent-identifiers: %w", err)
	}
	switch c.ServerCountSource {
	case "", CountSourceDefault, CountSourceMax:
	default:
		bad("--server-count-source %q: allowed are %q and %q", c.ServerCountSource, CountSourceDefault, CountSourceMax)
	}
	if c.CountServerLeases {
		if len(c.ProxyServerHosts) != 1 {
			bad("--count-server-leases counts the servers behind ONE --proxy-server-host (a load balancer or a name that reaches every server); %d hosts were given, and each listed host is one server", len(c.ProxyServerHosts))
		}
		if strings.TrimSpace(c.LeaseNamespace) == "" {
			bad("--lease-namespace is empty: give the namespace of the servers' leases (proxy-server --lease-namespace)")
		}
		if _, err := labels.Parse(c.LeaseLabel); err != nil || strings.TrimSpace(c.LeaseLabel) == "" {
			bad("--lease-label %q: want a label selector such as k8s-app=konnectivity-server (proxy-server --lease-label)", c.LeaseLabel)
		}
	}
	if c.SyncInterval <= 0 || c.SyncIntervalCap < c.SyncInterval {
		bad("--sync-interval (%v) must be > 0 and <= --sync-interval-cap (%v)", c.SyncInterval, c.SyncIntervalCap)
	}
	if _, err := policy.Parse(c.AllowedDestinations); err != nil {
		bad("--allowed-destinations: %w", err)
	}
	errs = append(errs, c.validateTuning()...)
	for name, p := range map[string]int{"--health-server-port": c.HealthPort, "--admin-server-port": c.AdminPort} {
		if p < 0 || p > 65535 {
			bad("%s %d: want 0 (off) to 65535", name, p)
		}
	}
	if c.GracefulShutdownTimeout < 0 {
		bad("--graceful-shutdown-timeout must not be negative")
	}
	return errors.Join(errs...)
}

// validateTuning checks the link's tuning and bounds.
func (c *Config) validateTuning() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.DialTimeout <= 0 {
		bad("--backend-dial-timeout %v: want > 0", c.DialTimeout)
	}
	if c.StreamWindow < 256<<10 || c.StreamWindow > 1<<30 {
		bad("--stream-window %d: want 262144 (256 KiB) to 1073741824 (1 GiB)", c.StreamWindow)
	}
	if err := native.CheckMux(c.NativeMux); err != nil {
		bad("--native-mux: %v", err)
	} else if c.Link == LinkANP && c.NativeMux == native.MuxIsthmus {
		bad("--native-mux=%s has no effect with --link=anp (the ANP link is gRPC, with no session layer to choose): drop one of the two", c.NativeMux)
	}
	if c.StallTimeout <= 0 {
		bad("--conn-stall-timeout %v: want > 0", c.StallTimeout)
	}
	if c.QueueBytes < 64<<10 {
		bad("--conn-queue-bytes %d: want at least 65536", c.QueueBytes)
	}
	if c.MaxPendingDials < 1 || c.MaxPendingDials > 1<<20 {
		bad("--max-pending-dials-per-server %d: want 1 to %d", c.MaxPendingDials, 1<<20)
	}
	if c.MaxControlMessageBytes < native.MinControlMessage || c.MaxControlMessageBytes > native.MaxControlMessage {
		bad("--max-control-message-bytes %d: want %d to %d", c.MaxControlMessageBytes, native.MinControlMessage, native.MaxControlMessage)
	}
	return errs
}
