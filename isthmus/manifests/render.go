package manifests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"isthmus.dev/certs"
	"isthmus.dev/cni"
	"isthmus.dev/egress"
)

// Objects are the Kubernetes objects of a deployment, to apply with
// kubectl (the Helm chart renders the same). A nil field is not part of
// the deployment with these options.
type Objects struct {
	// ServerAuthDelegator binds proxy-server's user to
	// system:auth-delegator for TokenReviews (AuthToken only).
	ServerAuthDelegator *rbacv1.ClusterRoleBinding
	// ServerLeaseRole and its binding let proxy-server's user publish,
	// renew and cull Leases (Leases only).
	ServerLeaseRole        *rbacv1.Role
	ServerLeaseRoleBinding *rbacv1.RoleBinding
	AgentServiceAccount    *corev1.ServiceAccount
	// AgentLeaseRole and its binding let the agents count Leases (Leases
	// only).
	AgentLeaseRole        *rbacv1.Role
	AgentLeaseRoleBinding *rbacv1.RoleBinding
	// AgentCA is the CA agents verify the agent port with (with
	// Options.AgentCA only).
	AgentCA        *corev1.ConfigMap
	AgentDaemonSet *appsv1.DaemonSet
}

// List returns the objects present, in the order to apply them: RBAC
// first, the DaemonSet last.
func (c Objects) List() []runtime.Object {
	var out []runtime.Object
	add := func(o runtime.Object, present bool) {
		if present {
			out = append(out, o)
		}
	}
	add(c.ServerAuthDelegator, c.ServerAuthDelegator != nil)
	add(c.ServerLeaseRole, c.ServerLeaseRole != nil)
	add(c.ServerLeaseRoleBinding, c.ServerLeaseRoleBinding != nil)
	add(c.AgentServiceAccount, c.AgentServiceAccount != nil)
	add(c.AgentLeaseRole, c.AgentLeaseRole != nil)
	add(c.AgentLeaseRoleBinding, c.AgentLeaseRoleBinding != nil)
	add(c.AgentCA, c.AgentCA != nil)
	add(c.AgentDaemonSet, c.AgentDaemonSet != nil)
	return out
}

// Rendered is a whole deployment.
type Rendered struct {
	// Options are the options rendered, defaults filled.
	Options Options
	// Cluster are the objects for kubectl apply.
	Cluster Objects
	// ServerPod is proxy-server's static Pod, for /etc/kubernetes/manifests
	// on every control-plane node.
	ServerPod *corev1.Pod
	// ServerArgs are proxy-server's arguments (in ServerPod and
	// SystemdUnit); the agent's are in Cluster.AgentDaemonSet (AgentArgs).
	ServerArgs []string
	// SystemdUnit runs proxy-server without a kubelet (the alternative to
	// ServerPod).
	SystemdUnit []byte
	// EgressConfig is kube-apiserver's --egress-selector-config-file,
	// checked by k8s.io/apiserver's own loader (egress.Render).
	EgressConfig []byte
	// APIServerFlags are the flags to add to kube-apiserver.
	APIServerFlags []string
}

// Render renders the deployment for o (validated, defaults filled).
func Render(o Options) (*Rendered, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("manifests: %w", err)
	}
	o = o.WithDefaults()
	r := &Rendered{Options: o, ServerPod: staticPod(o), ServerArgs: ServerArgs(o), SystemdUnit: SystemdUnit(o)}
	c := &r.Cluster
	c.ServerAuthDelegator = serverAuthDelegator(o)
	c.AgentServiceAccount = agentServiceAccount(o)
	c.AgentCA = agentCA(o)
	c.AgentDaemonSet = agentDaemonSet(o)
	if o.Leases {
		c.ServerLeaseRole, c.ServerLeaseRoleBinding = leaseRole(o, ServerLeaseRole, ServerName, serverLeaseVerbs,
			rbacv1.Subject{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: o.ServerUser})
		c.AgentLeaseRole, c.AgentLeaseRoleBinding = leaseRole(o, AgentLeaseRole, AgentName, agentLeaseVerbs,
			rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: AgentName, Namespace: o.Namespace})
	}
	mode := egress.ModeGRPC
	if o.Mode == ModeHTTPConnect {
		mode = egress.ModeHTTPConnect
	}
	var err error
	r.EgressConfig, err = egress.Render(egress.Config{Mode: mode, Transport: egress.TransportUDS, UDSName: o.Server.UDSName})
	if err != nil {
		return nil, fmt.Errorf("manifests: kube-apiserver's egress configuration: %w", err)
	}
	audiences := append([]string{}, o.Server.ExistingAudiences...)
	if o.Auth == AuthToken {
		audiences = append(audiences, o.Audience)
	}
	r.APIServerFlags = egress.APIServerFlags(o.Server.EgressConfig, audiences)
	return r, nil
}

// ClusterYAML is one YAML stream of the cluster objects, for
// `kubectl apply -f -`; it decodes strictly with client-go's scheme.
func (r *Rendered) ClusterYAML() ([]byte, error) {
	return EncodeYAML(r.Cluster.List()...)
}

// ServerPodYAML is the static Pod manifest.
func (r *Rendered) ServerPodYAML() ([]byte, error) { return EncodeYAML(r.ServerPod) }

// EncodeYAML writes objects as YAML documents separated by "---", without
// the fields a manifest leaves to the API server (status, an empty
// creationTimestamp), and checks that the result decodes strictly
// (DecodeStrict).
func EncodeYAML(objs ...runtime.Object) ([]byte, error) {
	var buf bytes.Buffer
	for i, obj := range objs {
		raw, err := json.Marshal(obj)
		if err != nil {
			return nil, fmt.Errorf("encode object %d: %w", i, err)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("encode object %d: %w", i, err)
		}
		delete(m, "status")
		dropNullTimestamps(m)
		doc, err := yaml.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("encode object %d: %w", i, err)
		}
		if i > 0 {
			buf.WriteString("---\n")
		}
		buf.Write(doc)
	}
	if _, err := DecodeStrict(buf.Bytes()); err != nil {
		return nil, fmt.Errorf("rendered manifest does not decode strictly: %w", err)
	}
	return buf.Bytes(), nil
}

// dropNullTimestamps removes the "creationTimestamp: null" every typed
// ObjectMeta (pod templates included) marshals to.
func dropNullTimestamps(v any) {
	switch t := v.(type) {
	case map[string]any:
		if ts, ok := t["creationTimestamp"]; ok && ts == nil {
			delete(t, "creationTimestamp")
		}
		for _, child := range t {
			dropNullTimestamps(child)
		}
	case []any:
		for _, child := range t {
			dropNullTimestamps(child)
		}
	}
}

// DecodeStrict decodes every YAML document of data with client-go's
// scheme, strictly: an unknown kind, field or duplicate field is an error.
func DecodeStrict(data []byte) ([]runtime.Object, error) { return cni.DecodeStrict(data) }

// The files of a deployment directory, relative to it.
const (
	FileIndex        = "README.md"
	FileCluster      = "cluster.yaml"
	FileStaticPod    = "control-plane/konnectivity-server.yaml"
	FileSystemdUnit  = "control-plane/konnectivity-server.service"
	FileEgressConfig = "kube-apiserver/egress-selector-configuration.yaml"
	FileAPIServer    = "kube-apiserver/flags.txt"
)

// Files are the files of the deployment directory dir: the index, the
// cluster objects, the static Pod, the systemd unit and kube-apiserver's
// files. Always the same set, so that a directory rendered again with
// other options holds nothing stale.
func (r *Rendered) Files(dir string) ([]certs.File, error) {
	cluster, err := r.ClusterYAML()
	if err != nil {
		return nil, err
	}
	pod, err := r.ServerPodYAML()
	if err != nil {
		return nil, err
	}
	index, err := r.Index()
	if err != nil {
		return nil, err
	}
	var flags bytes.Buffer
	for _, f := range r.APIServerFlags {
		flags.WriteString(f + "\n")
	}
	header := "# Written by 'isthmus manifests'. "
	return []certs.File{
		{Path: filepath.Join(dir, FileIndex), Data: []byte(index), Mode: 0o644},
		{Path: filepath.Join(dir, FileCluster), Data: append([]byte(header+"kubectl apply --server-side -f "+FileCluster+"\n"), cluster...), Mode: 0o644},
		{Path: filepath.Join(dir, FileStaticPod), Data: append([]byte(header+"Copy to /etc/kubernetes/manifests/ on every control-plane node.\n"), pod...), Mode: 0o644},
		{Path: filepath.Join(dir, FileSystemdUnit), Data: r.SystemdUnit, Mode: 0o644},
		{Path: filepath.Join(dir, FileEgressConfig), Data: r.EgressConfig, Mode: 0o644},
		{Path: filepath.Join(dir, FileAPIServer), Data: flags.Bytes(), Mode: 0o644},
	}, nil
}
