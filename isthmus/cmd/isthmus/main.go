// Command isthmus is the operator tool of isthmus: everything around the
// proxy-server and proxy-agent daemons: certs, egress, demo, and more.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"isthmus.dev/tunnel/flagcompat"
)

const usage = `isthmus: the operator tool of the isthmus tunnel (a drop-in for Konnectivity).

Commands:
  demo    run proxy-server, proxy-agent and a backend on this machine and send
          traffic through the tunnel, printing every hop
  certs   the PKI: a CA, proxy-server's agent-port and frontend certificates,
          kube-apiserver's and the agents' client certificates, proxy-server's
          kubeconfig; and an expiry check
  egress  kube-apiserver's egress configuration (render, validate) and the
          kube-apiserver flags that go with it
  cni     the pod network behind the agents: validate a network config,
          render the CNI conflist and kube-router or Calico manifests, install
          the conflist on a node
  preflight
          check this host's ports for its role (controller or worker) and pod
          network provider: what must listen, what must be reachable
  version print the version and commit of this build (also: --version)

Run 'isthmus COMMAND --help' for a command's flags.
`

type command struct {
	name string
	run  func(args []string) error
}

var commands = []command{
	{"demo", runDemo},
	{"certs", runCerts},
	{"egress", runEgress},
	{"cni", runCNI},
	{"preflight", runPreflight},
}

func main() {
	if err := dispatch(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "isthmus:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}

func dispatch(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, usage)
		if len(args) == 0 {
			return errors.New("no command given")
		}
		return nil
	}
	if args[0] == "version" || args[0] == "--version" {
		if len(args) > 1 {
			return fmt.Errorf("%s: unexpected arguments %q", args[0], args[1:])
		}
		flagcompat.PrintVersion(stdout, "isthmus")
		return nil
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(args[1:])
		}
	}
	fmt.Fprint(os.Stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}
