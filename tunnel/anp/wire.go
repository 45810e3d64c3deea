// Package anp speaks the Konnectivity (apiserver-network-proxy, "ANP") agent
// wire: the gRPC service /AgentService/Connect carrying client.Packet
// messages both ways, and the metadata exchanged when an agent connects.
//
// Protocol flow on one agent stream (server S, agent A):
//
//	A -> S  metadata agentID, agentIdentifiers, authorization: Bearer <token>
//	S -> A  response headers serverID, serverCount (before any packet)
//	S -> A  DIAL_REQ{random, address}       a dial, keyed by random
//	A -> S  DIAL_RSP{random, connectID}     connectID chosen by the agent (>0)
//	A -> S  DIAL_RSP{random, error}         or the dial's failure, as text
//	S -> A  DIAL_CLS{random}                cancel a pending dial
//	both    DATA{connectID, data}           no acks, no windows
//	S -> A  CLOSE_REQ{connectID}            the client closed
//	A -> S  CLOSE_RSP{connectID}            answer, or: the backend closed
//	A -> S  DRAIN                           prefer other agents for new dials
//
// There is no half-close and no flow control per connection: every
// connection of an agent shares one stream.
package anp

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/tunnel/link"
)

// Metadata keys (gRPC lowercases them on the wire).
const (
	MDAgentID          = "agentID"
	MDAgentIdentifiers = "agentIdentifiers"
	MDAuthorization    = "authorization"
	MDServerID         = "serverID"
	MDServerCount      = "serverCount"
)

// Stream is what both sides of /AgentService/Connect can do with a stream.
// grpc.ServerStream and grpc.ClientStream typed with Packet satisfy it.
type Stream interface {
	Send(*client.Packet) error
	Recv() (*client.Packet, error)
	Context() context.Context
}

// AgentServiceServer is the server side of /AgentService/Connect.
type AgentServiceServer interface {
	Connect(grpc.BidiStreamingServer[client.Packet, client.Packet]) error
}

// AgentServiceDesc describes the AgentService of ANP's proto/agent
// (service AgentService { rpc Connect(stream Packet) returns (stream Packet) }).
// The proto has no package, hence the bare service name.
var AgentServiceDesc = grpc.ServiceDesc{
	ServiceName: "AgentService",
	HandlerType: (*AgentServiceServer)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Connect",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			return srv.(AgentServiceServer).Connect(&grpc.GenericServerStream[client.Packet, client.Packet]{ServerStream: stream})
		},
	}},
	Metadata: "agent.proto",
}

// ConnectMethod is the full method name an agent calls.
const ConnectMethod = "/AgentService/Connect"

// OpenAgentStream opens /AgentService/Connect on cc.
func OpenAgentStream(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (grpc.BidiStreamingClient[client.Packet, client.Packet], error) {
	s, err := cc.NewStream(ctx, &AgentServiceDesc.Streams[0], ConnectMethod, opts...)
	if err != nil {
		return nil, err
	}
	return &grpc.GenericClientStream[client.Packet, client.Packet]{ClientStream: s}, nil
}

// MaxDataChunk is the largest DATA payload we send. Upstream peers keep gRPC's
// default 4 MiB receive limit, so a packet must stay well below it.
const MaxDataChunk = 256 << 10

func dialReq(random int64, address string) *client.Packet {
	return &client.Packet{Type: client.PacketType_DIAL_REQ, Payload: &client.Packet_DialRequest{
		DialRequest: &client.DialRequest{Protocol: "tcp", Address: address, Random: random}}}
}

func dialRsp(random, connID int64, errText string) *client.Packet {
	return &client.Packet{Type: client.PacketType_DIAL_RSP, Payload: &client.Packet_DialResponse{
		DialResponse: &client.DialResponse{Random: random, ConnectID: connID, Error: errText}}}
}

func dialCls(random int64) *client.Packet {
	return &client.Packet{Type: client.PacketType_DIAL_CLS, Payload: &client.Packet_CloseDial{
		CloseDial: &client.CloseDial{Random: random}}}
}

func data(connID int64, b []byte) *client.Packet {
	return &client.Packet{Type: client.PacketType_DATA, Payload: &client.Packet_Data{
		Data: &client.Data{ConnectID: connID, Data: b}}}
}

func closeReq(connID int64) *client.Packet {
	return &client.Packet{Type: client.PacketType_CLOSE_REQ, Payload: &client.Packet_CloseRequest{
		CloseRequest: &client.CloseRequest{ConnectID: connID}}}
}

func closeRsp(connID int64, errText string) *client.Packet {
	return &client.Packet{Type: client.PacketType_CLOSE_RSP, Payload: &client.Packet_CloseResponse{
		CloseResponse: &client.CloseResponse{ConnectID: connID, Error: errText}}}
}

func drain() *client.Packet {
	return &client.Packet{Type: client.PacketType_DRAIN, Payload: &client.Packet_Drain{Drain: &client.Drain{}}}
}

// Packet constructors for other packages that speak the frontend protocol,
// which uses the same messages.
var (
	DialRsp  = dialRsp
	Data     = data
	CloseRsp = closeRsp
	DialCls  = dialCls
)

// refusalText is the DIAL_RSP error of a refused dial: the agent's words,
// led by the words reasonFromWire reads as reason when they lack them, so
// that the reason crosses a wire that carries only text.
func refusalText(r link.Reason, err error) string {
	text := link.RefusalText(r, err)
	if w, ok := reasonWords[r]; ok && reasonFromWire(text) != r {
		return w + ": " + text
	}
	return text
}

// reasonWords are words reasonFromWire reads as each reason.
var reasonWords = map[link.Reason]string{
	link.ReasonTimeout:     "timeout",
	link.ReasonRefused:     "connection refused",
	link.ReasonUnreachable: "network is unreachable",
	link.ReasonPolicy:      "not allowed by policy",
}

// reasonFromWire classifies a DIAL_RSP error. The ANP wire carries a dial's
// failure only as text (Go's error string on upstream agents and on ours), so
// this is the one place where isthmus reads an error's words: the wire gives
// nothing else.
func reasonFromWire(msg string) link.Reason {
	m := strings.ToLower(msg)
	switch {
	case strings.Contains(m, "timeout"), strings.Contains(m, "timed out"), strings.Contains(m, "deadline exceeded"):
		return link.ReasonTimeout
	case strings.Contains(m, "connection refused"):
		return link.ReasonRefused
	case strings.Contains(m, "no route to host"), strings.Contains(m, "network is unreachable"), strings.Contains(m, "host is unreachable"):
		return link.ReasonUnreachable
	case strings.Contains(m, "not allowed by policy"):
		return link.ReasonPolicy
	}
	return link.ReasonError
}
