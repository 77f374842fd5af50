"""Cluster DNS for real nodes: CoreDNS as a control-plane process in the hub namespace, behind `kube-dns`.

CoreDNS listens on the hub address (port 53 of a namespace that is ours alone) and answers for
`cluster.local` from the API server (the `kubernetes` plugin: Services, headless Services' pod names such
as `worker-0.<job>.<ns>.svc.cluster.local`). Pods reach it as on any cluster: the kubelet writes
`nameserver 10.96.0.10` into their resolv.conf, and kube-proxy on each node forwards that ClusterIP to the
endpoint of the selector-less `kube-system/kube-dns` Service, an EndpointSlice made here by hand that
points at CoreDNS. CoreDNS authenticates as `system:coredns` with the read-only rights it documents.
"""

from __future__ import annotations

from pathlib import Path

from kubernetes import client

from tests.kube.kubelet import CLUSTER_DOMAIN

CLUSTER_DNS_IP = "10.96.0.10"
DNS_PORT = 53
HEALTH_PORT = 8080
COREDNS_USER = "system:coredns"
_MANAGED_BY = "kubetune-test-harness"


def write_corefile(directory: Path, listen_ip: str, kubeconfig: Path) -> Path:
    """Writes the Corefile; returns its path."""
    corefile = directory / "Corefile"
    corefile.write_text(
        f""".:{DNS_PORT} {{
    bind {listen_ip}
    errors
    health {listen_ip}:{HEALTH_PORT}
    ready {listen_ip}:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"""
    )
    return corefile


def coredns_argv(binary: Path, corefile: Path) -> list[str]:
    """CoreDNS's command line."""
    return [str(binary), "-conf", str(corefile)]


def grant_coredns_rights(api: client.ApiClient) -> None:
    """Creates the ClusterRole/Binding that lets `system:coredns` read what the kubernetes plugin watches."""
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_cluster_role(
        client.V1ClusterRole(
            metadata=client.V1ObjectMeta(name=COREDNS_USER),
            rules=[
                client.V1PolicyRule(
                    api_groups=[""],
                    resources=["endpoints", "services", "pods", "namespaces"],
                    verbs=["list", "watch"],
                ),
                client.V1PolicyRule(
                    api_groups=["discovery.k8s.io"], resources=["endpointslices"], verbs=["list", "watch"]
                ),
            ],
        )
    )
    rbac.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=COREDNS_USER),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=COREDNS_USER
            ),
            subjects=[
                client.RbacV1Subject(kind="User", name=COREDNS_USER, api_group="rbac.authorization.k8s.io")
            ],
        )
    )


def create_kube_dns_service(api: client.ApiClient, coredns_ip: str) -> None:
    """Creates `kube-system/kube-dns` at CLUSTER_DNS_IP and an EndpointSlice that points it at CoreDNS."""
    ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    client.CoreV1Api(api).create_namespaced_service(
        "kube-system",
        client.V1Service(
            metadata=client.V1ObjectMeta(name="kube-dns", labels={"k8s-app": "kube-dns"}),
            spec=client.V1ServiceSpec(
                cluster_ip=CLUSTER_DNS_IP,
                ports=[
                    client.V1ServicePort(name=n, protocol=p, port=DNS_PORT, target_port=DNS_PORT)
                    for n, p in ports
                ],
            ),
        ),
    )
    client.DiscoveryV1Api(api).create_namespaced_endpoint_slice(
        "kube-system",
        client.V1EndpointSlice(
            metadata=client.V1ObjectMeta(
                name="kube-dns-coredns",
                labels={
                    "kubernetes.io/service-name": "kube-dns",
                    # Not the endpointslice controller's: it leaves slices of other managers alone.
                    "endpointslice.kubernetes.io/managed-by": _MANAGED_BY,
                },
            ),
            address_type="IPv4",
            endpoints=[
                client.V1Endpoint(addresses=[coredns_ip], conditions=client.V1EndpointConditions(ready=True))
            ],
            ports=[client.DiscoveryV1EndpointPort(name=n, protocol=p, port=DNS_PORT) for n, p in ports],
        ),
    )
