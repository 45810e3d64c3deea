package kubetraffic

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/aggapi"
)

// createAnswered creates ConfigMap name in the test's namespace and checks
// that the webhook answered for it: the object stored carries its label.
func (s *stack) createAnswered(ctx context.Context, name string) error {
	cm, err := s.cp.Client.CoreV1().ConfigMaps(namespace).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"n": name}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create ConfigMap %s: %w", name, err)
	}
	if got := cm.Labels[answeredLabel]; got != answeredValue {
		return fmt.Errorf("ConfigMap %s was created without the webhook's label (labels %v)", name, cm.Labels)
	}
	return nil
}

// webhookScenario: 200 creates of ConfigMaps, each sent by kube-apiserver
// through the tunnel to the webhook in the worker, each answered by it.
func webhookScenario(t *testing.T, s *stack) (string, error) {
	const creates = 200
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	before := s.webhook.calls.Load()
	start := time.Now()
	for i := range creates {
		if err := s.createAnswered(ctx, "webhook-"+strconv.Itoa(i)); err != nil {
			return "", fmt.Errorf("after %d creates answered: %w", i, err)
		}
	}
	took := time.Since(start)
	if calls := s.webhook.calls.Load() - before; calls < creates {
		return "", fmt.Errorf("%d creates, but the webhook was called %d times", creates, calls)
	}
	return fmt.Sprintf("%d creates answered in %v (%v each)", creates, took.Round(10*time.Millisecond),
		(took / creates).Round(100*time.Microsecond)), nil
}

// ping is what the aggregated API server answers (aggapi's Ping).
type ping struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	User string `json:"user"`
}

// checkPing checks that body is the Ping named name, asked for as the
// stack's kubectl user: the aggregated API server saw who kube-apiserver
// authenticated.
func checkPing(body []byte, name, user string) error {
	var p ping
	if err := json.Unmarshal(body, &p); err != nil {
		return fmt.Errorf("the answer is not a Ping: %w: %.200q", err, body)
	}
	if p.Kind != "Ping" || p.Metadata.Name != name || p.User != user {
		return fmt.Errorf("got a %s named %q for user %q, want the Ping %q for %q", p.Kind, p.Metadata.Name, p.User, name, user)
	}
	return nil
}

// aggregatedScenario: 200 `kubectl get --raw` of the aggregated API,
// four at a time, each answered by the aggregated API server in the worker
// through the tunnel.
func aggregatedScenario(t *testing.T, s *stack) (string, error) {
	const (
		requests = 200
		parallel = 4
	)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	if err := s.waitAPIServiceAvailable(ctx, 2*time.Minute); err != nil {
		return "", err
	}
	available := time.Since(start)
	before := s.agg.Served()
	start = time.Now()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for w := range parallel {
		wg.Go(func() {
			for i := w; i < requests; i += parallel {
				name := "kubectl-" + strconv.Itoa(i)
				var out, errOut bytes.Buffer
				cmd := s.command(ctx, "get", "--raw", "/apis/"+aggapi.Group+"/"+aggapi.Version+"/"+aggapi.Resource+"/"+name)
				cmd.Stdout, cmd.Stderr = &out, &errOut
				err := cmd.Run()
				if err != nil {
					err = fmt.Errorf("kubectl get --raw %s: %w: %s", name, err, tailOf(errOut.String()))
				} else {
					err = checkPing(out.Bytes(), name, kubectlUser)
				}
				if err != nil {
					mu.Lock()
					first = firstOf(first, err)
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return "", first
	}
	took := time.Since(start)
	if served := s.agg.Served() - before; served < requests {
		return "", fmt.Errorf("%d requests answered, but the aggregated API server served %d", requests, served)
	}
	return fmt.Sprintf("Available after %v; %d requests in %v", available.Round(100*time.Millisecond), requests, took.Round(10*time.Millisecond)), nil
}

// firstOf keeps the first error.
func firstOf(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// getPing asks the aggregated API for the Ping name as the administrator
// (through client-go, as a controller would), and checks the answer.
func (s *stack) getPing(ctx context.Context, name string) error {
	body, err := s.cp.Client.CoreV1().RESTClient().Get().
		AbsPath("/apis", aggapi.Group, aggapi.Version, aggapi.Resource, name).DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("GET %s: %w: %s", name, err, strings.TrimSpace(string(body)))
	}
	return checkPing(body, name, harness.AdminUser)
}
