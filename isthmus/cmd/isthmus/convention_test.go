package main

import (
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// writer is a command that writes files: what it needs first, and its
// command line writing under dir only.
type writer struct {
	name  string
	setup func(t *testing.T, dir string)
	args  func(dir string) []string
	// keep is a file it writes (relative to dir) that alone, left after
	// the others are removed, must stop a second run.
	keep string
}

func withCA(t *testing.T, dir string) {
	t.Helper()
	if r := cli(t, "certs", "ca", "--dir", filepath.Join(dir, "pki")); r.code != exitOK {
		t.Fatalf("certs ca: %+v", r)
	}
}

func withNetConfig(t *testing.T, dir string) {
	t.Helper()
	writeConfig(t, dir, "net.yaml", "provider: kuberouter\n")
}

func pkiArgs(args ...string) func(string) []string {
	return func(dir string) []string {
		return append(append([]string{}, args...), "--dir", filepath.Join(dir, "pki"))
	}
}

// writers are every command that writes files.
func writers() []writer {
	return []writer{
		{"certs ca", nil, pkiArgs("certs", "ca"), "pki/ca.key"},
		{"certs agent-port", withCA, pkiArgs("certs", "agent-port", "--host", "10.0.0.1"), "pki/agent-port.crt"},
		{"certs frontend", withCA, pkiArgs("certs", "frontend"), "pki/frontend.key"},
		{"certs apiserver-client", withCA, pkiArgs("certs", "apiserver-client"), "pki/apiserver-client.crt"},
		{"certs agent", withCA, pkiArgs("certs", "agent", "--name", "node-1"), "pki/node-1.key"},
		{"certs kubeconfig", withCA, func(dir string) []string {
			return pkiArgs("certs", "kubeconfig", "--server", "https://10.0.0.1:6443",
				"--kube-ca-cert", filepath.Join(dir, "pki", "ca.crt"), "--kube-ca-key", filepath.Join(dir, "pki", "ca.key"))(dir)
		}, "pki/proxy-server.kubeconfig"},
		{"egress render", nil, func(dir string) []string {
			return []string{"egress", "render", "--out", filepath.Join(dir, "egress.yaml")}
		}, "egress.yaml"},
		{"cni render", withNetConfig, func(dir string) []string {
			return []string{"cni", "render", "--config", filepath.Join(dir, "net.yaml"), "--out", filepath.Join(dir, "out")}
		}, "out/manifests/kuberouter/02-daemonset.yaml"},
		{"cni install", withNetConfig, func(dir string) []string {
			return []string{"cni", "install", "--config", filepath.Join(dir, "net.yaml"),
				"--cni-conf-dir", filepath.Join(dir, "net.d"), "--state-file", filepath.Join(dir, "state.json")}
		}, "net.d/10-kuberouter.conflist"},
		{"manifests", nil, func(dir string) []string {
			return []string{"manifests", "--server-address", "10.0.0.10", "--out", filepath.Join(dir, "m")}
		}, "m/cluster.yaml"},
	}
}

// fileState is what a test compares of a file.
type fileState struct {
	data    string
	modTime time.Time
	mode    fs.FileMode
}

// snapshot is every regular file under dir, by path relative to dir.
func snapshot(t *testing.T, dir string) map[string]fileState {
	t.Helper()
	files := map[string]fileState{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		data, err := os.ReadFile(path)
		rel, _ := filepath.Rel(dir, path)
		files[filepath.ToSlash(rel)] = fileState{string(data), info.ModTime(), info.Mode()}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestWritersRefuseToOverwrite: every command that writes files refuses,
// without --force, to replace any of them and then writes nothing at all
// (exit 1, the files named and --force said); even one file left of a
// previous run stops it; --force replaces.
func TestWritersRefuseToOverwrite(t *testing.T) {
	for _, w := range writers() {
		t.Run(w.name, func(t *testing.T) {
			dir := t.TempDir()
			if w.setup != nil {
				w.setup(t, dir)
			}
			before := snapshot(t, dir)
			if r := cli(t, w.args(dir)...); r.code != exitOK || !strings.Contains(r.stdout, "wrote ") {
				t.Fatalf("first run: %+v", r)
			}
			after := snapshot(t, dir)
			var written []string
			for p, st := range after {
				if old, ok := before[p]; !ok || old != st {
					written = append(written, p)
				}
			}
			if !slices.Contains(written, w.keep) {
				t.Fatalf("wrote %v, not %s", written, w.keep)
			}
			refused(t, w.args(dir), after, dir)
			for _, p := range written {
				if p != w.keep {
					if err := os.Remove(filepath.Join(dir, p)); err != nil {
						t.Fatal(err)
					}
				}
			}
			refused(t, w.args(dir), snapshot(t, dir), dir)
			if r := cli(t, append(w.args(dir), "--force")...); r.code != exitOK {
				t.Fatalf("with --force: %+v", r)
			}
			for _, p := range written {
				if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
					t.Errorf("with --force, %s not written again: %v", p, err)
				}
			}
		})
	}
}

// refused runs args and checks it refused to overwrite and left dir as it
// was.
func refused(t *testing.T, args []string, was map[string]fileState, dir string) {
	t.Helper()
	r := cli(t, args...)
	if r.code != exitFailure || r.stdout != "" || !strings.Contains(r.stderr, "--force") ||
		!strings.Contains(r.stderr, "nothing was written") || strings.Contains(r.stderr, "Run 'isthmus") {
		t.Errorf("over existing files: %+v; want exit 1, the files and --force named on stderr", r)
	}
	if now := snapshot(t, dir); !maps.Equal(now, was) {
		t.Errorf("a refused run changed the files:\nbefore %v\nafter  %v", slices.Sorted(maps.Keys(was)), slices.Sorted(maps.Keys(now)))
	}
}

// TestNothingWrittenInWorkingDirectory: run from an empty directory, no
// command writes there: not the writers (their files go where a flag
// says), not with their destination left out, not the checks.
func TestNothingWrittenInWorkingDirectory(t *testing.T) {
	cwd := t.TempDir()
	t.Chdir(cwd)
	dirs := map[string]string{} // writer name to the directory it wrote into
	for _, w := range writers() {
		elsewhere := t.TempDir()
		dirs[w.name] = elsewhere
		if w.setup != nil {
			w.setup(t, elsewhere)
		}
		if r := cli(t, w.args(elsewhere)...); r.code != exitOK {
			t.Errorf("isthmus %s: %+v", w.name, r)
		}
		// With --dir or --out left out: a usage error, not a default.
		// (cni install's default is the runtime's /etc/cni/net.d.)
		args := w.args(elsewhere)
		i := slices.IndexFunc(args, func(a string) bool { return a == "--dir" || a == "--out" })
		if i < 0 {
			continue
		}
		args = append(args[:i:i], args[i+2:]...)
		if r := cli(t, args...); r.code != exitUsage {
			t.Errorf("isthmus %s without its destination: %+v, want a usage error", strings.Join(args, " "), r)
		}
	}
	apiserver := listenLoopback(t)
	for _, args := range [][]string{
		{"certs", "check", "--dir", filepath.Join(dirs["certs agent-port"], "pki")},
		{"egress", "validate", "--config", filepath.Join(dirs["egress render"], "egress.yaml")},
		{"cni", "validate", "--config", filepath.Join(dirs["cni render"], "net.yaml"), "--print"},
		{"egress", "render", "--out", "-"},
		{"manifests", "--server-address", "10.0.0.10", "--out", "-"},
		{"preflight", "--role", "controller", "--port", "apiserver=" + strconv.Itoa(apiserver), "--agent-port", strconv.Itoa(closedLoopbackPort(t)),
			"--admin-port", "0", "--health-port", "0", "--timeout", "200ms"},
		{"version"}, {"--help"},
	} {
		if r := cli(t, args...); r.code != exitOK {
			t.Errorf("isthmus %s: %+v", strings.Join(args, " "), r)
		}
	}
	if entries, _ := os.ReadDir(cwd); len(entries) > 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("written into the working directory: %v", names)
	}
}

// TestFailedChecksExit1: a check that finds a problem reports it and exits
// 1, without the usage hint; the same check on a good input exits 0.
func TestFailedChecksExit1(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, "certs", "ca", "--dir", filepath.Join(dir, "pki"))
	good := writeConfig(t, dir, "good.yaml", "provider: kuberouter\n")
	bad := writeConfig(t, dir, "bad.yaml", "provider: kuberouter\ndualStack: {enabled: true}\n")
	egressGood := filepath.Join(dir, "egress.yaml")
	mustRun(t, "egress", "render", "--out", egressGood)
	egressBad := writeConfig(t, dir, "direct.yaml", "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\n"+
		"egressSelections:\n- name: cluster\n  connection: {proxyProtocol: Direct}\n")
	apiserver := listenLoopback(t)
	preflightArgs := func(agentPort int) []string {
		return []string{"preflight", "--role", "controller", "--not-installed", "none", "--port", "apiserver=" + strconv.Itoa(apiserver),
			"--agent-port", strconv.Itoa(agentPort), "--admin-port", "0", "--health-port", "0"}
	}
	for _, tc := range []struct {
		name      string
		pass, bad []string
	}{
		{"certs check", []string{"certs", "check", "--dir", filepath.Join(dir, "pki")},
			[]string{"certs", "check", "--dir", filepath.Join(dir, "pki"), "--warn-within", "900000h"}},
		{"egress validate", []string{"egress", "validate", "--config", egressGood}, []string{"egress", "validate", "--config", egressBad}},
		{"cni validate", []string{"cni", "validate", "--config", good}, []string{"cni", "validate", "--config", bad}},
		{"preflight", preflightArgs(apiserver), preflightArgs(closedLoopbackPort(t))},
	} {
		if r := cli(t, tc.pass...); r.code != exitOK || r.stdout == "" {
			t.Errorf("%s on a good input: %+v", tc.name, r)
		}
		r := cli(t, tc.bad...)
		if r.code != exitFailure || !strings.HasPrefix(r.stderr, "isthmus "+tc.name+": ") || strings.Contains(r.stderr, "--help") {
			t.Errorf("%s on a bad input: %+v; want exit 1 and the problem on stderr", tc.name, r)
		}
	}
}

func listenLoopback(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

func closedLoopbackPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
