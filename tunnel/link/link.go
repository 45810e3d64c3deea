// Package link holds what every agent link (the ANP gRPC link and the native
// one) has in common: the dial contract and its typed errors.
//
// A link is a connection between one proxy-server and one proxy-agent. On the
// server side it is a Dialer that hands out tunneled connections as net.Conn;
// on the agent side it is an Acceptor that hands out the server's dial
// requests, each answered with Accept (connected) or Refuse (a reason).
// Neither side knows which wire is underneath.
package link

import (
	"context"
	"errors"
	"fmt"
	"net"

	"isthmus.dev/tunnel/limits"
)

// Dialer is the server side of a link: it asks the agent at the other end to
// dial address ("host:port", TCP) and returns the tunneled connection. The
// context bounds the dial only, never the connection's life.
type Dialer interface {
	Dial(ctx context.Context, address string) (net.Conn, error)
}

// DialFunc dials a backend on the agent side.
type DialFunc func(ctx context.Context, address string) (net.Conn, error)

// Acceptor is the agent side of a link: the server's dial requests, one at
// a time. Accept returns an error wrapping ErrLinkClosed once the link has
// ended, or ctx's error.
type Acceptor interface {
	Accept(ctx context.Context) (Request, error)
}

// Request is one dial the server asked the agent for. Exactly one of Accept
// and Refuse answers it; the agent must answer every request it took, and
// may do so from any goroutine.
type Request interface {
	// Address is where to dial: "host:port", TCP.
	Address() string
	// Context ends when the server cancels the dial (DIAL_CLS, or the
	// stream closed before the answer) or the link ends. It bounds the
	// dial only, never the connection.
	Context() context.Context
	// Accept answers that the backend is connected and returns the
	// tunneled connection. It fails (ErrDialCancelled, ErrLinkClosed) when
	// the request was cancelled meanwhile; the caller then closes backend.
	// The link may bound writes to backend after the server closed the
	// connection (a wire without half-close must not wait forever for a
	// backend to take what was queued).
	Accept(backend net.Conn) (net.Conn, error)
	// Refuse answers that the dial failed: the reason travels to the
	// server, err's text too (for its logs). A cancelled request is
	// dropped without an answer.
	Refuse(reason Reason, err error)
}

// Sentinel errors. Match them with errors.Is.
var (
	// ErrNoAgent: no connected agent can serve the destination.
	ErrNoAgent = errors.New("no agent available for this destination")
	// ErrLinkClosed: the link to the agent went away.
	ErrLinkClosed = errors.New("agent link closed")
	// ErrQueueOverflow: a connection's receive queue overflowed; the ANP wire
	// has no flow control, so that one connection is closed.
	ErrQueueOverflow = errors.New("receive queue overflow")
	// ErrDialCancelled: the server cancelled the dial before the answer.
	ErrDialCancelled = errors.New("dial cancelled by the server")
	// ErrAborted: the other end of a tunneled connection was cut (its
	// backend or client reset, or its peer dropped it), not closed: what
	// was read before it may be truncated. It is never a net.ErrClosed, so
	// a splice passes the cut on.
	ErrAborted = errors.New("connection cut at the other end")
	// ErrAgentBusy: the agent refused a dial because as many dial
	// requests from that server as it takes are in flight already.
	ErrAgentBusy = errors.New("agent busy")
)

// DefaultPendingDials is the default bound of the dial requests in flight
// on the agent end of a link (received, not yet answered); beyond it the
// agent refuses at once, so that a server cannot make it hold unbounded
// dials.
const DefaultPendingDials = 1024

// BusyText is the refusal an agent sends for a dial beyond its bound of
// pending dials.
func BusyText(pending int) string {
	return fmt.Sprintf("%v: %d dial requests from this server are in flight already (proxy-agent --max-pending-dials-per-server)", ErrAgentBusy, pending)
}

// Reason classifies a failed dial. It is a metric label and picks the HTTP
// status of the CONNECT frontend.
type Reason string

// The reasons a dial fails.
const (
	ReasonRefused     Reason = "refused"     // the backend actively refused
	ReasonUnreachable Reason = "unreachable" // no route / host unreachable
	ReasonTimeout     Reason = "timeout"     // the dial did not finish in time
	ReasonNoAgent     Reason = "no_agent"    // nothing to carry it
	ReasonLinkClosed  Reason = "link_closed" // the agent's link broke mid-dial
	ReasonCancelled   Reason = "cancelled"   // the client gave up
	ReasonPolicy      Reason = "policy"      // refused by the agent's policy
	ReasonBusy        Reason = "busy"        // refused by a bound of proxy-server on pending dials
	ReasonError       Reason = "error"       // anything else
)

// DialError is a failed dial with its reason.
type DialError struct {
	Address string
	Agent   string
	Reason  Reason
	Err     error
}

// Error names the address clipped (it comes from a client, and the error
// goes into logs and answers).
func (e *DialError) Error() string {
	if e.Agent != "" {
		return fmt.Sprintf("dial %s via agent %s: %s: %v", limits.Clip(e.Address), e.Agent, e.Reason, e.Err)
	}
	return fmt.Sprintf("dial %s: %s: %v", limits.Clip(e.Address), e.Reason, e.Err)
}

func (e *DialError) Unwrap() error { return e.Err }

// Timeout reports whether the dial timed out (net.Error).
func (e *DialError) Timeout() bool { return e.Reason == ReasonTimeout }

// ReasonOf returns the reason of err: the DialError's reason, or one derived
// from well-known sentinel errors.
func ReasonOf(err error) Reason {
	var de *DialError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &de):
		return de.Reason
	case errors.Is(err, ErrNoAgent):
		return ReasonNoAgent
	case errors.Is(err, ErrLinkClosed):
		return ReasonLinkClosed
	case errors.Is(err, context.DeadlineExceeded):
		return ReasonTimeout
	case errors.Is(err, context.Canceled):
		return ReasonCancelled
	}
	return ReasonError
}

// Classify derives the reason of a local backend dial error (agent side).
func Classify(err error) Reason {
	var ne net.Error
	switch {
	case err == nil:
		return ""
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return ReasonTimeout
	case errors.Is(err, context.Canceled):
		return ReasonCancelled
	case errors.Is(err, errConnRefused):
		return ReasonRefused
	case errors.Is(err, errHostUnreach), errors.Is(err, errNetUnreach):
		return ReasonUnreachable
	}
	return ReasonOf(err)
}

// RefusalText is the message a refused dial carries to the server: err's
// text, or the reason when there is no error.
func RefusalText(r Reason, err error) string {
	if err == nil {
		return string(r)
	}
	return err.Error()
}
