// Command proxy-agent is the isthmus agent: a drop-in for Konnectivity's
// proxy-agent. It dials out to every proxy-server, holds a tunnel to each,
// and dials backends (kubelets, pods) for them.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"isthmus.dev/proxy-agent/agent"
	"isthmus.dev/proxy-agent/app"
	"isthmus.dev/tunnel/buildinfo"
	"isthmus.dev/tunnel/flagcompat"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, app.Name+":", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	o, err := app.Parse(args, os.Stderr)
	if err != nil {
		return err
	}
	if o.Version {
		flagcompat.PrintVersion(os.Stdout, app.Name)
		return nil
	}
	log, closer, err := o.Logging.Logger()
	if err != nil {
		return err
	}
	defer closer.Close()
	if o.ContentionProfiling {
		runtime.SetBlockProfileRate(1)
		runtime.SetMutexProfileFraction(1)
	}
	cfg := o.Config
	a, err := agent.New(cfg, log)
	if err != nil {
		return err
	}

	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	waitHTTP, err := a.ServePorts(runCtx)
	if err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = a.Run(runCtx)
	}()
	bi := buildinfo.Get()
	log.Info("proxy-agent started", "version", bi.Version, "commit", bi.Commit, "agentID", cfg.AgentID,
		"servers", cfg.ProxyServerHosts, "port", cfg.ProxyServerPort, "allowedDestinations", a.Policy())

	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	select {
	case s := <-sig:
		log.Info("signal: draining; a second signal stops at once", "signal", s.String(), "open", a.Active())
		a.Drain()
		drainDone(a, sig, cfg.GracefulShutdownTimeout, log)
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
func drainDone(a *agent.Agent, sig <-chan os.Signal, timeout time.Duration, log *slog.Logger) {
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
			log.Info("second signal: stopping now", "open", a.Active())
			return
		case <-deadline:
			log.Info("graceful shutdown timeout: closing open connections", "open", a.Active())
			return
		case <-tick.C:
		}
	}
}
