package cni

import (
	"net/netip"
	"slices"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Calico's manifest folders: the CRDs first (a stack of their own, so they
// exist before anything uses them), then the components.
const (
	StackCalicoCRDs = "calico-crds"
	StackCalico     = "calico"
)

const calicoConfigMap = "calico-config"

var (
	verbsRead   = []string{"get", "list", "watch"}
	verbsManage = []string{"get", "list", "create", "update", "delete"}
	calicoG     = []string{CalicoGroup}
	coreG       = []string{""}
)

// calicoStack renders calico-node (DaemonSet), calico-kube-controllers
// (Deployment), their RBAC and the calico-config ConfigMap.
func (c *Config) calicoStack() ([]File, error) {
	tmpl, err := c.calicoTemplateConflist()
	if err != nil {
		return nil, err
	}
	cm := configMap(calicoConfigMap, map[string]string{
		"typha_service_name": "none",
		"calico_backend":     c.calicoBackend(),
		"veth_mtu":           strconv.Itoa(c.Calico.MTU),
		"cni_network_config": tmpl,
	})
	return []File{
		{Name: "00-rbac.yaml", Objects: calicoRBAC()},
		{Name: "01-configmap.yaml", Objects: []runtime.Object{cm}},
		{Name: "02-calico-node.yaml", Objects: []runtime.Object{c.calicoNodeDaemonSet()}},
		{Name: "03-kube-controllers.yaml", Objects: []runtime.Object{c.calicoKubeControllers()}},
	}, nil
}

// calicoBackend is calico-node's CALICO_NETWORKING_BACKEND: BIRD (BGP)
// for ipip and bird, none of it for vxlan.
func (c *Config) calicoBackend() string {
	if c.Calico.Mode == "vxlan" {
		return "vxlan"
	}
	return "bird"
}

// calicoV1Resources are resources of Calico v1's datastore, which have no
// CRD: calico-node -startup reads them to learn whether an old cluster's
// data needs migrating. A fresh cluster answers 404, which is "no"; a 403
// ends calico-node.
var calicoV1Resources = []string{"globalfelixconfigs", "globalbgpconfigs"}

// calicoRBAC is the RBAC of Calico v3.31.0's manifests/calico.yaml, in
// places wider (calico-node may read every Calico CRD), narrower only by
// the loadbalancer controller's rules, which isthmus does not run; see
// TestCalicoRBACCoversUpstream.
func calicoRBAC() []runtime.Object {
	ipam := []string{"blockaffinities", "ipamblocks", "ipamhandles"}
	manageWatch := append(slices.Clone(verbsManage), "watch")
	node := clusterRole("calico-node",
		rbacRule(coreG, []string{"serviceaccounts/token"}, []string{"create"}, "calico-cni-plugin"),
		rule(coreG, []string{"pods", "nodes", "namespaces", "configmaps"}, []string{"get"}),
		rule(coreG, []string{"endpoints", "services"}, verbsRead),
		rule(coreG, []string{"pods", "namespaces", "serviceaccounts", "nodes"}, verbsRead),
		rule(coreG, []string{"nodes/status"}, []string{"patch", "update"}),
		rule(coreG, []string{"pods/status"}, []string{"patch"}),
		rule([]string{"discovery.k8s.io"}, []string{"endpointslices"}, []string{"list", "watch"}),
		rule([]string{"networking.k8s.io"}, []string{"networkpolicies"}, []string{"list", "watch"}),
		// Felix enforces (Baseline)AdminNetworkPolicies: it is not ready
		// before it has listed them.
		rule([]string{PolicyGroup}, calicoPlurals(PolicyGroup), []string{"list", "watch"}),
		rule(calicoG, calicoPlurals(CalicoGroup), verbsRead),
		rule(calicoG, calicoV1Resources, verbsRead),
		// Startup creates the default, adminnetworkpolicy and
		// baselineadminnetworkpolicy tiers.
		rule(calicoG, []string{"tiers"}, []string{"create"}),
		rule(calicoG, []string{"ippools", "felixconfigurations", "clusterinformations", "bgpconfigurations", "bgppeers", "caliconodestatuses"}, []string{"create", "update"}),
		rule(calicoG, ipam, manageWatch),
		rule(calicoG, []string{"ipamconfigs"}, []string{"get", "create"}),
		rule([]string{"apps"}, []string{"daemonsets"}, []string{"get"}),
	)
	plugin := clusterRole("calico-cni-plugin",
		rule(coreG, []string{"pods", "nodes", "namespaces"}, []string{"get"}),
		rule(coreG, []string{"pods/status"}, []string{"patch"}),
		rule(calicoG, []string{"blockaffinities", "ipamblocks", "ipamhandles", "clusterinformations", "ippools", "ipreservations", "ipamconfigs"}, verbsManage),
	)
	// kube-controllers runs the node controller only (no loadbalancer
	// controller, so no services or namespaces): IPAM garbage collection,
	// its syncer (nodes, clusterinformations, ipamblocks, ippools,
	// hostendpoints), and a health check that creates the default tiers.
	controllers := clusterRole("calico-kube-controllers",
		rule(coreG, []string{"nodes", "pods"}, verbsRead),
		rule(calicoG, []string{"ipreservations", "ippools"}, verbsRead),
		rule(calicoG, slices.Concat(ipam, []string{"ipamconfigs", "tiers"}), manageWatch),
		rule(calicoG, []string{"hostendpoints"}, manageWatch),
		rule(calicoG, []string{"clusterinformations", "kubecontrollersconfigurations"}, []string{"get", "list", "create", "update", "watch"}),
	)
	var objs []runtime.Object
	for _, role := range []runtime.Object{node, plugin, controllers} {
		name := role.(metav1.Object).GetName()
		objs = append(objs, serviceAccount(name), role, bindToServiceAccount(name))
	}
	// kube-controller-manager's garbage collector gets the tier of a
	// tiered policy of Calico's API server (group projectcalico.org), when
	// one is installed.
	const tierGetter = "calico-tier-getter"
	return append(objs,
		clusterRole(tierGetter, rule([]string{"projectcalico.org"}, []string{"tiers"}, []string{"get"})),
		bindToUser(tierGetter, "system:kube-controller-manager"))
}

// calicoNodeEnv is calico-node's environment: datastore, IP pools and
// encapsulation, Felix's VXLAN port and VNI, MTUs, then the user's envVars
// (which replace a rendered variable of the same name).
func (c *Config) calicoNodeEnv() []corev1.EnvVar {
	k := c.Calico
	ipip, vxlan := "Never", "Never"
	switch k.Mode {
	case "ipip":
		ipip = k.Overlay
	case "vxlan":
		vxlan = k.Overlay
	}
	e := []corev1.EnvVar{
		env("DATASTORE_TYPE", "kubernetes"),
		env("WAIT_FOR_DATASTORE", "true"),
		envField("NODENAME", "spec.nodeName"),
		envConfigMap("CALICO_NETWORKING_BACKEND", calicoConfigMap, "calico_backend"),
		env("CLUSTER_TYPE", "k8s,bgp"),
		env("CALICO_DISABLE_FILE_LOGGING", "true"),
		env("FELIX_DEFAULTENDPOINTTOHOSTACTION", "ACCEPT"),
		env("FELIX_HEALTHENABLED", "true"),
		env("FELIX_VXLANPORT", strconv.Itoa(k.VXLANPort)),
		env("FELIX_VXLANVNI", strconv.Itoa(k.VXLANVNI)),
		env("FELIX_WIREGUARDENABLED", strconv.FormatBool(k.Wireguard)),
		envConfigMap("FELIX_IPINIPMTU", calicoConfigMap, "veth_mtu"),
		envConfigMap("FELIX_VXLANMTU", calicoConfigMap, "veth_mtu"),
		envConfigMap("FELIX_WIREGUARDMTU", calicoConfigMap, "veth_mtu"),
	}
	pod, _ := netip.ParsePrefix(c.PodCIDR)
	switch {
	case pod.Addr().Is6(): // single-stack IPv6
		e = append(e, env("IP", "none"), env("IP6", "autodetect"),
			env("IP6_AUTODETECTION_METHOD", k.IPAutodetectionMethod),
			env("CALICO_IPV6POOL_CIDR", c.PodCIDR), env("CALICO_IPV6POOL_VXLAN", vxlan),
			env("CALICO_ROUTER_ID", "hash"), env("FELIX_IPV6SUPPORT", "true"))
	case c.DualStack.Enabled:
		e = append(e, env("IP", "autodetect"), env("IP_AUTODETECTION_METHOD", k.IPAutodetectionMethod),
			env("CALICO_IPV4POOL_CIDR", c.PodCIDR), env("CALICO_IPV4POOL_IPIP", ipip), env("CALICO_IPV4POOL_VXLAN", vxlan),
			env("IP6", "autodetect"), env("IP6_AUTODETECTION_METHOD", k.IPv6AutodetectionMethod),
			env("CALICO_IPV6POOL_CIDR", c.DualStack.IPv6PodCIDR), env("CALICO_IPV6POOL_VXLAN", vxlan),
			env("FELIX_IPV6SUPPORT", "true"))
	default:
		e = append(e, env("IP", "autodetect"), env("IP_AUTODETECTION_METHOD", k.IPAutodetectionMethod),
			env("CALICO_IPV4POOL_CIDR", c.PodCIDR), env("CALICO_IPV4POOL_IPIP", ipip), env("CALICO_IPV4POOL_VXLAN", vxlan),
			env("FELIX_IPV6SUPPORT", "false"))
	}
	names := make([]string, 0, len(k.EnvVars))
	for name := range k.EnvVars {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		i := slices.IndexFunc(e, func(v corev1.EnvVar) bool { return v.Name == name })
		if i >= 0 {
			e[i] = env(name, k.EnvVars[name])
		} else {
			e = append(e, env(name, k.EnvVars[name]))
		}
	}
	return e
}

func (c *Config) calicoNodeDaemonSet() runtime.Object {
	zero := int64(0)
	pod := corev1.PodSpec{
		ServiceAccountName:            "calico-node",
		PriorityClassName:             "system-node-critical",
		HostNetwork:                   true,
		NodeSelector:                  linuxNodes,
		Tolerations:                   everywhere,
		TerminationGracePeriodSeconds: &zero,
		InitContainers:                []corev1.Container{c.calicoInstallCNI()},
		Containers:                    []corev1.Container{c.calicoNodeContainer()},
		Volumes: []corev1.Volume{
			hostPath("lib-modules", "/lib/modules", corev1.HostPathDirectory),
			hostPath("var-run-calico", "/var/run/calico", corev1.HostPathDirectoryOrCreate),
			hostPath("var-lib-calico", "/var/lib/calico", corev1.HostPathDirectoryOrCreate),
			hostPath("xtables-lock", "/run/xtables.lock", corev1.HostPathFileOrCreate),
			hostPath("cni-bin-dir", "/opt/cni/bin", corev1.HostPathDirectoryOrCreate),
			hostPath("cni-net-dir", "/etc/cni/net.d", corev1.HostPathDirectoryOrCreate),
			hostPath("cni-log-dir", "/var/log/calico/cni", corev1.HostPathDirectoryOrCreate),
			hostPath("policysync", "/var/run/nodeagent", corev1.HostPathDirectoryOrCreate),
		},
	}
	return daemonSet("calico-node", map[string]string{"k8s-app": "calico-node"}, pod)
}

// calicoInstallCNI is Calico's installer: it writes the plugins and the
// conflist of calico-config (placeholders filled in) on the node.
func (c *Config) calicoInstallCNI() corev1.Container {
	return corev1.Container{
		Name:            "install-cni",
		Image:           c.Images.CalicoCNI,
		ImagePullPolicy: corev1.PullPolicy(c.Images.PullPolicy),
		Command:         []string{"/opt/cni/bin/install"},
		Env: []corev1.EnvVar{
			env("CNI_CONF_NAME", CalicoConflist),
			envConfigMap("CNI_NETWORK_CONFIG", calicoConfigMap, "cni_network_config"),
			envField("KUBERNETES_NODE_NAME", "spec.nodeName"),
			envConfigMap("CNI_MTU", calicoConfigMap, "veth_mtu"),
			env("SLEEP", "false"),
		},
		SecurityContext: privileged(),
		VolumeMounts:    []corev1.VolumeMount{mount("cni-bin-dir", "/host/opt/cni/bin", false), mount("cni-net-dir", "/host/etc/cni/net.d", false)},
	}
}

func (c *Config) calicoNodeContainer() corev1.Container {
	live, ready := []string{"/bin/calico-node", "-felix-live"}, []string{"/bin/calico-node", "-felix-ready"}
	if c.calicoBackend() == "bird" {
		live, ready = append(live, "-bird-live"), append(ready, "-bird-ready")
	}
	node := corev1.Container{
		Name:            "calico-node",
		Image:           c.Images.CalicoNode,
		ImagePullPolicy: corev1.PullPolicy(c.Images.PullPolicy),
		Env:             c.calicoNodeEnv(),
		SecurityContext: privileged(),
		Resources:       corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m")}},
		Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{
			Exec: &corev1.ExecAction{Command: []string{"/bin/calico-node", "-shutdown"}},
		}},
		LivenessProbe:  execProbe(10, live...),
		ReadinessProbe: execProbe(10, ready...),
		VolumeMounts: []corev1.VolumeMount{
			mount("cni-net-dir", "/host/etc/cni/net.d", false),
			mount("lib-modules", "/lib/modules", true),
			mount("xtables-lock", "/run/xtables.lock", false),
			mount("var-run-calico", "/var/run/calico", false),
			mount("var-lib-calico", "/var/lib/calico", false),
			mount("policysync", "/var/run/nodeagent", false),
			mount("cni-log-dir", "/var/log/calico/cni", true),
		},
	}
	node.LivenessProbe.InitialDelaySeconds = 10
	return node
}

func (c *Config) calicoKubeControllers() runtime.Object {
	const name = "calico-kube-controllers"
	labels := map[string]string{"k8s-app": name}
	one := int32(1)
	ctr := corev1.Container{
		Name:            name,
		Image:           c.Images.CalicoKubeControllers,
		ImagePullPolicy: corev1.PullPolicy(c.Images.PullPolicy),
		Env:             []corev1.EnvVar{env("ENABLED_CONTROLLERS", "node"), env("DATASTORE_TYPE", "kubernetes")},
		LivenessProbe:   execProbe(10, "/usr/bin/check-status", "-l"),
		ReadinessProbe:  execProbe(10, "/usr/bin/check-status", "-r"),
	}
	ctr.LivenessProbe.InitialDelaySeconds = 10
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: meta(name, SystemNamespace, labels),
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: name,
					PriorityClassName:  "system-cluster-critical",
					NodeSelector:       linuxNodes,
					Tolerations: []corev1.Toleration{
						{Key: "CriticalAddonsOnly", Operator: corev1.TolerationOpExists},
						{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule},
					},
					Containers: []corev1.Container{ctr},
				},
			},
		},
	}
}
