// Command isthmus is the operator tool of isthmus: everything around the
// proxy-server and proxy-agent daemons: certs, egress, demo, and more.
package main

import (
	"os"

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
  manifests
          deploy on Kubernetes: the agent DaemonSet and RBAC, proxy-server
          as a static Pod or systemd unit, kube-apiserver's egress file and
          flags; a directory, or one YAML stream for kubectl apply
  preflight
          check this host's ports for its role (controller or worker) and pod
          network provider: what must be free now, what must listen, what
          must be reachable
  version print the version and commit of this build (also: --version)

Run 'isthmus COMMAND --help' (or 'isthmus help COMMAND') for a command's
flags. Help goes to stdout; reports go to stdout, errors to stderr.

Files: a command that writes files writes only where a flag says (--dir,
--out; never into the current directory unasked), and writes nothing at
all when any of its files exists, unless --force.

Exit status:
  0  success, or --help
  1  a check failed (certs check, preflight, egress validate, cni validate),
     or the command could not do its work (a file missing, exists, ...)
  2  usage error: unknown command or flag, a required flag missing, a bad
     flag value (the error says which flag, and how to fix it)
`

// commands are the top-level commands. Each is func(e env, args []string)
// error and follows the convention written at the top of cli.go: report to
// e.Stdout, return usage errors as usageErrorf, parse with newFlagSet and
// parseFlags, write files with writeFiles.
var commands = []command{
	{"demo", runDemo},
	{"certs", runCerts},
	{"egress", runEgress},
	{"cni", runCNI},
	{"manifests", runManifests},
	{"preflight", runPreflight},
	{"version", runVersion},
}

func main() {
	os.Exit(execute(env{Stdout: os.Stdout, Stderr: os.Stderr}, os.Args[1:]))
}

func dispatch(e env, args []string) error {
	if len(args) > 0 && args[0] == "--version" {
		return runVersion(e, args[1:])
	}
	return subDispatch(e, "isthmus", usage, commands, args)
}

const versionUsage = `isthmus version

Prints the version and commit of this build (also: isthmus --version).
`

func runVersion(e env, args []string) error {
	fs := newFlagSet(e, "isthmus version", versionUsage)
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	flagcompat.PrintVersion(e.Stdout, "isthmus")
	return nil
}
