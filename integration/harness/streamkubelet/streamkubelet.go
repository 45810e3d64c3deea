// Package streamkubelet is a kubelet stand-in for the end-to-end tests. It
// serves the kubelet API paths kube-apiserver calls for `kubectl logs`,
// `exec`, `attach` and `port-forward` with the kubelet's own streaming
// code (k8s.io/cri-streaming: remotecommand and portforward, over SPDY and
// WebSocket), for pods that are real processes, files and listeners of the
// test. It is a test fixture, not a product.
package streamkubelet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"isthmus.dev/integration/harness"
)

// The kubelet's stream timeouts (its defaults).
const (
	idleTimeout           = 4 * time.Hour
	streamCreationTimeout = 30 * time.Second
)

// Pod is a pod the stand-in serves.
type Pod struct {
	Namespace, Name, UID string
	// Containers by name.
	Containers map[string]*Container
	// Command makes the process of an exec in the pod (the worker's
	// namespace, say); nil: the command as it is, on this host.
	Command func(ctx context.Context, argv []string) *exec.Cmd
	// Dial connects to a port of the pod for port-forward; nil: the
	// port on 127.0.0.1.
	Dial func(ctx context.Context, port int32) (net.Conn, error)
}

// Container is one container of a Pod.
type Container struct {
	// Log is the file containerLogs serves (with follow, as it grows).
	Log string
	// Attach is the running process attach connects to; nil: attach is
	// refused.
	Attach *Process
}

// Kubelet serves the pods' logs, exec, attach and port-forward.
type Kubelet struct {
	pods map[string]*Pod // namespace/name
	mux  *http.ServeMux
	log  *slog.Logger
}

// New is a Kubelet serving pods; log receives one line per request
// refused (nil: none).
func New(log *slog.Logger, pods ...*Pod) *Kubelet {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k := &Kubelet{pods: map[string]*Pod{}, mux: http.NewServeMux(), log: log}
	for _, p := range pods {
		k.pods[p.Namespace+"/"+p.Name] = p
	}
	// The kubelet's routes (pkg/kubelet/server): with and without the
	// pod's UID.
	for _, prefix := range []string{"/exec/{ns}/{pod}", "/exec/{ns}/{pod}/{uid}"} {
		k.mux.HandleFunc(prefix+"/{container}", k.exec)
	}
	for _, prefix := range []string{"/attach/{ns}/{pod}", "/attach/{ns}/{pod}/{uid}"} {
		k.mux.HandleFunc(prefix+"/{container}", k.attach)
	}
	k.mux.HandleFunc("/portForward/{ns}/{pod}", k.portForward)
	k.mux.HandleFunc("/portForward/{ns}/{pod}/{uid}", k.portForward)
	k.mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", k.containerLogs)
	return k
}

func (k *Kubelet) ServeHTTP(w http.ResponseWriter, r *http.Request) { k.mux.ServeHTTP(w, r) }

// lookup finds the pod (and the container, when the path names one), or
// answers 404.
func (k *Kubelet) lookup(w http.ResponseWriter, r *http.Request) (*Pod, *Container, bool) {
	p, ok := k.pods[r.PathValue("ns")+"/"+r.PathValue("pod")]
	if !ok || (r.PathValue("uid") != "" && r.PathValue("uid") != p.UID) {
		k.log.Warn("no such pod", "path", r.URL.Path)
		http.Error(w, "pod not found", http.StatusNotFound)
		return nil, nil, false
	}
	name := r.PathValue("container")
	if name == "" {
		return p, nil, true
	}
	c, ok := p.Containers[name]
	if !ok {
		k.log.Warn("no such container", "path", r.URL.Path)
		http.Error(w, fmt.Sprintf("container %q not found in pod %s/%s", name, p.Namespace, p.Name), http.StatusNotFound)
		return nil, nil, false
	}
	return p, c, true
}

func (k *Kubelet) exec(w http.ResponseWriter, r *http.Request) {
	p, _, ok := k.lookup(w, r)
	if !ok {
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cmd := r.URL.Query()["command"]
	if len(cmd) == 0 {
		http.Error(w, "no command", http.StatusBadRequest)
		return
	}
	remotecommand.ServeExec(w, r, p, p.Name, p.UID, r.PathValue("container"), cmd, opts, idleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (k *Kubelet) attach(w http.ResponseWriter, r *http.Request) {
	p, c, ok := k.lookup(w, r)
	if !ok {
		return
	}
	if c.Attach == nil {
		http.Error(w, "the container has no process to attach to", http.StatusBadRequest)
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	remotecommand.ServeAttach(w, r, c.Attach, p.Name, p.UID, r.PathValue("container"), opts, idleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (k *Kubelet) portForward(w http.ResponseWriter, r *http.Request) {
	p, _, ok := k.lookup(w, r)
	if !ok {
		return
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, p, p.Name, p.UID, opts, idleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// containerLogs writes the container's log file; with follow=true it goes
// on writing what is appended until the client goes away.
func (k *Kubelet) containerLogs(w http.ResponseWriter, r *http.Request) {
	_, c, ok := k.lookup(w, r)
	if !ok {
		return
	}
	f, err := os.Open(c.Log)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	w.Header().Set("Content-Type", "text/plain")
	flusher, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return
		}
		if !follow {
			return
		}
		select { // the kubelet polls a growing log file too
		case <-r.Context().Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ExecInContainer runs cmd in the pod with the streams (remotecommand's
// Executor). A non-zero exit is returned as an exit error, so the client
// gets the code.
func (p *Pod) ExecInContainer(ctx context.Context, _, _, _ string, argv []string, in io.Reader, out, errw io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	var cmd *exec.Cmd
	if p.Command != nil {
		cmd = p.Command(ctx, argv)
	} else {
		cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	}
	if in != nil {
		cmd.Stdin = in
	}
	if out != nil {
		cmd.Stdout = out
	}
	if errw != nil {
		cmd.Stderr = errw
	}
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return utilexec.ExitErrorWrapper{ExitError: ee}
	}
	return err
}

// PortForward connects stream to port of the pod (portforward's
// PortForwarder).
func (p *Pod) PortForward(ctx context.Context, _, _ string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	var conn net.Conn
	var err error
	if p.Dial != nil {
		conn, err = p.Dial(ctx, port)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	}
	if err != nil {
		return fmt.Errorf("dial port %d of pod %s/%s: %w", port, p.Namespace, p.Name, err)
	}
	defer conn.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(conn, stream)
		if tc, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
		}
	}()
	_, err = io.Copy(stream, conn)
	_ = stream.Close()
	<-done
	return err
}

// Process is a running program that attach connects to: what an attached
// client sends goes to its stdin; its stdout and stderr go to every
// attached client (and nowhere while none is).
type Process struct {
	stdin    io.WriteCloser
	mu       sync.Mutex
	out, err map[io.Writer]struct{}
	done     chan struct{}
}

// StartProcess starts cmd (its stdio must be unset) as an attachable
// process; it is killed when ctx ends.
func StartProcess(ctx context.Context, cmd *exec.Cmd) (*Process, error) {
	p := &Process{out: map[io.Writer]struct{}{}, err: map[io.Writer]struct{}{}, done: make(chan struct{})}
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { p.fanOut(stdout, p.out) })
	wg.Go(func() { p.fanOut(stderr, p.err) })
	go func() {
		select {
		case <-ctx.Done():
			_ = cmd.Process.Kill()
		case <-p.done:
		}
	}()
	go func() {
		wg.Wait()
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

func (p *Process) fanOut(r io.Reader, to map[io.Writer]struct{}) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for w := range to {
				if _, werr := w.Write(buf[:n]); werr != nil {
					delete(to, w)
					if a, ok := w.(*attached); ok {
						a.fail()
					}
				}
			}
			p.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// attached is one client's output stream; gone closes when a write to it
// fails (the client went away).
type attached struct {
	io.Writer
	once sync.Once
	gone chan struct{}
}

func (a *attached) fail() { a.once.Do(func() { close(a.gone) }) }

// AttachContainer connects the streams to the process until the client
// goes away or the process ends (remotecommand's Attacher). The client's
// end of stdin does not close the process's stdin.
func (p *Process) AttachContainer(ctx context.Context, _, _, _ string, in io.Reader, out, errw io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize) error {
	gone := make(chan struct{})
	var goneOnce sync.Once
	var ws []*attached
	p.mu.Lock()
	for _, w := range []struct {
		w  io.Writer
		to map[io.Writer]struct{}
	}{{out, p.out}, {errw, p.err}} {
		if w.w != nil {
			a := &attached{Writer: w.w, gone: make(chan struct{})}
			w.to[a] = struct{}{}
			ws = append(ws, a)
		}
	}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		for _, a := range ws {
			delete(p.out, a)
			delete(p.err, a)
		}
		p.mu.Unlock()
	}()
	for _, a := range ws {
		go func() {
			select {
			case <-a.gone:
				goneOnce.Do(func() { close(gone) })
			case <-p.done:
			case <-ctx.Done():
			}
		}()
	}
	inDone := make(chan struct{})
	if in != nil {
		go func() {
			defer close(inDone)
			_, _ = io.Copy(p.stdin, in)
		}()
	} else {
		close(inDone)
	}
	select {
	case <-ctx.Done():
	case <-p.done:
	case <-gone:
	case <-inDone:
		if len(ws) == 0 {
			return nil
		}
		select { // as kubectl attach: output goes on after stdin's end
		case <-ctx.Done():
		case <-p.done:
		case <-gone:
		}
	}
	return nil
}

// WorkerPod is a pod on worker w: exec runs its process in w's network
// namespace, port-forward dials the port on w's loopback.
func WorkerPod(w *harness.Worker, namespace, name string, containers map[string]*Container) *Pod {
	return &Pod{Namespace: namespace, Name: name, Containers: containers,
		Command: func(ctx context.Context, argv []string) *exec.Cmd {
			bin, args := w.Command(argv[0], argv[1:]...)
			return exec.CommandContext(ctx, bin, args...)
		},
		Dial: func(ctx context.Context, port int32) (net.Conn, error) {
			return w.Dial(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
		},
	}
}

// ServeOnWorker serves the kubelet API on w's node address and port over
// HTTPS, as a kubelet does: the serving certificate kube-apiserver checks
// (kp's, for node), client certificates of kp's CA required. /healthz
// answers health; the rest is k. It stops at t's cleanup.
func ServeOnWorker(t testing.TB, w *harness.Worker, port int, kp *harness.KubePKI, node, health string, k http.Handler) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(kp.KubeletCert(t, node, w.NodeAddr.String()))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(kp.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tl, err := w.Listen("tcp", net.JoinHostPort(w.NodeAddr.String(), strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("kubelet stand-in: %v", err)
	}
	l := &lingerListener{Listener: tl}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, r *http.Request) { fmt.Fprint(rw, health) })
	mux.Handle("/", k)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12},
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(l, "", "") }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = srv.Close() // the hijacked streams too
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("kubelet stand-in: %v", err)
		}
		l.stop()
	})
}
