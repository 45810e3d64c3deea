package main

import (
	"bytes"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// result is what one isthmus command line did, as a process would.
type result struct {
	stdout, stderr string
	code           int
}

// cli runs the isthmus command line as main does, without globals.
func cli(t *testing.T, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := execute(env{Stdout: &out, Stderr: &errOut}, args)
	return result{stdout: out.String(), stderr: errOut.String(), code: code}
}

// run runs the command line and returns its report (stdout) and error.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := dispatch(env{Stdout: &out, Stderr: &errOut}, args)
	return out.String(), err
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(t, args...)
	if err != nil {
		t.Fatalf("isthmus %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// groups are the top-level commands that have subcommands.
var groups = map[string][]command{"certs": certsCommands, "egress": egressCommands, "cni": cniCommands}

// leafCommands are the command paths that take flags, e.g. [certs ca],
// [preflight]: every command of main.go's list, so a new one is covered.
func leafCommands() [][]string {
	var leaves [][]string
	for _, c := range commands {
		sub, ok := groups[c.name]
		if !ok {
			leaves = append(leaves, []string{c.name})
			continue
		}
		for _, s := range sub {
			leaves = append(leaves, []string{c.name, s.name})
		}
	}
	return leaves
}

// TestHelpGoesToStdout: --help, -h and "help" print the same usage to
// stdout, nothing to stderr, and exit 0, for the tool, every group and
// every command.
func TestHelpGoesToStdout(t *testing.T) {
	paths := [][]string{{}}
	for g := range groups {
		paths = append(paths, []string{g})
	}
	paths = append(paths, leafCommands()...)
	for _, p := range paths {
		name := strings.Join(append([]string{"isthmus"}, p...), " ")
		var first string
		for i, args := range [][]string{
			append(append([]string{}, p...), "--help"),
			append(append([]string{}, p...), "-h"),
			append([]string{"help"}, p...),
		} {
			r := cli(t, args...)
			if r.code != exitOK || r.stderr != "" || !strings.HasPrefix(r.stdout, name) {
				t.Errorf("isthmus %s: exit %d, stderr %q, stdout starts %.60q; want exit 0, the usage of %q on stdout only",
					strings.Join(args, " "), r.code, r.stderr, r.stdout, name)
			}
			if i == 0 {
				first = r.stdout
			} else if r.stdout != first {
				t.Errorf("isthmus %s: another usage than %s --help", strings.Join(args, " "), name)
			}
		}
		leaf := len(p) == 2 || len(p) == 1 && groups[p[0]] == nil
		if leaf && !strings.Contains(first, "\nFlags:\n") {
			t.Errorf("%s --help lists no flags:\n%s", name, first)
		}
	}
	if r := cli(t, "--help"); !strings.Contains(r.stdout, "Exit status:") || !strings.Contains(r.stdout, "2  usage error") {
		t.Errorf("isthmus --help does not document the exit statuses:\n%s", r.stdout)
	}
}

// TestUsageErrorsExit2: an unknown command or flag, a missing required
// flag or a bad value print the error and one hint line to stderr,
// nothing to stdout, and exit 2.
func TestUsageErrorsExit2(t *testing.T) {
	dir := t.TempDir()
	cases := [][]string{
		{"nope"}, {"--bogus"}, {"certs", "nope"}, {"egress", "nope"}, {"cni", "nope"},
		{"version", "extra"},
		{"certs", "ca"}, // no --dir
		{"certs", "ca", "--dir", dir, "--key-type", "dsa"}, // bad value
		{"certs", "ca", "--dir", dir, "--validity", "-1h"},
		{"certs", "ca", "--dir", dir, "--validity", "soon"},
		{"certs", "agent-port", "--dir", dir},
		{"certs", "agent-port", "--dir", dir, "--host", "https://10.0.0.1:8132"},
		{"certs", "kubeconfig", "--dir", dir},
		{"certs", "check"},
		{"certs", "check", "--dir", dir, "--warn-within", "-1h"},
		{"egress", "render"},
		{"egress", "render", "--out", "-", "--mode", "bogus"},
		{"egress", "render", "--out", "-", "--uds-name", "relative.sock"},
		{"egress", "render", "--out", "-", "--transport", "tcp", "--url", "https://127.0.0.1:8131"},
		{"egress", "validate"},
		{"cni", "validate"},
		{"cni", "render", "--config", "x.yaml"},
		{"cni", "install"},
		{"cni", "install", "--config", "x.yaml", "--node-pod-cidr", "10.0.0.0"},
		{"preflight"},
		{"preflight", "--role", "master"},
		{"preflight", "--role", "worker"},
		{"preflight", "--role", "controller", "--agent-port", "0"},
		{"preflight", "--role", "controller", "--port", "konnectivity=8091"},
		{"preflight", "--role", "worker", "--controller", "c1", "--not-installed", "proxy-server"},
		{"demo", "--timeout", "0s"},
		{"manifests"},
	}
	for _, leaf := range leafCommands() {
		cases = append(cases, append(append([]string{}, leaf...), "--no-such-flag"))
	}
	for _, args := range cases {
		r := cli(t, args...)
		lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
		hint := lines[len(lines)-1]
		if r.code != exitUsage || r.stdout != "" || !strings.HasPrefix(r.stderr, "isthmus") ||
			!strings.HasPrefix(hint, "Run 'isthmus") || !strings.HasSuffix(hint, " --help' for usage.") {
			t.Errorf("isthmus %s: exit %d, stdout %q, stderr %q; want exit 2, the error and the hint on stderr",
				strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
	}
	// Bare commands: the usage, on stderr (it is an error), exit 2.
	for _, args := range [][]string{{}, {"certs"}, {"egress"}, {"cni"}} {
		if r := cli(t, args...); r.code != exitUsage || r.stdout != "" || !strings.Contains(r.stderr, "Commands:") {
			t.Errorf("isthmus %s: exit %d, stdout %q, stderr %.80q", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
	}
}
