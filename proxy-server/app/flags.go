package app

import (
	"isthmus.dev/proxy-server/server"
)

func (c *Command) addFrontendFlags() {
	fs, cfg := c.fs, &c.Config
	fs.StringVar(&cfg.Mode, "mode", cfg.Mode, "frontend protocol: grpc (konnectivity-client) or http-connect (HTTP CONNECT)")
	fs.StringVar(&cfg.UDSName, "uds-name", cfg.UDSName, "serve the frontend on this Unix socket (then --server-port must be 0); empty: TCP on --server-port")
	fs.BoolVar(&cfg.DeleteUDSFile, "delete-existing-uds-file", cfg.DeleteUDSFile, "replace a socket left at --uds-name (by a server that died) before listening; a file there that is not a socket is never removed: the server refuses to start")
	fs.StringVar(&cfg.UDSGroup, "uds-group", cfg.UDSGroup, "group (name or numeric gid) that may connect to the --uds-name socket: the socket is then mode 0660 and owned by that group; empty: mode 0600, only this server's user (and root) may connect. kube-apiserver must run as root, as this server's user, or in this group")
	fs.StringVar(&cfg.ServerBindAddress, "server-bind-address", cfg.ServerBindAddress, "frontend TCP bind address (empty: all interfaces)")
	fs.IntVar(&cfg.ServerPort, "server-port", cfg.ServerPort, "frontend TCP port; 0 with --uds-name")
	fs.StringVar(&cfg.ServerCert, "server-cert", cfg.ServerCert, "frontend TLS certificate (TCP frontend only)")
	fs.StringVar(&cfg.ServerKey, "server-key", cfg.ServerKey, "frontend TLS key (TCP frontend only)")
	fs.StringVar(&cfg.ServerCACert, "server-ca-cert", cfg.ServerCACert, "CA that signs the frontend clients' certificates (TCP frontend only; required there: clients must present one)")
	fs.DurationVar(&cfg.FrontendKeepaliveTime, "frontend-keepalive-time", cfg.FrontendKeepaliveTime, "gRPC keepalive interval on the frontend")
}

func (c *Command) addAgentPortFlags() {
	fs, cfg := c.fs, &c.Config
	fs.StringVar(&cfg.AgentBindAddress, "agent-bind-address", cfg.AgentBindAddress, "agent port bind address (empty: all interfaces)")
	fs.IntVar(&cfg.AgentPort, "agent-port", cfg.AgentPort, "agent port (deployments use 8132); ALPN picks the native link (isthmus agents) or the ANP gRPC link (upstream agents)")
	fs.StringVar(&cfg.ClusterCert, "cluster-cert", cfg.ClusterCert, "agent port TLS certificate (required; re-read when the file changes)")
	fs.StringVar(&cfg.ClusterKey, "cluster-key", cfg.ClusterKey, "agent port TLS key (required)")
	fs.DurationVar(&cfg.KeepaliveTime, "keepalive-time", cfg.KeepaliveTime, "gRPC keepalive on the agent port: an ANP agent link silent this long is pinged, and dropped when the ping gets no answer within 20 s (ANP's default, 1h, leaves an agent behind a dead path undetected for an hour)")
	fs.StringVar(&cfg.ServerID, "server-id", cfg.ServerID, "this server's unique id, sent to agents and naming its lease (default: $PROXY_SERVER_ID, else the host name)")
	fs.IntVar(&cfg.ServerCount, "server-count", cfg.ServerCount, "number of proxy-servers; agents keep connecting until they hold this many (agents with --count-server-leases count leases instead)")
	fs.StringVar(&c.strategies, "proxy-strategies", c.strategies, "comma-separated agent choice strategies, tried in order: default (any agent), destHost (the agent whose identifiers name the destination), defaultRoute (agents with default-route=true), cidr (agents whose cidr= contains it)")
}

func (c *Command) addAgentAuthFlags() {
	fs, cfg := c.fs, &c.Config
	fs.StringVar(&cfg.ClusterCACert, "cluster-ca-cert", cfg.ClusterCACert, "agents must present a client certificate signed by this CA (alone, or together with token authentication: then an agent needs both)")
	fs.StringVar(&cfg.AgentNamespace, "agent-namespace", cfg.AgentNamespace, "token authentication: the namespace of the agents' service account (with --agent-service-account and --authentication-audience)")
	fs.StringVar(&cfg.AgentServiceAccount, "agent-service-account", cfg.AgentServiceAccount, "token authentication: the agents' service account; only system:serviceaccount:<agent-namespace>:<this> is accepted")
	fs.StringVar(&cfg.AuthenticationAudience, "authentication-audience", cfg.AuthenticationAudience, "token authentication: the audience the agents' tokens must be issued for, e.g. system:konnectivity-server")
	fs.BoolVar(&cfg.AllowUnauthenticatedAgents, "allow-unauthenticated-agents", cfg.AllowUnauthenticatedAgents, "start without --cluster-ca-cert and without token authentication: ANY TLS client that reaches the agent port can register as an agent and receive kube-apiserver's traffic; only for agent ports no untrusted host can reach")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", cfg.Kubeconfig, "kubeconfig of proxy-server's own identity toward kube-apiserver, for TokenReviews and leases (empty: the pod's in-cluster configuration); it needs create on tokenreviews, and with leases get/create/update/list/delete on leases")
	fs.Float32Var(&cfg.KubeconfigQPS, "kubeconfig-qps", cfg.KubeconfigQPS, "request rate limit of the kube-apiserver client (0: client-go's default, 5)")
	fs.IntVar(&cfg.KubeconfigBurst, "kubeconfig-burst", cfg.KubeconfigBurst, "request burst of the kube-apiserver client (0: client-go's default, 10)")
	fs.StringVar(&cfg.KubeAPIContentType, "kube-api-content-type", cfg.KubeAPIContentType, "content type of requests to kube-apiserver: "+server.ContentTypeProtobuf+" or "+server.ContentTypeJSON)
}

func (c *Command) addLeaseFlags() {
	fs, cfg := c.fs, &c.Config
	fs.BoolVar(&cfg.EnableLeaseController, "enable-lease-controller", cfg.EnableLeaseController, "publish and renew this server's Lease, cull expired ones, and delete it on a graceful stop, so that agents with --count-server-leases know how many servers there are")
	fs.StringVar(&cfg.LeaseNamespace, "lease-namespace", cfg.LeaseNamespace, "namespace of the server leases")
	fs.StringVar(&cfg.LeaseLabel, "lease-label", cfg.LeaseLabel, "labels of the server leases, key=value pairs separated by commas; expired leases with these labels are culled")
	fs.DurationVar(&cfg.LeaseDuration, "lease-duration", cfg.LeaseDuration, "how long a server's lease stays valid after its last renewal (whole seconds)")
	fs.DurationVar(&cfg.LeaseRenewalInterval, "lease-renewal-interval", cfg.LeaseRenewalInterval, "how often the server renews its lease (shorter than --lease-duration)")
	fs.DurationVar(&cfg.LeaseGCInterval, "lease-gc-interval", cfg.LeaseGCInterval, "how often expired leases are culled")
}

func (c *Command) addOpsFlags() {
	fs, cfg := c.fs, &c.Config
	fs.StringVar(&cfg.HealthBindAddress, "health-bind-address", cfg.HealthBindAddress, "health port bind address (empty: all interfaces)")
	fs.IntVar(&cfg.HealthPort, "health-port", cfg.HealthPort, "port for /healthz, /readyz (ready once an agent is connected) and /metrics; 0 turns it off")
	fs.StringVar(&cfg.AdminBindAddress, "admin-bind-address", cfg.AdminBindAddress, "admin port bind address")
	fs.IntVar(&cfg.AdminPort, "admin-port", cfg.AdminPort, "port for /metrics and, with --enable-profiling, /debug/pprof; 0 turns it off")
	fs.BoolVar(&cfg.EnableProfiling, "enable-profiling", cfg.EnableProfiling, "serve /debug/pprof on the admin port")
	fs.BoolVar(&cfg.EnableContentionProfiling, "enable-contention-profiling", cfg.EnableContentionProfiling, "with --enable-profiling, also record where goroutines block and wait for locks (/debug/pprof/block and /debug/pprof/mutex); costs some CPU")
	fs.DurationVar(&cfg.GracefulShutdownTimeout, "graceful-shutdown-timeout", cfg.GracefulShutdownTimeout, "on SIGTERM, stop taking clients and wait up to this long for open connections to finish (0: close at once)")
}

func (c *Command) addTuningFlags() {
	fs, cfg := c.fs, &c.Config
	fs.DurationVar(&cfg.BackendDialTimeout, "backend-dial-timeout", cfg.BackendDialTimeout, "bound on every dial through the tunnel, the agent's answer included (0: the default bound; unlike ANP, where 0 waits forever, isthmus never lets a dial hang)")
	fs.StringVar(&cfg.TLSMinVersion, "tls-min-version", cfg.TLSMinVersion, "minimum TLS version of the agent port and the TCP frontend: VersionTLS12 (empty: the default) or VersionTLS13; below 1.2 is refused")
	fs.StringSliceVar(&cfg.CipherSuites, "cipher-suites", cfg.CipherSuites, "TLS 1.2 cipher suites by Go name, comma-separated (empty: Go's secure defaults; no effect on TLS 1.3)")
	fs.IntVar(&cfg.QueueBytes, "conn-queue-bytes", cfg.QueueBytes, "per-connection receive queue on ANP agent links (the ANP wire has no flow control): a client slower than its backend throttles the link once its queue is full")
	fs.StringVar(&cfg.NativeMux, "native-mux", "yamux", "native link: the session layer at this end, yamux (hashicorp/yamux, the default) or isthmus (a prototype speaking the same frames with fewer goroutine hand-offs: cheaper small messages; either end may run either)")
	fs.Uint32Var(&cfg.StreamWindow, "stream-window", cfg.StreamWindow, "native link: how many bytes one tunneled connection may have in flight toward this server (its receive window); the 4 MiB default fills a 1 Gbit/s link at 20 ms round trip")
	fs.DurationVar(&cfg.StallTimeout, "conn-stall-timeout", cfg.StallTimeout, "a connection whose queue is full and whose client takes nothing for this long is closed alone, so that it cannot stall the agent's other connections longer")
	fs.IntVar(&c.xfrChannel, "xfr-channel-size", 10, "accepted for ANP compatibility (must be > 0); isthmus bounds queues in bytes instead (--conn-queue-bytes)")
	fs.Bool("warn-on-channel-limit", true, "accepted for ANP compatibility (deprecated upstream); no effect")
	_ = fs.MarkDeprecated("warn-on-channel-limit", "it has no effect")
}

// addBoundsFlags: what clients and agents may send, how slowly, and how
// much they may have waiting. Each bound hit counts in
// limit_hits_total{limit} and is logged (a few lines per 10 s per limit).
func (c *Command) addBoundsFlags() {
	fs, cfg := c.fs, &c.Config
	fs.IntVar(&cfg.ConnectMaxHeaderBytes, "connect-max-header-bytes", cfg.ConnectMaxHeaderBytes, "http-connect frontend: largest CONNECT request header read, in bytes; a larger one is answered 431 without being read whole (kube-apiserver sends about 60 bytes)")
	fs.DurationVar(&cfg.ConnectHeaderTimeout, "connect-header-timeout", cfg.ConnectHeaderTimeout, "http-connect frontend: time from accept to the end of the CONNECT request header, the TLS handshake of the TCP frontend included; a slower client (slowloris) is answered 408 and cut")
	fs.IntVar(&cfg.MaxPendingDialsPerClient, "max-pending-dials-per-client", cfg.MaxPendingDialsPerClient, "dials one frontend client may have waiting for an agent's answer; more are refused at once (http-connect: 429). A client is a process on the --uds-name socket, or an IP address on the TCP frontend")
	fs.IntVar(&cfg.MaxPendingDialsPerAgent, "max-pending-dials-per-agent", cfg.MaxPendingDialsPerAgent, "dials that may wait for one agent's answer; an agent at this bound is passed over, and a dial no other agent can carry is refused at once (reason busy; http-connect: 503)")
	fs.IntVar(&cfg.MaxLinksPerAgent, "max-links-per-agent", cfg.MaxLinksPerAgent, "links one agent id may hold to this server at once (an agent holds one; a second lives briefly while it reconnects); more are refused, and the agent logs why")
	fs.DurationVar(&cfg.AgentHandshakeTimeout, "agent-handshake-timeout", cfg.AgentHandshakeTimeout, "agent port: time an agent has for its TLS handshake, and again for its link's handshake (native hello, gRPC preface); a slower client is cut")
	fs.IntVar(&cfg.MaxControlMessageBytes, "max-control-message-bytes", cfg.MaxControlMessageBytes, "native link: largest control message (hello, drain) accepted from an agent, in bytes; a larger one ends that agent's link as a protocol violation")
}
