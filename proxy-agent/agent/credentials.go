package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"isthmus.dev/tunnel/native"
)

// token reads the service-account token at every connect (the kubelet
// rotates a projected token in place), or "" without
// --service-account-token-path.
func (a *Agent) token() (string, error) {
	if a.cfg.TokenPath == "" {
		return "", nil
	}
	b, err := os.ReadFile(a.cfg.TokenPath)
	if err != nil {
		return "", fmt.Errorf("read --service-account-token-path: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("--service-account-token-path %s is empty", a.cfg.TokenPath)
	}
	return t, nil
}

// credentials says what this agent proves itself with.
func (a *Agent) credentials() string {
	cert := "no client certificate (--agent-cert)"
	if a.cfg.AgentCert != "" {
		cert = "client certificate " + a.cfg.AgentCert
	}
	tok := "no service-account token (--service-account-token-path)"
	if a.cfg.TokenPath != "" {
		tok = "service-account token from " + a.cfg.TokenPath
	}
	return cert + " and " + tok
}

// RefusedError is a connect the server refused: it did not accept this
// agent's credentials.
type RefusedError struct {
	Target      string
	Credentials string // what the agent presented
	Err         error  // the server's reason, as it came
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("connect %s: proxy-server refused this agent, which presents %s: %v", e.Target, e.Credentials, e.Err)
}

func (e *RefusedError) Unwrap() error { return e.Err }

// refusal wraps a failed connect: as a RefusedError when the server judged
// the agent's credentials (a refusal on the native link, Unauthenticated
// or PermissionDenied on the ANP link, a TLS alert after our certificate
// was sent), else with the target only.
func (a *Agent) refusal(target string, err error) error {
	var oe *net.OpError
	switch {
	case errors.Is(err, native.ErrRefused),
		status.Code(err) == codes.Unauthenticated, status.Code(err) == codes.PermissionDenied,
		errors.As(err, &oe) && oe.Op == "remote error": // crypto/tls: an alert from the server
		return &RefusedError{Target: target, Credentials: a.credentials(), Err: err}
	}
	return fmt.Errorf("connect %s: %w", target, err)
}
