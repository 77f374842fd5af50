"""The pod network, Services and DNS on real nodes: what the trainer's gang and the operator rely on.

- `kubernetes.default.svc` resolves through CoreDNS (kube-dns Service) and the in-cluster API works with
  the projected ServiceAccount token and CA (kube-proxy forwards 10.96.0.1 to the API server);
- a headless Service's `<hostname>.<subdomain>.<ns>.svc.cluster.local` reaches a pod on the other node,
  exactly how a trainer worker finds worker-0's rendezvous address.
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from tests.kube.harness import LocalCluster
from tests.nodes.conftest import RunPod, terminated_state
from tests.nodes.pods import restricted_pod

pytestmark = pytest.mark.cluster

IN_CLUSTER_API_SCRIPT = """
import json, pathlib, socket, ssl, urllib.request
sa = pathlib.Path('/var/run/secrets/kubernetes.io/serviceaccount')
address = socket.gethostbyname('kubernetes.default.svc')
context = ssl.create_default_context(cafile=str(sa / 'ca.crt'))
request = urllib.request.Request(
    'https://kubernetes.default.svc/api',
    headers={'Authorization': 'Bearer ' + (sa / 'token').read_text()},
)
with urllib.request.urlopen(request, context=context, timeout=10) as response:
    body = json.load(response)
result = {'address': address, 'status': response.status, 'kind': body['kind'], 'namespace': (sa / 'namespace').read_text()}
pathlib.Path('/dev/termination-log').write_text(json.dumps(result))
"""


def test_in_cluster_api_through_dns_and_the_kubernetes_service(
    real_node_namespace: str, node_test_image: str, run_pod: RunPod
) -> None:
    pod = run_pod(restricted_pod("in-cluster", node_test_image, IN_CLUSTER_API_SCRIPT))
    terminated = terminated_state(pod)
    assert pod.status.phase == "Succeeded", terminated
    assert json.loads(terminated.message) == {
        "address": "10.96.0.1",
        "status": 200,
        "kind": "APIVersions",
        "namespace": real_node_namespace,
    }


SERVER_SCRIPT = """
import socket
server = socket.create_server(('', 29500))
connection, peer = server.accept()
connection.sendall(b'hello from worker-0')
connection.close()
"""

CLIENT_SCRIPT = """
import pathlib, socket, time
name = 'worker-0.gang.{namespace}.svc.cluster.local'
deadline = time.time() + 90
while True:
    try:
        with socket.create_connection((name, 29500), timeout=5) as connection:
            data = connection.recv(100).decode()
        break
    except OSError as error:
        if time.time() > deadline:
            raise
        time.sleep(1)
address = socket.gethostbyname(name)
pathlib.Path('/dev/termination-log').write_text(f'{{address}} {{data}}')
"""


def test_headless_service_pod_name_reaches_a_pod_on_the_other_node(
    real_node_cluster: LocalCluster, real_node_namespace: str, node_test_image: str, run_pod: RunPod
) -> None:
    core = client.CoreV1Api(real_node_cluster.api_client())
    core.create_namespaced_service(
        real_node_namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "gang"},
            "spec": {
                "clusterIP": "None",
                "selector": {"gang": "demo"},
                "publishNotReadyAddresses": True,
                "ports": [{"name": "rendezvous", "port": 29500}],
            },
        },
    )
    server = restricted_pod(
        "worker-0", node_test_image, SERVER_SCRIPT, node="real-1",
        labels={"gang": "demo"}, hostname="worker-0", subdomain="gang",
    )  # fmt: skip
    core.create_namespaced_pod(real_node_namespace, server)
    client_pod = restricted_pod(
        "worker-1", node_test_image, CLIENT_SCRIPT.format(namespace=real_node_namespace), node="real-2"
    )
    finished = run_pod(client_pod, timeout=150)
    terminated = terminated_state(finished)
    assert finished.status.phase == "Succeeded", terminated
    server_pod = real_node_cluster.wait_for_pod_phase(real_node_namespace, "worker-0", ["Succeeded"], 30)
    assert server_pod.spec.node_name == "real-1" and finished.spec.node_name == "real-2"
    assert terminated.message == f"{server_pod.status.pod_ip} hello from worker-0"
