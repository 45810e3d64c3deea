package anp

import (
	"context"
	"errors"
	"io"
	"runtime"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
)

// The fuzz targets of the ANP links (link_fuzz_test.go) play the peer of
// a link through memStream, with packets made from the fuzz input by prog.

// barrier is a packet memStream's Recv swallows: once the harness handed
// it over, the link's reader has finished with every packet before it (it
// reads the next packet only when done with the last).
var barrier = &client.Packet{}

// memStream is an in-memory Stream: the link receives what the harness
// puts in, and what it sends is kept. Send never blocks; both end with
// the stream's context, as a gRPC stream does.
type memStream struct {
	ctx context.Context
	in  chan *client.Packet // unbuffered; closed: the peer ended the stream

	mu   sync.Mutex
	sent []*client.Packet
}

func newMemStream(ctx context.Context) *memStream {
	return &memStream{ctx: ctx, in: make(chan *client.Packet)}
}

func (s *memStream) Context() context.Context { return s.ctx }

func (s *memStream) Recv() (*client.Packet, error) {
	for {
		select {
		case p, ok := <-s.in:
			if !ok {
				return nil, io.EOF
			}
			if p == barrier {
				continue
			}
			return p, nil
		case <-s.ctx.Done():
			return nil, s.ctx.Err()
		}
	}
}

func (s *memStream) Send(p *client.Packet) error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent = append(s.sent, p)
	return nil
}

// put hands p to the link's reader; false when the link stopped reading
// (it ended) within the bound.
func (s *memStream) put(p *client.Packet) bool {
	select {
	case s.in <- p:
		return true
	case <-s.ctx.Done():
		return false
	case <-time.After(5 * time.Second):
		return false
	}
}

// sentPackets is a copy of what the link sent so far.
func (s *memStream) sentPackets() []*client.Packet {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*client.Packet(nil), s.sent...)
}

// prog reads a fuzz input as a program: bytes, then zeros once used up.
type prog struct{ b []byte }

func (p *prog) done() bool { return len(p.b) == 0 }

func (p *prog) byte() byte {
	if len(p.b) == 0 {
		return 0
	}
	c := p.b[0]
	p.b = p.b[1:]
	return c
}

// bytes takes up to n bytes, always a fresh slice (the link keeps it).
func (p *prog) bytes(n int) []byte {
	n = min(n, len(p.b))
	out := append([]byte(nil), p.b[:n]...)
	p.b = p.b[n:]
	return out
}

func (p *prog) pick(list []string) string { return list[int(p.byte())%len(list)] }

// random is a dial's random: one the link chose (by index), or a literal.
func (p *prog) random(chosen []int64) int64 {
	r := p.byte()
	if r < 0x80 && len(chosen) > 0 {
		return chosen[int(r)%len(chosen)]
	}
	return int64(r & 0x7f)
}

// connID is a small connectID (-1 to 6), so that ids meet.
func (p *prog) connID() int64 { return int64(p.byte()%8) - 1 }

var (
	fuzzErrors    = []string{"", "", "dial tcp 10.0.0.1:443: connect: connection refused", "dial tcp: i/o timeout", "boom"}
	fuzzProtocols = []string{"tcp", "tcp", "udp", ""}
	fuzzAddresses = []string{"10.0.0.1:443", "[fd00::1]:10250", "kubernetes.default.svc:443", "", "x"}
)

// packet makes a packet of any type (some unknown) whose payload is
// usually the type's own and sometimes another's, or none.
func (p *prog) packet(chosen []int64) *client.Packet {
	t, shape := p.byte(), p.byte()
	pk := &client.Packet{Type: client.PacketType(t % 8)}
	kind := int(pk.Type)
	if shape&0x80 != 0 {
		kind = int(shape % 8)
	}
	switch kind {
	case int(client.PacketType_DIAL_REQ):
		pk.Payload = &client.Packet_DialRequest{DialRequest: &client.DialRequest{
			Protocol: p.pick(fuzzProtocols), Address: p.pick(fuzzAddresses), Random: p.random(chosen)}}
	case int(client.PacketType_DIAL_RSP):
		pk.Payload = &client.Packet_DialResponse{DialResponse: &client.DialResponse{
			Random: p.random(chosen), ConnectID: p.connID(), Error: p.pick(fuzzErrors)}}
	case int(client.PacketType_CLOSE_REQ):
		pk.Payload = &client.Packet_CloseRequest{CloseRequest: &client.CloseRequest{ConnectID: p.connID()}}
	case int(client.PacketType_CLOSE_RSP):
		pk.Payload = &client.Packet_CloseResponse{CloseResponse: &client.CloseResponse{ConnectID: p.connID(), Error: p.pick(fuzzErrors)}}
	case int(client.PacketType_DATA):
		pk.Payload = &client.Packet_Data{Data: &client.Data{ConnectID: p.connID(), Data: p.bytes(int(p.byte()))}}
	case int(client.PacketType_DIAL_CLS):
		pk.Payload = &client.Packet_CloseDial{CloseDial: &client.CloseDial{Random: p.random(chosen)}}
	case int(client.PacketType_DRAIN):
		pk.Payload = &client.Packet_Drain{Drain: &client.Drain{}}
	}
	return pk
}

// Bounds of one fuzz input's work.
const (
	fuzzMaxOps   = 64
	fuzzMaxDials = 8
	fuzzWait     = 5 * time.Second // for what must happen; far above what it takes
)

// waitRun waits for a link's Run to return after its stream ended.
func waitRun(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(fuzzWait):
		t.Fatalf("the link's Run did not return after its stream ended\n%s", stacks())
	}
}

// checkNoLeak waits for the goroutines to be back at base.
func checkNoLeak(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(fuzzWait)
	for i := 0; runtime.NumGoroutine() > base; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left running, %d before\n%s", runtime.NumGoroutine(), base, stacks())
		}
		if i < 100 {
			runtime.Gosched()
		} else {
			time.Sleep(100 * time.Microsecond)
		}
	}
}

func stacks() []byte {
	buf := make([]byte, 1<<20)
	return buf[:runtime.Stack(buf, true)]
}

// readExactly reads n bytes from r within the bound.
func readExactly(c interface {
	Read([]byte) (int, error)
	SetReadDeadline(time.Time) error
}, n int) ([]byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(fuzzWait))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	buf := make([]byte, n)
	got := 0
	for got < n {
		k, err := c.Read(buf[got:])
		got += k
		if err != nil {
			return buf[:got], err
		}
	}
	return buf, nil
}

// readEnd reads past the last byte and returns the error that ends the
// connection (io.EOF for an orderly close).
func readEnd(c interface {
	Read([]byte) (int, error)
	SetReadDeadline(time.Time) error
}) ([]byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(fuzzWait))
	var got []byte
	buf := make([]byte, 512)
	for {
		k, err := c.Read(buf)
		got = append(got, buf[:k]...)
		if err != nil {
			return got, err
		}
	}
}

// isTimeout reports whether err is a read deadline's.
func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}
