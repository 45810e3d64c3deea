package harness

import "isthmus.dev/certs"

// ServerAuth is how a proxy-server authenticates its agents. The zero value
// is client certificates: --cluster-ca-cert with the server's PKI CA, and
// StartAgent gives agents --agent-cert/--agent-key from that PKI.
type ServerAuth struct {
	// NoClientCerts leaves out --cluster-ca-cert.
	NoClientCerts bool
	// Token adds service-account token authentication (TokenReview); nil:
	// none. With NoClientCerts false as well, an agent needs both.
	Token *TokenAuth
	// AllowUnauthenticated adds --allow-unauthenticated-agents, the opt-out
	// a server needs to start with neither client certificates nor tokens.
	AllowUnauthenticated bool
}

// Unauthenticated is the opt-out: no client certificates, no tokens, and
// the flag that says the operator wants that.
var Unauthenticated = ServerAuth{NoClientCerts: true, AllowUnauthenticated: true}

// TokenAuth are the token authentication flags of a proxy-server, as the
// kubeadm guide sets them.
type TokenAuth struct {
	Namespace      string // --agent-namespace
	ServiceAccount string // --agent-service-account
	Audience       string // --authentication-audience
	Kubeconfig     string // --kubeconfig: the server's identity toward kube-apiserver
}

// Flags are t's proxy-server flags.
func (t TokenAuth) Flags() []string {
	return []string{
		"--agent-namespace=" + t.Namespace,
		"--agent-service-account=" + t.ServiceAccount,
		"--authentication-audience=" + t.Audience,
		"--kubeconfig=" + t.Kubeconfig,
	}
}

// Flags are a's proxy-server flags, with pki's CA for client certificates.
func (a ServerAuth) Flags(pki *certs.Bundle) []string {
	var f []string
	if !a.NoClientCerts {
		f = append(f, "--cluster-ca-cert="+pki.CACert)
	}
	if a.Token != nil {
		f = append(f, a.Token.Flags()...)
	}
	if a.AllowUnauthenticated {
		f = append(f, "--allow-unauthenticated-agents")
	}
	return f
}

// AgentAuth is how a proxy-agent authenticates to its servers. The zero
// value presents the client certificate of the server's PKI and no token.
type AgentAuth struct {
	NoClientCert bool   // leave out --agent-cert/--agent-key
	TokenPath    string // --service-account-token-path; empty: none
}

// Flags are a's proxy-agent flags (both implementations take them), with
// pki's agent certificate.
func (a AgentAuth) Flags(pki *certs.Bundle) []string {
	var f []string
	if !a.NoClientCert {
		f = append(f, "--agent-cert="+pki.AgentCert, "--agent-key="+pki.AgentKey)
	}
	if a.TokenPath != "" {
		f = append(f, "--service-account-token-path="+a.TokenPath)
	}
	return f
}
