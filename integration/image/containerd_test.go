package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
)

// snapshotter is the one this machine's containerd unpacks into: overlayfs,
// as on a real node.
const snapshotter = "overlayfs"

// shimSocketDir is where containerd 1.6's runc shim puts its sockets,
// whatever the config says; runDirs are the directories under it a test
// run may create, removed again when empty and not there before.
const shimSocketDir = "/run/containerd/s"

var runDirs = []string{shimSocketDir, "/run/containerd"}

// requireContainerd skips t unless containerd can run here: root, and
// Debian's containerd package (containerd, ctr, runc).
func requireContainerd(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containerd and containers (run the tests as root, as `make test` in CI does)")
	}
	for _, prog := range []string{"containerd", "ctr", "runc"} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Skipf("needs %s (apt-get install containerd, or run `make deps` as root): %v", prog, err)
		}
	}
}

// containerd is a containerd of the test's own: its root, state, socket
// and config in one temporary directory, no CRI plugin, no network.
type containerd struct {
	dir  string
	sock string
	ns   string // the containerd namespace every ctr call uses
	proc *harness.Proc
	ids  []string // every container id run was given
}

// startContainerd starts containerd and waits until it answers. At
// cleanup it stops containerd and removes what it and its shims left:
// shim processes, mounts, cgroups, the shim socket directory.
func startContainerd(t *testing.T) *containerd {
	t.Helper()
	dir := t.TempDir()
	c := &containerd{
		dir:  dir,
		sock: filepath.Join(dir, "containerd.sock"),
		ns:   fmt.Sprintf("isthmus-image-test-%d", os.Getpid()),
	}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
# Only what importing and running an image needs: no CRI (kubelet's API),
# no snapshotters this machine has no use for, no /opt plugin directory.
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = ""
[metrics]
  address = ""
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock, c.sock+".ttrpc")
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	existed := map[string]bool{}
	for _, d := range runDirs {
		_, err := os.Stat(d)
		existed[d] = err == nil
	}

	c.proc = harness.Start(t, "containerd", "containerd", "--config", cfgPath)
	// Registered after Start: runs before harness kills and reaps it.
	t.Cleanup(func() { c.cleanup(t, existed) })

	harness.WaitFor(t, 30*time.Second, "containerd answers on "+c.sock, func() bool {
		select {
		case <-c.proc.Exited():
			t.Fatalf("containerd exited at start:\n%s", c.proc.Output())
		default:
		}
		_, err := c.ctr(t.Context(), "version")
		return err == nil
	})
	return c
}

// ctr runs ctr against this containerd in its namespace, bounded by two
// minutes, and returns its combined output.
func (c *containerd) ctr(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	all := append([]string{"--address", c.sock, "--namespace", c.ns}, args...)
	out, err := exec.CommandContext(ctx, "ctr", all...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// run runs cmd in a new container of image ref with ctr run --rm: the
// image's own user, no TTY; FIFOs and runc's state in the test directory.
func (c *containerd) run(ctx context.Context, ref, id string, extra []string, cmd ...string) (string, error) {
	args := []string{"run", "--rm", "--snapshotter", snapshotter,
		"--fifo-dir", filepath.Join(c.dir, "fifo"), "--runc-root", filepath.Join(c.dir, "runc")}
	args = append(args, extra...)
	args = append(args, ref, id)
	c.ids = append(c.ids, id)
	return c.ctr(ctx, append(args, cmd...)...)
}

// cleanup stops containerd and removes everything it left behind. After
// a passing test (ctr run --rm) only containerd itself is left; after a
// failure, containers may still run.
func (c *containerd) cleanup(t *testing.T, existed map[string]bool) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c.removeContainers(ctx, t)
	if err := c.proc.Stop(15 * time.Second); err != nil {
		t.Errorf("stopping containerd: %v", err)
	}
	// Shims outlive containerd by design; ours are the ones given our
	// socket. Killed, they leave their socket behind.
	for _, pid := range shimsOf(c.sock) {
		t.Logf("killing a leftover containerd shim, pid %d", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, id := range c.ids {
		if err := os.Remove(shimSocket(c.sock, c.ns, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("removing the shim socket of container %s: %v", id, err)
		}
	}
	for _, m := range mountsUnder(c.dir) {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", m, err)
		}
	}
	for _, d := range cgroupsOf(c.ns) {
		// A killed container's processes may take a moment to leave it.
		var err error
		for range 50 {
			if err = os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("removing cgroup %s: %v", d, err)
		}
	}
	for _, d := range runDirs {
		if !existed[d] {
			_ = os.Remove(d) // only if empty: another containerd may use it now
		}
	}
}

// removeContainers kills and deletes every task and container left in the
// test's namespace, through containerd, so that runc and the shims tidy up
// their cgroups, mounts and sockets themselves.
func (c *containerd) removeContainers(ctx context.Context, t *testing.T) {
	out, err := c.ctr(ctx, "containers", "ls", "--quiet")
	if err != nil {
		t.Errorf("listing leftover containers: %v", err)
		return
	}
	for _, id := range strings.Fields(out) {
		t.Logf("removing leftover container %s", id)
		_, _ = c.ctr(ctx, "tasks", "kill", "--signal", "SIGKILL", id)
		if _, err := c.ctr(ctx, "tasks", "delete", "--force", id); err != nil {
			t.Logf("deleting task %s: %v", id, err)
		}
		if _, err := c.ctr(ctx, "containers", "delete", id); err != nil {
			t.Errorf("deleting container %s: %v", id, err)
		}
	}
}

// shimSocket is the socket containerd 1.6's runc shim serves container id
// on (runtime/v2/shim.SocketAddress).
func shimSocket(sock, ns, id string) string {
	return fmt.Sprintf("%s/%x", shimSocketDir, sha256.Sum256([]byte(filepath.Join(sock, ns, id))))
}

// shimsOf returns the pids of processes whose command line names sock:
// the shims the test's containerd started.
func shimsOf(sock string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") && bytes.Contains(cmdline, []byte(sock)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// mountsUnder returns the mount points under dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mounts []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		// mountinfo escapes space, tab, newline and backslash as octal.
		p := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(fields[4])
		if strings.HasPrefix(p, dir+"/") {
			mounts = append(mounts, p)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	return mounts
}

// cgroupsOf returns the cgroup directories ctr run made for namespace ns
// (/<ns>/<container> in every hierarchy), children first. runc removes a
// container's own cgroup; the namespace's parent is left to us.
func cgroupsOf(ns string) []string {
	var dirs []string
	for _, pattern := range []string{"/sys/fs/cgroup/" + ns, "/sys/fs/cgroup/*/" + ns} {
		parents, _ := filepath.Glob(pattern)
		for _, p := range parents {
			children, _ := filepath.Glob(filepath.Join(p, "*"))
			for _, ch := range children {
				if fi, err := os.Stat(ch); err == nil && fi.IsDir() {
					dirs = append(dirs, ch)
				}
			}
			dirs = append(dirs, p)
		}
	}
	return dirs
}
