package controlplane

import (
	"path/filepath"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Lease verbs of proxy-server (publish, renew, cull) and of an agent that
// counts leases (watch them), as the issue grants them.
var (
	serverLeaseVerbs = []string{"get", "list", "watch", "create", "update", "delete"}
	agentLeaseVerbs  = []string{"get", "list", "watch"}
)

// ProxyServerKubeconfig makes user (a client certificate from the
// control plane's CA) with exactly what proxy-server needs and writes its
// kubeconfig: TokenReview through system:auth-delegator, and leases
// get/list/watch/create/update/delete in leaseNamespace. It returns the
// kubeconfig's path (proxy-server --kubeconfig).
func (cp *ControlPlane) ProxyServerKubeconfig(t testing.TB, user, leaseNamespace string) string {
	t.Helper()
	cp.bind(t, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: safeName(user) + ":auth-delegator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:auth-delegator"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	})
	cp.grantLeases(t, user, leaseNamespace, serverLeaseVerbs)
	return cp.Kubeconfig(t, user)
}

// AgentKubeconfig makes user with what an agent counting server leases
// needs, leases get/list/watch in leaseNamespace, and returns the path of
// its kubeconfig (proxy-agent --kubeconfig).
func (cp *ControlPlane) AgentKubeconfig(t testing.TB, user, leaseNamespace string) string {
	t.Helper()
	cp.grantLeases(t, user, leaseNamespace, agentLeaseVerbs)
	return cp.Kubeconfig(t, user)
}

// Kubeconfig issues a client certificate for user (in groups) and writes
// a kubeconfig for it to this control plane; it returns the file's path.
func (cp *ControlPlane) Kubeconfig(t testing.TB, user string, groups ...string) string {
	t.Helper()
	cert, key := cp.PKI.ClientCert(t, safeName(user), user, groups...)
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: cp.API.URL, CertificateAuthority: cp.PKI.CA}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificate: cert, ClientKey: key}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: user}
	cfg.CurrentContext = "e2e"
	path := filepath.Join(t.TempDir(), safeName(user)+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatalf("write kubeconfig of %s: %v", user, err)
	}
	return path
}

// UserConfig issues a client certificate for user (in groups) and returns
// an in-process client-go configuration for it. Nothing is granted to user
// here: alone, it is an identity kube-apiserver authenticates and then
// refuses everything.
func (cp *ControlPlane) UserConfig(t testing.TB, user string, groups ...string) *rest.Config {
	t.Helper()
	cert, key := cp.PKI.ClientCert(t, safeName(user), user, groups...)
	return restConfig(t, cp.API.URL, cp.PKI.CA, cert, key)
}

// grantLeases gives user the verbs on leases in ns, with a Role and a
// RoleBinding of its own.
func (cp *ControlPlane) grantLeases(t testing.TB, user, ns string, verbs []string) {
	t.Helper()
	name := safeName(user) + ":leases"
	ctx, cancel := callCtx()
	defer cancel()
	_, err := cp.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: verbs}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create role %s/%s: %v", ns, name, err)
	}
	_, err = cp.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create role binding %s/%s: %v", ns, name, err)
	}
}

func (cp *ControlPlane) bind(t testing.TB, b *rbacv1.ClusterRoleBinding) {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	if _, err := cp.Client.RbacV1().ClusterRoleBindings().Create(ctx, b, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create cluster role binding %s: %v", b.Name, err)
	}
}

// safeName makes a user name usable as an object and file name.
func safeName(user string) string {
	return strings.NewReplacer(":", "-", "/", "-", " ", "-").Replace(user)
}
