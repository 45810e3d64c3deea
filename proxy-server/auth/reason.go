package auth

import "fmt"

// Reason says why an agent was refused. The values are the reason label of
// konnectivity_network_proxy_server_agent_refusals_total and the word the
// agent is told.
type Reason string

// The reasons an agent is refused.
const (
	// NoToken: token authentication is on and the agent sent no token.
	NoToken Reason = "no_token"
	// MalformedToken: what the agent sent cannot be a token (not a
	// "Bearer" authorization, several of them, bytes a token never has).
	MalformedToken Reason = "malformed_token"
	// TokenInvalid: kube-apiserver did not authenticate the token: garbage,
	// expired, its service account deleted, or issued for another audience.
	TokenInvalid Reason = "token_invalid"
	// WrongAudience: authenticated, but the review does not list our
	// audience (kube-apiserver did not check it).
	WrongAudience Reason = "wrong_audience"
	// WrongNamespace: a service account of another namespace.
	WrongNamespace Reason = "wrong_namespace"
	// WrongServiceAccount: another service account of the right namespace.
	WrongServiceAccount Reason = "wrong_service_account"
	// NotServiceAccount: authenticated as a user that is no service account.
	NotServiceAccount Reason = "not_service_account"
	// ReviewFailed: the TokenReview itself failed (kube-apiserver
	// unreachable, forbidden, timed out); the token may be fine.
	ReviewFailed Reason = "review_failed"
	// BadMetadata: the agent's connect metadata is malformed (agent id,
	// identifiers); nothing to do with its token.
	BadMetadata Reason = "bad_metadata"
)

// Reasons lists every reason, for tests and metric initialisation.
var Reasons = []Reason{NoToken, MalformedToken, TokenInvalid, WrongAudience, WrongNamespace,
	WrongServiceAccount, NotServiceAccount, ReviewFailed, BadMetadata}

// TokenRefusedPrefix starts the message an agent gets when its token is
// refused.
const TokenRefusedPrefix = "service-account token refused: "

// RefusedError is an agent refused, with the reason. Its message is what
// the agent is told.
type RefusedError struct {
	Reason Reason
	Detail string // what was wrong, for the agent's and the server's logs
	Err    error  // the cause, if any (review_failed)
}

func (e *RefusedError) Error() string {
	prefix := TokenRefusedPrefix
	if e.Reason == BadMetadata {
		prefix = "agent refused: "
	}
	msg := prefix + string(e.Reason)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *RefusedError) Unwrap() error { return e.Err }

func refuse(r Reason, format string, a ...any) *RefusedError {
	return &RefusedError{Reason: r, Detail: fmt.Sprintf(format, a...)}
}
