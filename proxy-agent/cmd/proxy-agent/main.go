// Command proxy-agent is the isthmus agent: a drop-in for Konnectivity's
// proxy-agent. It dials out to every proxy-server, holds a tunnel to each,
// and dials backends (kubelets, pods) for them.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"isthmus.dev/proxy-agent/agent"
	"isthmus.dev/tunnel/flagcompat"
)

const usage = `proxy-agent: the isthmus tunnel agent, a drop-in for Konnectivity's proxy-agent.

It dials OUT to the proxy-server's agent port (only outbound traffic is
needed), holds a tunnel to each server, and dials backends on their behalf.
--proxy-server-host takes one host, a comma-separated list (one tunnel to
each), or a load balancer (the agent connects until it holds --server-count
distinct servers, as the servers report it).

On SIGTERM the agent sends DRAIN (servers prefer other agents for new
connections) and exits when its open connections have finished, after
--graceful-shutdown-timeout if set, or at a second signal.

Example:
  proxy-agent --proxy-server-host=10.0.0.1 --proxy-server-port=8132 \
    --ca-cert=ca.crt --agent-identifiers='host=node1&ipv4=10.0.1.5'

Flags:
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "proxy-agent:", err)
		os.Exit(1)
	}
}

// refused are ANP flags isthmus does not support yet.
var refused = flagcompat.Refused{
	"count-server-leases":         "counting servers by Lease is not supported yet; servers report their count",
	"lease-namespace":             "counting servers by Lease is not supported yet",
	"lease-label":                 "counting servers by Lease is not supported yet",
	"server-count-source":         "counting servers by Lease is not supported yet",
	"kubeconfig":                  "counting servers by Lease is not supported yet",
	"kube-api-content-type":       "counting servers by Lease is not supported yet",
	"enable-contention-profiling": "contention profiling is not offered; --enable-profiling serves the other pprof profiles",
}

func run(args []string) error {
	cfg := agent.DefaultConfig()
	var (
		hosts   string
		logOpts flagcompat.Options
	)
	fs := pflag.NewFlagSet("proxy-agent", pflag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage, fs.FlagUsages()) }
	fs.StringVar(&hosts, "proxy-server-host", strings.Join(cfg.ProxyServerHosts, ","), "proxy-server host, comma-separated list of hosts, or load balancer")
	fs.IntVar(&cfg.ProxyServerPort, "proxy-server-port", cfg.ProxyServerPort, "proxy-server agent port (deployments use 8132)")
	fs.StringVar(&cfg.CACert, "ca-cert", "", "CA that signs the proxy-servers' certificates (empty: system roots)")
	fs.StringVar(&cfg.AgentCert, "agent-cert", "", "client certificate, for servers started with --cluster-ca-cert")
	fs.StringVar(&cfg.AgentKey, "agent-key", "", "key of --agent-cert")
	fs.StringVar(&cfg.Link, "link", cfg.Link, "agent link: auto (the isthmus native link when the server offers it, else the ANP gRPC link), native, or anp")
	fs.StringSliceVar(&cfg.ALPNProtos, "alpn-proto", nil, "extra ALPN protocols to offer (to share the server's port with another service)")
	fs.StringVar(&cfg.AgentID, "agent-id", cfg.AgentID, "this agent's unique id (default: $PROXY_AGENT_ID or a random id)")
	fs.StringVar(&cfg.AgentIdentifiers, "agent-identifiers", "", "what this agent can reach, URL query form: host=node1&ipv4=10.0.1.5&ipv6=fd00::5&cidr=10.244.1.0/24&default-route=true")
	fs.StringVar(&cfg.TokenPath, "service-account-token-path", "", "token sent as Bearer to the servers, read again at every connect")
	fs.DurationVar(&cfg.SyncInterval, "sync-interval", cfg.SyncInterval, "first delay before reconnecting; doubles up to --sync-interval-cap, with jitter")
	fs.DurationVar(&cfg.SyncIntervalCap, "sync-interval-cap", cfg.SyncIntervalCap, "longest delay between reconnect attempts")
	fs.BoolVar(&cfg.SyncForever, "sync-forever", false, "when all servers behind a load balancer are held, keep probing every --sync-interval-cap for new ones")
	fs.Duration("probe-interval", time.Second, "accepted for ANP compatibility; isthmus sees a lost tunnel at once, without probing")
	fs.DurationVar(&cfg.KeepaliveTime, "keepalive-time", cfg.KeepaliveTime, "gRPC keepalive interval to the servers")
	fs.DurationVar(&cfg.DialTimeout, "backend-dial-timeout", cfg.DialTimeout, "bound on each backend dial")
	fs.IntVar(&cfg.QueueBytes, "conn-queue-bytes", cfg.QueueBytes, "per-connection receive queue (the ANP wire has no flow control): a backend slower than its client throttles the link once its queue is full")
	fs.Uint32Var(&cfg.StreamWindow, "stream-window", cfg.StreamWindow, "native link: how many bytes one tunneled connection may have in flight toward this agent (its receive window); the 4 MiB default fills a 1 Gbit/s link at 20 ms round trip")
	fs.DurationVar(&cfg.StallTimeout, "conn-stall-timeout", cfg.StallTimeout, "a connection whose queue is full and whose backend takes nothing for this long is closed alone, so that it cannot stall the link's other connections longer")
	fs.StringVar(&cfg.HealthHost, "health-server-host", "", "health port bind address (empty: all interfaces)")
	fs.IntVar(&cfg.HealthPort, "health-server-port", cfg.HealthPort, "port for /healthz, /readyz and /metrics; 0 turns it off")
	fs.StringVar(&cfg.AdminHost, "admin-bind-address", cfg.AdminHost, "admin port bind address")
	fs.IntVar(&cfg.AdminPort, "admin-server-port", cfg.AdminPort, "port for /metrics and, with --enable-profiling, /debug/pprof; 0 turns it off")
	fs.BoolVar(&cfg.EnableProfiling, "enable-profiling", false, "serve /debug/pprof on the admin port")
	fs.DurationVar(&cfg.GracefulShutdownTimeout, "graceful-shutdown-timeout", 0, "after SIGTERM and DRAIN, wait at most this long for open connections (0: until they end)")
	fs.Int("xfr-channel-size", 150, "accepted for ANP compatibility; isthmus bounds queues in bytes (--conn-queue-bytes)")
	fs.Bool("warn-on-channel-limit", false, "accepted for ANP compatibility; no effect")
	refused.Register(fs, "enable-lease-controller", "enable-contention-profiling", "count-server-leases")
	flagcompat.Register(fs, &logOpts)
	if err := refused.Parse(fs, args); err != nil {
		return err
	}
	cfg.ProxyServerHosts = nil
	for _, h := range strings.Split(hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			cfg.ProxyServerHosts = append(cfg.ProxyServerHosts, h)
		}
	}
	log, closer, err := logOpts.Logger()
	if err != nil {
		return err
	}
	defer closer.Close()
	a, err := agent.New(cfg, log)
	if err != nil {
		return err
	}

	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	waitHTTP, err := a.ServeHTTP(runCtx)
	if err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = a.Run(runCtx)
	}()
	log.Info("proxy-agent started", "agentID", cfg.AgentID, "servers", cfg.ProxyServerHosts, "port", cfg.ProxyServerPort)

	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	select {
	case s := <-sig:
		log.Info("signal: draining; a second signal stops at once", "signal", s.String(), "open", a.Active())
		a.Drain()
		drainDone(a, sig, cfg.GracefulShutdownTimeout, log.Info)
	case <-done:
	}
	stopRun()
	<-done
	waitHTTP()
	log.Info("proxy-agent stopped")
	return nil
}

// drainDone waits until the agent has no open connection, the timeout (if
// any) passes, or a second signal comes.
func drainDone(a *agent.Agent, sig <-chan os.Signal, timeout time.Duration, logf func(string, ...any)) {
	var deadline <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		deadline = t.C
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for a.Active() > 0 {
		select {
		case <-sig:
			logf("second signal: stopping now", "open", a.Active())
			return
		case <-deadline:
			logf("graceful shutdown timeout: closing open connections", "open", a.Active())
			return
		case <-tick.C:
		}
	}
}
