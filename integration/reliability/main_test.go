// Package reliability tests the tunnel under network faults and load, with
// the agent in a network namespace of its own behind a veth pair (or a TUN
// pair with a delay line): delay and loss, a black-holed link, the link
// down and up, the server's address changing; 10,000 connections through
// one agent and 1,000 agents on one server. Each scenario is a function
// that returns a row of the table `make soak` prints; the Test wrappers
// run the short version in `make test`, TestSoak runs them all again and
// again for $ISTHMUS_SOAK (make soak DURATION=10m).
//
// The scenarios run in parallel (each in its own namespaces and ports), so
// goroutine leaks are checked once, at the end.
package reliability

import (
	"testing"

	"isthmus.dev/integration/harness"
)

var bins harness.Binaries

func TestMain(m *testing.M) {
	harness.Main(m, &bins, harness.LeakCheckAtEnd())
}
