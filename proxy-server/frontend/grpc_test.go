package frontend

import (
	"bytes"
	"context"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kclient "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"

	"isthmus.dev/tunnel/splice"
)

// tunnel dials address through the frontend cc serves, with
// konnectivity-client's single-use tunnel, as kube-apiserver does.
func tunnel(t *testing.T, cc *grpc.ClientConn, address string) net.Conn {
	t.Helper()
	path := strings.TrimPrefix(cc.Target(), "passthrough:///")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tun, err := kclient.CreateSingleUseGrpcTunnelWithContext(ctx, context.Background(), cc.Target(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}))
	if err != nil {
		t.Fatal(err)
	}
	c, err := tun.DialContext(ctx, "tcp", address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(); <-tun.Done() })
	return c
}

func echoed(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, []byte(msg)) {
		t.Fatalf("echo: %q, %v; want %q", got, err, msg)
	}
}

// streamGoroutines counts the goroutines running the gRPC frontend's code
// for its streams.
func streamGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "frontend.(*GRPC)") || strings.Contains(g, "frontend.(*reader)") {
			count++
		}
	}
	return count
}

// An idle tunneled connection costs the gRPC frontend two goroutines (the
// stream's handler, which copies the backend to the client, and the
// stream's reader) and no copy buffer; after idling it still carries data
// both ways.
func TestGRPCIdleStreamsHoldNoBuffer(t *testing.T) {
	echo := echoBackend(t)
	cc, _ := serveGRPC(t, &GRPC{Dialer: directDialer{}})
	const n = 20
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = tunnel(t, cc, echo)
		echoed(t, conns[i], "probe")
	}
	deadline := time.Now().Add(10 * time.Second)
	for streamGoroutines() != 2*n || splice.HeldBuffers() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d idle streams: %d frontend goroutines and %d copy buffers; want %d and 0",
				n, streamGoroutines(), splice.HeldBuffers(), 2*n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, c := range conns {
		echoed(t, c, strings.Repeat("x", 100<<10)) // grows past the small buffer
	}
}
