// Package server assembles proxy-server: the frontend (gRPC or HTTP CONNECT,
// on a Unix socket or TCP with mandatory client certificates), the agent
// port, the health and admin ports, and their lifecycle.
package server

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"

	"isthmus.dev/proxy-server/routing"
	"isthmus.dev/tunnel/anp"
	"isthmus.dev/tunnel/leases"
	"isthmus.dev/tunnel/native"
)

// Frontend modes, as ANP's --mode spells them.
const (
	ModeGRPC        = "grpc"
	ModeHTTPConnect = "http-connect"
)

// Content types of --kube-api-content-type.
const (
	ContentTypeProtobuf = "application/vnd.kubernetes.protobuf"
	ContentTypeJSON     = "application/json"
)

// Config is everything proxy-server needs. Flags map onto it in app/; the
// zero value of a field means what its comment says, DefaultConfig gives
// ANP's defaults.
type Config struct {
	Mode          string // grpc or http-connect (default grpc)
	UDSName       string // Unix socket of the frontend; empty = TCP on ServerPort
	DeleteUDSFile bool   // replace a socket left at UDSName before listening (default true); never a non-socket
	UDSGroup      string // group (name or gid) that may connect to UDSName: mode 0660; empty = owner only, 0600

	ServerBindAddress string // frontend TCP bind address; empty = all
	ServerPort        int    // frontend TCP port (default 8090); must be 0 with UDSName
	ServerCert        string // frontend TLS certificate (TCP mode, required)
	ServerKey         string // frontend TLS key (TCP mode, required)
	ServerCACert      string // CA that signs client certificates (TCP mode, required)

	AgentBindAddress string // agent port bind address; empty = all
	AgentPort        int    // agent port (default 8091; deployments use 8132)
	ClusterCert      string // agent-port TLS certificate (required)
	ClusterKey       string // agent-port TLS key (required)
	ClusterCACert    string // if set, agents must present a certificate it signed

	// Token authentication of agents is on when all three are set: an
	// agent must send a token of system:serviceaccount:<AgentNamespace>:
	// <AgentServiceAccount> for AuthenticationAudience. With ClusterCACert
	// as well, an agent needs both.
	AgentNamespace         string
	AgentServiceAccount    string
	AuthenticationAudience string
	// AllowUnauthenticatedAgents lets the server start with neither
	// ClusterCACert nor token authentication (default false: it refuses).
	AllowUnauthenticatedAgents bool

	// The Kubernetes client of token authentication and leases.
	Kubeconfig         string  // kubeconfig file; empty = in-cluster configuration
	KubeconfigQPS      float32 // 0 = client-go's default (5)
	KubeconfigBurst    int     // 0 = client-go's default (10)
	KubeAPIContentType string  // default application/vnd.kubernetes.protobuf
	// Client, if set, is used instead of one built from the fields above.
	Client kubernetes.Interface

	// Server leases (coordination.k8s.io) for agents that count servers.
	EnableLeaseController bool
	LeaseNamespace        string        // default kube-system
	LeaseLabel            string        // "k=v,k2=v2" (default k8s-app=konnectivity-server)
	LeaseDuration         time.Duration // default 30s, whole seconds
	LeaseRenewalInterval  time.Duration // default 15s, shorter than LeaseDuration
	LeaseGCInterval       time.Duration // default 15s

	HealthBindAddress string // empty = all
	HealthPort        int    // /healthz, /readyz, /metrics (default 8092); 0 = off
	AdminBindAddress  string // default 127.0.0.1
	AdminPort         int    // /metrics and, with EnableProfiling, /debug/pprof (default 8095); 0 = off
	EnableProfiling   bool
	// EnableContentionProfiling samples blocking and mutex contention for
	// /debug/pprof/block and /debug/pprof/mutex; needs EnableProfiling.
	EnableContentionProfiling bool

	ServerID    string // this server's id (default: $PROXY_SERVER_ID or the host name)
	ServerCount int    // number of proxy-servers agents should hold (default 1)

	ProxyStrategies []string // default ["default"]

	BackendDialTimeout      time.Duration // bounds every dial through the tunnel; 0 = 15 s
	GracefulShutdownTimeout time.Duration // wait for in-flight connections at shutdown; 0 = do not wait
	KeepaliveTime           time.Duration // gRPC keepalive on the agent port (default 10 s; ANP's is 1 h)
	FrontendKeepaliveTime   time.Duration // gRPC keepalive on the frontend (default 1 h)
	QueueBytes              int           // per-connection receive queue on ANP links (default 16 MiB)
	StallTimeout            time.Duration // a full queue whose reader takes nothing this long is closed (default 50 ms)
	StreamWindow            uint32        // native link: receive window per tunneled connection (default 4 MiB)
	NativeMux               string        // native link: session layer, native.MuxYamux (default) or native.MuxIsthmus (prototype)
	TLSMinVersion           string        // VersionTLS12 (default) or VersionTLS13
	CipherSuites            []string      // TLS 1.2 cipher suites by Go name; empty = Go's defaults

	Bounds // what clients and agents may send, how slowly, how much (bounds.go)
}

// DefaultConfig returns ANP's defaults.
func DefaultConfig() Config {
	id := os.Getenv("PROXY_SERVER_ID")
	if id == "" {
		id, _ = os.Hostname()
	}
	return Config{
		Mode:                  ModeGRPC,
		DeleteUDSFile:         true,
		ServerPort:            8090,
		AgentPort:             8091,
		HealthPort:            8092,
		AdminBindAddress:      "127.0.0.1",
		AdminPort:             8095,
		KubeAPIContentType:    ContentTypeProtobuf,
		LeaseNamespace:        "kube-system",
		LeaseLabel:            "k8s-app=konnectivity-server",
		LeaseDuration:         30 * time.Second,
		LeaseRenewalInterval:  15 * time.Second,
		LeaseGCInterval:       15 * time.Second,
		ServerID:              id,
		ServerCount:           1,
		ProxyStrategies:       []string{routing.Default},
		BackendDialTimeout:    15 * time.Second,
		KeepaliveTime:         10 * time.Second,
		FrontendKeepaliveTime: time.Hour,
		QueueBytes:            anp.DefaultQueueBytes,
		StallTimeout:          anp.DefaultStallTimeout,
		StreamWindow:          native.DefaultStreamWindow,
		Bounds:                DefaultBounds(),
	}
}

// TokenAuth reports whether agents are authenticated by service-account
// tokens.
func (c *Config) TokenAuth() bool {
	return c.AgentNamespace != "" && c.AgentServiceAccount != "" && c.AuthenticationAudience != ""
}

// needsClient reports whether the server talks to kube-apiserver.
func (c *Config) needsClient() bool { return c.TokenAuth() || c.EnableLeaseController }

// Validate checks c and names the flag at fault and how to fix it.
func (c *Config) Validate() error {
	var errs []error
	for _, check := range []func() []error{c.validateFrontend, c.validateAgentPort, c.validateAgentAuth,
		c.validateKube, c.validateLeases, c.validateTuning, c.Bounds.validate} {
		errs = append(errs, check()...)
	}
	return errors.Join(errs...)
}

func (c *Config) validateFrontend() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	switch c.Mode {
	case ModeGRPC, ModeHTTPConnect:
	default:
		bad("--mode %q: allowed are %q and %q", c.Mode, ModeGRPC, ModeHTTPConnect)
	}
	if c.UDSName != "" {
		if c.ServerPort != 0 {
			bad("--server-port must be 0 when --uds-name is set (the frontend listens on the socket, not on a port); got %d", c.ServerPort)
		}
		if c.ServerCert != "" || c.ServerKey != "" || c.ServerCACert != "" {
			bad("--server-cert, --server-key and --server-ca-cert are for the TCP frontend and have no use with --uds-name (the socket's file permissions guard it): remove them, or remove --uds-name")
		}
		if c.UDSGroup != "" {
			if _, err := udsGroupID(c.UDSGroup); err != nil {
				errs = append(errs, err)
			}
		}
		return errs
	}
	if c.UDSGroup != "" {
		bad("--uds-group %q has no use without --uds-name (it is the group of the frontend's Unix socket): remove it, or set --uds-name", c.UDSGroup)
	}
	if c.ServerPort <= 0 || c.ServerPort > 65535 {
		bad("--server-port %d: want 1-65535, or set --uds-name for a Unix socket", c.ServerPort)
	}
	if c.ServerCert == "" || c.ServerKey == "" || c.ServerCACert == "" {
		bad("the TCP frontend needs --server-cert, --server-key and --server-ca-cert (clients must present a certificate); or use --uds-name")
	}
	return errs
}

func (c *Config) validateAgentPort() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.AgentPort <= 0 || c.AgentPort > 65535 {
		bad("--agent-port %d: want 1-65535", c.AgentPort)
	}
	if c.ClusterCert == "" || c.ClusterKey == "" {
		bad("--cluster-cert and --cluster-key are required: the agent port always speaks TLS")
	}
	for name, p := range map[string]int{"--health-port": c.HealthPort, "--admin-port": c.AdminPort} {
		if p < 0 || p > 65535 {
			bad("%s %d: want 0 (off) to 65535", name, p)
		}
	}
	if c.EnableContentionProfiling && !c.EnableProfiling {
		bad("--enable-contention-profiling needs --enable-profiling (it adds the block and mutex profiles to /debug/pprof)")
	}
	if c.ServerID == "" {
		bad("--server-id is empty and no host name is known: set --server-id or PROXY_SERVER_ID")
	}
	if c.ServerCount < 1 {
		bad("--server-count %d: want 1 or more", c.ServerCount)
	}
	return errs
}

// ErrNoAgentAuth is the refusal to start a server that would accept
// any TLS client as an agent.
var ErrNoAgentAuth = errors.New(`agents would not be authenticated: any TLS client reaching the agent port could register as an agent and be sent kube-apiserver's traffic (logs, exec, port-forward, webhooks). Add one of, or both:
  --cluster-ca-cert=<CA file>   agents present a client certificate signed by this CA (proxy-agent --agent-cert/--agent-key)
  --agent-namespace=kube-system --agent-service-account=konnectivity-agent --authentication-audience=system:konnectivity-server
                                agents send a service-account token (proxy-agent --service-account-token-path), checked by TokenReview through --kubeconfig (empty: in-cluster)
or, only if nothing but trusted hosts can reach the agent port, --allow-unauthenticated-agents`)

func (c *Config) validateAgentAuth() []error {
	set := map[string]bool{"--agent-namespace": c.AgentNamespace != "", "--agent-service-account": c.AgentServiceAccount != "",
		"--authentication-audience": c.AuthenticationAudience != ""}
	var missing []string
	for _, name := range []string{"--agent-namespace", "--agent-service-account", "--authentication-audience"} {
		if !set[name] {
			missing = append(missing, name)
		}
	}
	switch {
	case len(missing) > 0 && len(missing) < 3:
		return []error{fmt.Errorf("--agent-namespace, --agent-service-account and --authentication-audience turn token authentication on together: add %s", strings.Join(missing, " and "))}
	case c.ClusterCACert == "" && !c.TokenAuth() && !c.AllowUnauthenticatedAgents:
		return []error{ErrNoAgentAuth}
	}
	return nil
}

func (c *Config) validateKube() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.Kubeconfig != "" && c.Client == nil {
		if _, err := os.Stat(c.Kubeconfig); err != nil {
			bad("--kubeconfig: %w", err)
		}
	}
	if c.KubeconfigQPS < 0 {
		bad("--kubeconfig-qps %v: want 0 (client-go's default) or more", c.KubeconfigQPS)
	}
	if c.KubeconfigBurst < 0 {
		bad("--kubeconfig-burst %d: want 0 (client-go's default) or more", c.KubeconfigBurst)
	}
	switch c.KubeAPIContentType {
	case ContentTypeProtobuf, ContentTypeJSON:
	default:
		bad("--kube-api-content-type %q: allowed are %s and %s", c.KubeAPIContentType, ContentTypeProtobuf, ContentTypeJSON)
	}
	return errs
}

func (c *Config) validateLeases() []error {
	if !c.EnableLeaseController {
		return nil
	}
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.LeaseNamespace == "" {
		bad("--lease-namespace is empty: name the namespace of the server leases (default kube-system)")
	}
	if _, err := leases.ParseLabels(c.LeaseLabel); err != nil {
		bad("--lease-label %q: %w", c.LeaseLabel, err)
	}
	if c.LeaseDuration < time.Second || c.LeaseDuration%time.Second != 0 {
		bad("--lease-duration %v: a lease's duration is whole seconds, at least 1s", c.LeaseDuration)
	}
	if c.LeaseRenewalInterval <= 0 || c.LeaseRenewalInterval >= c.LeaseDuration {
		bad("--lease-renewal-interval %v must be positive and shorter than --lease-duration %v, or the lease expires between renewals", c.LeaseRenewalInterval, c.LeaseDuration)
	}
	if c.LeaseGCInterval <= 0 {
		bad("--lease-gc-interval %v: want more than 0", c.LeaseGCInterval)
	}
	return errs
}

func (c *Config) validateTuning() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(c.ProxyStrategies) == 0 {
		bad("--proxy-strategies is empty: allowed are default, destHost, defaultRoute, cidr")
	}
	if c.BackendDialTimeout < 0 {
		bad("--backend-dial-timeout %v: want 0 (the default bound) or more", c.BackendDialTimeout)
	}
	if c.GracefulShutdownTimeout < 0 {
		bad("--graceful-shutdown-timeout %v: want 0 (close at once) or more", c.GracefulShutdownTimeout)
	}
	if c.StreamWindow < 256<<10 || c.StreamWindow > 1<<30 {
		bad("--stream-window %d: want 262144 (256 KiB) to 1073741824 (1 GiB)", c.StreamWindow)
	}
	if err := native.CheckMux(c.NativeMux); err != nil {
		bad("--native-mux: %v", err)
	}
	if c.StallTimeout <= 0 {
		bad("--conn-stall-timeout %v: want > 0", c.StallTimeout)
	}
	if c.QueueBytes < 64<<10 {
		bad("--conn-queue-bytes %d: want at least 65536", c.QueueBytes)
	}
	if _, err := tlsVersion(c.TLSMinVersion); err != nil {
		errs = append(errs, err)
	}
	if _, err := cipherSuites(c.CipherSuites); err != nil {
		errs = append(errs, err)
	}
	return errs
}
