package anp

import (
	"bytes"
	"math"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
)

// codecPackets are packets of every kind, DATA ones of every shape.
func codecPackets() []*client.Packet {
	big := bytes.Repeat([]byte("x"), 64<<10) // above gRPC's buffer pooling threshold
	return []*client.Packet{
		Data(1, []byte("hello")),
		Data(math.MaxInt64, big),
		Data(-7, []byte{0}),
		Data(0, nil),
		Data(3, nil),
		{Type: client.PacketType_DATA, Payload: &client.Packet_Data{Data: &client.Data{ConnectID: 9, Error: "backend reset", Data: []byte("tail")}}},
		{Type: client.PacketType_CLOSE_REQ, Payload: &client.Packet_Data{Data: &client.Data{ConnectID: 2}}}, // a mismatched type keeps its payload
		{Type: client.PacketType_DATA}, // no payload: the generic code
		CloseRsp(5, ""),
		{Type: client.PacketType_DIAL_REQ, Payload: &client.Packet_DialRequest{DialRequest: &client.DialRequest{Protocol: "tcp", Address: "10.0.0.1:443", Random: 42}}},
	}
}

// The codec writes the bytes proto.Marshal writes, and reads back what it
// wrote, from one buffer or several.
func TestCodecMatchesProto(t *testing.T) {
	c := Codec()
	for i, p := range codecPackets() {
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		bs, err := c.Marshal(p)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		got := bs.Materialize()
		bs.Free()
		if !bytes.Equal(got, want) {
			t.Fatalf("packet %d (%v): codec wrote %x, proto.Marshal %x", i, p.Type, got, want)
		}
		for _, split := range []int{len(got), len(got) / 2} {
			in := mem.BufferSlice{mem.SliceBuffer(got[:split])}
			if split < len(got) {
				in = append(in, mem.SliceBuffer(got[split:]))
			}
			var back client.Packet
			if err := c.Unmarshal(in, &back); err != nil {
				t.Fatalf("packet %d: unmarshal: %v", i, err)
			}
			if !proto.Equal(&back, p) {
				t.Fatalf("packet %d: read back %v, want %v", i, &back, p)
			}
		}
	}
}

// A DATA packet's bytes are copied out: the buffer gRPC hands the codec
// is reused once Unmarshal returns.
func TestCodecCopiesData(t *testing.T) {
	b, err := proto.Marshal(Data(1, []byte("payload")))
	if err != nil {
		t.Fatal(err)
	}
	var p client.Packet
	if err := Codec().Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &p); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0
	}
	if got := string(p.GetData().GetData()); got != "payload" {
		t.Fatalf("data after the buffer was reused: %q", got)
	}
}

// Whatever the bytes, the codec reads what proto.Unmarshal reads, and
// fails where it fails.
func FuzzCodecUnmarshal(f *testing.F) {
	for _, p := range codecPackets() {
		b, err := proto.Marshal(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x08, 0x04, 0x22, 0x03, 0x12, 0x01, 0xff})       // invalid UTF-8 in the error
	f.Add([]byte{0x08, 0x04, 0x22, 0x00, 0x22, 0x02, 0x08, 0x01}) // the payload twice: merged
	f.Add([]byte{0x08, 0x04, 0x22, 0x02, 0x20, 0x01})             // an unknown field in the payload
	f.Fuzz(func(t *testing.T, b []byte) {
		var want client.Packet
		werr := proto.Unmarshal(b, &want)
		var got client.Packet
		gerr := Codec().Unmarshal(mem.BufferSlice{mem.SliceBuffer(bytes.Clone(b))}, &got)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("%x: proto.Unmarshal: %v; codec: %v", b, werr, gerr)
		}
		if werr == nil && !proto.Equal(&got, &want) {
			t.Fatalf("%x: codec read %v, proto.Unmarshal %v", b, &got, &want)
		}
	})
}
