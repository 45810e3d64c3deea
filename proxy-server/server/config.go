// Package server assembles proxy-server: the frontend (gRPC or HTTP CONNECT,
// on a Unix socket or TCP with mandatory client certificates), the agent
// port, the health and admin ports, and their lifecycle.
package server

import (
	"errors"
	"fmt"
	"os"
	"time"

	"isthmus.dev/proxy-server/routing"
	"isthmus.dev/tunnel/anp"
	"isthmus.dev/tunnel/native"
)

// Frontend modes, as ANP's --mode spells them.
const (
	ModeGRPC        = "grpc"
	ModeHTTPConnect = "http-connect"
)

// Config is everything proxy-server needs. Flags map onto it in cmd/; the
// zero value of a field means what its comment says, DefaultConfig gives
// ANP's defaults.
type Config struct {
	Mode          string // grpc or http-connect (default grpc)
	UDSName       string // Unix socket of the frontend; empty = TCP on ServerPort
	DeleteUDSFile bool   // remove a stale socket file before listening (default true)

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

	HealthBindAddress string // empty = all
	HealthPort        int    // /healthz, /readyz, /metrics (default 8092); 0 = off
	AdminBindAddress  string // default 127.0.0.1
	AdminPort         int    // /metrics and, with EnableProfiling, /debug/pprof (default 8095); 0 = off
	EnableProfiling   bool

	ServerID    string // this server's id (default: $PROXY_SERVER_ID or the host name)
	ServerCount int    // number of proxy-servers agents should hold (default 1)

	ProxyStrategies []string // default ["default"]

	BackendDialTimeout      time.Duration // bounds every dial through the tunnel; 0 = 15 s
	GracefulShutdownTimeout time.Duration // wait for in-flight connections at shutdown; 0 = do not wait
	KeepaliveTime           time.Duration // gRPC keepalive on the agent port (default 1 h)
	FrontendKeepaliveTime   time.Duration // gRPC keepalive on the frontend (default 1 h)
	QueueBytes              int           // per-connection receive queue on ANP links (default 16 MiB)
	StallTimeout            time.Duration // a full queue whose reader takes nothing this long is closed (default 50 ms)
	StreamWindow            uint32        // native link: receive window per tunneled connection (default 4 MiB)
	TLSMinVersion           string        // VersionTLS12 (default) or VersionTLS13
	CipherSuites            []string      // TLS 1.2 cipher suites by Go name; empty = Go's defaults
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
		ServerID:              id,
		ServerCount:           1,
		ProxyStrategies:       []string{routing.Default},
		BackendDialTimeout:    15 * time.Second,
		KeepaliveTime:         time.Hour,
		FrontendKeepaliveTime: time.Hour,
		QueueBytes:            anp.DefaultQueueBytes,
		StallTimeout:          anp.DefaultStallTimeout,
		StreamWindow:          native.DefaultStreamWindow,
	}
}

// Validate checks c and names the flag at fault.
func (c *Config) Validate() error {
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
	} else {
		if c.ServerPort <= 0 || c.ServerPort > 65535 {
			bad("--server-port %d: want 1-65535, or set --uds-name for a Unix socket", c.ServerPort)
		}
		if c.ServerCert == "" || c.ServerKey == "" || c.ServerCACert == "" {
			bad("the TCP frontend needs --server-cert, --server-key and --server-ca-cert (clients must present a certificate); or use --uds-name")
		}
	}
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
	if c.ServerID == "" {
		bad("--server-id is empty and no host name is known: set --server-id or PROXY_SERVER_ID")
	}
	if c.ServerCount < 1 {
		bad("--server-count %d: want 1 or more", c.ServerCount)
	}
	if len(c.ProxyStrategies) == 0 {
		bad("--proxy-strategies is empty: allowed are default, destHost, defaultRoute, cidr")
	}
	if c.BackendDialTimeout < 0 || c.GracefulShutdownTimeout < 0 {
		bad("--backend-dial-timeout and --graceful-shutdown-timeout must not be negative")
	}
	if c.StreamWindow < 256<<10 || c.StreamWindow > 1<<30 {
		bad("--stream-window %d: want 262144 (256 KiB) to 1073741824 (1 GiB)", c.StreamWindow)
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
	return errors.Join(errs...)
}
