// Command proxy-server is the isthmus proxy server: a drop-in for
// Konnectivity's proxy-server. Agents dial in on the agent port; clients
// (kube-apiserver) reach backends behind them through the frontend.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"isthmus.dev/proxy-server/routing"
	"isthmus.dev/proxy-server/server"
	"isthmus.dev/tunnel/flagcompat"
)

const usage = `proxy-server: the isthmus tunnel server, a drop-in for Konnectivity's proxy-server.

Agents (proxy-agent, or upstream's konnectivity-agent) dial in on the agent
port over TLS; clients reach backends behind them through the frontend:
  --mode grpc          /ProxyService/Proxy (konnectivity-client)
  --mode http-connect  HTTP CONNECT (kube-apiserver's HTTPConnect egress)
on a Unix socket (--uds-name, --server-port=0) or on TCP with mandatory
client certificates (--server-port, --server-cert/-key/-ca-cert).

Example (as kube-apiserver's egress on a Unix socket):
  proxy-server --uds-name=/run/konnectivity/konnectivity-server.sock --server-port=0 \
    --agent-port=8132 --cluster-cert=agent-port.crt --cluster-key=agent-port.key

Flags:
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "proxy-server:", err)
		os.Exit(1)
	}
}

// refused are ANP flags isthmus does not support yet: set, they stop the
// start with a reason rather than being silently ignored.
var refused = flagcompat.Refused{
	"agent-namespace":             "agent token authentication (TokenReview) is not supported yet",
	"agent-service-account":       "agent token authentication (TokenReview) is not supported yet",
	"authentication-audience":     "agent token authentication (TokenReview) is not supported yet",
	"kubeconfig":                  "agent token authentication and leases are not supported yet",
	"kubeconfig-qps":              "agent token authentication and leases are not supported yet",
	"kubeconfig-burst":            "agent token authentication and leases are not supported yet",
	"kube-api-content-type":       "agent token authentication and leases are not supported yet",
	"enable-lease-controller":     "server leases are not supported yet; use --server-count",
	"lease-namespace":             "server leases are not supported yet; use --server-count",
	"lease-label":                 "server leases are not supported yet; use --server-count",
	"enable-contention-profiling": "contention profiling is not offered; --enable-profiling serves the other pprof profiles",
}

func run(args []string) error {
	cfg := server.DefaultConfig()
	var (
		strategies string
		logOpts    flagcompat.Options
	)
	fs := pflag.NewFlagSet("proxy-server", pflag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage, fs.FlagUsages()) }
	fs.StringVar(&cfg.Mode, "mode", cfg.Mode, "frontend protocol: grpc or http-connect")
	fs.StringVar(&cfg.UDSName, "uds-name", "", "serve the frontend on this Unix socket (then --server-port must be 0)")
	fs.BoolVar(&cfg.DeleteUDSFile, "delete-existing-uds-file", cfg.DeleteUDSFile, "remove an existing file at --uds-name before listening")
	fs.StringVar(&cfg.ServerBindAddress, "server-bind-address", "", "frontend TCP bind address (empty: all interfaces)")
	fs.IntVar(&cfg.ServerPort, "server-port", cfg.ServerPort, "frontend TCP port; 0 with --uds-name")
	fs.StringVar(&cfg.ServerCert, "server-cert", "", "frontend TLS certificate (TCP mode)")
	fs.StringVar(&cfg.ServerKey, "server-key", "", "frontend TLS key (TCP mode)")
	fs.StringVar(&cfg.ServerCACert, "server-ca-cert", "", "CA that signs frontend client certificates (TCP mode; required: clients must present one)")
	fs.StringVar(&cfg.AgentBindAddress, "agent-bind-address", "", "agent port bind address (empty: all interfaces)")
	fs.IntVar(&cfg.AgentPort, "agent-port", cfg.AgentPort, "agent port (deployments use 8132)")
	fs.StringVar(&cfg.ClusterCert, "cluster-cert", "", "agent port TLS certificate (required)")
	fs.StringVar(&cfg.ClusterKey, "cluster-key", "", "agent port TLS key (required)")
	fs.StringVar(&cfg.ClusterCACert, "cluster-ca-cert", "", "if set, agents must present a client certificate signed by this CA")
	fs.StringVar(&cfg.HealthBindAddress, "health-bind-address", "", "health port bind address (empty: all interfaces)")
	fs.IntVar(&cfg.HealthPort, "health-port", cfg.HealthPort, "port for /healthz, /readyz and /metrics; 0 turns it off")
	fs.StringVar(&cfg.AdminBindAddress, "admin-bind-address", cfg.AdminBindAddress, "admin port bind address")
	fs.IntVar(&cfg.AdminPort, "admin-port", cfg.AdminPort, "port for /metrics and, with --enable-profiling, /debug/pprof; 0 turns it off")
	fs.BoolVar(&cfg.EnableProfiling, "enable-profiling", false, "serve /debug/pprof on the admin port")
	fs.StringVar(&cfg.ServerID, "server-id", cfg.ServerID, "this server's unique id, sent to agents (default: $PROXY_SERVER_ID or the host name)")
	fs.IntVar(&cfg.ServerCount, "server-count", cfg.ServerCount, "number of proxy-servers; agents keep connecting until they hold this many")
	fs.StringVar(&strategies, "proxy-strategies", strings.Join(cfg.ProxyStrategies, ","), "comma-separated agent choice strategies, tried in order: default, destHost, defaultRoute, cidr")
	fs.DurationVar(&cfg.BackendDialTimeout, "backend-dial-timeout", cfg.BackendDialTimeout, "bound on every dial through the tunnel (agent answer included)")
	fs.DurationVar(&cfg.GracefulShutdownTimeout, "graceful-shutdown-timeout", 0, "on SIGTERM, wait up to this long for open connections to finish (0: close at once)")
	fs.DurationVar(&cfg.KeepaliveTime, "keepalive-time", cfg.KeepaliveTime, "gRPC keepalive interval on the agent port")
	fs.DurationVar(&cfg.FrontendKeepaliveTime, "frontend-keepalive-time", cfg.FrontendKeepaliveTime, "gRPC keepalive interval on the frontend")
	fs.StringVar(&cfg.TLSMinVersion, "tls-min-version", "", "minimum TLS version: VersionTLS12 (default) or VersionTLS13")
	fs.StringSliceVar(&cfg.CipherSuites, "cipher-suites", nil, "TLS 1.2 cipher suites by Go name (empty: Go's secure defaults)")
	fs.IntVar(&cfg.QueueBytes, "conn-queue-bytes", cfg.QueueBytes, "per-connection receive queue on ANP agent links (the ANP wire has no flow control): a client slower than its backend throttles the link once its queue is full")
	fs.Uint32Var(&cfg.StreamWindow, "stream-window", cfg.StreamWindow, "native link: how many bytes one tunneled connection may have in flight toward this server (its receive window); the 4 MiB default fills a 1 Gbit/s link at 20 ms round trip")
	fs.DurationVar(&cfg.StallTimeout, "conn-stall-timeout", cfg.StallTimeout, "a connection whose queue is full and whose client takes nothing for this long is closed alone, so that it cannot stall the agent's other connections longer")
	fs.Int("xfr-channel-size", 10, "accepted for ANP compatibility; isthmus bounds queues in bytes (--conn-queue-bytes)")
	fs.Bool("warn-on-channel-limit", true, "accepted for ANP compatibility (deprecated upstream); no effect")
	_ = fs.MarkDeprecated("warn-on-channel-limit", "it has no effect")
	refused.Register(fs, "enable-lease-controller", "enable-contention-profiling", "count-server-leases")
	flagcompat.Register(fs, &logOpts)
	if err := refused.Parse(fs, args); err != nil {
		return err
	}
	var err error
	if cfg.ProxyStrategies, err = routing.ParseStrategies(strategies); err != nil {
		return fmt.Errorf("--proxy-strategies: %w", err)
	}
	log, closer, err := logOpts.Logger()
	if err != nil {
		return err
	}
	defer closer.Close()
	srv, err := server.New(cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second signal kills the process the default way
	}()
	return srv.Run(ctx)
}
