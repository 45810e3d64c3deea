package kubetraffic

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/aggapi"
)

// The webhook and the aggregated API server listen on the worker's node
// address, where only the tunnel reaches them; kube-apiserver finds them
// through Services whose EndpointSlices are made by hand (no controller
// manager runs), as --enable-aggregator-routing makes it do.
const (
	webhookPort    = 9443
	webhookService = "admission"
	webhookPath    = "/mutate"
	aggPort        = 8443
	aggService     = "pings"
	// answeredLabel is what the webhook adds to every ConfigMap it admits:
	// a ConfigMap that carries it was answered by the webhook.
	answeredLabel = "stand.isthmus.dev/answered-by"
	answeredValue = "webhook-in-the-worker"
	apiService    = aggapi.Version + "." + aggapi.Group
)

// webhook is a mutating admission webhook that labels each ConfigMap it
// is asked about.
type webhook struct {
	calls atomic.Int64
}

func (wh *webhook) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(io.LimitReader(r.Body, 3<<20)).Decode(&review); err != nil || review.Request == nil {
		http.Error(rw, fmt.Sprintf("not an AdmissionReview: %v", err), http.StatusBadRequest)
		return
	}
	var obj metav1.PartialObjectMetadata
	if err := json.Unmarshal(review.Request.Object.Raw, &obj); err != nil {
		http.Error(rw, fmt.Sprintf("the object under review: %v", err), http.StatusBadRequest)
		return
	}
	wh.calls.Add(1)
	patch := []map[string]any{{"op": "add", "path": "/metadata/labels", "value": map[string]string{answeredLabel: answeredValue}}}
	if obj.Labels != nil {
		patch = []map[string]any{{"op": "add", "path": "/metadata/labels/stand.isthmus.dev~1answered-by", "value": answeredValue}}
	}
	pb, err := json.Marshal(patch)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusInternalServerError)
		return
	}
	pt := admissionv1.PatchTypeJSONPatch
	review.Response = &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true, Patch: pb, PatchType: &pt}
	review.Request = nil
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(&review)
}

// serveWebhook serves wh over HTTPS on the worker's node address, with
// the certificate of its Service's name; it stops at t's cleanup.
func (s *stack) serveWebhook(t *testing.T, wh *webhook) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(s.cp.PKI.ServiceServing(t, webhookService, namespace))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := s.w.Listen("tcp", net.JoinHostPort(s.w.NodeAddr.String(), strconv.Itoa(webhookPort)))
	if err != nil {
		t.Fatalf("webhook: %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST "+webhookPath, wh)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("webhook: %v", err)
		}
	})
}

// serveAggregated starts the aggregated API server on the worker's node
// address; it stops at t's cleanup.
func (s *stack) serveAggregated(t *testing.T) *aggapi.Server {
	t.Helper()
	cert, key := s.cp.PKI.ServiceServing(t, aggService, namespace)
	ln, err := s.w.Listen("tcp", net.JoinHostPort(s.w.NodeAddr.String(), strconv.Itoa(aggPort)))
	if err != nil {
		t.Fatalf("aggregated API server: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := aggapi.Start(ctx, aggapi.Options{Listener: ln, CertFile: cert, KeyFile: key,
		RequestHeaderCAFile: s.cp.PKI.FrontProxyCA, AllowedNames: []string{harness.FrontProxyClient}})
	if err != nil {
		cancel()
		_ = ln.Close()
		t.Fatalf("aggregated API server: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		<-srv.Done()
		if err := srv.Err(); err != nil {
			t.Errorf("aggregated API server: %v", err)
		}
	})
	return srv
}

// registerAPIs makes the webhook and the aggregated API known to
// kube-apiserver: each a Service with an EndpointSlice at the worker's node
// address, a MutatingWebhookConfiguration for the creates of ConfigMaps in
// the test's namespace (failurePolicy Fail: a create the webhook did not
// answer fails), and an APIService.
func (s *stack) registerAPIs(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, svc := range []struct {
		name string
		port int32
	}{{webhookService, webhookPort}, {aggService, aggPort}} {
		_, err := s.cp.Client.CoreV1().Services(namespace).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: svc.name},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "https", Port: 443, Protocol: corev1.ProtocolTCP,
				TargetPort: intstr.FromInt32(svc.port)}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("Service %s: %v", svc.name, err)
		}
		ready := true
		_, err = s.cp.Client.DiscoveryV1().EndpointSlices(namespace).Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: svc.name + "-worker", Labels: map[string]string{discoveryv1.LabelServiceName: svc.name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{s.w.NodeAddr.String()},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: new(node)}},
			Ports: []discoveryv1.EndpointPort{{Name: new("https"), Port: new(svc.port), Protocol: new(corev1.ProtocolTCP)}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("EndpointSlice of %s: %v", svc.name, err)
		}
	}
	caPEM, err := os.ReadFile(s.cp.PKI.CA)
	if err != nil {
		t.Fatal(err)
	}
	fail, none := admissionregistrationv1.Fail, admissionregistrationv1.SideEffectClassNone
	_, err = s.cp.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "isthmus-traffic"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name: "configmaps.stand.isthmus.dev",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: caPEM,
				Service: &admissionregistrationv1.ServiceReference{Namespace: namespace, Name: webhookService, Path: new(webhookPath), Port: new(int32(443))}},
			Rules: []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"configmaps"}}}},
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: namespace}},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          new(int32(10)),
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("MutatingWebhookConfiguration: %v", err)
	}
	body, err := json.Marshal(map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
		"metadata": map[string]any{"name": apiService},
		"spec": map[string]any{"group": aggapi.Group, "version": aggapi.Version, "caBundle": caPEM,
			"service":              map[string]any{"namespace": namespace, "name": aggService, "port": 443},
			"groupPriorityMinimum": 1000, "versionPriority": 15},
	})
	if err != nil {
		t.Fatal(err)
	}
	status, resp, err := s.cp.API.Do(ctx, http.MethodPost, "/apis/apiregistration.k8s.io/v1/apiservices", body)
	if err != nil || status != http.StatusCreated {
		t.Fatalf("APIService %s: %d %s %v", apiService, status, resp, err)
	}
}

// apiServiceAvailable reports whether kube-apiserver's aggregator has
// found the aggregated API server (through the tunnel) and serves its API,
// with the reason when it has not.
func (s *stack) apiServiceAvailable(ctx context.Context) (bool, string) {
	status, body, err := s.cp.API.Do(ctx, http.MethodGet, "/apis/apiregistration.k8s.io/v1/apiservices/"+apiService, nil)
	if err != nil || status != http.StatusOK {
		return false, fmt.Sprintf("GET APIService: %d %v", status, err)
	}
	var as struct {
		Status struct {
			Conditions []struct{ Type, Status, Reason, Message string }
		}
	}
	if err := json.Unmarshal(body, &as); err != nil {
		return false, err.Error()
	}
	for _, c := range as.Status.Conditions {
		if c.Type == "Available" {
			return c.Status == "True", c.Reason + ": " + c.Message
		}
	}
	return false, "no Available condition yet"
}

// waitAPIServiceAvailable waits up to d for the APIService to be Available.
func (s *stack) waitAPIServiceAvailable(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	var why string
	for time.Now().Before(deadline) {
		var ok bool
		if ok, why = s.apiServiceAvailable(ctx); ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("APIService %s not Available within %v: %s", apiService, d, why)
}
