package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ServePorts runs the health port (/healthz, /readyz, /metrics) and the
// admin port (/metrics, /debug/pprof with EnableProfiling) until ctx ends.
// Bind errors are returned before anything is served.
func (a *Agent) ServePorts(ctx context.Context) (wait func(), err error) {
	type srv struct {
		ln net.Listener
		h  *http.Server
	}
	var srvs []srv
	closeAll := func() {
		for _, s := range srvs {
			_ = s.ln.Close()
		}
	}
	add := func(host string, port int, mux *http.ServeMux) error {
		if port == 0 {
			return nil
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		srvs = append(srvs, srv{ln, &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}})
		return nil
	}
	metricsH := promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{})
	health := http.NewServeMux()
	health.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	health.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		held, expected, ok := a.Ready()
		if !ok {
			msg := fmt.Sprintf("not ready: holding %d of %d proxy-servers", held, expected)
			if held >= expected && a.counter != nil {
				msg = "not ready: the servers' leases have not been listed yet (--count-server-leases)"
			}
			http.Error(w, msg, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ok: holding %d of %d proxy-servers\n", held, expected)
	})
	health.Handle("/metrics", metricsH)
	if err := add(a.cfg.HealthHost, a.cfg.HealthPort, health); err != nil {
		return nil, fmt.Errorf("health port: %w", err)
	}
	admin := http.NewServeMux()
	admin.Handle("/metrics", metricsH)
	if a.cfg.EnableProfiling {
		admin.HandleFunc("/debug/pprof/", pprof.Index)
		admin.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		admin.HandleFunc("/debug/pprof/profile", pprof.Profile)
		admin.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		admin.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	if err := add(a.cfg.AdminHost, a.cfg.AdminPort, admin); err != nil {
		closeAll()
		return nil, fmt.Errorf("admin port: %w", err)
	}
	done := make(chan struct{}, len(srvs))
	for _, s := range srvs {
		go func() {
			if err := s.h.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("http port failed", "addr", s.ln.Addr().String(), "err", err)
			}
			done <- struct{}{}
		}()
	}
	stop := context.AfterFunc(ctx, func() {
		for _, s := range srvs {
			_ = s.h.Close()
		}
	})
	return func() {
		<-ctx.Done()
		stop()
		for range srvs {
			<-done
		}
	}, nil
}
