package podnet

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"isthmus.dev/certs"
	"isthmus.dev/cni/cnitest"
	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/controlplane"
)

// cluster is a control plane of its own (one per provider, so their Node
// objects and custom resources never meet) and two nodes on a LAN.
type cluster struct {
	cp    *controlplane.ControlPlane
	lan   *lan
	nodes []*node
	audit string // kube-apiserver's audit log
	api   string // kube-apiserver's host:port on the host's loopback
}

// checkNoRefusals reads the audit log: no request of the service accounts
// (kube-system/name) may have been refused (403), so the rendered RBAC
// grants every component all it asks for.
func (c *cluster) checkNoRefusals(t *testing.T, serviceAccounts ...string) {
	t.Helper()
	f, err := os.Open(c.audit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	users := map[string]bool{}
	for _, sa := range serviceAccounts {
		users["system:serviceaccount:kube-system:"+sa] = true
	}
	seen := map[string]int{}
	refused := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev struct {
			Verb           string                                            `json:"verb"`
			RequestURI     string                                            `json:"requestURI"`
			User           struct{ Username string }                         `json:"user"`
			ObjectRef      *struct{ Resource, Subresource, APIGroup string } `json:"objectRef"`
			ResponseStatus *struct{ Code int }                               `json:"responseStatus"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil || !users[ev.User.Username] {
			continue
		}
		seen[ev.User.Username]++
		if ev.ResponseStatus != nil && ev.ResponseStatus.Code == http.StatusForbidden {
			what := ev.Verb + " " + ev.RequestURI
			if ev.ObjectRef != nil {
				what = ev.Verb + " " + ev.ObjectRef.APIGroup + "/" + ev.ObjectRef.Resource
				if ev.ObjectRef.Subresource != "" {
					what += "/" + ev.ObjectRef.Subresource
				}
			}
			refused[strings.TrimPrefix(ev.User.Username, "system:serviceaccount:kube-system:")+": "+what]++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read the audit log: %v", err)
	}
	for _, sa := range serviceAccounts {
		if seen["system:serviceaccount:kube-system:"+sa] == 0 {
			t.Errorf("the audit log has no request of %s: did it run under its service account?", sa)
		}
	}
	for what, n := range refused {
		t.Errorf("the API server refused %s (%d times): the rendered RBAC lacks it", what, n)
	}
	t.Logf("audit: requests per service account %v; refused: %d kinds of request", seen, len(refused))
}

// newCluster starts a control plane on the process's shared etcd and
// makes the LAN and two nodes, each with its Node object (InternalIP on
// the LAN and, when podCIDRs are given, spec.podCIDR as
// kube-controller-manager would allocate it) and its API relay.
func newCluster(t *testing.T, podCIDRs ...string) *cluster {
	t.Helper()
	cnitest.RequireNetNS(t)
	controlplane.Require(t)
	// Privileged pods allowed, as every cluster with a pod network allows
	// them (kubeadm's and k0s's kube-apiserver run so). Every request is
	// audited, so the test can show that no request of a component was
	// refused (checkNoRefusals).
	dir := t.TempDir()
	policy := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte("apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &cluster{audit: filepath.Join(dir, "audit.log")}
	c.cp = controlplane.Start(t, controlplane.Opts{EtcdURL: controlplane.SharedEtcd(t), PKI: controlplane.SharedPKI(t),
		Extra: []string{"--allow-privileged=true", "--audit-policy-file=" + policy, "--audit-log-path=" + c.audit, "--audit-log-mode=blocking"}})
	c.lan = newLAN(t)
	c.api = strings.TrimPrefix(c.cp.API.URL, "https://")
	for i := range 2 {
		n := newNode(t, c.lan, "node-"+strconv.Itoa(i+1), "192.0.2."+strconv.Itoa(11+i))
		n.relayAPI(t, c.api)
		obj := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: map[string]string{
				"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": n.name,
			}},
		}
		if len(podCIDRs) > i {
			obj.Spec.PodCIDR, obj.Spec.PodCIDRs = podCIDRs[i], []string{podCIDRs[i]}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		created, err := c.cp.Client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
		if err == nil {
			created.Status.Addresses = []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: n.ip.String()},
				{Type: corev1.NodeHostName, Address: n.name},
			}
			created.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
			_, err = c.cp.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
		}
		cancel()
		if err != nil {
			t.Fatalf("Node %s: %v", n.name, err)
		}
		c.nodes = append(c.nodes, n)
	}
	return c
}

// caPEM is the cluster CA, for the service-account volumes.
func (c *cluster) caPEM(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(c.cp.PKI.CA)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pod is a pod the test wired with the provider's conflist.
type pod struct {
	node *node
	ns   *cnitest.NetNS
	ip   netip.Addr
	echo *harness.Backend
}

func (p *pod) addr() string { return netip.AddrPortFrom(p.ip, backendPort).String() }

// checkPodToPod wants each pod to reach the other across the nodes.
func checkPodToPod(t *testing.T, pods []*pod, how string) {
	t.Helper()
	for i, from := range pods {
		to := pods[1-i]
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := dialEcho(ctx, from.ns.Dial, to.addr(), "from the pod on "+from.node.name+" to the pod on "+to.node.name+" "+how)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if got := lastPeer(to.echo); got != from.ip {
			t.Errorf("the pod on %s saw the connection from %s, want %s (the other pod: no NAT between pods)", to.node.name, got, from.ip)
		}
	}
}

// checkTunnel: the control plane (its namespace on the LAN, no route to
// the pod network) cannot dial the pods directly; proxy-server there, with
// an agent on each node, reaches the pod on each node through that node's
// agent (strategy destHost, each agent naming its pod's address), over
// both links.
func (c *cluster) checkTunnel(t *testing.T, pods []*pod) {
	t.Helper()
	for _, p := range pods {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := c.lan.ctrl.Dial(ctx, "tcp", p.addr())
		cancel()
		if err == nil {
			conn.Close()
			t.Fatalf("the control plane dialled the pod %s directly: it must have no route to the pod network", p.addr())
		}
		if !errors.Is(err, syscall.ENETUNREACH) && !errors.Is(err, syscall.EHOSTUNREACH) {
			t.Fatalf("direct dial of the pod %s from the control plane: %v, want no route to the pod network", p.addr(), err)
		}
	}
	pki, err := certs.NewBundle(t.TempDir(), ctrlAddr)
	if err != nil {
		t.Fatal(err)
	}
	harness.RegisterBundle(t, pki)
	for i, link := range []string{"native", "anp"} {
		t.Run("link="+link, func(t *testing.T) {
			s := c.startServer(t, pki, 8132+i)
			for j, p := range pods {
				c.startAgent(t, s, p.node, link, "ipv4="+p.ip.String(), 8093+10*j)
			}
			for _, p := range pods {
				what := "the control plane to the pod on " + p.node.name + " through its agent (" + link + " link)"
				var last error
				deadline := time.Now().Add(30 * time.Second)
				for {
					select {
					case <-s.Exited():
						t.Fatalf("proxy-server exited: %v", s.Wait(0))
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					last = dialEcho(ctx, func(ctx context.Context, _, addr string) (net.Conn, error) { return s.Dial(ctx, addr) }, p.addr(), what)
					cancel()
					if last == nil {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("%s: still failing after 30 s (both agents connected?): %v", what, last)
					}
					time.Sleep(200 * time.Millisecond)
				}
				peer := lastPeer(p.echo)
				if !c.nodeHas(t, p.node, peer) {
					t.Errorf("the pod on %s saw the tunneled connection from %s, not from its node: destHost should pick the agent on the pod's node", p.node.name, peer)
				}
			}
		})
	}
}

// nodeHas says whether addr is one of n's addresses.
func (c *cluster) nodeHas(t *testing.T, n *node, addr netip.Addr) bool {
	t.Helper()
	out := cnitest.Run(t, "ip", "-n", n.ns.Name, "-o", "addr", "show")
	for _, f := range strings.Fields(out) {
		if p, err := netip.ParsePrefix(f); err == nil && p.Addr() == addr {
			return true
		}
	}
	return false
}

// startServer runs proxy-server in the control plane's namespace: agents
// on ctrlAddr:agentPort, the frontend (HTTP CONNECT) on a Unix socket the
// test dials, standing for kube-apiserver on the controller.
func (c *cluster) startServer(t *testing.T, pki *certs.Bundle, agentPort int) *harness.Server {
	t.Helper()
	s := &harness.Server{
		Opts:       harness.ServerOpts{Impl: harness.Isthmus, Mode: harness.HTTPConnect, Transport: harness.UDS, ID: "ctrl", Count: 1},
		PKI:        pki,
		UDS:        harness.UDSPath(t),
		AgentPort:  agentPort,
		HealthPort: 8092,
	}
	args := []string{"netns", "exec", c.lan.ctrl.Name, bins.ProxyServer,
		"--mode=" + harness.HTTPConnect, "--uds-name=" + s.UDS, "--server-port=0",
		"--agent-port=" + strconv.Itoa(agentPort), "--agent-bind-address=" + ctrlAddr,
		"--cluster-cert=" + pki.AgentPortCert, "--cluster-key=" + pki.AgentPortKey,
		"--health-port=" + strconv.Itoa(s.HealthPort), "--health-bind-address=127.0.0.1",
		"--admin-port=8095", "--server-id=ctrl", "--server-count=1",
		"--proxy-strategies=destHost",
	}
	args = append(args, s.Opts.Auth.Flags(pki)...)
	s.Proc = harness.Start(t, "proxy-server", "ip", args...)
	s.DumpOnFailure = true
	t.Cleanup(func() { _ = s.Stop(10 * time.Second) })
	return s
}

// startAgent runs proxy-agent on n, dialling out to the control plane.
func (c *cluster) startAgent(t *testing.T, s *harness.Server, n *node, link, identifiers string, port int) {
	t.Helper()
	args := []string{bins.ProxyAgent,
		"--proxy-server-host=" + ctrlAddr, "--proxy-server-port=" + strconv.Itoa(s.AgentPort),
		"--ca-cert=" + s.PKI.CACert, "--agent-id=" + n.name, "--link=" + link,
		"--agent-identifiers=" + identifiers,
		"--health-server-host=127.0.0.1", "--health-server-port=" + strconv.Itoa(port), "--admin-server-port=" + strconv.Itoa(port+1),
		"--sync-interval=100ms", "--sync-interval-cap=1s",
	}
	args = append(args, harness.AgentAuth{}.Flags(s.PKI)...)
	p := n.start(t, "proxy-agent-"+link, nil, args...)
	p.DumpOnFailure = true
	t.Cleanup(func() { _ = p.Stop(10 * time.Second) })
}

// requirePrograms skips t unless the node programs it runs are installed
// (make deps installs them as root).
func requirePrograms(t *testing.T, programs ...string) {
	t.Helper()
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("needs %s (apt-get install iptables ipset util-linux; make deps does it as root): %v", p, err)
		}
	}
}
