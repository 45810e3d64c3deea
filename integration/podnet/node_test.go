package podnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"isthmus.dev/cni/cnitest"
	"isthmus.dev/integration/harness"
)

// The cluster's network, all of it in namespaces the test makes:
//
//	ctrl ns (192.0.2.1) ─┐                      node-1 ns (192.0.2.11)  pods 198.18.x
//	                     ├── lan ns: bridge ────┤
//	                     │                      node-2 ns (192.0.2.12)  pods 198.18.y
//
// The nodes share the LAN subnet (TEST-NET-1) and route the pod network
// (RFC 2544's 198.18.0.0/15) between them as the provider programs it.
// The control-plane namespace sits on the LAN with no route to the pod
// network, as an isolated control plane does. kube-apiserver itself runs
// on the host's loopback; each node reaches it at 127.0.0.1:6443 through a
// relay in the test (its "API server address").
const (
	lanPrefixLen = 24
	ctrlAddr     = "192.0.2.1"
	podCIDR      = "198.18.0.0/16"
	serviceCIDR  = "198.19.0.0/16"
	nodeAPIPort  = 6443
	backendPort  = 8080
)

// lan is the namespace holding the bridge the nodes and the control plane
// are plugged into.
type lan struct {
	ns   *cnitest.NetNS
	ctrl *cnitest.NetNS
	seq  int
}

func newLAN(t *testing.T) *lan {
	t.Helper()
	l := &lan{ns: cnitest.NewNetNS(t, "lan"), ctrl: cnitest.NewNetNS(t, "ctrl")}
	cnitest.Run(t, "ip", "-n", l.ns.Name, "link", "add", "br0", "type", "bridge")
	cnitest.Run(t, "ip", "-n", l.ns.Name, "link", "set", "br0", "up")
	l.plug(t, l.ctrl, ctrlAddr, false)
	return l
}

// plug connects ns to the bridge by a veth named eth0 on ns's side, with
// addr/24; with defaultRoute, ns routes everything else to the control
// plane's address (Calico's proxy-ARP gateway needs a default route).
func (l *lan) plug(t *testing.T, ns *cnitest.NetNS, addr string, defaultRoute bool) {
	t.Helper()
	l.seq++
	port := "p" + strconv.Itoa(l.seq)
	cnitest.Run(t, "ip", "-n", l.ns.Name, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.Name)
	cnitest.Run(t, "ip", "-n", l.ns.Name, "link", "set", port, "master", "br0", "up")
	cnitest.Run(t, "ip", "-n", ns.Name, "addr", "add", addr+"/"+strconv.Itoa(lanPrefixLen), "dev", "eth0")
	cnitest.Run(t, "ip", "-n", ns.Name, "link", "set", "eth0", "up")
	if defaultRoute {
		cnitest.Run(t, "ip", "-n", ns.Name, "route", "add", "default", "via", ctrlAddr)
	}
}

// node is one worker: a network namespace on the LAN and a mount namespace
// of its own, held by a sleeping process. Its /etc and /var are overlays
// (writes land in the test's temp dir), its /run is a directory of the
// test's with the host's /run/netns inside. Every program of the node runs
// in both namespaces, as every daemon of a real machine shares its file
// system: what kube-router writes to /etc/cni/net.d, the pods' conflist
// reads; what felix writes to /var/lib/calico, the CNI plugin reads.
type node struct {
	name   string // the Kubernetes node name
	ip     netip.Addr
	ns     *cnitest.NetNS
	state  string // the test's directory behind the node's /run, overlays' upper dirs
	holder *harness.Proc
	root   bool // its root is an overlay of the machine's (newPodHost)
}

func newNode(t *testing.T, l *lan, name, ip string) *node {
	t.Helper()
	return newHost(t, l, name, ip, false)
}

// newPodHost is a host for a pod that is not on the host network (Calico's
// kube-controllers): its whole root is an overlay of the machine's, so
// the paths of the container's own image (/status) can be written, and
// its programs run chrooted there.
func newPodHost(t *testing.T, l *lan, name, ip string) *node {
	t.Helper()
	return newHost(t, l, name, ip, true)
}

func newHost(t *testing.T, l *lan, name, ip string, root bool) *node {
	t.Helper()
	n := &node{name: name, ip: netip.MustParseAddr(ip), ns: cnitest.NewNetNS(t, name), state: t.TempDir(), root: root}
	l.plug(t, n.ns, ip, true)
	for _, d := range []string{"etc/upper", "etc/work", "var/upper", "var/work", "root/upper", "root/work", "root/mnt", "run/netns"} {
		if err := os.MkdirAll(filepath.Join(n.state, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := n.state
	overlay := func(lower, dir, target string) string {
		return "mount -t overlay overlay -o lowerdir=" + lower + ",upperdir=" + s + "/" + dir + "/upper,workdir=" + s + "/" + dir + "/work " + target
	}
	// The host's /run/netns stays visible (a slave mount: namespaces the
	// test adds later appear), so the CNI plugins find the pods'.
	script := []string{overlay("/etc", "etc", "/etc"), overlay("/var", "var", "/var"),
		"mount --rbind /run/netns " + s + "/run/netns", "mount --rbind " + s + "/run /run",
		"touch /run/.node-ready", "exec sleep 86400"}
	if root {
		r := s + "/root/mnt"
		script = []string{overlay("/", "root", r),
			"mount --rbind /proc " + r + "/proc", "mount --rbind /sys " + r + "/sys", "mount --rbind /dev " + r + "/dev",
			"mount --rbind /run/netns " + s + "/run/netns", "mount --rbind " + s + "/run " + r + "/run",
			"touch " + r + "/run/.node-ready", "exec chroot " + r + " sleep 86400"}
	}
	n.holder = harness.Start(t, name+"-root", "ip", "netns", "exec", n.ns.Name,
		"unshare", "--mount", "--propagation", "slave", "sh", "-ec", strings.Join(script, " && "))
	harness.WaitFor(t, 10*time.Second, name+"'s mount namespace", func() bool {
		select {
		case <-n.holder.Exited():
			t.Fatalf("%s's mount namespace could not be made:\n%s", name, n.holder.Output())
		default:
		}
		if _, err := os.Stat(filepath.Join(n.state, "run", ".node-ready")); err != nil {
			return false
		}
		// The mounts are made once the marker is there, but the chroot
		// (newPodHost) only once the holder is sleep: until then, its
		// root (command's --root) is still the machine's.
		comm, err := os.ReadFile("/proc/" + strconv.Itoa(n.holder.Pid()) + "/comm")
		return err == nil && strings.TrimSpace(string(comm)) == "sleep"
	})
	return n
}

// command is argv run in the node's namespaces.
func (n *node) command(argv ...string) []string {
	pid := "/proc/" + strconv.Itoa(n.holder.Pid())
	args := []string{"--mount=" + pid + "/ns/mnt", "--net=" + n.ns.Path}
	if n.root {
		args = append(args, "--root="+pid+"/root") // nsenter starts the program at that root
	}
	return append(append(args, "--"), argv...)
}

// start runs argv on the node with exactly the environment env (plus a
// PATH), until t's cleanup.
func (n *node) start(t *testing.T, name string, env []string, argv ...string) *harness.Proc {
	t.Helper()
	full := append([]string{"env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	return harness.Start(t, n.name+"-"+name, "nsenter", n.command(append(full, argv...)...)...)
}

// run runs argv on the node to its end and returns its output.
func (n *node) run(ctx context.Context, env []string, argv ...string) (string, error) {
	full := append([]string{"env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	out, err := exec.CommandContext(ctx, "nsenter", n.command(append(full, argv...)...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s on %s: %w: %s", strings.Join(argv, " "), n.name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// mustRun is run for a step that has to work.
func (n *node) mustRun(t *testing.T, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := n.run(ctx, nil, argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// writeFile writes a file at path in the node's file system, making its
// directory (as the kubelet makes a hostPath DirectoryOrCreate).
func (n *node) writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", n.command("sh", "-ec", `mkdir -p "$(dirname "$1")"; cat > "$1"; chmod "$2" "$1"`, "sh", path, strconv.FormatUint(uint64(mode), 8))...)
	cmd.Stdin = strings.NewReader(string(data))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("write %s on %s: %v: %s", path, n.name, err, out)
	}
}

// readFile reads path in the node's file system.
func (n *node) readFile(path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", n.command("cat", path)...).Output()
	if err != nil {
		return nil, fmt.Errorf("read %s on %s: %w", path, n.name, err)
	}
	return out, nil
}

// serviceAccount mounts a pod's service-account volume on the node as the
// kubelet projects it (/var/run/secrets/kubernetes.io/serviceaccount: the
// token, the cluster's CA and the namespace), for the in-cluster client
// configuration of the components.
func (n *node) serviceAccount(t *testing.T, token string, ca []byte, namespace string) {
	t.Helper()
	dir := filepath.Join(n.state, "run", "secrets", "kubernetes.io", "serviceaccount")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"token": []byte(token), "ca.crt": ca, "namespace": []byte(namespace)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// inClusterEnv is what the kubelet puts in every container's environment
// for the in-cluster client: the API server's address as the node reaches it.
func inClusterEnv() []string {
	return []string{"KUBERNETES_SERVICE_HOST=127.0.0.1", "KUBERNETES_SERVICE_PORT=" + strconv.Itoa(nodeAPIPort)}
}

// relayAPI listens on the node's 127.0.0.1:6443 and carries each
// connection to kube-apiserver on the host's loopback (api, host:port):
// the node's view of the API server's address. The serving certificate
// names 127.0.0.1, so TLS is verified end to end.
func (n *node) relayAPI(t *testing.T, api string) {
	t.Helper()
	ln, err := n.ns.Listen("tcp", "127.0.0.1:"+strconv.Itoa(nodeAPIPort))
	if err != nil {
		t.Fatalf("API relay on %s: %v", n.name, err)
	}
	harness.ServeLoadBalancer(t, ln, api)
}

// httpGet asks url from inside the node's network namespace (a kubelet's
// httpGet probe of a hostNetwork pod) and returns the status.
func (n *node) httpGet(url string) (int, error) {
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return n.ns.Dial(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// route is the node's route to dst ("" when it has none).
func (n *node) route(t *testing.T, dst string) string {
	t.Helper()
	out, err := exec.Command("ip", "-n", n.ns.Name, "route", "show", dst).CombinedOutput()
	if err != nil {
		t.Fatalf("ip route show %s on %s: %v: %s", dst, n.name, err, out)
	}
	return strings.TrimSpace(string(out))
}

// dialEcho dials addr with dial, sends a line and wants it back.
func dialEcho(ctx context.Context, dial func(context.Context, string, string) (net.Conn, error), addr, what string) error {
	conn, err := dial(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("dial %s (%s): %w", addr, what, err)
	}
	defer conn.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Second)
	}
	_ = conn.SetDeadline(deadline)
	msg := []byte(what + "\n")
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("write to %s (%s): %w", addr, what, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil {
		return fmt.Errorf("read the echo of %s (%s): %w", addr, what, err)
	}
	if string(got) != string(msg) {
		return fmt.Errorf("echo of %s (%s): %q, want %q", addr, what, got, msg)
	}
	return nil
}

// startEcho serves an echo on addr in the pod's namespace; the backend
// records who connected.
func startEcho(t *testing.T, pod *cnitest.NetNS, addr netip.AddrPort) *harness.Backend {
	t.Helper()
	ln, err := pod.Listen("tcp", addr.String())
	if err != nil {
		t.Fatalf("backend on %s: %v", addr, err)
	}
	return harness.ServeBackend(t, ln, harness.Echo)
}

// lastPeer is the address the backend's latest connection came from.
func lastPeer(b *harness.Backend) netip.Addr {
	p := b.Peers()
	if len(p) == 0 {
		return netip.Addr{}
	}
	return p[len(p)-1]
}

// errBlocked says a connection attempt timed out: a policy dropped it.
var errBlocked = errors.New("no answer (dropped)")

// probeConn dials addr from pod once with a short timeout: nil when the
// echo came back, errBlocked when nothing answered.
func probeConn(pod *cnitest.NetNS, addr, what string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := dialEcho(ctx, pod.Dial, addr, what)
	if err != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)) {
		return errBlocked
	}
	return err
}

// service is a program of the node kept running as runit keeps the
// services of an image running: started again a second after it exits
// (felix exits when its configuration in the datastore changes), at most
// maxStarts times, until t's cleanup.
type service struct {
	name   string
	out    harness.SyncBuffer
	mu     sync.Mutex
	starts int
	stop   chan struct{}
	done   chan struct{}
}

const maxStarts = 30

func (n *node) supervise(t *testing.T, name string, env []string, argv ...string) *service {
	t.Helper()
	s := &service{name: n.name + "-" + name, stop: make(chan struct{}), done: make(chan struct{})}
	full := append([]string{"env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	args := n.command(append(full, argv...)...)
	go func() {
		defer close(s.done)
		for range maxStarts {
			cmd := exec.Command("nsenter", args...)
			cmd.Stdout, cmd.Stderr = &s.out, &s.out
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if err := cmd.Start(); err != nil {
				fmt.Fprintf(&s.out, "[test: start %s: %v]\n", s.name, err)
				return
			}
			s.mu.Lock()
			s.starts++
			s.mu.Unlock()
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			select {
			case <-s.stop:
				_ = cmd.Process.Kill()
				<-exited
				return
			case err := <-exited:
				fmt.Fprintf(&s.out, "[test: %s exited: %v; runit starts it again]\n", s.name, err)
			}
			select {
			case <-s.stop:
				return
			case <-time.After(time.Second):
			}
		}
		fmt.Fprintf(&s.out, "[test: %s started %d times: given up]\n", s.name, maxStarts)
	}()
	t.Cleanup(func() {
		close(s.stop)
		<-s.done
		if t.Failed() {
			t.Logf("--- output of %s (%d starts):\n%s", s.name, s.startCount(), lastLines(s.out.String(), 150))
		}
	})
	return s
}

func (s *service) startCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.starts
}

func lastLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
