package anp

import (
	"errors"
	"testing"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/tunnel/link"
)

// The wire constants peers depend on.
func TestWireConstants(t *testing.T) {
	if ConnectMethod != "/AgentService/Connect" {
		t.Errorf("ConnectMethod = %q", ConnectMethod)
	}
	if AgentServiceDesc.ServiceName+"/"+AgentServiceDesc.Streams[0].StreamName != "AgentService/Connect" {
		t.Errorf("service desc names %s/%s", AgentServiceDesc.ServiceName, AgentServiceDesc.Streams[0].StreamName)
	}
	for typ, want := range map[client.PacketType]int32{
		client.PacketType_DIAL_REQ: 0, client.PacketType_DIAL_RSP: 1, client.PacketType_CLOSE_REQ: 2,
		client.PacketType_CLOSE_RSP: 3, client.PacketType_DATA: 4, client.PacketType_DIAL_CLS: 5, client.PacketType_DRAIN: 6,
	} {
		if int32(typ) != want {
			t.Errorf("%s = %d, want %d", typ, typ, want)
		}
	}
	for k, want := range map[string]string{MDAgentID: "agentID", MDAgentIdentifiers: "agentIdentifiers", MDServerID: "serverID", MDServerCount: "serverCount"} {
		if k != want {
			t.Errorf("metadata key %q, want %q", k, want)
		}
	}
	if MaxDataChunk >= 4<<20 {
		t.Errorf("MaxDataChunk %d must stay under gRPC's default 4 MiB receive limit", MaxDataChunk)
	}
}

// DIAL_RSP errors as Go's net package and upstream agents word them.
func TestReasonFromWire(t *testing.T) {
	for msg, want := range map[string]link.Reason{
		"dial tcp 127.0.0.1:1: connect: connection refused":        link.ReasonRefused,
		"dial tcp 203.0.113.2:80: i/o timeout":                     link.ReasonTimeout,
		"dial tcp 203.0.113.2:80: connect: no route to host":       link.ReasonUnreachable,
		"dial tcp 203.0.113.2:80: connect: network is unreachable": link.ReasonUnreachable,
		"context deadline exceeded":                                link.ReasonTimeout,
		"something else":                                           link.ReasonError,
	} {
		if got := reasonFromWire(msg); got != want {
			t.Errorf("reasonFromWire(%q) = %s, want %s", msg, got, want)
		}
	}
}

// A refused dial's reason crosses the ANP wire whatever the agent's words.
func TestRefusalTextKeepsTheReason(t *testing.T) {
	for r := range reasonWords {
		for _, words := range []string{"", "destination 10.0.0.1:22 is outside the allowed list", string(r) + " happened"} {
			var err error
			if words != "" {
				err = errors.New(words)
			}
			if got := reasonFromWire(refusalText(r, err)); got != r {
				t.Errorf("reason %s with words %q: read back as %s", r, words, got)
			}
		}
	}
}
