// Package app is proxy-server's command line: every flag of ANP v0.36.0's
// proxy-server with its name, default and meaning, isthmus's own, klog's
// logging flags and --version, parsed and validated into a server.Config.
// Parsing starts nothing, so a test can learn in-process whether a command
// line is accepted, and the exact error when it is not.
package app

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"isthmus.dev/proxy-server/routing"
	"isthmus.dev/proxy-server/server"
	"isthmus.dev/tunnel/flagcompat"
)

// Program is the name in --help, --version and the log file's name.
const Program = "proxy-server"

// Command is proxy-server's command line.
type Command struct {
	// Config is what the flags say; valid after Parse returned nil
	// (unless Version is true: then nothing was validated).
	Config server.Config
	// Logging are klog's flags; main builds the logger from them once.
	Logging    *flagcompat.Logging
	fs         *pflag.FlagSet
	version    *bool
	strategies string
	xfrChannel int
}

// New returns a Command with every flag at its default.
func New() *Command {
	c := &Command{Config: server.DefaultConfig()}
	c.fs = pflag.NewFlagSet(Program, pflag.ContinueOnError)
	c.fs.Usage = func() { fmt.Fprint(c.fs.Output(), usage, c.fs.FlagUsages()) }
	c.Logging = flagcompat.AddLogging(c.fs)
	c.version = flagcompat.AddVersion(c.fs)
	c.strategies = strings.Join(c.Config.ProxyStrategies, ",")
	c.addFrontendFlags()
	c.addAgentPortFlags()
	c.addAgentAuthFlags()
	c.addLeaseFlags()
	c.addOpsFlags()
	c.addTuningFlags()
	c.addBoundsFlags()
	return c
}

// Version reports --version: print the version (flagcompat.PrintVersion)
// and exit 0.
func (c *Command) Version() bool { return *c.version }

// FlagSet is the command's flag set (its output is where --help goes;
// standard error unless set).
func (c *Command) FlagSet() *pflag.FlagSet { return c.fs }

// Parse parses args (without the program name) and validates the result.
// It returns pflag.ErrHelp after printing --help, and an error that names
// the flag at fault when the command line is not accepted.
func (c *Command) Parse(args []string) error {
	if err := (flagcompat.Refused{}).Parse(c.fs, args); err != nil {
		return err
	}
	if *c.version {
		return nil
	}
	var errs []error
	var err error
	if c.Config.ProxyStrategies, err = routing.ParseStrategies(c.strategies); err != nil {
		errs = append(errs, fmt.Errorf("--proxy-strategies: %w", err))
	}
	if c.xfrChannel <= 0 {
		errs = append(errs, fmt.Errorf("--xfr-channel-size %d: must be greater than 0 (as in ANP; isthmus bounds queues with --conn-queue-bytes)", c.xfrChannel))
	}
	if err := c.Config.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Parse is New, then Command.Parse with --help on w.
func Parse(args []string, w io.Writer) (*Command, error) {
	c := New()
	if w == nil {
		w = os.Stderr
	}
	c.fs.SetOutput(w)
	return c, c.Parse(args)
}

const usage = `proxy-server: the isthmus tunnel server, a drop-in for Konnectivity's proxy-server
(every flag of ANP's proxy-server keeps its name and meaning).

Agents (proxy-agent, or upstream's konnectivity-agent) dial in on the agent
port over TLS; clients reach backends behind them through the frontend:
  --mode grpc          /ProxyService/Proxy (konnectivity-client)
  --mode http-connect  HTTP CONNECT (kube-apiserver's HTTPConnect egress)
on a Unix socket (--uds-name, --server-port=0) or on TCP with mandatory
client certificates (--server-port, --server-cert/-key/-ca-cert).

Agents must authenticate, by one of these or both (then an agent needs both):
  client certificates     --cluster-ca-cert: agents present a certificate it
                          signed (proxy-agent --agent-cert/--agent-key);
  service-account tokens  --agent-namespace, --agent-service-account and
                          --authentication-audience: agents send a projected
                          token (proxy-agent --service-account-token-path),
                          checked by a TokenReview through --kubeconfig (empty:
                          the pod's in-cluster configuration). Answers are
                          cached briefly (never past the token's expiry) and
                          agents sending one token at once share one review.
With neither, proxy-server does not start, unless --allow-unauthenticated-agents
says that any TLS client may register as an agent.

Server leases (--enable-lease-controller): the server publishes a Lease
konnectivity-proxy-server-<server-id> in --lease-namespace with --lease-label,
renews it, culls expired ones and deletes its own on a graceful stop; agents
with --count-server-leases count the servers from the leases instead of
--server-count. Token authentication and leases share one client.

Example (kubeadm's "Set up Konnectivity service", kube-apiserver's egress on a
Unix socket, agents with service-account tokens):
  proxy-server --uds-name=/etc/kubernetes/konnectivity-server/konnectivity-server.socket \
    --delete-existing-uds-file --server-port=0 --mode=grpc \
    --cluster-cert=/etc/kubernetes/pki/apiserver.crt --cluster-key=/etc/kubernetes/pki/apiserver.key \
    --agent-port=8132 --admin-port=8133 --health-port=8134 \
    --agent-namespace=kube-system --agent-service-account=konnectivity-agent \
    --authentication-audience=system:konnectivity-server \
    --kubeconfig=/etc/kubernetes/konnectivity-server.conf

Flags:
`
