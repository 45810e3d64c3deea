package manifests

import (
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Paths inside the agent container.
const (
	// TokenDir holds the projected token (kubeadm's guide: the agent's
	// --service-account-token-path).
	TokenDir  = "/var/run/secrets/tokens"
	TokenFile = "konnectivity-agent-token"
	// ServiceAccountCA is the cluster CA the kubelet mounts with the
	// service account's own token.
	ServiceAccountCA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	AgentCADir       = "/etc/konnectivity-agent/ca"   // the AgentCA ConfigMap
	AgentCertDir     = "/etc/konnectivity-agent/cert" // the certificate Secret
	// AgentUser is the image's user (and group): non-root, no shell.
	AgentUser = 65532
)

// Names of the agent's optional objects.
const (
	AgentCAConfigMap = "konnectivity-agent-ca"
	AgentLeaseRole   = "konnectivity-agent-leases"
	ServerLeaseRole  = "konnectivity-server-leases"
)

// labels of every object of one side (agent or server).
func labels(app string) map[string]string {
	return map[string]string{"k8s-app": app, "app.kubernetes.io/part-of": "isthmus"}
}

func meta(name, namespace, app string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels(app)}
}

var (
	typeServiceAccount     = metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"}
	typeConfigMap          = metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"}
	typePod                = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
	typeDaemonSet          = metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"}
	typeRole               = metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"}
	typeRoleBinding        = metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"}
	typeClusterRoleBinding = metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"}
)

// AgentArgs are proxy-agent's arguments in the DaemonSet ($(NODE_NAME)
// and $(HOST_IP) are expanded by the kubelet from the container's env),
// defaults filled; o is not validated (Render does).
func AgentArgs(o Options) []string {
	o = o.WithDefaults()
	args := []string{
		"--proxy-server-host=" + strings.Join(o.ServerAddresses, ","),
		"--proxy-server-port=" + strconv.Itoa(o.AgentPort),
		"--ca-cert=" + agentCAPath(o),
		"--agent-identifiers=host=$(NODE_NAME)&" + o.HostIPFamily + "=$(HOST_IP)",
		"--admin-server-port=" + strconv.Itoa(AdminPort),
		"--health-server-port=" + strconv.Itoa(HealthPort),
	}
	if o.Auth == AuthToken {
		args = append(args, "--service-account-token-path="+TokenDir+"/"+TokenFile)
	} else {
		args = append(args, "--agent-cert="+AgentCertDir+"/"+corev1.TLSCertKey, "--agent-key="+AgentCertDir+"/"+corev1.TLSPrivateKeyKey)
	}
	if o.Leases {
		args = append(args, "--count-server-leases", "--lease-namespace="+o.Namespace, "--lease-label="+LeaseLabel)
	}
	return args
}

func agentCAPath(o Options) string {
	if len(o.AgentCA) > 0 {
		return AgentCADir + "/ca.crt"
	}
	return ServiceAccountCA
}

func agentServiceAccount(o Options) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{TypeMeta: typeServiceAccount, ObjectMeta: meta(AgentName, o.Namespace, AgentName)}
}

func agentCA(o Options) *corev1.ConfigMap {
	if len(o.AgentCA) == 0 {
		return nil
	}
	return &corev1.ConfigMap{TypeMeta: typeConfigMap, ObjectMeta: meta(AgentCAConfigMap, o.Namespace, AgentName),
		Data: map[string]string{"ca.crt": string(o.AgentCA)}}
}

// leaseRole grants verbs on the Leases of o.Namespace to one subject.
func leaseRole(o Options, name, app string, verbs []string, subject rbacv1.Subject) (*rbacv1.Role, *rbacv1.RoleBinding) {
	role := &rbacv1.Role{TypeMeta: typeRole, ObjectMeta: meta(name, o.Namespace, app),
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: verbs}}}
	binding := &rbacv1.RoleBinding{TypeMeta: typeRoleBinding, ObjectMeta: meta(name, o.Namespace, app),
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects: []rbacv1.Subject{subject}}
	return role, binding
}

func agentDaemonSet(o Options) *appsv1.DaemonSet {
	pod := corev1.PodSpec{
		ServiceAccountName: AgentName,
		// As kubeadm's guide and k0s: the agent is a cluster add-on that
		// kubectl logs/exec, webhooks and aggregated APIs need; the node's
		// own pods run without it (system-node-critical is for those).
		PriorityClassName: "system-cluster-critical",
		NodeSelector:      map[string]string{"kubernetes.io/os": "linux"},
		Tolerations:       []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
		SecurityContext: &corev1.PodSecurityContext{
			RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](AgentUser), RunAsGroup: ptr.To[int64](AgentUser),
			// fsGroup makes the certificate Secret's key readable by the
			// agent's group (mode 0440), never by others.
			FSGroup:        ptr.To[int64](AgentUser),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		Containers: []corev1.Container{agentContainer(o)},
		Volumes:    agentVolumes(o),
	}
	return &appsv1.DaemonSet{
		TypeMeta: typeDaemonSet, ObjectMeta: meta(AgentName, o.Namespace, AgentName),
		Spec: appsv1.DaemonSetSpec{
			Selector:       &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": AgentName}},
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels(AgentName), Annotations: map[string]string{
					"prometheus.io/scrape": "true", "prometheus.io/port": strconv.Itoa(HealthPort),
				}},
				Spec: pod,
			},
		},
	}
}

func agentContainer(o Options) corev1.Container {
	return corev1.Container{
		Name: AgentName, Image: o.Image, ImagePullPolicy: o.ImagePullPolicy,
		Command: []string{"/proxy-agent"},
		Args:    AgentArgs(o),
		Env: []corev1.EnvVar{
			{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
			{Name: "HOST_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
		},
		Ports:     []corev1.ContainerPort{{Name: "health", ContainerPort: HealthPort, Protocol: corev1.ProtocolTCP}},
		Resources: o.AgentResources,
		// Alive while the process serves; ready once it holds every
		// server it expects (the servers' count or their Leases).
		LivenessProbe:  httpProbe("", "/healthz", intstr.FromString("health"), 15, 10),
		ReadinessProbe: httpProbe("", "/readyz", intstr.FromString("health"), 5, 5),
		SecurityContext: &corev1.SecurityContext{
			AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
		VolumeMounts: agentMounts(o),
	}
}

func httpProbe(host, path string, port intstr.IntOrString, initialDelay, period int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler:        corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Host: host, Path: path, Port: port, Scheme: corev1.URISchemeHTTP}},
		InitialDelaySeconds: initialDelay, PeriodSeconds: period, TimeoutSeconds: 5, FailureThreshold: 3,
	}
}

func agentMounts(o Options) []corev1.VolumeMount {
	var m []corev1.VolumeMount
	if o.Auth == AuthToken {
		m = append(m, corev1.VolumeMount{Name: TokenFile, MountPath: TokenDir, ReadOnly: true})
	} else {
		m = append(m, corev1.VolumeMount{Name: "agent-cert", MountPath: AgentCertDir, ReadOnly: true})
	}
	if len(o.AgentCA) > 0 {
		m = append(m, corev1.VolumeMount{Name: "agent-ca", MountPath: AgentCADir, ReadOnly: true})
	}
	return m
}

func agentVolumes(o Options) []corev1.Volume {
	var v []corev1.Volume
	if o.Auth == AuthToken {
		v = append(v, corev1.Volume{Name: TokenFile, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Path: TokenFile, Audience: o.Audience, ExpirationSeconds: ptr.To[int64](TokenExpirationSeconds),
			}}},
		}}})
	} else {
		v = append(v, corev1.Volume{Name: "agent-cert", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: o.AgentCertSecret, DefaultMode: ptr.To[int32](0o440),
		}}})
	}
	if len(o.AgentCA) > 0 {
		v = append(v, corev1.Volume{Name: "agent-ca", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: AgentCAConfigMap},
		}}})
	}
	return v
}
