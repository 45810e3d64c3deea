package auth

import (
	"context"
	"fmt"
	"slices"
	"strings"

	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Reviewer asks kube-apiserver about a token: a TokenReview of token for
// audiences. An error means the review itself failed, not the token.
type Reviewer interface {
	Review(ctx context.Context, token string, audiences []string) (authv1.TokenReviewStatus, error)
}

// ClientReviewer makes TokenReviews through client-go.
type ClientReviewer struct {
	Client kubernetes.Interface
}

// Review creates a TokenReview, as ANP's validateAuthToken does.
func (r ClientReviewer) Review(ctx context.Context, token string, audiences []string) (authv1.TokenReviewStatus, error) {
	res, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, &authv1.TokenReview{
		Spec: authv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return authv1.TokenReviewStatus{}, fmt.Errorf("create TokenReview: %w", err)
	}
	return res.Status, nil
}

// judge reads a review's answer: nil when it shows the expected service
// account with our audience, else the reason.
func (a *Authenticator) judge(st authv1.TokenReviewStatus) *RefusedError {
	if !st.Authenticated {
		detail := "kube-apiserver did not authenticate the token (garbage, expired, its service account deleted, or issued for another audience than " + a.cfg.Audience + ")"
		if st.Error != "" {
			detail += ": " + st.Error
		}
		return &RefusedError{Reason: TokenInvalid, Detail: detail}
	}
	// kube-apiserver lists the audiences it checked; an empty list means it
	// did not check ours.
	if !slices.Contains(st.Audiences, a.cfg.Audience) {
		return refuse(WrongAudience, "the review lists audiences %q, not %q (--authentication-audience)", st.Audiences, a.cfg.Audience)
	}
	user := st.User.Username
	parts := strings.Split(user, ":")
	if len(parts) != 4 || parts[0] != "system" || parts[1] != "serviceaccount" {
		return refuse(NotServiceAccount, "the token is of user %q, not of a service account", user)
	}
	if parts[2] != a.cfg.Namespace {
		return refuse(WrongNamespace, "the token is of service account %s/%s; want namespace %q (--agent-namespace)", parts[2], parts[3], a.cfg.Namespace)
	}
	if parts[3] != a.cfg.ServiceAccount {
		return refuse(WrongServiceAccount, "the token is of service account %s/%s; want %q (--agent-service-account)", parts[2], parts[3], a.cfg.ServiceAccount)
	}
	return nil
}
