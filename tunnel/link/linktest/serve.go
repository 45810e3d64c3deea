// Package linktest holds what the links' tests share: the link conformance
// suite (Run: one set of scenarios over every link, each checked against
// the capabilities its wire documents, with golang.org/x/net/nettest's
// net.Conn contract for both ends of a tunneled connection), the agent side
// of a link served the plain way (dial, answer, splice, without the policy,
// metrics and logs that proxy-agent adds), loopback backends and TLS
// configs.
package linktest

import (
	"context"
	"sync"

	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/splice"
)

// Serve answers every request of a with dial until Accept fails, then waits
// for the connections it spliced to end.
func Serve(ctx context.Context, a link.Acceptor, dial link.DialFunc) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		r, err := a.Accept(ctx)
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ServeOne(r, dial)
		}()
	}
}

// ServeOne dials r's address with r's context and answers; on success it
// splices until the connection ends.
func ServeOne(r link.Request, dial link.DialFunc) {
	backend, err := dial(r.Context(), r.Address())
	if err != nil {
		r.Refuse(link.Classify(err), err)
		return
	}
	c, err := r.Accept(backend)
	if err != nil {
		_ = backend.Close()
		return
	}
	splice.Splice(c, backend)
}
