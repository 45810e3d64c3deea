package auth

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	authv1 "k8s.io/api/authentication/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// TestClientReviewerSendsTheTokenAndAudience checks the request
// ClientReviewer makes, against an HTTP server that decodes it as
// kube-apiserver does.
func TestClientReviewerSendsTheTokenAndAudience(t *testing.T) {
	var got authv1.TokenReview
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusNotFound)
			return
		}
		if err := json.NewDecoder(r.Body).Decode(&got); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		got.Status = authenticated(agentSA, got.Spec.Audiences...)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(got)
	}))
	defer srv.Close()
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL, ContentConfig: rest.ContentConfig{ContentType: "application/json"}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := ClientReviewer{Client: cs}.Review(t.Context(), "the-token", []string{audience})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.Token != "the-token" || !slices.Equal(got.Spec.Audiences, []string{audience}) {
		t.Errorf("request spec %+v", got.Spec)
	}
	if !st.Authenticated || st.User.Username != agentSA || !slices.Equal(st.Audiences, []string{audience}) {
		t.Errorf("status %+v", st)
	}

	// A failed call is an error, not a verdict.
	srv.Close()
	if _, err := (ClientReviewer{Client: cs}).Review(t.Context(), "t", []string{audience}); err == nil || !strings.Contains(err.Error(), "create TokenReview") {
		t.Errorf("review against a stopped server: %v", err)
	}
}
