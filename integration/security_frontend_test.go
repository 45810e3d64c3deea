package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	kclient "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"

	"isthmus.dev/certs"
	"isthmus.dev/integration/harness"
)

// TestFrontendClientCertificateRequired: the TCP frontend, in both modes,
// refuses a client without a client certificate and one whose
// certificate another CA signed, and logs why: no dial reaches the
// router, nothing reaches the backend. A client with the right
// certificate gets through the same server.
func TestFrontendClientCertificateRequired(t *testing.T) {
	t.Parallel()
	pki, other := harness.NewPKI(t), harness.NewPKI(t)
	for _, mode := range []string{harness.GRPC, harness.HTTPConnect} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			backend := harness.StartBackend(t, harness.Echo)
			s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: mode, Transport: harness.TCP})
			harness.StartAgent(t, bins, s, harness.AgentOpts{}).WaitReady(t)
			for _, c := range []struct {
				name string
				cert []string // certificate and key; nil: none
				why  string   // in the server's log line
			}{
				{"no certificate", nil, "tls: client didn't provide a certificate"},
				{"another CA", []string{other.ClientCert, other.ClientKey}, "x509: certificate signed by unknown authority"},
			} {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err := dialFrontend(ctx, s, frontendTLS(t, pki, c.cert), backend.Addr())
				cancel()
				if err == nil {
					t.Fatalf("%s: a client with %s got a tunnel", mode, c.name)
				}
				// kube-apiserver's gRPC client often sees only "broken
				// pipe": the server's log must say why.
				t.Logf("%s, a client with %s: %v", mode, c.name, err)
				logged := `msg="TLS handshake failed on the ` + mode + ` frontend" client=127.0.0.1 err=`
				harness.WaitFor(t, 10*time.Second, "the server to log why it refused a client with "+c.name, func() bool {
					for _, l := range strings.Split(s.Output(), "\n") {
						if strings.Contains(l, logged) && strings.Contains(l, c.why) {
							return true
						}
					}
					return false
				})
			}
			if n, err := harness.MetricSum(s.MetricsURL(), secMDials); err != nil || n != 0 {
				t.Fatalf("refused clients made %v dials (%v)", n, err)
			}
			if backend.Accepted() != 0 {
				t.Fatal("a refused client reached the backend")
			}
			s.DialEcho(t, backend.Addr(), "with the right client certificate")
		})
	}
}

// frontendTLS trusts pki's CA and presents cert (certificate and key
// files; nil: none).
func frontendTLS(t *testing.T, pki *certs.Bundle, cert []string) *tls.Config {
	t.Helper()
	ca, err := os.ReadFile(pki.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		pair, err := tls.LoadX509KeyPair(cert[0], cert[1])
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg
}

// dialFrontend dials target through s's TCP frontend with cfg, as
// kube-apiserver does (konnectivity-client, or CONNECT), and returns why
// it failed.
func dialFrontend(ctx context.Context, s *harness.Server, cfg *tls.Config, target string) error {
	if s.Opts.Mode == harness.GRPC {
		tun, err := kclient.CreateSingleUseGrpcTunnelWithContext(ctx, context.Background(), s.Frontend,
			grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			return err
		}
		c, err := tun.DialContext(ctx, "tcp", target)
		if err != nil {
			return err
		}
		return c.Close()
	}
	c, err := (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", s.Frontend)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return fmt.Errorf("CONNECT answered %s", resp.Status)
}

// socketDir is a directory for a socket that another user may reach (the
// test's temporary directories are 0700), removed at cleanup.
func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "isthmus-sec-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// dialAs connects to the Unix socket path as uid:gid (no other groups),
// in a process of its own, and returns why it could not.
func dialAs(t *testing.T, path string, uid, gid uint32) error {
	t.Helper()
	cmd := exec.Command("perl", "-MIO::Socket::UNIX", "-e", `IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!\n"`, path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// TestFrontendSocketPermissions: the frontend's Unix socket is 0600: its
// owner connects, another user does not. With --uds-group it is 0660 and
// that group's, and a process in the group (kube-apiserver running as
// another user) connects, one outside does not.
func TestFrontendSocketPermissions(t *testing.T) {
	t.Parallel()
	pki := harness.NewPKI(t)
	const nobody, group, otherGroup = 65534, 54321, 54322
	root := os.Geteuid() == 0
	for _, tc := range []struct {
		name  string
		extra []string
		mode  fs.FileMode
	}{
		{"default", nil, 0o600},
		{"uds-group", []string{"--uds-group=" + strconv.Itoa(group)}, 0o660},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.extra != nil && !root {
				t.Skip("--uds-group with another group needs root")
			}
			path := filepath.Join(socketDir(t), "konnectivity-server.socket")
			s := harness.StartServer(t, bins, pki, harness.ServerOpts{UDSName: path, Extra: tc.extra})
			fi, err := os.Lstat(s.UDS)
			if err != nil {
				t.Fatal(err)
			}
			gid := fi.Sys().(*syscall.Stat_t).Gid
			if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != tc.mode {
				t.Fatalf("the socket is %v; want a socket with mode %o", fi.Mode(), tc.mode)
			}
			if tc.extra != nil && gid != group {
				t.Fatalf("the socket's group is %d; want %d (--uds-group)", gid, group)
			}
			if c, err := net.Dial("unix", s.UDS); err != nil {
				t.Fatalf("the socket's owner cannot connect: %v", err)
			} else {
				c.Close()
			}
			if !root {
				return
			}
			if err := dialAs(t, s.UDS, nobody, otherGroup); err == nil || !strings.Contains(err.Error(), "ermission denied") {
				t.Errorf("another user outside the group: %v; want permission denied", err)
			}
			if tc.extra != nil {
				if err := dialAs(t, s.UDS, nobody, group); err != nil {
					t.Errorf("a user in --uds-group cannot connect: %v", err)
				}
			}
		})
	}
}

// TestFrontendSocketPathNeverDeleted: a file at --uds-name that is not a
// socket (a mistyped path) stays as it was, and proxy-server refuses to
// start, saying what is there and what to do. A socket left by a server
// that was killed is replaced by the next one.
func TestFrontendSocketPathNeverDeleted(t *testing.T) {
	t.Parallel()
	pki := harness.NewPKI(t)
	path := filepath.Join(socketDir(t), "konnectivity-server.socket")
	if err := os.WriteFile(path, []byte("not a socket\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ns := harness.NewServer(t, bins, pki, harness.ServerOpts{UDSName: path, Extra: []string{"--delete-existing-uds-file=true"}})
	p := harness.Start(t, "isthmus-server-over-a-file", ns.Bin(), ns.Args()...)
	if err := p.Wait(30 * time.Second); err == nil || strings.Contains(err.Error(), "still running") {
		t.Fatalf("proxy-server over a regular file: %v; want it to exit with an error:\n%s", err, p.Output())
	}
	for _, want := range []string{"--uds-name " + path + " exists and is not a socket (a regular file)", "refusing to remove it"} {
		if !strings.Contains(p.Output(), want) {
			t.Errorf("the refusal does not say %q:\n%s", want, p.Output())
		}
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "not a socket\n" {
		t.Fatalf("the file at --uds-name was changed: %q, %v", b, err)
	}

	// A socket a killed server left behind is replaced.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	s := harness.StartServer(t, bins, pki, harness.ServerOpts{UDSName: path})
	s.Kill()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("the killed server left no socket (%v): nothing to test", err)
	}
	s.Restart(t)
	harness.StartAgent(t, bins, s, harness.AgentOpts{}).WaitReady(t)
	s.DialEcho(t, harness.StartBackend(t, harness.Echo).Addr(), "through the replaced socket")
}
