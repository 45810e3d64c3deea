package podnet

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"isthmus.dev/cni"
	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/controlplane"
	"isthmus.dev/integration/harness/kubelet"
)

// rendered is what `isthmus cni render` wrote for a network config, read
// back from its files and decoded strictly: the objects of every stack, in
// the order the files are applied.
type rendered struct {
	dir     string
	objects []runtime.Object
}

// render runs the renderer the CLI runs (cni.Render) on config into a temp
// dir, and reads the manifest files back.
func render(t *testing.T, config string) *rendered {
	t.Helper()
	cfg, err := cni.Parse([]byte(config))
	if err != nil {
		t.Fatalf("network config: %v", err)
	}
	r := &rendered{dir: t.TempDir()}
	out, err := cni.Render(cfg, r.dir, cni.RenderOptions{})
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	for _, stack := range out.Stacks { // CRDs first, as the renderer orders them
		files, err := filepath.Glob(filepath.Join(stack, "*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(files)
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			objs, err := cni.DecodeStrict(data)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			r.objects = append(r.objects, objs...)
		}
	}
	if len(r.objects) == 0 {
		t.Fatalf("the render of %q wrote no manifests", config)
	}
	return r
}

// object is the rendered object of type T named name.
func object[T interface {
	runtime.Object
	GetName() string
}](t *testing.T, r *rendered, name string) T {
	t.Helper()
	for _, o := range r.objects {
		if obj, ok := o.(T); ok && obj.GetName() == name {
			return obj
		}
	}
	var zero T
	t.Fatalf("no %T named %s in the rendered manifests", zero, name)
	return zero
}

func (r *rendered) daemonSet(t *testing.T, name string) *appsv1.DaemonSet {
	t.Helper()
	return object[*appsv1.DaemonSet](t, r, name)
}

func (r *rendered) configMap(t *testing.T, name string) *corev1.ConfigMap {
	t.Helper()
	return object[*corev1.ConfigMap](t, r, name)
}

func (r *rendered) deployment(t *testing.T, name string) *appsv1.Deployment {
	t.Helper()
	return object[*appsv1.Deployment](t, r, name)
}

// apply applies every rendered object to the control plane, in order, as
// `kubectl apply --server-side -f` of each folder would (so the API server
// validates and defaults them all), CRDs established before what follows.
// The workloads are stored too: nothing runs them but this test.
func (r *rendered) apply(t *testing.T, cp *controlplane.ControlPlane) {
	t.Helper()
	objs := make([]*unstructured.Unstructured, 0, len(r.objects))
	for _, o := range r.objects {
		raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, &unstructured.Unstructured{Object: raw})
	}
	cp.Apply(t, objs, controlplane.ApplyOpts{FieldManager: "isthmus-podnet-e2e"})
}

// container is one container of a rendered pod template, resolved for one
// node as its kubelet would: the environment with every fieldRef and
// configMapKeyRef filled in.
type container struct {
	spec corev1.Container
	env  []string
}

// containerOf resolves container name (init or not) of DaemonSet ds for n.
func (r *rendered) containerOf(t *testing.T, ds *appsv1.DaemonSet, name string, n *node) container {
	t.Helper()
	return r.podContainer(t, &ds.Spec.Template.Spec, "DaemonSet "+ds.Name, name, n)
}

// podContainer resolves container name (init or not) of pod (of owner,
// for messages) for n.
func (r *rendered) podContainer(t *testing.T, pod *corev1.PodSpec, owner, name string, n *node) container {
	t.Helper()
	i := slices.IndexFunc(pod.Containers, func(c corev1.Container) bool { return c.Name == name })
	var c corev1.Container
	if i >= 0 {
		c = pod.Containers[i]
	} else if j := slices.IndexFunc(pod.InitContainers, func(c corev1.Container) bool { return c.Name == name }); j >= 0 {
		c = pod.InitContainers[j]
	} else {
		t.Fatalf("%s has no container %s", owner, name)
	}
	fields := map[string]string{
		"spec.nodeName": n.name,
		// hostNetwork: the pod's address is the node's.
		"status.hostIP": n.ip.String(), "status.podIP": n.ip.String(),
	}
	configMaps := map[string]map[string]string{}
	for _, o := range r.objects {
		if cm, ok := o.(*corev1.ConfigMap); ok {
			configMaps[cm.Name] = cm.Data
		}
	}
	env := kubelet.Environment(t, &c, fields, configMaps)
	out := container{spec: c, env: inClusterEnv()}
	for _, e := range c.Env { // in the container's order
		out.env = append(out.env, e.Name+"="+env[e.Name])
	}
	return out
}

// envValue is the value of name in c's resolved environment.
func (c container) envValue(name string) (string, bool) {
	for _, kv := range slices.Backward(c.env) {
		if k, v, _ := strings.Cut(kv, "="); k == name {
			return v, true
		}
	}
	return "", false
}

// mountVolumes does for c on n what the kubelet does before starting it:
// a hostPath volume mounted at its own path (what a hostNetwork pod of the
// pod network mostly has) is the node's directory, made when its type is
// DirectoryOrCreate; a ConfigMap volume's keys become files under the
// mount path. A hostPath mounted elsewhere (/host/...) cannot be shown to
// a process sharing the node's file system: it fails t.
func (r *rendered) mountVolumes(t *testing.T, ds *appsv1.DaemonSet, c container, n *node) {
	t.Helper()
	for _, m := range c.spec.VolumeMounts {
		i := slices.IndexFunc(ds.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 {
			t.Fatalf("container %s mounts volume %s, which the DaemonSet does not have", c.spec.Name, m.Name)
		}
		v := ds.Spec.Template.Spec.Volumes[i]
		switch {
		case v.HostPath != nil:
			if v.HostPath.Path != m.MountPath && strings.HasPrefix(m.MountPath, "/host/") {
				// calico-node's view of the node's CNI folder, for its token
				// monitor: the test writes the plugin's kubeconfig itself.
				t.Logf("%s: %s mounts the node's %s at %s: not shown to a process on the node (the test does that work)", n.name, c.spec.Name, v.HostPath.Path, m.MountPath)
				continue
			}
			if v.HostPath.Path != m.MountPath {
				t.Fatalf("container %s mounts host path %s at %s: a process on the node sees it only at its own path", c.spec.Name, v.HostPath.Path, m.MountPath)
			}
			if v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathDirectoryOrCreate {
				n.mustRun(t, "mkdir", "-p", m.MountPath)
			}
		case v.ConfigMap != nil:
			cm := r.configMap(t, v.ConfigMap.Name)
			mode := os.FileMode(0o644)
			if v.ConfigMap.DefaultMode != nil {
				mode = os.FileMode(*v.ConfigMap.DefaultMode)
			}
			for k, data := range cm.Data {
				n.writeFile(t, filepath.Join(m.MountPath, k), []byte(data), mode)
			}
		default:
			t.Fatalf("container %s: volume %s is of a kind the test does not mount", c.spec.Name, m.Name)
		}
	}
}

// probe runs a rendered probe against c on n once, as the kubelet does:
// exec (the command with the container's environment, its program mapped
// to the built binary) or httpGet (to the node's address: hostNetwork).
func probe(ctx context.Context, p *corev1.Probe, c container, n *node, programs map[string]string) error {
	switch {
	case p.Exec != nil:
		argv := slices.Clone(p.Exec.Command)
		bin, ok := programs[argv[0]]
		if !ok {
			return fmt.Errorf("probe runs %s, which the test did not build", argv[0])
		}
		argv[0] = bin
		_, err := n.run(ctx, c.env, argv...)
		return err
	case p.HTTPGet != nil:
		port := p.HTTPGet.Port.String()
		if p.HTTPGet.Port.IntValue() == 0 {
			i := slices.IndexFunc(c.spec.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == port })
			if i < 0 {
				return fmt.Errorf("httpGet probe names port %s, which the container does not declare", port)
			}
			port = strconv.Itoa(int(c.spec.Ports[i].ContainerPort))
		}
		u := url.URL{Scheme: "http", Host: n.ip.String() + ":" + port, Path: p.HTTPGet.Path}
		status, err := n.httpGet(u.String())
		if err != nil {
			return err
		}
		if status < 200 || status >= 400 {
			return fmt.Errorf("GET %s: %d", u.String(), status)
		}
		return nil
	}
	return fmt.Errorf("a probe of a kind the test does not run: %+v", p)
}

// waitProbe runs probe p until it passes, for up to d, failing t with the
// last error; or at once, with its output, when proc (if not nil), the
// container's program, has exited: a flag or variable it rejects.
func waitProbe(t *testing.T, what string, d time.Duration, p *corev1.Probe, c container, n *node, programs map[string]string, proc *harness.Proc) {
	t.Helper()
	if p == nil {
		t.Fatalf("%s: the rendered container has no such probe", what)
	}
	var last error
	deadline := time.Now().Add(d)
	for {
		if proc != nil {
			select {
			case <-proc.Exited():
				t.Fatalf("%s on %s: %s exited (%v), with the rendered arguments %q:\n%s", what, n.name, proc.Name, proc.Wait(0), c.spec.Args, lastLines(proc.Output(), 40))
			default:
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(max(p.TimeoutSeconds, 1))*time.Second)
		last = probe(ctx, p, c, n, programs)
		cancel()
		if last == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s on %s: still failing after %v: %v", what, n.name, d, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
