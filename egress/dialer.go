package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/server/egressselector"
)

// Dialer reaches the cluster network through proxy-server with
// kube-apiserver's own dialer: k8s.io/apiserver's egress selector, built
// from the configuration, looked up for the `cluster` network context. It
// is safe for concurrent use; each dial opens its own connection to
// proxy-server (and, in GRPC mode, its own gRPC connection), as
// kube-apiserver does.
type Dialer struct {
	dial utilnet.DialFunc
}

// NewDialer builds the dialer of cfg's `cluster` selection, which must go
// through proxy-server. cfg is what Load returns.
func NewDialer(cfg *apiserver.EgressSelectorConfiguration) (*Dialer, error) {
	if cfg == nil {
		return nil, errors.New("egress dialer: no configuration")
	}
	for _, s := range cfg.EgressSelections {
		if strings.EqualFold(s.Name, "cluster") && s.Connection.ProxyProtocol == apiserver.ProtocolDirect {
			return nil, errors.New("egress dialer: the cluster selection is Direct, so it would not go through proxy-server")
		}
	}
	sel, err := egressselector.NewEgressSelector(cfg)
	if err != nil {
		return nil, fmt.Errorf("egress dialer: %w", err)
	}
	if sel == nil {
		return nil, errors.New("egress dialer: the configuration has no egress selections")
	}
	dial, err := sel.Lookup(egressselector.Cluster.AsNetworkContext())
	if err != nil {
		return nil, fmt.Errorf("egress dialer: %w", err)
	}
	if dial == nil {
		return nil, errors.New("egress dialer: the configuration has no cluster selection")
	}
	return &Dialer{dial: dial}, nil
}

// NewDialerFromFile loads path (Load) and builds its dialer.
func NewDialerFromFile(path string) (*Dialer, error) {
	cfg, err := Load(path)
	if err != nil {
		return nil, err
	}
	return NewDialer(cfg)
}

// DialContext connects to address ("host:port" in the cluster network)
// through proxy-server. network must be "tcp", "tcp4" or "tcp6": the
// tunnel carries TCP, and proxy-server's agent resolves and dials address.
//
// kube-apiserver's dialer does not watch ctx everywhere (the GRPC connect
// has its own 30 s limit; the HTTP CONNECT answer is awaited until
// proxy-server gives it, within its dial timeout). DialContext returns when
// ctx ends all the same; a dial still running then finishes in the
// background and its connection, if any, is closed.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("egress dial %s %s: network %q: only tcp goes through proxy-server", network, address, network)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("egress dial %s: %w", address, err)
	}
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := d.dial(ctx, network, address)
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("egress dial %s: %w", address, r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-done; r.c != nil {
				_ = r.c.Close()
			}
		}()
		return nil, fmt.Errorf("egress dial %s: %w", address, ctx.Err())
	}
}

// Dial is DialContext without a deadline of its own.
func (d *Dialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}
