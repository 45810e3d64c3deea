package harness

import (
	"errors"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// LoadBalancer is a TCP load balancer on 127.0.0.1, as agents meet one in
// front of several proxy-servers: each new connection goes to the next
// backend in round-robin order that accepts it (a dead backend is
// skipped), and bytes are copied both ways, half-closes included, until
// both sides are done. Backends can be added, removed and replaced while
// it runs; connections already made stay where they are.
type LoadBalancer struct {
	ln       net.Listener
	mu       sync.Mutex
	backends []string
	next     int
	conns    map[net.Conn]struct{}
	accepted int
	wg       sync.WaitGroup
}

// lbDialTimeout bounds the dial of one backend: loopback answers at once,
// alive or not.
const lbDialTimeout = 2 * time.Second

// StartLoadBalancer listens on 127.0.0.1 and balances over backends
// (host:port) until cleanup.
func StartLoadBalancer(t testing.TB, backends ...string) *LoadBalancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ServeLoadBalancer(t, ln, backends...)
}

// ServeLoadBalancer is StartLoadBalancer on a listener of the test's (one
// in a network namespace: a relay from there to the host's loopback); it
// closes ln at cleanup.
func ServeLoadBalancer(t testing.TB, ln net.Listener, backends ...string) *LoadBalancer {
	t.Helper()
	lb := &LoadBalancer{ln: ln, backends: slices.Clone(backends), conns: map[net.Conn]struct{}{}}
	lb.wg.Add(1)
	go lb.serve()
	t.Cleanup(lb.close)
	return lb
}

// Addr is the balancer's host:port.
func (lb *LoadBalancer) Addr() string { return lb.ln.Addr().String() }

// Port is the balancer's port (an agent's --proxy-server-port).
func (lb *LoadBalancer) Port() int { return lb.ln.Addr().(*net.TCPAddr).Port }

// Accepted is how many connections the balancer has accepted so far.
func (lb *LoadBalancer) Accepted() int {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return lb.accepted
}

// Add appends a backend.
func (lb *LoadBalancer) Add(addr string) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.backends = append(lb.backends, addr)
}

// Remove drops a backend for new connections.
func (lb *LoadBalancer) Remove(addr string) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.backends = slices.DeleteFunc(lb.backends, func(b string) bool { return b == addr })
}

// Replace puts addr in old's place.
func (lb *LoadBalancer) Replace(old, addr string) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if i := slices.Index(lb.backends, old); i >= 0 {
		lb.backends[i] = addr
	} else {
		lb.backends = append(lb.backends, addr)
	}
}

func (lb *LoadBalancer) serve() {
	defer lb.wg.Done()
	for {
		c, err := lb.ln.Accept()
		if err != nil {
			return
		}
		if !lb.track(c) {
			c.Close()
			return
		}
		lb.mu.Lock()
		lb.accepted++
		lb.mu.Unlock()
		lb.wg.Add(1)
		go func() {
			defer lb.wg.Done()
			defer lb.untrack(c)
			lb.forward(c)
		}()
	}
}

// candidates are the backends in the order this connection tries them.
func (lb *LoadBalancer) candidates() []string {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	n := len(lb.backends)
	out := make([]string, 0, n)
	for i := range n {
		out = append(out, lb.backends[(lb.next+i)%n])
	}
	if n > 0 {
		lb.next = (lb.next + 1) % n
	}
	return out
}

func (lb *LoadBalancer) forward(c net.Conn) {
	var up net.Conn
	for _, b := range lb.candidates() {
		var err error
		if up, err = net.DialTimeout("tcp", b, lbDialTimeout); err == nil {
			break
		}
	}
	if up == nil {
		return // no backend alive: the client sees its connection closed
	}
	if !lb.track(up) {
		up.Close()
		return
	}
	defer lb.untrack(up)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pipe(up, c) }()
	go func() { defer wg.Done(); pipe(c, up) }()
	wg.Wait()
}

// pipe copies src to dst and then half-closes dst; an error on either
// side ends both.
func pipe(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		dst.Close()
		src.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// track records c for close; false once the balancer is closed.
func (lb *LoadBalancer) track(c net.Conn) bool {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if lb.conns == nil {
		return false
	}
	lb.conns[c] = struct{}{}
	return true
}

func (lb *LoadBalancer) untrack(c net.Conn) {
	lb.mu.Lock()
	delete(lb.conns, c)
	lb.mu.Unlock()
	c.Close()
}

func (lb *LoadBalancer) close() {
	lb.ln.Close()
	lb.mu.Lock()
	for c := range lb.conns {
		c.Close()
	}
	lb.conns = nil
	lb.mu.Unlock()
	lb.wg.Wait()
}

// AgentAddr is the server's agent address on loopback, as a load balancer
// backend.
func (s *Server) AgentAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.AgentPort))
}
