package main

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"isthmus.dev/isthmus/demo"
)

const demoUsage = `isthmus demo: the tunnel end to end, on this machine.

It creates a CA and certificates in a temporary directory, starts a backend
HTTP server (standing in for a kubelet or a pod), proxy-server (frontend on a
Unix socket, agents on port 8132 over TLS) and one proxy-agent, then sends one
request through HTTP CONNECT (as kube-apiserver's HTTPConnect egress does) and
one through konnectivity-client over gRPC (as kube-apiserver's GRPC egress
does), printing each hop. Everything it started is stopped and the directory
removed at the end. The proxy-server and proxy-agent binaries are taken from
--bin-dir (default: the directory of this executable). It writes nothing
outside its temporary directory.
`

func runDemo(e env, args []string) error {
	self, _ := os.Executable()
	o := demo.Options{BinDir: filepath.Dir(self), AgentPort: 8132, Out: e.Stdout}
	fs := newFlagSet(e, "isthmus demo", demoUsage)
	fs.StringVar(&o.BinDir, "bin-dir", o.BinDir, "directory holding the proxy-server and proxy-agent binaries")
	fs.IntVar(&o.AgentPort, "agent-port", o.AgentPort, "agent port of the demo proxy-server on 127.0.0.1 (a free port is used if it is taken)")
	fs.BoolVar(&o.Keep, "keep", false, "keep the temporary directory (certificates, daemon logs) for inspection")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after this long")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if o.AgentPort < 1 || o.AgentPort > 65535 {
		return usageErrorf("--agent-port %d: must be 1 to 65535", o.AgentPort)
	}
	if *timeout <= 0 {
		return usageErrorf("--timeout %v: must be positive (e.g. 2m)", *timeout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return demo.Run(ctx, o)
}
