package preflight_test

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"isthmus.dev/cni"
	"isthmus.dev/cni/preflight"
)

// listenTCP opens a listener on a free loopback port, closed at cleanup.
func listenTCP(t *testing.T) (net.Listener, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, ln.Addr().(*net.TCPAddr).Port
}

// closedTCPPort is a port that was free a moment ago and is closed now.
func closedTCPPort(t *testing.T) int {
	t.Helper()
	ln, port := listenTCP(t)
	ln.Close()
	return port
}

func listenUDP(t *testing.T) (net.PacketConn, int) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc, pc.LocalAddr().(*net.UDPAddr).Port
}

func run(t *testing.T, o preflight.Options) []preflight.Result {
	t.Helper()
	checks, err := preflight.Plan(o)
	if err != nil {
		t.Fatal(err)
	}
	return preflight.Runner{Timeout: 500 * time.Millisecond}.Run(context.Background(), checks)
}

// byTarget finds the result of a check by service, kind and port.
func byTarget(t *testing.T, rs []preflight.Result, service string, kind preflight.Kind, port int) preflight.Result {
	t.Helper()
	for _, r := range rs {
		if r.Service == service && r.Kind == kind && r.Port == port {
			return r
		}
	}
	t.Fatalf("no %s %s check on port %d in %+v", kind, service, port, rs)
	return preflight.Result{}
}

// want is one planned check, as TestPlan compares it.
type want struct {
	service string
	kind    preflight.Kind
	proto   string
	port    int
	req     bool
}

// planCase is a node and the checks planned for it.
type planCase struct {
	name  string
	o     preflight.Options
	want  []want
	ports func(*preflight.Ports) // changes to the default ports
}

var planCases = []planCase{
	{"single controller", preflight.Options{Role: preflight.Controller, Provider: cni.KubeRouter}, []want{
		{"kube-apiserver", preflight.Listen, "tcp", 6443, true},
		{"proxy-server (agents)", preflight.Listen, "tcp", 8132, true},
		{"proxy-server (admin)", preflight.Listen, "tcp", 8133, true},
		{"proxy-server (health)", preflight.Listen, "tcp", 8134, true},
		{"etcd peers", preflight.Listen, "tcp", 2380, false},
		{"controller join API", preflight.Listen, "tcp", 9443, false},
		{"kubelet (workers)", preflight.Tunnel, "tcp", 10250, false},
	}, nil},
	{"controller before proxy-server", preflight.Options{Role: preflight.Controller, Provider: cni.KubeRouter,
		NotInstalled: preflight.DefaultNotInstalled(preflight.Controller)}, []want{
		{"kube-apiserver", preflight.Listen, "tcp", 6443, true},
		{"proxy-server (agents)", preflight.Free, "tcp", 8132, true},
		{"proxy-server (admin)", preflight.Free, "tcp", 8133, true},
		{"proxy-server (health)", preflight.Free, "tcp", 8134, true},
		{"etcd peers", preflight.Listen, "tcp", 2380, false},
		{"controller join API", preflight.Listen, "tcp", 9443, false},
		{"kubelet (workers)", preflight.Tunnel, "tcp", 10250, false},
	}, nil},
	{"controllers", preflight.Options{Role: preflight.Controller, Provider: cni.Calico, Peers: []string{"c2"}}, []want{
		{"kube-apiserver", preflight.Listen, "tcp", 6443, true},
		{"proxy-server (agents)", preflight.Listen, "tcp", 8132, true},
		{"proxy-server (admin)", preflight.Listen, "tcp", 8133, true},
		{"proxy-server (health)", preflight.Listen, "tcp", 8134, true},
		{"etcd peers", preflight.Listen, "tcp", 2380, true},
		{"controller join API", preflight.Listen, "tcp", 9443, true},
		{"etcd peers", preflight.Reach, "tcp", 2380, true},
		{"controller join API", preflight.Reach, "tcp", 9443, true},
		{"kubelet (workers)", preflight.Tunnel, "tcp", 10250, false},
	}, nil},
	{"kube-router worker", preflight.Options{Role: preflight.Worker, Provider: cni.KubeRouter, Controllers: []string{"c1"}, Peers: []string{"w2"}}, []want{
		{"kubelet", preflight.Listen, "tcp", 10250, true},
		{"proxy-agent (admin)", preflight.Listen, "tcp", 8133, true},
		{"proxy-agent (health)", preflight.Listen, "tcp", 8134, true},
		{"kube-apiserver", preflight.Reach, "tcp", 6443, true},
		{"proxy-server (agents)", preflight.Reach, "tcp", 8132, true},
		{"kube-router BGP", preflight.Listen, "tcp", 179, true},
		{"kube-router BGP", preflight.Reach, "tcp", 179, true},
	}, nil},
	{"kube-router worker before the agent and the pod network", preflight.Options{Role: preflight.Worker, Provider: cni.KubeRouter, Controllers: []string{"c1"},
		NotInstalled: []preflight.Component{preflight.ProxyAgent, preflight.PodNetwork}}, []want{
		{"kubelet", preflight.Listen, "tcp", 10250, true},
		{"proxy-agent (admin)", preflight.Free, "tcp", 8133, true},
		{"proxy-agent (health)", preflight.Free, "tcp", 8134, true},
		{"kube-apiserver", preflight.Reach, "tcp", 6443, true},
		{"proxy-server (agents)", preflight.Reach, "tcp", 8132, true},
		{"kube-router BGP", preflight.Free, "tcp", 179, true},
	}, nil},
	{"calico vxlan worker", preflight.Options{Role: preflight.Worker, Provider: cni.Calico, Controllers: []string{"c1"}, Peers: []string{"w2"}}, []want{
		{"kubelet", preflight.Listen, "tcp", 10250, true},
		{"proxy-agent (admin)", preflight.Listen, "tcp", 8133, true},
		{"proxy-agent (health)", preflight.Listen, "tcp", 8134, true},
		{"kube-apiserver", preflight.Reach, "tcp", 6443, true},
		{"proxy-server (agents)", preflight.Reach, "tcp", 8132, true},
		{"Calico VXLAN", preflight.Listen, "udp", 4789, true},
		{"Calico VXLAN", preflight.Reach, "udp", 4789, true},
	}, nil},
	{"calico bird worker", preflight.Options{Role: preflight.Worker, Provider: cni.Calico, CalicoMode: "bird", Controllers: []string{"c1"}}, []want{
		{"kubelet", preflight.Listen, "tcp", 10250, true},
		{"proxy-agent (admin)", preflight.Listen, "tcp", 8133, true},
		{"proxy-agent (health)", preflight.Listen, "tcp", 8134, true},
		{"kube-apiserver", preflight.Reach, "tcp", 6443, true},
		{"proxy-server (agents)", preflight.Reach, "tcp", 8132, true},
		{"Calico BGP (BIRD)", preflight.Listen, "tcp", 179, true},
	}, nil},
	{"custom worker, admin port off", preflight.Options{Role: preflight.Worker, Provider: cni.Custom, Controllers: []string{"c1"}, Peers: []string{"w2"}}, []want{
		{"kubelet", preflight.Listen, "tcp", 10250, true},
		{"proxy-agent (health)", preflight.Listen, "tcp", 8134, true},
		{"kube-apiserver", preflight.Reach, "tcp", 6443, true},
		{"proxy-server (agents)", preflight.Reach, "tcp", 8132, true},
	}, func(p *preflight.Ports) { p.Admin = 0 }},
	{"agent port of ANP", preflight.Options{Role: preflight.Worker, Provider: cni.Custom, Controllers: []string{"c1"}}, []want{
		{"kubelet", preflight.Listen, "tcp", 10250, true},
		{"proxy-agent (admin)", preflight.Listen, "tcp", 8133, true},
		{"proxy-agent (health)", preflight.Listen, "tcp", 8134, true},
		{"kube-apiserver", preflight.Reach, "tcp", 6443, true},
		{"proxy-server (agents)", preflight.Reach, "tcp", 8091, true},
	}, func(p *preflight.Ports) { p.Agent = 8091 }},
}

func TestPlan(t *testing.T) {
	d := preflight.DefaultPorts()
	for _, tc := range planCases {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Ports = d
			if tc.ports != nil {
				tc.ports(&tc.o.Ports)
			}
			checks, err := preflight.Plan(tc.o)
			if err != nil {
				t.Fatal(err)
			}
			var got []want
			for _, c := range checks {
				got = append(got, want{c.Service, c.Kind, c.Proto, c.Port, c.Required})
				if c.Fix == "" {
					t.Errorf("%s %s has no fix", c.Service, c.Target())
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("checks:\n%v\nwant:\n%v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("check %d: %v, want %v", i, got[i], tc.want[i])
				}
			}
		})
	}
	for name, o := range map[string]preflight.Options{
		"no role":           {Provider: cni.KubeRouter},
		"bad provider":      {Role: preflight.Worker, Provider: "weave", Controllers: []string{"c"}},
		"bad calico mode":   {Role: preflight.Worker, Provider: cni.Calico, CalicoMode: "geneve", Controllers: []string{"c"}},
		"worker, no contrl": {Role: preflight.Worker, Provider: cni.KubeRouter},
		"proxy-server on a worker": {Role: preflight.Worker, Provider: cni.KubeRouter, Controllers: []string{"c"},
			NotInstalled: []preflight.Component{preflight.ProxyServer}},
	} {
		if _, err := preflight.Plan(o); err == nil {
			t.Errorf("%s: planned without error", name)
		}
	}
}

func TestPortsSet(t *testing.T) {
	p := preflight.DefaultPorts()
	if err := p.Set("apiserver=16443"); err != nil || p.APIServer != 16443 {
		t.Errorf("apiserver=16443: %v, %d", err, p.APIServer)
	}
	for _, bad := range []string{"apiserver", "api=1", "vxlan=0", "bgp=70000", "kubelet=x"} {
		if err := p.Set(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestWorkerPassesAndFails: kubelet listens and kube-apiserver answers
// (passes); proxy-server's port is closed (a required failure, "refused",
// with its fix); then proxy-server opens and everything passes.
func TestWorkerPassesAndFails(t *testing.T) {
	_, kubelet := listenTCP(t)
	_, apiserver := listenTCP(t)
	agentPort := closedTCPPort(t)
	o := preflight.Options{Role: preflight.Worker, Provider: cni.Custom, Controllers: []string{"127.0.0.1"}, Ports: preflight.DefaultPorts()}
	o.Ports.Kubelet, o.Ports.APIServer, o.Ports.Agent = kubelet, apiserver, agentPort
	o.Ports.Admin, o.Ports.Health = 0, 0 // turned off: not checked

	rs := run(t, o)
	if r := byTarget(t, rs, "kubelet", preflight.Listen, kubelet); r.Status != preflight.OK {
		t.Errorf("kubelet listening: %s %s", r.Status, r.Detail)
	}
	if r := byTarget(t, rs, "kube-apiserver", preflight.Reach, apiserver); r.Status != preflight.OK {
		t.Errorf("kube-apiserver reachable: %s %s", r.Status, r.Detail)
	}
	r := byTarget(t, rs, "proxy-server (agents)", preflight.Reach, agentPort)
	if r.Status != preflight.Fail || !strings.Contains(r.Detail, "refused") {
		t.Errorf("closed agent port: %s %s", r.Status, r.Detail)
	}
	if !preflight.Failed(rs) {
		t.Errorf("Failed = false with a required failure")
	}
	var buf bytes.Buffer
	if err := preflight.Print(&buf, rs); err != nil {
		t.Fatal(err)
	}
	table := buf.String()
	for _, s := range []string{"FAIL", "127.0.0.1:" + strconv.Itoa(agentPort) + "/tcp", "allow outbound tcp/" + strconv.Itoa(agentPort), "3 checks: 1 failed"} {
		if !strings.Contains(table, s) {
			t.Errorf("table lacks %q:\n%s", s, table)
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(agentPort))
	if err != nil {
		t.Skipf("port %d was taken in between: %v", agentPort, err)
	}
	defer ln.Close()
	rs = run(t, o)
	if preflight.Failed(rs) {
		t.Errorf("failed with everything open: %+v", rs)
	}
	buf.Reset()
	_ = preflight.Print(&buf, rs)
	if strings.Contains(buf.String(), "How to fix") {
		t.Errorf("fixes printed although everything passed:\n%s", buf.String())
	}
}

// TestControllerListenChecks: what listens passes, what does not fails
// ("nothing listens") when required and only warns when optional.
func TestControllerListenChecks(t *testing.T) {
	_, apiserver := listenTCP(t)
	down := closedTCPPort(t)
	o := preflight.Options{Role: preflight.Controller, Provider: cni.KubeRouter, Ports: preflight.DefaultPorts()}
	o.Ports.APIServer, o.Ports.Agent = apiserver, down
	o.Ports.Etcd, o.Ports.K0sAPI = closedTCPPort(t), closedTCPPort(t)
	_, o.Ports.Admin = listenTCP(t)
	o.Ports.Health = closedTCPPort(t)

	rs := run(t, o)
	if r := byTarget(t, rs, "kube-apiserver", preflight.Listen, apiserver); r.Status != preflight.OK {
		t.Errorf("listening apiserver: %s %s", r.Status, r.Detail)
	}
	if r := byTarget(t, rs, "proxy-server (agents)", preflight.Listen, down); r.Status != preflight.Fail || !strings.Contains(r.Detail, "nothing listens") ||
		!strings.Contains(r.Detail, "proxy-server should be running") {
		t.Errorf("proxy-server down: %s %s", r.Status, r.Detail)
	}
	if r := byTarget(t, rs, "proxy-server (admin)", preflight.Listen, o.Ports.Admin); r.Status != preflight.OK {
		t.Errorf("admin port listening: %s %s", r.Status, r.Detail)
	}
	if r := byTarget(t, rs, "proxy-server (health)", preflight.Listen, o.Ports.Health); r.Status != preflight.Fail || !strings.Contains(r.Fix, "--health-port="+strconv.Itoa(o.Ports.Health)) {
		t.Errorf("health port down: %s %s, fix %q", r.Status, r.Detail, r.Fix)
	}
	if r := byTarget(t, rs, "etcd peers", preflight.Listen, o.Ports.Etcd); r.Status != preflight.Warn {
		t.Errorf("etcd on a single controller: %s, want warn (optional)", r.Status)
	}
	if r := byTarget(t, rs, "kubelet (workers)", preflight.Tunnel, o.Ports.Kubelet); r.Status != preflight.Info {
		t.Errorf("kubelet through the tunnel: %s, want info", r.Status)
	}
	if !preflight.Failed(rs) {
		t.Errorf("Failed = false with proxy-server down")
	}

	// A connected client socket on the port is not a listener.
	ln, port := listenTCP(t)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ln.Close()
	o.Ports.Agent = port
	if r := byTarget(t, run(t, o), "proxy-server (agents)", preflight.Listen, port); r.Status != preflight.Fail {
		t.Errorf("only a connection on port %d, no listener: %s", port, r.Status)
	}
}

// TestCalicoVXLAN: a bound UDP port passes the local check; a closed one
// fails it and its probe is refused; an open but silent one cannot be
// proven (warn); one that answers passes.
func TestCalicoVXLAN(t *testing.T) {
	pc, open := listenUDP(t)
	o := preflight.Options{Role: preflight.Worker, Provider: cni.Calico, Controllers: []string{"127.0.0.1"}, Peers: []string{"127.0.0.1"}, Ports: preflight.DefaultPorts()}
	o.Ports.VXLAN = open
	rs := run(t, o)
	if r := byTarget(t, rs, "Calico VXLAN", preflight.Listen, open); r.Status != preflight.OK {
		t.Errorf("bound udp: %s %s", r.Status, r.Detail)
	}
	if r := byTarget(t, rs, "Calico VXLAN", preflight.Reach, open); r.Status != preflight.Warn || !strings.Contains(r.Detail, "open or filtered") {
		t.Errorf("silent udp: %s %s", r.Status, r.Detail)
	}

	done := make(chan struct{})
	go func() { // echo every datagram (the first probe's is still queued) until closed
		defer close(done)
		buf := make([]byte, 64)
		_ = pc.SetDeadline(time.Now().Add(10 * time.Second))
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	if r := byTarget(t, run(t, o), "Calico VXLAN", preflight.Reach, open); r.Status != preflight.OK {
		t.Errorf("answering udp: %s %s", r.Status, r.Detail)
	}

	pc.Close()
	<-done
	rs = run(t, o)
	if r := byTarget(t, rs, "Calico VXLAN", preflight.Listen, open); r.Status != preflight.Fail {
		t.Errorf("closed udp, local: %s %s", r.Status, r.Detail)
	}
	if r := byTarget(t, rs, "Calico VXLAN", preflight.Reach, open); r.Status != preflight.Fail || !strings.Contains(r.Detail, "refused") {
		t.Errorf("closed udp, probe: %s %s", r.Status, r.Detail)
	}
}

// TestReachHonoursCancel: a cancelled preflight fails its probes at once
// instead of waiting for their timeouts.
func TestReachHonoursCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	checks := []preflight.Check{{Service: "kube-apiserver", Kind: preflight.Reach, Proto: "tcp", Host: "127.0.0.1", Port: closedTCPPort(t), Required: true}}
	start := time.Now()
	rs := preflight.Runner{Timeout: time.Second}.Run(ctx, checks)
	if rs[0].Status != preflight.Fail || time.Since(start) > 2*time.Second {
		t.Errorf("expired probe: %s %s after %v", rs[0].Status, rs[0].Detail, time.Since(start))
	}
}

// TestFreeChecks: the ports of a component not installed yet must be free.
// A port something else holds fails (tcp listener, udp socket), with the
// way to find it; a free one passes; the table says "must be free" where
// an installed component's says "must listen".
func TestFreeChecks(t *testing.T) {
	_, apiserver := listenTCP(t)
	_, taken := listenTCP(t)
	o := preflight.Options{Role: preflight.Controller, Provider: cni.KubeRouter, Ports: preflight.DefaultPorts(),
		NotInstalled: preflight.DefaultNotInstalled(preflight.Controller)}
	o.Ports.APIServer, o.Ports.Agent, o.Ports.Admin, o.Ports.Health = apiserver, taken, closedTCPPort(t), 0
	rs := run(t, o)
	r := byTarget(t, rs, "proxy-server (agents)", preflight.Free, taken)
	if r.Status != preflight.Fail || !strings.Contains(r.Detail, "in use") || !strings.Contains(r.Detail, "before proxy-server is installed") ||
		!strings.Contains(r.Fix, "ss -tlnp 'sport = :"+strconv.Itoa(taken)+"'") {
		t.Errorf("agent port taken before proxy-server is installed: %s %s, fix %q", r.Status, r.Detail, r.Fix)
	}
	if r := byTarget(t, rs, "proxy-server (admin)", preflight.Free, o.Ports.Admin); r.Status != preflight.OK || !strings.Contains(r.Detail, "free") {
		t.Errorf("free admin port: %s %s", r.Status, r.Detail)
	}
	if r := byTarget(t, rs, "kube-apiserver", preflight.Listen, apiserver); r.Status != preflight.OK {
		t.Errorf("kube-apiserver, installed, listening: %s %s", r.Status, r.Detail)
	}
	var buf bytes.Buffer
	if err := preflight.Print(&buf, rs); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"must be free", "must listen", "(must be free): proxy-server is not installed yet"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, buf.String())
		}
	}

	pc, bound := listenUDP(t)
	w := preflight.Options{Role: preflight.Worker, Provider: cni.Calico, Controllers: []string{"127.0.0.1"}, Ports: preflight.DefaultPorts(),
		NotInstalled: []preflight.Component{preflight.PodNetwork}}
	w.Ports.VXLAN = bound
	if r := byTarget(t, run(t, w), "Calico VXLAN", preflight.Free, bound); r.Status != preflight.Fail || !strings.Contains(r.Detail, "already bound") {
		t.Errorf("vxlan port bound before calico-node is installed: %s %s", r.Status, r.Detail)
	}
	pc.Close()
	if r := byTarget(t, run(t, w), "Calico VXLAN", preflight.Free, bound); r.Status != preflight.OK {
		t.Errorf("vxlan port free: %s %s", r.Status, r.Detail)
	}
}
