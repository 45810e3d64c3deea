// Package manifests renders what it takes to deploy isthmus on Kubernetes,
// in the shape of kubeadm's "Set up Konnectivity service" guide and of k0s:
// proxy-agent as a DaemonSet on every node, proxy-server beside each
// kube-apiserver (a static Pod, or a systemd unit), their RBAC, and
// kube-apiserver's egress configuration and flags.
//
// Render returns typed objects (k8s.io/api), so a test can apply them or
// run the daemons with exactly their arguments; Rendered writes them as one
// YAML stream (kubectl apply -f -) or as a directory. Every manifest it
// writes decodes strictly with client-go's scheme. The Helm chart in
// deploy/helm/isthmus renders the same cluster objects from the same
// settings (integration/deploy holds the two against each other).
package manifests

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"isthmus.dev/certs"
	"isthmus.dev/egress"
	"isthmus.dev/tunnel/buildinfo"
)

// Mode is proxy-server's frontend protocol toward kube-apiserver.
type Mode string

// The modes (proxy-server's --mode; the egress configuration's proxyProtocol).
const (
	ModeGRPC        Mode = "grpc"
	ModeHTTPConnect Mode = "http-connect"
)

// Auth is how agents prove who they are to proxy-server.
type Auth string

// The ways agents authenticate.
const (
	// AuthToken: a projected service-account token with the agent
	// audience, checked by proxy-server with a TokenReview (kubeadm's and
	// k0s's way).
	AuthToken Auth = "token"
	// AuthCertificates: a client certificate from a Secret, checked
	// against proxy-server's --cluster-ca-cert.
	AuthCertificates Auth = "certificates"
)

// Names, ports and paths of the deployment (kubeadm's guide and k0s).
const (
	DefaultNamespace   = "kube-system"
	AgentName          = "konnectivity-agent"  // DaemonSet, ServiceAccount, container
	ServerName         = "konnectivity-server" // static Pod, container, systemd unit
	DefaultAgentPort   = 8132
	AdminPort          = 8133 // proxy-server --admin-port, proxy-agent --admin-server-port (loopback)
	HealthPort         = 8134 // proxy-server --health-port, proxy-agent --health-server-port
	DefaultImageRepo   = "localhost/isthmus"
	DefaultCertSecret  = "konnectivity-agent-cert"
	DefaultKubeconfig  = "/etc/kubernetes/konnectivity-server.conf"
	DefaultClusterCert = "/etc/kubernetes/pki/apiserver.crt"
	DefaultClusterKey  = "/etc/kubernetes/pki/apiserver.key"
	// DefaultClusterCACert is where proxy-server finds the CA of the
	// agents' certificates (certificates auth; 'isthmus certs ca').
	DefaultClusterCACert = "/etc/kubernetes/pki/konnectivity-agent-ca.crt"
	DefaultEgressConfig  = "/etc/kubernetes/egress-selector-configuration.yaml"
	DefaultServerBinary  = "/usr/local/bin/proxy-server"
	// LeaseLabel labels the servers' Leases (proxy-server and proxy-agent
	// --lease-label).
	LeaseLabel = "k8s-app=konnectivity-server"
	// TokenExpirationSeconds is the lifetime of the agents' projected
	// token: the API's default for projected tokens; the kubelet renews it
	// at 80% and proxy-agent reads it again at every connect.
	TokenExpirationSeconds = 3600
)

// DefaultImage is the image of this build: localhost/isthmus:<version>,
// the reference `make image` writes into its OCI tarball.
func DefaultImage() string { return DefaultImageRepo + ":" + buildinfo.Get().Version }

// DefaultAgentResources are the agent's requests (no limits: a memory
// limit would kill the tunnel under a burst of connections).
func DefaultAgentResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("50m"),
		corev1.ResourceMemory: resource.MustParse("64Mi"),
	}}
}

// Options are the settings of a deployment. The zero value of each field
// means its default (DefaultOptions), except ServerAddresses (required).
type Options struct {
	// Mode of proxy-server's frontend, over the Unix socket kube-apiserver
	// dials; "" means ModeGRPC.
	Mode Mode
	// Auth is how agents authenticate; "" means AuthToken.
	Auth Auth
	// ServerAddresses are what agents dial: one address (a load balancer,
	// a DNS name, or the only control-plane node) or one per proxy-server.
	// Host names or IP addresses, without a port (AgentPort). Required.
	ServerAddresses []string
	// AgentPort is proxy-server's agent port; 0 means 8132.
	AgentPort int
	// ServerCount is how many proxy-servers run; 0 means one per address
	// (1 behind one address). Not with Leases.
	ServerCount int
	// Leases: proxy-servers publish Leases and agents count them, instead
	// of a fixed ServerCount (one address only: a load balancer).
	Leases bool
	// Image holds /proxy-server and /proxy-agent; "" means DefaultImage().
	Image string
	// ImagePullPolicy; "" means IfNotPresent.
	ImagePullPolicy corev1.PullPolicy
	// Namespace of the agents, their ServiceAccount, the server's static
	// Pod and the Leases; "" means kube-system.
	Namespace string
	// Audience of the agents' tokens (AuthToken); "" means
	// system:konnectivity-server.
	Audience string
	// ServerUser is the user of proxy-server's kubeconfig, bound to
	// system:auth-delegator (TokenReview) and to the lease Role; "" means
	// system:konnectivity-server.
	ServerUser string
	// AgentCA is the PEM CA bundle agents verify the agent port with,
	// shipped in a ConfigMap; nil means the cluster CA (the service
	// account's ca.crt), which signed kubeadm's apiserver.crt.
	AgentCA []byte
	// AgentCertSecret names the kubernetes.io/tls Secret of the agents'
	// client certificate (AuthCertificates); "" means
	// konnectivity-agent-cert.
	AgentCertSecret string
	// HostIPFamily is the agent identifier key of the node's IP: "ipv4"
	// (default) or "ipv6" (single-stack IPv6 nodes).
	HostIPFamily string
	// AgentResources of the agent container; zero means
	// DefaultAgentResources().
	AgentResources corev1.ResourceRequirements
	// Server: the control-plane side (static Pod, systemd unit,
	// kube-apiserver files).
	Server ServerOptions
}

// ServerOptions are the files of the control-plane nodes: absolute paths
// on the node. The zero value of each means its default.
type ServerOptions struct {
	UDSName       string // frontend socket shared with kube-apiserver; default egress.DefaultUDSName
	ClusterCert   string // agent-port certificate (--cluster-cert); default kubeadm's apiserver.crt
	ClusterKey    string // its key; default kubeadm's apiserver.key
	ClusterCACert string // CA of the agents' certificates (AuthCertificates); default DefaultClusterCACert
	Kubeconfig    string // proxy-server's kubeconfig (TokenReview, Leases); default DefaultKubeconfig
	Binary        string // proxy-server on the node, for the systemd unit; default DefaultServerBinary
	EgressConfig  string // kube-apiserver --egress-selector-config-file; default DefaultEgressConfig
	// ExistingAudiences are the audiences kube-apiserver accepts today (its
	// --api-audiences, or else its --service-account-issuer): kept in the
	// printed --api-audiences. nil means kubeadm's issuer.
	ExistingAudiences []string
}

// DefaultOptions are the defaults, without ServerAddresses.
func DefaultOptions() Options {
	return Options{
		Mode: ModeGRPC, Auth: AuthToken, AgentPort: DefaultAgentPort,
		Image: DefaultImage(), ImagePullPolicy: corev1.PullIfNotPresent,
		Namespace: DefaultNamespace, Audience: egress.DefaultAgentAudience,
		ServerUser: certs.KubeconfigUser, AgentCertSecret: DefaultCertSecret,
		HostIPFamily: "ipv4", AgentResources: DefaultAgentResources(),
		Server: ServerOptions{
			UDSName: egress.DefaultUDSName, ClusterCert: DefaultClusterCert, ClusterKey: DefaultClusterKey,
			ClusterCACert: DefaultClusterCACert, Kubeconfig: DefaultKubeconfig, Binary: DefaultServerBinary,
			EgressConfig: DefaultEgressConfig, ExistingAudiences: []string{egress.DefaultServiceAccountIssuer},
		},
	}
}

// WithDefaults returns o with every zero field at its default.
func (o Options) WithDefaults() Options {
	d := DefaultOptions()
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def((*string)(&o.Mode), string(d.Mode))
	def((*string)(&o.Auth), string(d.Auth))
	def(&o.Image, d.Image)
	def((*string)(&o.ImagePullPolicy), string(d.ImagePullPolicy))
	def(&o.Namespace, d.Namespace)
	def(&o.Audience, d.Audience)
	def(&o.ServerUser, d.ServerUser)
	def(&o.AgentCertSecret, d.AgentCertSecret)
	def(&o.HostIPFamily, d.HostIPFamily)
	s, ds := &o.Server, d.Server
	def(&s.UDSName, ds.UDSName)
	def(&s.ClusterCert, ds.ClusterCert)
	def(&s.ClusterKey, ds.ClusterKey)
	def(&s.ClusterCACert, ds.ClusterCACert)
	def(&s.Kubeconfig, ds.Kubeconfig)
	def(&s.Binary, ds.Binary)
	def(&s.EgressConfig, ds.EgressConfig)
	if s.ExistingAudiences == nil {
		s.ExistingAudiences = ds.ExistingAudiences
	}
	if o.AgentPort == 0 {
		o.AgentPort = d.AgentPort
	}
	if o.ServerCount == 0 && !o.Leases {
		o.ServerCount = max(1, len(o.ServerAddresses))
	}
	if o.AgentResources.Requests == nil && o.AgentResources.Limits == nil {
		o.AgentResources = d.AgentResources
	}
	return o
}
