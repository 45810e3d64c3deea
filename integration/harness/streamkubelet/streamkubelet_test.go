package streamkubelet

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/utils/exec"

	"isthmus.dev/integration/harness"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// client-go keeps its transports' idle connections in a cache.
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"))
}

// stand is a Kubelet on an httptest server with one pod (namespace ns,
// name web, container app) whose log file and attachable process are the
// test's.
type stand struct {
	url     string
	config  *rest.Config
	log     string
	backend *harness.Backend
}

func newStand(t *testing.T, attach *exec.Cmd) *stand {
	t.Helper()
	s := &stand{log: filepath.Join(t.TempDir(), "app.log")}
	if err := os.WriteFile(s.log, []byte("first line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.backend = harness.StartBackend(t, harness.Echo)
	c := &Container{Log: s.log}
	if attach != nil {
		ctx, cancel := context.WithCancel(context.Background())
		p, err := StartProcess(ctx, attach)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); <-p.Done() })
		c.Attach = p
	}
	pod := &Pod{Namespace: "ns", Name: "web", UID: "uid-1", Containers: map[string]*Container{"app": c}}
	srv := httptest.NewServer(New(nil, pod))
	t.Cleanup(srv.Close)
	s.url = srv.URL
	s.config = &rest.Config{Host: srv.URL}
	return s
}

func (s *stand) execURL(t *testing.T, path string, q url.Values) *url.URL {
	t.Helper()
	u, err := url.Parse(s.url + path + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func stream(t *testing.T, exe remotecommand.Executor, stdin io.Reader) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	err := exe.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdin, Stdout: &out, Stderr: &errb})
	return out.String(), errb.String(), err
}

// TestExec: a real process's stdin and stdout carry 1 MiB byte-exact, its
// stderr and its exit code reach the client. Over SPDY, as kube-apiserver
// speaks to a kubelet: it translates kubectl's WebSocket streams to SPDY
// itself (the path with and without the pod's UID).
func TestExec(t *testing.T) {
	s := newStand(t, nil)
	data := make([]byte, 1<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/exec/ns/web/app", "/exec/ns/web/uid-1/app"} {
		executor := func(cmd ...string) remotecommand.Executor {
			q := url.Values{"command": cmd, "input": {"1"}, "output": {"1"}, "error": {"1"}}
			exe, err := remotecommand.NewSPDYExecutor(s.config, http.MethodPost, s.execURL(t, path, q))
			if err != nil {
				t.Fatal(err)
			}
			return exe
		}
		out, _, err := stream(t, executor("cat"), bytes.NewReader(data))
		if err != nil || out != string(data) {
			t.Fatalf("%s: exec cat: %d bytes back (want %d, equal: %v), %v", path, len(out), len(data), out == string(data), err)
		}
		_, errOut, err := stream(t, executor("sh", "-c", "echo to-stderr >&2; exit 3"), strings.NewReader(""))
		var ee utilexec.ExitError
		if !errors.As(err, &ee) || ee.ExitStatus() != 3 {
			t.Fatalf("%s: exec exiting 3: %v (%T), want an exit error with code 3", path, err, err)
		}
		if errOut != "to-stderr\n" {
			t.Errorf("%s: stderr %q", path, errOut)
		}
	}
}

// TestAttach: attach reaches a running process's stdin and stdout.
func TestAttach(t *testing.T) {
	s := newStand(t, exec.Command("sh", "-c", "read line; echo \"got $line\""))
	q := url.Values{"input": {"1"}, "output": {"1"}, "error": {"1"}}
	exe, err := remotecommand.NewSPDYExecutor(s.config, http.MethodPost, s.execURL(t, "/attach/ns/web/app", q))
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = pw.Write([]byte("hello\n")) }()
	out, _, err := stream(t, exe, pr)
	if err != nil || out != "got hello\n" {
		t.Fatalf("attach: %q, %v", out, err)
	}
}

// TestPortForward: port-forward reaches a real listener of the pod, for
// several connections over one forward.
func TestPortForward(t *testing.T) {
	s := newStand(t, nil)
	_, port, err := net.SplitHostPort(s.backend.Addr())
	if err != nil {
		t.Fatal(err)
	}
	transport, upgrader, err := spdy.RoundTripperFor(s.config)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(s.url + "/portForward/ns/web")
	if err != nil {
		t.Fatal(err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + port}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- fw.ForwardPorts() }()
	defer func() {
		close(stop)
		if err := <-errc; err != nil {
			t.Errorf("ForwardPorts: %v", err)
		}
	}()
	select {
	case <-ready:
	case err := <-errc:
		t.Fatalf("port-forward: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("port-forward not ready in 30 s")
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		t.Fatalf("ports %v, %v", ports, err)
	}
	local := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ports[0].Local)))
	for i := range 5 {
		c, err := net.DialTimeout("tcp", local, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		harness.CheckEcho(t, c, "through the port-forward "+strconv.Itoa(i)+"\n")
		c.Close()
	}
}

// TestContainerLogs: the log file, whole; with follow, what is appended
// arrives while the request lasts.
func TestContainerLogs(t *testing.T) {
	s := newStand(t, nil)
	resp, err := http.Get(s.url + "/containerLogs/ns/web/app")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(b) != "first line\n" {
		t.Fatalf("logs: %q, %v", b, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url+"/containerLogs/ns/web/app?follow=true", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	f, err := os.OpenFile(s.log, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := "first line\n"
	got := make([]byte, 0, 256)
	buf := make([]byte, 256)
	for i := range 5 {
		line := "line " + strconv.Itoa(i) + "\n"
		if _, err := f.WriteString(line); err != nil {
			t.Fatal(err)
		}
		want += line
		for len(got) < len(want) {
			n, err := resp.Body.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				t.Fatalf("follow: %q so far, %v", got, err)
			}
		}
	}
	if string(got) != want {
		t.Fatalf("follow: %q, want %q", got, want)
	}
	cancel()
	http.DefaultClient.CloseIdleConnections()
}

// TestUnknownPod: a pod or container the stand-in does not have is 404.
func TestUnknownPod(t *testing.T) {
	s := newStand(t, nil)
	for _, path := range []string{"/containerLogs/ns/nope/app", "/containerLogs/ns/web/nope", "/exec/ns/web/wrong-uid/app?command=true"} {
		resp, err := http.Get(s.url + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", path, resp.StatusCode)
		}
	}
	http.DefaultClient.CloseIdleConnections()
}
