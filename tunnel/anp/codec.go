package anp

import (
	"fmt"
	"unicode/utf8"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
)

// Codec is gRPC's protobuf codec with a fast path for the one message that
// is most of the traffic on both ANP streams (the frontend's and the
// agents'): a DATA packet, which the generic protobuf code marshals and
// parses through reflection, at about a tenth of the frontend's CPU per
// small message. The bytes are the same protobuf encoding (the same bytes
// proto.Marshal writes); any other message, and any DATA packet whose
// encoding the fast path does not take (unknown or repeated fields, an
// invalid error string), goes through the generic code. Use it with
// grpc.ForceServerCodecV2 or grpc.ForceCodecV2.
func Codec() encoding.CodecV2 { return packetCodec{generic: encoding.GetCodecV2(grpcproto.Name)} }

type packetCodec struct{ generic encoding.CodecV2 }

func (packetCodec) Name() string { return grpcproto.Name }

func (c packetCodec) Marshal(v any) (mem.BufferSlice, error) {
	p, ok := v.(*client.Packet)
	if !ok || p.GetType() != client.PacketType_DATA {
		return c.generic.Marshal(v)
	}
	d, ok := p.GetPayload().(*client.Packet_Data)
	if !ok || d.Data == nil {
		return c.generic.Marshal(v)
	}
	body := dataSize(d.Data)
	size := 1 + protowire.SizeVarint(uint64(p.Type)) + 1 + protowire.SizeBytes(body)
	if mem.IsBelowBufferPoolingThreshold(size) {
		return mem.BufferSlice{mem.SliceBuffer(appendData(make([]byte, 0, size), p.Type, d.Data, body))}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	*buf = appendData((*buf)[:0], p.Type, d.Data, body)
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

// dataSize is the encoded size of d, as proto.Size counts it (proto3:
// fields at their zero value are not written).
func dataSize(d *client.Data) int {
	n := 0
	if d.ConnectID != 0 {
		n += 1 + protowire.SizeVarint(uint64(d.ConnectID))
	}
	if d.Error != "" {
		n += 1 + protowire.SizeBytes(len(d.Error))
	}
	if len(d.Data) > 0 {
		n += 1 + protowire.SizeBytes(len(d.Data))
	}
	return n
}

// appendData appends a Packet{type, data: d} in field order, as
// proto.Marshal writes it.
func appendData(b []byte, typ client.PacketType, d *client.Data, body int) []byte {
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(typ))
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(body))
	if d.ConnectID != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(d.ConnectID))
	}
	if d.Error != "" {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, d.Error)
	}
	if len(d.Data) > 0 {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendBytes(b, d.Data)
	}
	return b
}

func (c packetCodec) Unmarshal(data mem.BufferSlice, v any) error {
	p, ok := v.(*client.Packet)
	if !ok {
		return c.generic.Unmarshal(data, v)
	}
	var b []byte
	if len(data) == 1 {
		b = data[0].ReadOnlyData() // no copy of the whole message
	} else {
		buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
		defer buf.Free()
		b = buf.ReadOnlyData()
	}
	if parseData(b, p) {
		return nil
	}
	if err := proto.Unmarshal(b, p); err != nil {
		return fmt.Errorf("unmarshal %T: %w", p, err)
	}
	return nil
}

// parseData parses b into p when b is a packet carrying a Data payload
// with no field but the known ones, each at most once; else it returns
// false and leaves p as it was. Data bytes are copied out of b.
func parseData(b []byte, p *client.Packet) bool {
	var (
		typ            uint64
		body           []byte
		sawType, sawDt bool
	)
	for len(b) > 0 {
		num, wt, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == 1 && wt == protowire.VarintType && !sawType:
			typ, n = protowire.ConsumeVarint(b)
			sawType = true
		case num == 4 && wt == protowire.BytesType && !sawDt:
			body, n = protowire.ConsumeBytes(b)
			sawDt = true
		default:
			return false
		}
		if n < 0 {
			return false
		}
		b = b[n:]
	}
	if !sawDt {
		return false
	}
	d := &client.Data{}
	var sawID, sawErr, sawBytes bool
	for len(body) > 0 {
		num, wt, n := protowire.ConsumeTag(body)
		if n < 0 {
			return false
		}
		body = body[n:]
		switch {
		case num == 1 && wt == protowire.VarintType && !sawID:
			var id uint64
			id, n = protowire.ConsumeVarint(body)
			d.ConnectID, sawID = int64(id), true
		case num == 2 && wt == protowire.BytesType && !sawErr:
			var s []byte
			s, n = protowire.ConsumeBytes(body)
			if n >= 0 && !utf8.Valid(s) {
				return false // the generic code reports it
			}
			d.Error, sawErr = string(s), true
		case num == 3 && wt == protowire.BytesType && !sawBytes:
			var s []byte
			s, n = protowire.ConsumeBytes(body)
			if len(s) > 0 {
				d.Data = append([]byte(nil), s...)
			}
			sawBytes = true
		default:
			return false
		}
		if n < 0 {
			return false
		}
		body = body[n:]
	}
	proto.Reset(p)
	p.Type = client.PacketType(int32(typ))
	p.Payload = &client.Packet_Data{Data: d}
	return true
}
