package flagcompat

import (
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

// TestKlogBodiesNeverLogged: at any -v, klog's V-levels from 8 on (where
// client-go logs request and response bodies: a TokenReview's hold an
// agent's token) are dropped; 7 and below still come out.
func TestKlogBodiesNeverLogged(t *testing.T) {
	t.Cleanup(klog.ClearLogger)
	l, stderr, err := newLogging(t, "--log-json", "-v=10")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.Logger(); err != nil {
		t.Fatal(err)
	}
	klog.V(7).InfoS("Request Headers", "Authorization", "Bearer <masked>")
	klog.V(8).InfoS("Request Body", "body", "spec: token: eyJhbGciOi-secret")
	klog.Background().V(9).Info("Response Body", "body", "status: token: eyJhbGciOi-secret")
	rs := jsonLines(t, stderr.String())
	if r := find(rs, "Request Headers"); r == nil || r["level"] != "DEBUG" {
		t.Errorf("klog.V(7) at -v=10: %v in %q", r, stderr)
	}
	if strings.Contains(stderr.String(), "secret") {
		t.Errorf("a body at klog V(8) or more was logged: %q", stderr)
	}
}
