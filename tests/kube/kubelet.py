"""The kubelet and kube-proxy of one real node: their configuration files and command lines.

Settings that made the kubelet Ready on this machine kind (cgroup v1, root without CAP_SYS_RESOURCE, a
small shared disk): `cgroupDriver: cgroupfs`, `failCgroupV1: false`, `failSwapOn: false`, loosened
eviction and image-GC thresholds. Each node gets its own `cgroupRoot` (/kt-...-n<i>), so that pods of
different nodes never share a cgroup and stopping a node can kill exactly its containers.

The kubelet serves on the node's address (port 10250, inside the node namespace) with a certificate
from the cluster CA. It accepts only clients with a certificate from that CA (the API server's kubelet
client certificate) and then allows everything (`authorization.mode: AlwaysAllow`): the Webhook mode
would add a SubjectAccessReview round-trip per `kubectl logs/exec` and test nothing of kubetune's.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.kube.netns import REAL_POD_CIDR, RealNodeNetwork

KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
CLUSTER_DOMAIN = "cluster.local"
# Node heartbeat: a lease of 20 s renewed every 5 s, so a stopped node is noticed in ~20-30 s (see
# harness: --node-monitor-grace-period) rather than the default ~50 s.
NODE_LEASE_SECONDS = 20


def write_kubelet_config(
    node_dir: Path,
    network: RealNodeNetwork,
    *,
    cgroup_root: str,
    containerd_socket: Path,
    ca_cert: Path,
    serving_cert: Path,
    serving_key: Path,
    cluster_dns: str,
) -> Path:
    """Writes the node's KubeletConfiguration (JSON, which is YAML); returns its path."""
    resolv_conf = node_dir / "resolv.conf"
    # The host's resolver settings mean nothing inside the cluster network; pods get only cluster DNS.
    resolv_conf.write_text("")
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": network.ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{cgroup_root}",
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{containerd_socket}",
        "clusterDNS": [cluster_dns],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(resolv_conf),
        "podLogsDir": str(node_dir / "pod-logs"),
        "volumePluginDir": str(node_dir / "volume-plugins"),
        "staticPodPath": "",
        "serializeImagePulls": False,
        "maxPods": 110,
        "nodeStatusUpdateFrequency": "5s",
        "nodeStatusReportFrequency": "10s",
        "nodeLeaseDurationSeconds": NODE_LEASE_SECONDS,
        # A small disk shared with builds and other clusters: never evict or GC images in a test.
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # Pods are killed on node stop by the harness; a graceful node shutdown needs systemd-logind.
        "shutdownGracePeriod": "0s",
        "shutdownGracePeriodCriticalPods": "0s",
        "protectKernelDefaults": False,
    }
    path = node_dir / "kubelet.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def kubelet_argv(
    binary: Path, node_dir: Path, name: str, network: RealNodeNetwork, config: Path, kubeconfig: Path
) -> list[str]:
    """The kubelet's command line (what the config file cannot say)."""
    return [
        str(binary),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={name}",
        f"--node-ip={network.ip}",
        f"--root-dir={node_dir / 'kubelet'}",
        f"--cert-dir={node_dir / 'kubelet-pki'}",
        # kubernetes.io labels outside a short allow-list are refused by the kubelet; `type` mirrors the
        # `type=kwok` label of the simulated GPU nodes.
        "--node-labels=type=real,kubetune.test/real-node=true",
        "--v=1",
    ]


def write_kube_proxy_config(node_dir: Path, name: str, network: RealNodeNetwork, kubeconfig: Path) -> Path:
    """Writes the node's KubeProxyConfiguration (iptables mode, inside the node namespace); returns its path."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": name,
        "bindAddress": network.ip,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "mode": "iptables",
        "clusterCIDR": REAL_POD_CIDR,
        "detectLocalMode": "ClusterCIDR",
        # 0 = leave the conntrack sysctls alone: nf_conntrack_max is global (host-wide), not per namespace.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }
    path = node_dir / "kube-proxy.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def kube_proxy_argv(binary: Path, config: Path) -> list[str]:
    """kube-proxy's command line."""
    return [str(binary), f"--config={config}", "--v=1"]
