package kubetraffic

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"isthmus.dev/certs"
	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/aggapi"
	"isthmus.dev/integration/harness/controlplane"
	"isthmus.dev/integration/harness/streamkubelet"
)

const (
	node        = "worker-1"
	namespace   = "traffic"
	podName     = "web"
	container   = "app"
	kubeletPort = 10250
	backendPort = 8080 // the pod's port-forward target, on the worker's loopback
	kubectlUser = "traffic-admin"
)

// impl is one implementation of the tunnel under test.
type impl struct {
	name      string
	impl      harness.Impl
	agentArgs []string
	// mustPass: its failures fail the test; upstream's are recorded.
	mustPass bool
}

var impls = []impl{
	{name: "isthmus", impl: harness.Isthmus, agentArgs: []string{"--link=native"}, mustPass: true},
	{name: "upstream", impl: harness.Upstream},
}

var modes = []string{harness.GRPC, harness.HTTPConnect}

// stack is a control plane whose egress goes through one implementation's
// proxy-server to its agent on a worker, where the kubelet stand-in serves
// the pod's logs, exec and port-forward.
type stack struct {
	impl       impl
	mode       string
	w          *harness.Worker
	cp         *controlplane.ControlPlane
	kubectl    string
	kubeconfig string
	logPath    string // the container's log file, which grows
	backend    *harness.Backend
	srv        *harness.Server
	agent      *harness.Agent
	flood      *flood         // a second port-forward target, for head-of-line blocking
	webhook    *webhook       // behind Service admission
	agg        *aggapi.Server // behind Service pings and APIService v1.stand.isthmus.dev
}

func newStack(t *testing.T, im impl, mode string) *stack {
	t.Helper()
	s := &stack{impl: im, mode: mode, w: harness.NewWorker(t), kubectl: harness.KubectlBinary(t)}
	pki, err := certs.NewBundle(filepath.Join(t.TempDir(), "tunnel"), s.w.HostAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	harness.RegisterBundle(t, pki)
	uds := harness.UDSPath(t)
	s.cp = controlplane.StartWithEgress(t, mode, uds)

	s.logPath = filepath.Join(t.TempDir(), "app.log")
	if err := os.WriteFile(s.logPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// The container's main process, for attach: it answers each line of
	// its stdin, in the worker's namespace.
	pctx, cancel := context.WithCancel(context.Background())
	bin, args := s.w.Command("sh", "-c", `while read -r line; do echo "attached: $line"; done`)
	proc, err := streamkubelet.StartProcess(pctx, exec.Command(bin, args...))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-proc.Done() })
	pod := streamkubelet.WorkerPod(s.w, namespace, podName, map[string]*streamkubelet.Container{container: {Log: s.logPath, Attach: proc}})
	streamkubelet.ServeOnWorker(t, s.w, kubeletPort, s.cp.PKI, node, "ok", streamkubelet.New(nil, pod))
	ln, err := s.w.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", backendPort))
	if err != nil {
		t.Fatal(err)
	}
	s.backend = harness.ServeBackend(t, ln, harness.Echo)
	if ln, err = s.w.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", floodPort)); err != nil {
		t.Fatal(err)
	}
	s.flood = &flood{}
	harness.ServeBackend(t, ln, s.flood.handle)

	s.srv = harness.StartServer(t, bins, pki, harness.ServerOpts{Impl: im.impl, Mode: mode, Transport: harness.UDS, UDSName: uds,
		Extra: []string{"--agent-bind-address=" + s.w.HostAddr.String()}})
	s.agent = harness.StartAgent(t, bins, s.srv, harness.AgentOpts{Impl: im.impl, Hosts: s.w.HostAddr.String(), Worker: s.w, Extra: im.agentArgs})
	s.srv.WaitReady(t)
	s.cp.CreateWorkload(t, controlplane.Workload{Node: node, NodeIP: s.w.NodeAddr.String(), KubeletPort: kubeletPort,
		Namespace: namespace, Pod: podName, Container: container})
	s.webhook = &webhook{}
	s.serveWebhook(t, s.webhook)
	s.agg = s.serveAggregated(t)
	s.registerAPIs(t)
	s.kubeconfig = s.cp.Kubeconfig(t, kubectlUser, "system:masters")
	return s
}

// command is kubectl with args against the stack's kube-apiserver.
func (s *stack) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, s.kubectl, append([]string{"--kubeconfig=" + s.kubeconfig, "--namespace=" + namespace}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECTL_COMMAND_HEADERS=false")
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// running is a kubectl that runs until stopped (port-forward, logs -f).
type running struct {
	stdout io.Reader
	errOut harness.SyncBuffer
	exited chan error // its end; stop reads it
	cmd    *exec.Cmd
}

// start starts kubectl with args, its output on a pipe.
func (s *stack) start(ctx context.Context, args ...string) (*running, error) {
	return s.startCmd(s.command(ctx, args...))
}

// startCmd starts cmd (from command), its output on a pipe.
func (s *stack) startCmd(cmd *exec.Cmd) (*running, error) {
	r := &running{exited: make(chan error, 1), cmd: cmd}
	args := cmd.Args[1:]
	var err error
	if r.stdout, err = r.cmd.StdoutPipe(); err != nil {
		return nil, err
	}
	r.cmd.Stderr = &r.errOut
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start kubectl %s: %w", strings.Join(args, " "), err)
	}
	go func() { r.exited <- r.cmd.Wait() }()
	return r, nil
}

// stop ends kubectl (SIGTERM, as ^C; SIGKILL after 10 s) and waits for it.
func (r *running) stop() {
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
}

// result is one scenario's outcome on one implementation and mode.
type result struct {
	scenario, impl, mode string
	err                  error
	took                 time.Duration
	note                 string
}

// table collects the results of the run, printed side by side at its end.
type table struct {
	mu   sync.Mutex
	rows []result
}

func (tb *table) add(r result) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.rows = append(tb.rows, r)
}

func (tb *table) String() string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	rows := slices.Clone(tb.rows)
	slices.SortFunc(rows, func(a, b result) int {
		return strings.Compare(a.scenario+a.impl+a.mode, b.scenario+b.impl+b.mode)
	})
	var b strings.Builder
	fmt.Fprintf(&b, "%-25s %-9s %-13s %-6s %9s  %s\n", "scenario", "impl", "mode", "result", "took", "note")
	for _, r := range rows {
		res, note := "pass", r.note
		if r.err != nil {
			res = "FAIL"
			if note != "" {
				note += "; "
			}
			note += "error: " + r.err.Error()
		}
		note = strings.ReplaceAll(note, "\n", " | ") // errors.Join's
		if len(note) > 400 {
			note = note[:400] + "..."
		}
		fmt.Fprintf(&b, "%-25s %-9s %-13s %-6s %9s  %s\n", r.scenario, r.impl, r.mode, res, r.took.Round(100*time.Millisecond), note)
	}
	return b.String()
}

// scenario is one kind of traffic: it returns what went wrong (nil: it
// passed) and a note for the table.
type scenario struct {
	name string
	run  func(t *testing.T, s *stack) (note string, err error)
}

// runScenarios runs every scenario on s, in order, records each, and
// fails t for the implementations that must pass.
func runScenarios(t *testing.T, s *stack, tb *table, scenarios []scenario) {
	t.Helper()
	for _, sc := range scenarios {
		start := time.Now()
		note, err := sc.run(t, s)
		tb.add(result{scenario: sc.name, impl: s.impl.name, mode: s.mode, err: err, took: time.Since(start), note: note})
		switch {
		case err != nil && s.impl.mustPass:
			t.Errorf("%s over %s (%s): %v", sc.name, s.impl.name, s.mode, err)
		case err != nil:
			t.Logf("%s over %s (%s) failed, recorded: %v", sc.name, s.impl.name, s.mode, err)
		}
	}
}
