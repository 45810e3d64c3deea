// Package app is proxy-agent's command line: every flag, its help, and
// their mapping onto agent.Config, parsed and validated without starting
// anything (so that tests can hold every ANP flag against it).
package app

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"isthmus.dev/proxy-agent/agent"
	"isthmus.dev/tunnel/flagcompat"
)

// Name is the program's name in --help, --version and logs.
const Name = "proxy-agent"

const usage = `proxy-agent: the isthmus tunnel agent, a drop-in for Konnectivity's proxy-agent.

It dials OUT to the proxy-server's agent port (only outbound traffic is
needed), holds a tunnel to each server, and dials backends on their behalf.
--proxy-server-host takes one host, a comma-separated list (one tunnel to
each), or a load balancer: then the agent connects until it holds as many
distinct servers as they report (serverCount), or, with
--count-server-leases, as many as hold a live Lease.

It proves who it is with a client certificate (--agent-cert/--agent-key, for
servers started with --cluster-ca-cert) and/or a service-account token
(--service-account-token-path, for servers doing TokenReview; the file is
read again at every connect, so a token the kubelet rotates is picked up).

On SIGTERM the agent sends DRAIN (servers prefer other agents for new
connections) and exits when its open connections have finished, after
--graceful-shutdown-timeout if set, or at a second signal.

Example (kubeadm's konnectivity guide, as a DaemonSet):
  proxy-agent --proxy-server-host=10.0.0.1 --proxy-server-port=8132 \
    --ca-cert=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt \
    --service-account-token-path=/var/run/secrets/tokens/konnectivity-agent-token \
    --agent-identifiers="host=$NODE_NAME&ipv4=$HOST_IP"

Flags:
`

// Options are a parsed command line.
type Options struct {
	Config  agent.Config
	Logging *flagcompat.Logging
	Version bool // --version: print it and exit
	// ContentionProfiling: with --enable-profiling, also sample blocking
	// and mutex contention (/debug/pprof/block, /debug/pprof/mutex).
	ContentionProfiling bool
}

// refused are ANP flags whose ANP meaning isthmus does not offer: set, they
// stop the start with the reason rather than being silently ignored.
var refused = flagcompat.Refused{}

// NewFlagSet returns proxy-agent's flags, bound to a fresh Options that
// holds the defaults.
func NewFlagSet(stderr io.Writer) (*pflag.FlagSet, *Options, func() error) {
	o := &Options{Config: agent.DefaultConfig()}
	c := &o.Config
	hosts := strings.Join(c.ProxyServerHosts, ",")
	fs := pflag.NewFlagSet(Name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage, fs.FlagUsages()) }

	addServerFlags(fs, c, &hosts)
	addCountFlags(fs, c)
	addBackendFlags(fs, c)
	addPortFlags(fs, o)

	// Accepted for ANP compatibility.
	xfr := fs.Int("xfr-channel-size", 150, "accepted for ANP compatibility (> 0); isthmus bounds queues in bytes (--conn-queue-bytes)")
	fs.Duration("probe-interval", time.Second, "accepted for ANP compatibility; isthmus sees a lost tunnel at once, without probing")
	fs.Bool("warn-on-channel-limit", false, "accepted for ANP compatibility; no effect")

	o.Logging = flagcompat.AddLogging(fs)
	version := flagcompat.AddVersion(fs)
	refused.Register(fs)

	complete := func() error {
		if o.Version = *version; o.Version {
			return nil
		}
		c.ProxyServerHosts = nil
		for _, h := range strings.Split(hosts, ",") {
			if h = strings.TrimSpace(h); h != "" {
				c.ProxyServerHosts = append(c.ProxyServerHosts, h)
			}
		}
		if *xfr <= 0 {
			return fmt.Errorf("--xfr-channel-size %d: want > 0 (it has no effect in isthmus, but ANP refuses it too)", *xfr)
		}
		if o.ContentionProfiling && !c.EnableProfiling {
			return fmt.Errorf("--enable-contention-profiling needs --enable-profiling")
		}
		return nil
	}
	return fs, o, complete
}

// addServerFlags: the servers, the links, and how the agent proves who it is.
func addServerFlags(fs *pflag.FlagSet, c *agent.Config, hosts *string) {
	fs.StringVar(hosts, "proxy-server-host", *hosts, "proxy-server host, comma-separated list of hosts (one tunnel to each), or one load balancer")
	fs.IntVar(&c.ProxyServerPort, "proxy-server-port", c.ProxyServerPort, "proxy-server agent port (deployments use 8132)")
	fs.StringVar(&c.CACert, "ca-cert", "", "CA that signs the proxy-servers' certificates (empty: system roots)")
	fs.StringVar(&c.AgentCert, "agent-cert", "", "client certificate, for servers started with --cluster-ca-cert")
	fs.StringVar(&c.AgentKey, "agent-key", "", "key of --agent-cert")
	fs.StringVar(&c.TokenPath, "service-account-token-path", "", "service-account token sent to the servers as \"authorization: Bearer\" (servers doing TokenReview); read again at every connect")
	fs.StringVar(&c.Link, "link", c.Link, "agent link: auto (the isthmus native link when the server offers it, else the ANP gRPC link), native, or anp")
	fs.StringSliceVar(&c.ALPNProtos, "alpn-proto", nil, "extra ALPN protocols to offer (to share the server's port with another service)")
	fs.StringVar(&c.AgentID, "agent-id", c.AgentID, "this agent's unique id (default: $PROXY_AGENT_ID or a random id)")
	fs.StringVar(&c.AgentIdentifiers, "agent-identifiers", "", "what this agent can reach, URL query form: host=node1&ipv4=10.0.1.5&ipv6=fd00::5&cidr=10.244.1.0/24&default-route=true")
}

// addCountFlags: how many servers the agent holds behind one address.
func addCountFlags(fs *pflag.FlagSet, c *agent.Config) {
	fs.DurationVar(&c.SyncInterval, "sync-interval", c.SyncInterval, "first delay before reconnecting; doubles up to --sync-interval-cap, with jitter")
	fs.DurationVar(&c.SyncIntervalCap, "sync-interval-cap", c.SyncIntervalCap, "longest delay between reconnect attempts")
	fs.BoolVar(&c.SyncForever, "sync-forever", false, "behind a load balancer, when every server counted is held, keep probing every --sync-interval-cap for new ones")
	fs.BoolVar(&c.CountServerLeases, "count-server-leases", false, "take the number of servers behind the one --proxy-server-host from their live Leases (proxy-server --enable-lease-controller), watched through --kubeconfig")
	fs.StringVar(&c.LeaseNamespace, "lease-namespace", c.LeaseNamespace, "namespace of the servers' leases (with --count-server-leases)")
	fs.StringVar(&c.LeaseLabel, "lease-label", c.LeaseLabel, "label selector of the servers' leases (with --count-server-leases)")
	fs.StringVar(&c.ServerCountSource, "server-count-source", c.ServerCountSource, "with --count-server-leases: default (the leases' count) or max (the larger of the leases' count and the servers' serverCount)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig to read the servers' leases with (empty: the in-cluster service account)")
	fs.StringVar(&c.KubeAPIContentType, "kube-api-content-type", c.KubeAPIContentType, "content type of requests to kube-apiserver")
}

// addBackendFlags: the dials the agent makes for the servers.
func addBackendFlags(fs *pflag.FlagSet, c *agent.Config) {
	fs.DurationVar(&c.DialTimeout, "backend-dial-timeout", c.DialTimeout, "bound on each backend dial")
	fs.StringVar(&c.AllowedDestinations, "allowed-destinations", "", "destination policy: comma-separated CIDR, CIDR:port or CIDR:low-high entries (IPv6 as [fd00::/8]:443; a bare address is one host) that the agent dials for the servers; nothing else is ever dialled (empty: everything)")
	fs.IntVar(&c.QueueBytes, "conn-queue-bytes", c.QueueBytes, "per-connection receive queue on the ANP link (it has no flow control): a backend slower than its client throttles the link once its queue is full")
	fs.StringVar(&c.NativeMux, "native-mux", "yamux", "native link: the session layer at this end, yamux (hashicorp/yamux, the default) or isthmus (a prototype speaking the same frames with fewer goroutine hand-offs: cheaper small messages; either end may run either)")
	fs.Uint32Var(&c.StreamWindow, "stream-window", c.StreamWindow, "native link: how many bytes one tunneled connection may have in flight toward this agent (its receive window); the 4 MiB default fills a 1 Gbit/s link at 20 ms round trip")
	fs.DurationVar(&c.StallTimeout, "conn-stall-timeout", c.StallTimeout, "a connection whose queue is full and whose backend takes nothing for this long is closed alone, so that it cannot stall the link's other connections longer")
	fs.DurationVar(&c.KeepaliveTime, "keepalive-time", c.KeepaliveTime, "gRPC keepalive on the ANP link: a link silent this long is pinged, and dropped when the ping gets no answer within 20 s; below 30s, servers (ANP's and isthmus's) close the link for pinging too often (ANP's default, 1h, leaves a dead path unnoticed for an hour)")
	fs.IntVar(&c.MaxPendingDials, "max-pending-dials-per-server", c.MaxPendingDials, "dial requests from one proxy-server the agent holds at once (received, not yet answered: queued or dialing), on either link; more are refused at once as \"agent busy\", so that no server can make the agent hold unbounded dials")
	fs.IntVar(&c.MaxControlMessageBytes, "max-control-message-bytes", c.MaxControlMessageBytes, "native link: largest control message accepted from a proxy-server, in bytes; a larger one ends that link as a protocol violation")
}

// addPortFlags: health, admin and lifecycle.
func addPortFlags(fs *pflag.FlagSet, o *Options) {
	c := &o.Config
	fs.StringVar(&c.HealthHost, "health-server-host", "", "health port bind address (empty: all interfaces)")
	fs.IntVar(&c.HealthPort, "health-server-port", c.HealthPort, "port for /healthz, /readyz (ready = holds every expected server) and /metrics; 0 turns it off")
	fs.StringVar(&c.AdminHost, "admin-bind-address", c.AdminHost, "admin port bind address")
	fs.IntVar(&c.AdminPort, "admin-server-port", c.AdminPort, "port for /metrics and, with --enable-profiling, /debug/pprof; 0 turns it off")
	fs.BoolVar(&c.EnableProfiling, "enable-profiling", false, "serve /debug/pprof on the admin port")
	fs.BoolVar(&o.ContentionProfiling, "enable-contention-profiling", false, "with --enable-profiling, also sample blocking and lock contention (/debug/pprof/block and /mutex)")
	fs.DurationVar(&c.GracefulShutdownTimeout, "graceful-shutdown-timeout", 0, "after SIGTERM and DRAIN, wait at most this long for open connections (0: until they end)")
}

// Parse parses args and validates the result. --help gives pflag.ErrHelp;
// with --version, nothing else is checked.
func Parse(args []string, stderr io.Writer) (*Options, error) {
	fs, o, complete := NewFlagSet(stderr)
	if err := refused.Parse(fs, args); err != nil {
		return nil, err
	}
	if err := complete(); err != nil {
		return nil, err
	}
	if o.Version {
		return o, nil
	}
	if err := o.Config.Validate(); err != nil {
		return nil, err
	}
	return o, nil
}
