package kubeconfig

import (
	"errors"
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ClientOptions say how proxy-server's Kubernetes client (TokenReviews of
// agent tokens, server Leases) reaches kube-apiserver. They map onto ANP's
// --kubeconfig, --kubeconfig-qps, --kubeconfig-burst and
// --kube-api-content-type.
type ClientOptions struct {
	// Path is a kubeconfig file. Empty: the in-cluster configuration (the
	// pod's service account), as ANP does.
	Path string
	// QPS and Burst throttle the client; 0 means client-go's defaults
	// (5 and 10).
	QPS   float32
	Burst int
	// ContentType of requests, e.g. application/vnd.kubernetes.protobuf;
	// empty means JSON.
	ContentType string
	// UserAgent names the program in kube-apiserver's logs and audit, e.g.
	// "proxy-server/v0.3.0"; empty means client-go's default.
	UserAgent string
}

// RESTConfig is the client configuration o describes.
func RESTConfig(o ClientOptions) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if o.Path == "" {
		cfg, err = rest.InClusterConfig()
		if errors.Is(err, rest.ErrNotInCluster) {
			return nil, fmt.Errorf("--kubeconfig is empty and this is not a pod (no in-cluster configuration): set --kubeconfig to the kubeconfig file proxy-server should use: %w", err)
		}
		if err != nil {
			return nil, fmt.Errorf("in-cluster configuration (--kubeconfig is empty): %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", o.Path)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", o.Path, err)
		}
	}
	if o.QPS < 0 || o.Burst < 0 {
		return nil, fmt.Errorf("--kubeconfig-qps %v and --kubeconfig-burst %d must not be negative (0: client-go's defaults)", o.QPS, o.Burst)
	}
	cfg.QPS = o.QPS
	cfg.Burst = o.Burst
	if o.ContentType != "" {
		cfg.ContentType = o.ContentType
	}
	if o.UserAgent != "" {
		cfg.UserAgent = o.UserAgent
	}
	return cfg, nil
}

// NewClientset builds a Kubernetes clientset as o says.
func NewClientset(o ClientOptions) (kubernetes.Interface, error) {
	cfg, err := RESTConfig(o)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", cfg.Host, err)
	}
	return cs, nil
}
