package server

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/tunnel/anp"
)

// h2Client speaks HTTP/2 frames to the gRPC frontend by hand, so that the
// test sees every frame the server sends, PINGs and WINDOW_UPDATEs
// included (a gRPC client answers those itself, out of sight).
type h2Client struct {
	t     *testing.T
	c     net.Conn
	fr    *http2.Framer
	pings int    // PINGs the server sent (not answers to ours)
	in    []byte // DATA of stream 1 not yet taken as messages
}

func dialH2(t *testing.T, uds string) (*h2Client, http2.Setting) {
	t.Helper()
	c, err := net.Dial("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	h := &h2Client{t: t, c: c, fr: http2.NewFramer(c, c)}
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	f, err := h.fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		t.Fatalf("first frame %v, want the server's SETTINGS", f)
	}
	win, _ := sf.Value(http2.SettingInitialWindowSize)
	if err := h.fr.WriteSettingsAck(); err != nil {
		t.Fatal(err)
	}
	return h, http2.Setting{ID: http2.SettingInitialWindowSize, Val: win}
}

// open starts the Proxy call on stream 1.
func (h *h2Client) open() {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, kv := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", "/ProxyService/Proxy"}, {":authority", "localhost"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		_ = enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
		h.t.Fatal(err)
	}
}

// send sends p as one gRPC message on stream 1.
func (h *h2Client) send(p *client.Packet) {
	b, err := proto.Marshal(p)
	if err != nil {
		h.t.Fatal(err)
	}
	msg := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(b)))
	if err := h.fr.WriteData(1, false, append(msg, b...)); err != nil {
		h.t.Fatal(err)
	}
}

// recv reads frames until a whole gRPC message of stream 1 is in, counting
// the server's PINGs and answering them as a client must.
func (h *h2Client) recv() *client.Packet {
	for {
		if len(h.in) >= 5 {
			if n := int(binary.BigEndian.Uint32(h.in[1:5])); len(h.in) >= 5+n {
				p := &client.Packet{}
				if err := proto.Unmarshal(h.in[5:5+n], p); err != nil {
					h.t.Fatal(err)
				}
				h.in = h.in[5+n:]
				return p
			}
		}
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.t.Fatalf("read frame: %v", err)
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			if f.StreamID != 1 {
				h.t.Fatalf("DATA on stream %d", f.StreamID)
			}
			h.in = append(h.in, f.Data()...)
			// Give back what was read, so the server's window to us
			// never closes whatever the server's own window is.
			if n := uint32(len(f.Data())); n > 0 {
				_ = h.fr.WriteWindowUpdate(0, n)
				_ = h.fr.WriteWindowUpdate(1, n)
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				h.pings++
				_ = h.fr.WritePing(true, f.Data)
			}
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			h.t.Fatalf("the server ended the call: %v", f)
		}
	}
}

// TestGRPCFrontendWindowIsFixed: the gRPC frontend announces a fixed
// receive window and sends no PING while a connection does request/response
// round trips, over either link. grpc-go's dynamic window would ping the
// client at the first DATA after each answered ping: every round trip here.
func TestGRPCFrontendWindowIsFixed(t *testing.T) {
	for _, linkName := range []string{"native", "anp"} {
		t.Run(linkName, func(t *testing.T) { frontendWindowIsFixed(t, linkName) })
	}
}

func frontendWindowIsFixed(t *testing.T, linkName string) {
	cfg, _, backend := withAgent(t, linkName)
	if cfg.Mode != ModeGRPC {
		t.Fatalf("the test config's frontend is %v, want gRPC", cfg.Mode)
	}

	h, win := dialH2(t, cfg.UDSName)
	if win.Val != frontendWindow {
		t.Errorf("the server's SETTINGS_INITIAL_WINDOW_SIZE is %d, want %d", win.Val, frontendWindow)
	}
	h.open()
	h.send(&client.Packet{Type: client.PacketType_DIAL_REQ, Payload: &client.Packet_DialRequest{
		DialRequest: &client.DialRequest{Protocol: "tcp", Address: backend, Random: 7}}})
	rsp := h.recv()
	if rsp.GetType() != client.PacketType_DIAL_RSP || rsp.GetDialResponse().GetError() != "" {
		t.Fatalf("got %v, want a DIAL_RSP without error", rsp)
	}
	id := rsp.GetDialResponse().GetConnectID()
	const rounds = 30
	for i := range rounds {
		want := fmt.Sprintf("round trip %d", i)
		h.send(anp.Data(id, []byte(want)))
		var got []byte
		for len(got) < len(want) {
			p := h.recv()
			if p.GetType() != client.PacketType_DATA {
				t.Fatalf("round trip %d: got %v, want DATA", i, p)
			}
			got = append(got, p.GetData().GetData()...)
		}
		if string(got) != want {
			t.Fatalf("round trip %d: echo %q, want %q", i, got, want)
		}
	}
	if h.pings != 0 {
		t.Errorf("the server sent %d PINGs in %d round trips, want none (a fixed window needs no sizing)", h.pings, rounds)
	}
}
