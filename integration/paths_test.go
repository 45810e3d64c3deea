package integration

import "isthmus.dev/integration/harness"

// A path through the tunnel has three axes: the frontend kube-apiserver
// speaks (gRPC or HTTP CONNECT), the transport it speaks it on (Unix
// socket, or TCP with mTLS), and the agent's link to the server (native or
// ANP: proxy-agent --link). The fault and transfer tests run the full
// matrix where a case is cheap (under a second or so), and a pairwise set
// where it is slow (dial timeouts, 100 MiB transfers, close orders that
// wait out konnectivity-client's read timeout, stalled readers): every
// value of each axis meets every value of each other axis at least once,
// in half the runs.

// Agent links (proxy-agent --link).
const (
	linkNative = "native"
	linkANP    = "anp"
	// linkNativeMux is the native link with the session layer of our own
	// at both ends (--native-mux=isthmus): its streams call back when
	// readable, and a socket and such a stream splice with no goroutine
	// while idle (splice.Async).
	linkNativeMux = "native-mux"
)

// pathCase is one path: a frontend mode on a transport, over an agent link.
type pathCase struct{ mode, transport, link string }

func (c pathCase) name() string { return c.mode + "/" + c.transport + "/" + c.link }

// agentFlags are the flags that make an agent use the path's link.
func (c pathCase) agentFlags(extra ...string) []string {
	if c.link == linkNativeMux {
		return append([]string{"--link=native", "--native-mux=isthmus"}, extra...)
	}
	return append([]string{"--link=" + c.link}, extra...)
}

// serverFlags are the server's flags for the path's link.
func (c pathCase) serverFlags(extra ...string) []string {
	if c.link == linkNativeMux {
		return append([]string{"--native-mux=isthmus"}, extra...)
	}
	return extra
}

// allPaths is the full matrix: both frontends on both transports over both
// links.
var allPaths = func() []pathCase {
	var ps []pathCase
	for _, l := range []string{linkNative, linkANP} {
		for _, m := range []string{harness.GRPC, harness.HTTPConnect} {
			for _, tr := range []string{harness.UDS, harness.TCP} {
				ps = append(ps, pathCase{m, tr, l})
			}
		}
	}
	return ps
}()

// muxPaths are the native link over --native-mux=isthmus on both
// frontends, on the Unix socket: the paths where the server splices
// asynchronously (HTTP CONNECT) or copies out of a notifying stream
// (gRPC). The transfer tests run them beside allPaths and pairwisePaths.
var muxPaths = []pathCase{{harness.HTTPConnect, harness.UDS, linkNativeMux}, {harness.GRPC, harness.UDS, linkNativeMux}}

// pairwisePaths are four paths in which every frontend meets both
// transports and both links, and every transport both links.
var pairwisePaths = []pathCase{
	{harness.GRPC, harness.UDS, linkNative},
	{harness.GRPC, harness.TCP, linkANP},
	{harness.HTTPConnect, harness.UDS, linkANP},
	{harness.HTTPConnect, harness.TCP, linkNative},
}
