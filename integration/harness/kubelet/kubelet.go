// Package kubelet runs one container of a Pod spec on this machine the way
// a kubelet would, as far as the daemons under test can tell: its command
// and arguments exactly as written, with $(VAR) references expanded from
// its environment (downward-API values given by the test), and its volumes
// mounted at their mount paths in a mount namespace of its own. It lets a
// test run proxy-server and proxy-agent with exactly the arguments of the
// manifests isthmus renders, without a container runtime.
package kubelet

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"isthmus.dev/integration/harness"
)

// Container is one container to run.
type Container struct {
	Pod  *corev1.PodSpec
	Name string // the container's name
	// Binaries maps the image's programs (the command's first word, e.g.
	// /proxy-agent) to the binaries under test.
	Binaries map[string]string
	// Fields are the downward-API values of fieldRef environment
	// variables, by field path (spec.nodeName, status.hostIP, ...).
	Fields map[string]string
	// Volumes are the contents of volumes that are not host paths
	// (projected tokens, config maps, secrets), as directories, by volume
	// name. A hostPath volume is the host path itself.
	Volumes map[string]string
	// ConfigMaps are the data of the ConfigMaps that configMapKeyRef
	// environment variables name, by ConfigMap name.
	ConfigMaps map[string]map[string]string
	// Worker runs the container in this worker's network namespace, as on
	// that node with hostNetwork; nil: the host's network.
	Worker *harness.Worker
}

// Start runs c until the test ends and returns the process.
func Start(t testing.TB, c Container) *harness.Proc {
	t.Helper()
	ctr := find(t, c.Pod, c.Name)
	env := Environment(t, ctr, c.Fields, c.ConfigMaps)
	argv := append(slices.Clone(ctr.Command), ctr.Args...)
	if len(argv) == 0 {
		t.Fatalf("container %s has no command", c.Name)
	}
	for i := range argv {
		argv[i] = Expand(argv[i], env)
	}
	bin, ok := c.Binaries[argv[0]]
	if !ok {
		t.Fatalf("container %s runs %s: no binary given for it", c.Name, argv[0])
	}
	mounts := mountsOf(t, c, ctr)
	// unshare gives the process a private mount namespace; the script
	// binds each volume onto its mount path there, then execs the program
	// with the container's environment only.
	script := []string{"set -e"}
	var args []string
	n := 0
	for _, m := range mounts {
		script = append(script, fmt.Sprintf(`mount --bind "$%d" "$%d"`, n+1, n+2))
		if m.readOnly {
			script = append(script, fmt.Sprintf(`mount -o remount,bind,ro "$%d"`, n+2))
		}
		args = append(args, m.source, m.target)
		n += 2
	}
	script = append(script, "shift "+strconv.Itoa(n), `exec "$@"`)
	cmd := append([]string{"--mount", "--propagation", "private", "--", "sh", "-c", strings.Join(script, "\n"), "sh"}, args...)
	cmd = append(cmd, "env", "-i", "PATH="+os.Getenv("PATH"))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		cmd = append(cmd, k+"="+env[k])
	}
	cmd = append(cmd, bin)
	cmd = append(cmd, argv[1:]...)
	prog, progArgs := "unshare", cmd
	if c.Worker != nil {
		prog, progArgs = c.Worker.Command(prog, progArgs...)
	}
	return harness.Start(t, c.Name, prog, progArgs...)
}

func find(t testing.TB, pod *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for i := range pod.Containers {
		if pod.Containers[i].Name == name {
			return &pod.Containers[i]
		}
	}
	t.Fatalf("the pod has no container %q", name)
	return nil
}

// Environment is the container's environment as the kubelet makes it:
// literal values ($(VAR) expanded from the variables before), fieldRef
// values from fields, configMapKeyRef values from configMaps (ConfigMap
// name to data). Anything else (secrets, resource fields) is refused: the
// manifests under test do not use it.
func Environment(t testing.TB, ctr *corev1.Container, fields map[string]string, configMaps map[string]map[string]string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, e := range ctr.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = Expand(e.Value, env)
		case e.ValueFrom.FieldRef != nil:
			v, ok := fields[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				t.Fatalf("env %s: no value given for field %s", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			env[e.Name] = v
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			data, ok := configMaps[ref.Name]
			if !ok {
				t.Fatalf("env %s: no ConfigMap %s given", e.Name, ref.Name)
			}
			v, ok := data[ref.Key]
			if !ok {
				t.Fatalf("env %s: ConfigMap %s has no key %s", e.Name, ref.Name, ref.Key)
			}
			env[e.Name] = v
		default:
			t.Fatalf("env %s: only values, field references and ConfigMap keys are supported", e.Name)
		}
	}
	if len(ctr.EnvFrom) > 0 {
		t.Fatalf("container %s: envFrom is not supported", ctr.Name)
	}
	return env
}

// Expand expands $(VAR) references in s from env as the kubelet does:
// $$ is a literal $, and a reference to an undefined variable stays as it
// is.
func Expand(s string, env map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch next := s[i+1]; {
		case next == '$':
			b.WriteByte('$')
			i++
		case next == '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// mount is one volume bound onto its mount path.
type mount struct {
	source, target string
	readOnly       bool
}

// mountsOf resolves the container's volume mounts to host directories.
// A mount path missing on the host is created (empty, the mount point)
// and removed at the end of the test.
func mountsOf(t testing.TB, c Container, ctr *corev1.Container) []mount {
	t.Helper()
	var out []mount
	for _, vm := range ctr.VolumeMounts {
		if vm.SubPath != "" || vm.SubPathExpr != "" {
			t.Fatalf("volume mount %s: subPath is not supported", vm.Name)
		}
		src, ok := c.Volumes[vm.Name]
		if !ok {
			src = hostPath(t, c.Pod, vm.Name)
		}
		if src == vm.MountPath {
			continue // a host path mounted where it is
		}
		mountPoint(t, src, vm.MountPath)
		out = append(out, mount{source: src, target: vm.MountPath, readOnly: vm.ReadOnly})
	}
	return out
}

func hostPath(t testing.TB, pod *corev1.PodSpec, volume string) string {
	t.Helper()
	for _, v := range pod.Volumes {
		if v.Name != volume {
			continue
		}
		if v.HostPath == nil {
			t.Fatalf("volume %s is not a host path: give its content in Container.Volumes", volume)
		}
		return v.HostPath.Path
	}
	t.Fatalf("the pod has no volume %q", volume)
	return ""
}

// mountPoint makes sure target exists on the host as a directory (or a
// file, for a file source), creating what is missing; what it created is
// removed when the test ends (if empty: the bind mount lived only in the
// container's mount namespace).
func mountPoint(t testing.TB, source, target string) {
	t.Helper()
	fi, err := os.Stat(source)
	if err != nil {
		t.Fatalf("volume source: %v", err)
	}
	var created []string
	dir := target
	if !fi.IsDir() {
		dir = filepath.Dir(target)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		created = append(created, d)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("mount point %s: %v", dir, err)
	}
	if !fi.IsDir() {
		if _, err := os.Stat(target); os.IsNotExist(err) {
			if err := os.WriteFile(target, nil, 0o644); err != nil {
				t.Fatalf("mount point %s: %v", target, err)
			}
			created = append([]string{target}, created...)
		}
	}
	t.Cleanup(func() {
		for _, p := range created { // deepest first
			_ = os.Remove(p)
		}
	})
}
