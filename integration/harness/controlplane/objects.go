package controlplane

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"isthmus.dev/integration/harness"
)

// Objects made here live until the control plane ends (a Shared one: the
// end of the test process); tests keep apart by their own namespaces.

// callTimeout bounds every API call of the helpers.
const callTimeout = 30 * time.Second

func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), callTimeout)
}

var nsSeq atomic.Int32

// CreateNamespace creates namespace name; one that exists is fine.
func (cp *ControlPlane) CreateNamespace(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	_, err := cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}

// NewNamespace creates a namespace named prefix-<n>, unique in this test
// process, and returns its name.
func (cp *ControlPlane) NewNamespace(t testing.TB, prefix string) string {
	t.Helper()
	name := prefix + "-" + strconv.Itoa(int(nsSeq.Add(1)))
	cp.CreateNamespace(t, name)
	return name
}

// CreateServiceAccount creates service account ns/name. A namespace just
// created may not be known to admission yet: it retries a few times.
func (cp *ControlPlane) CreateServiceAccount(t testing.TB, ns, name string) *corev1.ServiceAccount {
	t.Helper()
	var sa *corev1.ServiceAccount
	var err error
	for range 20 {
		ctx, cancel := callCtx()
		sa, err = cp.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		cancel()
		if err == nil {
			return sa
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("create service account %s/%s: %v", ns, name, err)
	return nil
}

// DeleteServiceAccount deletes service account ns/name.
func (cp *ControlPlane) DeleteServiceAccount(t testing.TB, ns, name string) {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	if err := cp.Client.CoreV1().ServiceAccounts(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete service account %s/%s: %v", ns, name, err)
	}
}

// CreateSecret creates an empty secret ns/name: an object to bind tokens
// to (deleting it revokes them).
func (cp *ControlPlane) CreateSecret(t testing.TB, ns, name string) *corev1.Secret {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	s, err := cp.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create secret %s/%s: %v", ns, name, err)
	}
	return s
}

// DeleteSecret deletes secret ns/name.
func (cp *ControlPlane) DeleteSecret(t testing.TB, ns, name string) {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	if err := cp.Client.CoreV1().Secrets(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete secret %s/%s: %v", ns, name, err)
	}
}

// TokenOpts shape a token minted with the TokenRequest API.
type TokenOpts struct {
	Audience string // "": the API's own (Issuer)
	// Expiration: 0 is one hour; kube-apiserver refuses less than 10 minutes.
	Expiration time.Duration
	// BoundTo: bind the token to this secret, as the kubelet binds
	// projected tokens to their pod: deleting it revokes the token.
	BoundTo *corev1.Secret
}

// Token mints a token of service account ns/sa, as the kubelet does for a
// projected service-account token volume.
func (cp *ControlPlane) Token(t testing.TB, ns, sa string, o TokenOpts) string {
	t.Helper()
	if o.Expiration == 0 {
		o.Expiration = time.Hour
	}
	secs := int64(o.Expiration / time.Second)
	req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &secs}}
	if o.Audience != "" {
		req.Spec.Audiences = []string{o.Audience}
	}
	if o.BoundTo != nil {
		req.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: o.BoundTo.Name, UID: o.BoundTo.UID}
	}
	ctx, cancel := callCtx()
	defer cancel()
	resp, err := cp.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s (audience %q): %v", ns, sa, o.Audience, err)
	}
	harness.RegisterSecret(t, "a token of "+ns+"/"+sa, resp.Status.Token) // no process may print it
	return resp.Status.Token
}

// Review asks kube-apiserver, as the administrator, what it makes of token
// for the audiences (none: the API's).
func (cp *ControlPlane) Review(t testing.TB, token string, audiences ...string) authnv1.TokenReviewStatus {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	r, err := cp.Client.AuthenticationV1().TokenReviews().Create(ctx,
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: audiences}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenReview: %v", err)
	}
	return r.Status
}

// WaitTokenRefused waits until kube-apiserver no longer authenticates
// token for audience (its caches follow a revocation within moments).
func (cp *ControlPlane) WaitTokenRefused(t testing.TB, token, audience string) {
	t.Helper()
	harness.WaitFor(t, 30*time.Second, "kube-apiserver to refuse the revoked token", func() bool {
		return !cp.Review(t, token, audience).Authenticated
	})
}

// WaitTokenAccepted waits until kube-apiserver authenticates token for
// audience as ns/sa (a service account just created reaches its token
// authenticator's cache within moments).
func (cp *ControlPlane) WaitTokenAccepted(t testing.TB, token, audience, ns, sa string) {
	t.Helper()
	want := "system:serviceaccount:" + ns + ":" + sa
	harness.WaitFor(t, 30*time.Second, "kube-apiserver to authenticate "+want, func() bool {
		st := cp.Review(t, token, audience)
		return st.Authenticated && st.User.Username == want
	})
}
