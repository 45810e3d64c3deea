package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/certs"
	"isthmus.dev/tunnel/anp"
	"isthmus.dev/tunnel/native"
)

// refusingServer is an agent port that refuses every agent the way
// proxy-server does: on the native link with a refusal carrying the reason,
// on the ANP link with Unauthenticated. It records the tokens it was sent.
type refusingServer struct {
	mu     sync.Mutex
	tokens []string
}

func (s *refusingServer) saw(tok string) {
	s.mu.Lock()
	s.tokens = append(s.tokens, tok)
	s.mu.Unlock()
}

func (s *refusingServer) Connect(stream grpc.BidiStreamingServer[client.Packet, client.Packet]) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	tok, _ := strings.CutPrefix(strings.Join(md.Get(anp.MDAuthorization), ""), "Bearer ")
	s.saw(tok)
	return status.Error(codes.Unauthenticated, "service-account token refused: token_invalid")
}

// serve accepts agents on ln until it is closed: on the native link when
// cfg offers it, else on the ANP gRPC link.
func (s *refusingServer) serve(t *testing.T, ln net.Listener, cfg *tls.Config) {
	var wg sync.WaitGroup
	if !slices.Contains(cfg.NextProtos, native.ALPN) {
		g := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
		g.RegisterService(&anp.AgentServiceDesc, s)
		wg.Go(func() { _ = g.Serve(ln) })
		t.Cleanup(func() { g.Stop(); wg.Wait() })
		return
	}
	wg.Go(func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				_, _ = native.Accept(context.Background(), tls.Server(raw, cfg), native.ServerOptions{ServerID: "s1", ServerCount: 1,
					Check: func(_ context.Context, h native.Hello) error {
						s.saw(h.Token)
						return errors.New("service-account token refused: token_invalid")
					}})
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

func TestRefusalSaysWhichCredential(t *testing.T) {
	b, err := certs.NewBundle(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := tls.LoadX509KeyPair(b.AgentPortCert, b.AgentPortKey)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	for _, tc := range []struct {
		name, link string
	}{{"native link", LinkNative}, {"anp link", LinkANP}} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(tokenFile, []byte("token-"+tc.link+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			s := &refusingServer{}
			if tc.link == LinkNative {
				s.serve(t, ln, &tls.Config{Certificates: []tls.Certificate{serverCert}, NextProtos: []string{native.ALPN, "h2"}})
			} else {
				s.serve(t, ln, &tls.Config{Certificates: []tls.Certificate{serverCert}, NextProtos: []string{"h2"}})
			}
			err = connectOnce(t, ln, func(c *Config) { c.CACert, c.TokenPath, c.Link = b.CACert, tokenFile, tc.link })
			var refused *RefusedError
			if !errors.As(err, &refused) {
				t.Fatalf("connect: %v; want a RefusedError", err)
			}
			for _, want := range []string{"token_invalid", "service-account token from " + tokenFile, "no client certificate"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("%v\nshould say %q", err, want)
				}
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if len(s.tokens) != 1 || s.tokens[0] != "token-"+tc.link {
				t.Errorf("server saw tokens %q; want the file's token, trimmed", s.tokens)
			}
		})
	}
}

// A server that requires client certificates (--cluster-ca-cert) refuses
// an agent without one in its TLS handshake; the agent says it presented
// none.
func TestMissingClientCertificateIsNamed(t *testing.T) {
	b, err := certs.NewBundle(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, err := certs.NewReloader(certs.ReloaderConfig{CertFile: b.AgentPortCert, KeyFile: b.AgentPortKey, CAFile: b.CACert})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, NextProtos: []string{native.ALPN, "h2"}}
	(&refusingServer{}).serve(t, ln, r.ServerConfig(base))
	err = connectOnce(t, ln, func(c *Config) { c.CACert = b.CACert })
	var refused *RefusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "no client certificate (--agent-cert)") || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("connect without a client certificate: %v; want a RefusedError naming the missing certificate", err)
	}
}

// connectOnce makes an agent configured by set connect once to the server
// listening on ln, and returns the error.
func connectOnce(t *testing.T, ln net.Listener, set func(*Config)) error {
	t.Helper()
	cfg := DefaultConfig()
	cfg.ProxyServerPort = ln.Addr().(*net.TCPAddr).Port
	set(&cfg)
	a, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, _, err := a.connect(ctx, "127.0.0.1")
	if p != nil {
		p.close()
	}
	return err
}
