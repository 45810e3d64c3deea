package cni

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Small constructors for the typed objects the providers render. Every
// object carries its TypeMeta, so it encodes as a complete manifest.

// SystemNamespace is where the pod network's components run.
const SystemNamespace = "kube-system"

// managedBy labels every rendered object, so an operator can find them.
var managedBy = map[string]string{"app.kubernetes.io/managed-by": "isthmus"}

func meta(name, namespace string, labels map[string]string) metav1.ObjectMeta {
	l := map[string]string{}
	for k, v := range managedBy {
		l[k] = v
	}
	for k, v := range labels {
		l[k] = v
	}
	return metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: l}
}

func serviceAccount(name string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: meta(name, SystemNamespace, nil),
	}
}

func clusterRole(name string, rules ...rbacv1.PolicyRule) *rbacv1.ClusterRole {
	return &rbacv1.ClusterRole{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
		ObjectMeta: meta(name, "", nil),
		Rules:      rules,
	}
}

func rule(groups, resources, verbs []string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{APIGroups: groups, Resources: resources, Verbs: verbs}
}

// bindToServiceAccount binds ClusterRole role to the kube-system service
// account of the same name.
func bindToServiceAccount(role string) *rbacv1.ClusterRoleBinding {
	return &rbacv1.ClusterRoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
		ObjectMeta: meta(role, "", nil),
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: role, Namespace: SystemNamespace}},
	}
}

// bindToUser binds ClusterRole role to the user of that name.
func bindToUser(role, user string) *rbacv1.ClusterRoleBinding {
	b := bindToServiceAccount(role)
	b.Subjects = []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: user}}
	return b
}

func configMap(name string, data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: meta(name, SystemNamespace, nil),
		Data:       data,
	}
}

func daemonSet(name string, labels map[string]string, pod corev1.PodSpec) *appsv1.DaemonSet {
	maxUnavailable := intstr.FromInt32(1)
	return &appsv1.DaemonSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"},
		ObjectMeta: meta(name, SystemNamespace, labels),
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{
				Type:          appsv1.RollingUpdateDaemonSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxUnavailable: &maxUnavailable},
			},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: pod},
		},
	}
}

func hostPath(name, path string, typ corev1.HostPathType) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{
		HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &typ},
	}}
}

func mount(name, path string, readOnly bool) corev1.VolumeMount {
	return corev1.VolumeMount{Name: name, MountPath: path, ReadOnly: readOnly}
}

func env(name, value string) corev1.EnvVar { return corev1.EnvVar{Name: name, Value: value} }

func envField(name, fieldPath string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{FieldPath: fieldPath},
	}}
}

func envConfigMap(name, configMap, key string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
		ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: configMap}, Key: key},
	}}
}

func privileged() *corev1.SecurityContext {
	on := true
	return &corev1.SecurityContext{Privileged: &on}
}

// linuxNodes schedules on Linux nodes only: the pod network's components
// are Linux programs (Calico's Windows node is set up separately).
var linuxNodes = map[string]string{"kubernetes.io/os": "linux"}

// everywhere tolerates every taint: a node without its pod network agent
// never becomes ready.
var everywhere = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}

func execProbe(period int32, cmd ...string) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: cmd}},
		PeriodSeconds:    period,
		TimeoutSeconds:   10,
		FailureThreshold: 6,
	}
}

func rbacRule(groups, resources, verbs []string, names ...string) rbacv1.PolicyRule {
	r := rule(groups, resources, verbs)
	r.ResourceNames = names
	return r
}
