package cni

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// StackKubeRouter is the manifest folder of kube-router.
const StackKubeRouter = "kuberouter"

// renderedKubeRouterFlags are the kube-router flags isthmus sets from the
// config; kuberouter.extraArgs may not override them.
var renderedKubeRouterFlags = []string{
	"run-router", "run-firewall", "run-service-proxy", "enable-cni", "enable-ipv4",
	"enable-ipv6", "hairpin-mode", "auto-mtu", "metrics-port", "bgp-graceful-restart",
}

// kubeRouterHealthPort is kube-router's default --health-port.
const kubeRouterHealthPort = 20244

// kubeRouterStack renders kube-router's manifests: its RBAC, the ConfigMap
// holding the conflist template (kube-router fills in each node's
// spec.podCIDR), and the DaemonSet that installs the CNI plugins and the
// conflist on every node and runs kube-router with hostNetwork.
func (c *Config) kubeRouterStack() ([]File, error) {
	tmpl, err := c.Conflist(NodeOptions{})
	if err != nil {
		return nil, err
	}
	const name = "kube-router"
	rbac := []runtime.Object{
		serviceAccount(name),
		clusterRole(name,
			rule([]string{""}, []string{"namespaces", "pods", "services", "nodes", "endpoints"}, []string{"get", "list", "watch"}),
			rule([]string{"networking.k8s.io"}, []string{"networkpolicies"}, []string{"get", "list", "watch"}),
			rule([]string{"discovery.k8s.io"}, []string{"endpointslices"}, []string{"get", "list", "watch"}),
			rule([]string{"coordination.k8s.io"}, []string{"leases"}, []string{"get", "create", "update"}),
			rule([]string{""}, []string{"services/status"}, []string{"update"}),
		),
		bindToServiceAccount(name),
	}
	cm := configMap("kube-router-cfg", map[string]string{"cni-conf.json": string(tmpl.Bytes)})
	return []File{
		{Name: "00-rbac.yaml", Objects: rbac},
		{Name: "01-configmap.yaml", Objects: []runtime.Object{cm}},
		{Name: "02-daemonset.yaml", Objects: []runtime.Object{c.kubeRouterDaemonSet(name, cm.Name)}},
	}, nil
}

func (c *Config) kubeRouterArgs() []string {
	k := c.KubeRouter
	v6 := false
	if p, err := netip.ParsePrefix(c.PodCIDR); err == nil && p.Addr().Is6() {
		v6 = true
	}
	// No --cluster-cidr: kube-router removed it in v1.1 and refuses it; each
	// node's pod range comes from its Node's spec.podCIDRs.
	args := []string{
		"--run-router=true",
		"--run-firewall=true",
		"--run-service-proxy=false",
		"--bgp-graceful-restart=true",
		"--enable-cni=true",
		"--enable-ipv4=" + strconv.FormatBool(!v6),
		"--enable-ipv6=" + strconv.FormatBool(v6),
		"--hairpin-mode=" + strconv.FormatBool(k.Hairpin),
		"--auto-mtu=" + strconv.FormatBool(*k.AutoMTU),
		"--metrics-port=" + strconv.Itoa(*k.MetricsPort),
	}
	extra := make([]string, 0, len(k.ExtraArgs))
	for name, value := range k.ExtraArgs {
		extra = append(extra, fmt.Sprintf("--%s=%s", name, value))
	}
	slices.Sort(extra)
	return append(args, extra...)
}

func (c *Config) kubeRouterDaemonSet(name, cm string) runtime.Object {
	labels := map[string]string{"k8s-app": name}
	cmMode := int32(0o644)
	pod := corev1.PodSpec{
		ServiceAccountName: name,
		PriorityClassName:  "system-node-critical",
		HostNetwork:        true,
		NodeSelector:       linuxNodes,
		Tolerations:        everywhere,
		InitContainers:     c.kubeRouterInitContainers(),
		Containers:         []corev1.Container{c.kubeRouterContainer(name)},
		Volumes: []corev1.Volume{
			hostPath("lib-modules", "/lib/modules", corev1.HostPathDirectory),
			hostPath("cni-conf-dir", "/etc/cni/net.d", corev1.HostPathDirectoryOrCreate),
			hostPath("cni-bin", "/opt/cni/bin", corev1.HostPathDirectoryOrCreate),
			hostPath("xtables-lock", "/run/xtables.lock", corev1.HostPathFileOrCreate),
			{Name: "kube-router-cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: cm}, DefaultMode: &cmMode,
			}}},
		},
	}
	return daemonSet(name, labels, pod)
}

// kubeRouterInitContainers install the CNI plugins and the conflist on the
// node, each file through a temporary name and a rename, so the runtime
// never reads half a file.
func (c *Config) kubeRouterInitContainers() []corev1.Container {
	pull := corev1.PullPolicy(c.Images.PullPolicy)
	installBins := corev1.Container{
		Name:            "install-cni-bins",
		Image:           c.Images.CNIPlugins,
		ImagePullPolicy: pull,
		Command: []string{"/bin/sh", "-c", "set -e; for p in bridge host-local loopback portmap; do " +
			"cp /opt/cni/bin/$p /host/opt/cni/bin/.$p.tmp; mv /host/opt/cni/bin/.$p.tmp /host/opt/cni/bin/$p; done"},
		VolumeMounts: []corev1.VolumeMount{mount("cni-bin", "/host/opt/cni/bin", false)},
	}
	installConf := corev1.Container{
		Name:            "install-cniconf",
		Image:           c.Images.KubeRouter,
		ImagePullPolicy: pull,
		Command: []string{"/bin/sh", "-c", "set -e; tmp=/etc/cni/net.d/.kuberouter.tmp; " +
			"cp /etc/kube-router/cni-conf.json \"$tmp\"; mv \"$tmp\" /etc/cni/net.d/" + KubeRouterConflist},
		VolumeMounts: []corev1.VolumeMount{mount("cni-conf-dir", "/etc/cni/net.d", false), mount("kube-router-cfg", "/etc/kube-router", true)},
	}
	return []corev1.Container{installBins, installConf}
}

func (c *Config) kubeRouterContainer(name string) corev1.Container {
	router := corev1.Container{
		Name:            name,
		Image:           c.Images.KubeRouter,
		ImagePullPolicy: corev1.PullPolicy(c.Images.PullPolicy),
		Args:            c.kubeRouterArgs(),
		Env: []corev1.EnvVar{
			envField("NODE_NAME", "spec.nodeName"),
			env("KUBE_ROUTER_CNI_CONF_FILE", "/etc/cni/net.d/"+KubeRouterConflist),
		},
		SecurityContext: privileged(),
		LivenessProbe: &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: "/healthz", Port: intstr.FromInt32(kubeRouterHealthPort),
			}},
			InitialDelaySeconds: 10,
			PeriodSeconds:       3,
		},
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("250m"),
			corev1.ResourceMemory: resource.MustParse("250Mi"),
		}},
		VolumeMounts: []corev1.VolumeMount{
			mount("lib-modules", "/lib/modules", true),
			mount("cni-conf-dir", "/etc/cni/net.d", false),
			mount("xtables-lock", "/run/xtables.lock", false),
		},
	}
	if p := *c.KubeRouter.MetricsPort; p != 0 {
		router.Ports = []corev1.ContainerPort{{Name: "metrics", ContainerPort: int32(p), Protocol: corev1.ProtocolTCP}}
	}
	return router
}
