package preflight

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

// Status is a check's outcome.
type Status string

// The outcomes. Only a Fail of a required check fails the preflight.
const (
	OK   Status = "ok"
	Fail Status = "FAIL"
	Warn Status = "warn" // could not be proven either way, or failed but optional
	Info Status = "info" // not probed (Tunnel)
)

// Result is a check and what was found.
type Result struct {
	Check
	Status Status
	Detail string
}

// Failed reports whether any required check failed.
func Failed(rs []Result) bool {
	for _, r := range rs {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

// Runner runs checks. ProcNet is where the socket tables are read
// (default /proc/net, this process's network namespace).
type Runner struct {
	ProcNet string
	Timeout time.Duration // per probe; default 3 s
}

// Run runs every check concurrently, each bounded by the timeout, and
// returns the results in the order of checks.
func (r Runner) Run(ctx context.Context, checks []Check) []Result {
	if r.ProcNet == "" {
		r.ProcNet = "/proc/net"
	}
	if r.Timeout <= 0 {
		r.Timeout = 3 * time.Second
	}
	out := make([]Result, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			status, detail := r.run(ctx, c)
			if status == Fail && !c.Required {
				status = Warn
			}
			out[i] = Result{Check: c, Status: status, Detail: detail}
		})
	}
	wg.Wait()
	return out
}

func (r Runner) run(ctx context.Context, c Check) (Status, string) {
	switch c.Kind {
	case Listen:
		return r.listening(c)
	case Free:
		return r.free(c)
	case Reach:
		ctx, cancel := context.WithTimeout(ctx, r.Timeout)
		defer cancel()
		if c.Proto == "udp" {
			return probeUDP(ctx, c)
		}
		return probeTCP(ctx, c)
	}
	return Info, "not probed"
}

// inUse reports whether a socket listens on (tcp) or is bound to (udp)
// c's port on this host, in either address family.
func (r Runner) inUse(c Check) (bool, error) {
	files := []string{"tcp", "tcp6"}
	if c.Proto == "udp" {
		files = []string{"udp", "udp6"}
	}
	for _, f := range files {
		found, err := portInTable(r.ProcNet+"/"+f, c.Port, c.Proto == "tcp")
		if err != nil || found {
			return found, err
		}
	}
	return false, nil
}

func (r Runner) listening(c Check) (Status, string) {
	found, err := r.inUse(c)
	switch {
	case err != nil:
		return Fail, fmt.Sprintf("cannot read the socket table: %v", err)
	case found && c.Proto == "tcp":
		return OK, "listening"
	case found:
		return OK, "bound"
	case c.Proto == "tcp":
		return Fail, fmt.Sprintf("nothing listens on this port: %s should be running", c.Component)
	}
	return Fail, fmt.Sprintf("nothing is bound to this port: %s should be running", c.Component)
}

func (r Runner) free(c Check) (Status, string) {
	found, err := r.inUse(c)
	switch {
	case err != nil:
		return Fail, fmt.Sprintf("cannot read the socket table: %v", err)
	case !found:
		return OK, fmt.Sprintf("free, for %s (not installed yet)", c.Component)
	case c.Proto == "tcp":
		return Fail, fmt.Sprintf("in use: something already listens on this port, before %s is installed", c.Component)
	}
	return Fail, fmt.Sprintf("in use: something is already bound to this port, before %s is installed", c.Component)
}

// portInTable reports whether a socket of a /proc/net/{tcp,udp}[6] table
// has local port port; for tcp only sockets in LISTEN state (0A) count. A
// missing table (no IPv6) is no socket.
func portInTable(path string, port int, listenOnly bool) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	want := fmt.Sprintf("%04X", port)
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		_, lport, ok := strings.Cut(fields[1], ":")
		if !ok || lport != want {
			continue
		}
		if !listenOnly || fields[3] == "0A" {
			return true, nil
		}
	}
	return false, sc.Err()
}

func probeTCP(ctx context.Context, c Check) (Status, string) {
	var d net.Dialer
	start := time.Now()
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(c.Host, strconv.Itoa(c.Port)))
	if err != nil {
		return Fail, describeDialError(err, time.Since(start))
	}
	conn.Close()
	return OK, fmt.Sprintf("connected in %v", time.Since(start).Round(time.Millisecond))
}

// probeUDP sends one datagram and waits for an answer: an ICMP port
// unreachable (seen as ECONNREFUSED) means nothing listens; silence means
// open or filtered, which UDP cannot tell apart (a VXLAN socket drops what
// is not VXLAN), so it is a warning, not a pass.
func probeUDP(ctx context.Context, c Check) (Status, string) {
	var d net.Dialer
	start := time.Now()
	var conn net.Conn
	// A probe of a port of this host that nothing holds can be given that
	// very port as its own (the port was free): it would then read its own
	// datagram as the answer. Dial again: the kernel picks another port.
	for range 3 {
		var err error
		conn, err = d.DialContext(ctx, "udp", net.JoinHostPort(c.Host, strconv.Itoa(c.Port)))
		if err != nil {
			return Fail, describeDialError(err, time.Since(start))
		}
		if conn.LocalAddr().String() != conn.RemoteAddr().String() {
			break
		}
		conn.Close()
		conn = nil
	}
	if conn == nil {
		return Fail, "refused: nothing listens on this port (the probe was given the port itself)"
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write([]byte("isthmus preflight\n")); err != nil {
		return Fail, describeDialError(err, time.Since(start))
	}
	buf := make([]byte, 64)
	_, err := conn.Read(buf)
	var ne net.Error
	switch {
	case err == nil:
		return OK, "answered"
	case errors.As(err, &ne) && ne.Timeout():
		return Warn, fmt.Sprintf("no answer and no ICMP port unreachable in %v: open or filtered (UDP cannot tell)", time.Since(start).Round(time.Millisecond))
	}
	return Fail, describeDialError(err, time.Since(start))
}

func describeDialError(err error, took time.Duration) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused: the host answers but nothing listens on this port"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "no route to the host"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return fmt.Sprintf("no answer in %v: a firewall drops the packets, or the host is down", took.Round(time.Millisecond))
	}
	return err.Error()
}

// Print writes the results as a table, then the fix of every check that
// did not pass.
func Print(w io.Writer, rs []Result) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tSERVICE\tCHECK\tTARGET\tREQUIRED\tDETAIL")
	for _, r := range rs {
		req := "yes"
		if !r.Required {
			req = "no"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Status, r.Service, r.Kind.Describe(), r.Target(), req, r.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var fixes []string
	for _, r := range rs {
		if r.Status == Fail || r.Status == Warn {
			fixes = append(fixes, fmt.Sprintf("  %s %s %s (%s): %s", r.Status, r.Service, r.Target(), r.Kind.Describe(), r.Fix))
		}
	}
	if len(fixes) > 0 {
		fmt.Fprintln(w, "\nHow to fix:")
		fmt.Fprintln(w, strings.Join(fixes, "\n"))
	}
	_, err := fmt.Fprintf(w, "\n%d checks: %d failed\n", len(rs), countStatus(rs, Fail))
	return err
}

func countStatus(rs []Result, s Status) int {
	n := 0
	for _, r := range rs {
		if r.Status == s {
			n++
		}
	}
	return n
}
