package manifests

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Lease verbs: proxy-server publishes, renews and culls; agents count.
var (
	serverLeaseVerbs = []string{"get", "list", "watch", "create", "update", "delete"}
	agentLeaseVerbs  = []string{"get", "list", "watch"}
)

// ServerArgs are proxy-server's arguments, the same in the static Pod and
// the systemd unit, defaults filled; o is not validated (Render does).
func ServerArgs(o Options) []string {
	o = o.WithDefaults()
	s := o.Server
	args := []string{
		"--mode=" + string(o.Mode),
		"--uds-name=" + s.UDSName,
		"--delete-existing-uds-file=true",
		"--server-port=0",
		"--cluster-cert=" + s.ClusterCert,
		"--cluster-key=" + s.ClusterKey,
		"--agent-port=" + strconv.Itoa(o.AgentPort),
		"--admin-port=" + strconv.Itoa(AdminPort),
		"--health-port=" + strconv.Itoa(HealthPort),
		// destHost: a kubelet's traffic goes through the agent on that
		// node (its identifiers name it); anything else to any agent.
		"--proxy-strategies=destHost,default",
	}
	if o.Auth == AuthToken {
		args = append(args, "--agent-namespace="+o.Namespace, "--agent-service-account="+AgentName,
			"--authentication-audience="+o.Audience)
	} else {
		args = append(args, "--cluster-ca-cert="+s.ClusterCACert)
	}
	if serverNeedsKube(o) {
		args = append(args, "--kubeconfig="+s.Kubeconfig)
	}
	if o.Leases {
		args = append(args, "--enable-lease-controller", "--lease-namespace="+o.Namespace, "--lease-label="+LeaseLabel)
	} else {
		args = append(args, "--server-count="+strconv.Itoa(o.ServerCount))
	}
	return args
}

// serverNeedsKube: proxy-server talks to kube-apiserver for TokenReviews
// and for its Lease.
func serverNeedsKube(o Options) bool { return o.Auth == AuthToken || o.Leases }

// serverAuthDelegator lets proxy-server's user create TokenReviews, as
// kubeadm's guide (same name).
func serverAuthDelegator(o Options) *rbacv1.ClusterRoleBinding {
	if o.Auth != AuthToken {
		return nil
	}
	return &rbacv1.ClusterRoleBinding{
		TypeMeta: typeClusterRoleBinding, ObjectMeta: meta("system:konnectivity-server", "", ServerName),
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:auth-delegator"},
		Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: o.ServerUser}},
	}
}

// staticPod is proxy-server for /etc/kubernetes/manifests on a
// control-plane node.
func staticPod(o Options) *corev1.Pod {
	mounts, volumes := serverVolumes(o)
	c := corev1.Container{
		Name: ServerName, Image: o.Image, ImagePullPolicy: o.ImagePullPolicy,
		Command: []string{"/proxy-server"},
		Args:    ServerArgs(o),
		Ports: []corev1.ContainerPort{
			{Name: "agent", ContainerPort: int32(o.AgentPort), HostPort: int32(o.AgentPort), Protocol: corev1.ProtocolTCP},
			{Name: "health", ContainerPort: HealthPort, HostPort: HealthPort, Protocol: corev1.ProtocolTCP},
		},
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi"),
		}},
		LivenessProbe:  httpProbe("127.0.0.1", "/healthz", intstr.FromInt32(HealthPort), 10, 10),
		ReadinessProbe: httpProbe("127.0.0.1", "/readyz", intstr.FromInt32(HealthPort), 5, 5),
		SecurityContext: &corev1.SecurityContext{
			AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
		VolumeMounts: mounts,
	}
	return &corev1.Pod{
		TypeMeta: typePod, ObjectMeta: meta(ServerName, o.Namespace, ServerName),
		Spec: corev1.PodSpec{
			HostNetwork: true,
			// Like kube-apiserver's own static Pod: it is what the control
			// plane reaches the nodes through.
			PriorityClassName: "system-node-critical",
			SecurityContext: &corev1.PodSecurityContext{
				// kubeadm's apiserver.key and the kubeconfig are root's
				// (0600); without any capability, root reads only what it owns.
				RunAsUser: ptr.To[int64](0), RunAsGroup: ptr.To[int64](0),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{c},
			Volumes:    volumes,
		},
	}
}

// serverVolumes mount the socket directory read-write (kube-apiserver
// dials the socket in it), the certificates' directories and the
// kubeconfig read-only, each at its path on the node.
func serverVolumes(o Options) ([]corev1.VolumeMount, []corev1.Volume) {
	s := o.Server
	type hp struct {
		path string
		typ  corev1.HostPathType
		rw   bool
	}
	list := []hp{{filepath.Dir(s.UDSName), corev1.HostPathDirectoryOrCreate, true}}
	files := []string{s.ClusterCert, s.ClusterKey}
	if o.Auth == AuthCertificates {
		files = append(files, s.ClusterCACert)
	}
	var dirs []string
	for _, f := range files {
		if d := filepath.Dir(f); !slices.Contains(dirs, d) && d != list[0].path {
			dirs = append(dirs, d)
		}
	}
	for _, d := range dirs {
		list = append(list, hp{d, corev1.HostPathDirectory, false})
	}
	if kdir := filepath.Dir(s.Kubeconfig); serverNeedsKube(o) && !slices.Contains(dirs, kdir) && kdir != list[0].path {
		list = append(list, hp{s.Kubeconfig, corev1.HostPathFile, false})
	}
	var mounts []corev1.VolumeMount
	var volumes []corev1.Volume
	for i, h := range list {
		name := volumeName(h.path)
		if slices.ContainsFunc(volumes, func(v corev1.Volume) bool { return v.Name == name }) {
			name = fmt.Sprintf("%s-%d", strings.TrimRight(name[:min(len(name), 60)], "-"), i) // two paths, one sanitized name
		}
		mounts = append(mounts, corev1.VolumeMount{Name: name, MountPath: h.path, ReadOnly: !h.rw})
		volumes = append(volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{
			HostPath: &corev1.HostPathVolumeSource{Path: h.path, Type: ptr.To(h.typ)},
		}})
	}
	return mounts, volumes
}

// volumeName makes a DNS-1123 label of a node path:
// /etc/kubernetes/pki -> etc-kubernetes-pki.
func volumeName(path string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.Trim(path, "/")) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-")
	if len(name) > 63 {
		name = strings.Trim(name[len(name)-63:], "-")
	}
	return name
}

// SystemdUnit is proxy-server as a systemd service, the alternative to the
// static Pod on a node whose kube-apiserver is not a static Pod (k0s-style);
// defaults filled, o not validated (Render does).
func SystemdUnit(o Options) []byte {
	o = o.WithDefaults()
	var b strings.Builder
	sockDir := filepath.Dir(o.Server.UDSName)
	fmt.Fprintf(&b, `# proxy-server beside kube-apiserver, written by 'isthmus manifests'.
# Its flags: proxy-server --help. Install as /etc/systemd/system/%[1]s.service, then:
#   systemctl daemon-reload && systemctl enable --now %[1]s
[Unit]
Description=isthmus proxy-server: kube-apiserver's tunnel to the nodes and pods
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
# The socket directory is shared with kube-apiserver.
ExecStartPre=+/bin/mkdir -p %[2]s
ExecStart=%[3]s`, ServerName, sockDir, o.Server.Binary)
	for _, a := range ServerArgs(o) {
		b.WriteString(" \\\n\t" + systemdEscape(a))
	}
	fmt.Fprintf(&b, `
Restart=always
RestartSec=5s
# SIGTERM: stop taking clients; open connections may finish.
TimeoutStopSec=30s
# Root only to read root's key and kubeconfig (0600); nothing else.
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ReadWritePaths=%s
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
`, sockDir)
	return []byte(b.String())
}

// systemdEscape escapes what systemd would expand in an ExecStart word
// (specifiers and variables); Validate keeps spaces and quotes out of
// paths.
func systemdEscape(s string) string {
	return strings.NewReplacer("%", "%%", "$", "$$").Replace(s)
}
