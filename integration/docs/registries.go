package docs

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	// ANP v0.36.0 registers its metrics on the default registry when
	// these are imported: that registry is read as ANP's list.
	_ "sigs.k8s.io/apiserver-network-proxy/pkg/agent/metrics"
	_ "sigs.k8s.io/apiserver-network-proxy/pkg/server/metrics"

	"isthmus.dev/proxy-agent/agent"
	"isthmus.dev/proxy-server/server"
)

// A kubeconfig that is read, never used: building a server or agent sends
// nothing to kube-apiserver.
const unusedKubeconfig = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`

func writeKubeconfig(dir string) (string, error) {
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, []byte(unusedKubeconfig), 0o600); err != nil {
		return "", err
	}
	return path, nil
}

// ServerRegistry is the metrics registry of a proxy-server built with every
// part that has metrics of its own (token authentication, the lease
// controller). It is built, not run: nothing listens, nothing is sent. dir
// receives a kubeconfig file.
func ServerRegistry(dir string) (*prometheus.Registry, error) {
	kubeconfig, err := writeKubeconfig(dir)
	if err != nil {
		return nil, err
	}
	cfg := server.DefaultConfig()
	cfg.ServerID = "docs"
	cfg.UDSName, cfg.ServerPort = filepath.Join(dir, "unused.sock"), 0
	cfg.ClusterCert, cfg.ClusterKey = filepath.Join(dir, "unused.crt"), filepath.Join(dir, "unused.key")
	cfg.AgentNamespace, cfg.AgentServiceAccount = "kube-system", "konnectivity-agent"
	cfg.AuthenticationAudience = "system:konnectivity-server"
	cfg.Kubeconfig = kubeconfig
	cfg.EnableLeaseController = true
	s, err := server.New(cfg, nil)
	if err != nil {
		return nil, fmt.Errorf("build a proxy-server: %w", err)
	}
	return s.MetricsRegistry(), nil
}

// AgentRegistry is the metrics registry of a proxy-agent built with every
// part that has metrics of its own (the lease counter). It is built, not
// run. dir receives a kubeconfig file.
func AgentRegistry(dir string) (*prometheus.Registry, error) {
	kubeconfig, err := writeKubeconfig(dir)
	if err != nil {
		return nil, err
	}
	cfg := agent.DefaultConfig()
	cfg.AgentID = "docs"
	cfg.CountServerLeases = true
	cfg.Kubeconfig = kubeconfig
	a, err := agent.New(cfg, nil)
	if err != nil {
		return nil, fmt.Errorf("build a proxy-agent: %w", err)
	}
	return a.MetricsRegistry(), nil
}

// ANPRegistry holds the metrics of ANP v0.36.0's proxy-server and
// proxy-agent (konnectivity_network_proxy_server_* and _agent_*), as ANP
// registers them on the process's default registry.
func ANPRegistry() (*prometheus.Registry, error) {
	reg, ok := prometheus.DefaultRegisterer.(*prometheus.Registry)
	if !ok {
		return nil, fmt.Errorf("the default registerer is a %T, not a registry", prometheus.DefaultRegisterer)
	}
	return reg, nil
}
