"""Writing kubeconfig files for the local test cluster (client certificates or bearer tokens)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

CLUSTER_NAME = "kubetune-local"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_cert: Path,
    user: str,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> Path:
    """Writes a self-contained kubeconfig (all certificates inlined) with one context; returns `path`.

    Exactly one of (`client_cert` and `client_key`) or `token` authenticates the user; anything else
    raises ValueError.
    """
    if (token is None) == (client_cert is None or client_key is None):
        raise ValueError("write_kubeconfig needs either client_cert and client_key, or token (not both)")
    credentials: dict[str, Any]
    if token is not None:
        credentials = {"token": token}
    else:
        assert client_cert is not None and client_key is not None
        credentials = {"client-certificate-data": _b64(client_cert), "client-key-data": _b64(client_key)}
    context: dict[str, Any] = {"cluster": CLUSTER_NAME, "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": CLUSTER_NAME, "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": context}],
        "current-context": user,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # Credentials: readable by the owner only, like the files kubeadm writes.
    path.chmod(0o600)
    return path


def write_service_account_kubeconfig(
    api: client.ApiClient,
    path: Path,
    namespace: str,
    name: str,
    *,
    server: str,
    ca_cert: Path,
    expiration_seconds: int = 3600,
) -> Path:
    """Writes a kubeconfig that authenticates as ServiceAccount `namespace/name`; returns `path`.

    The token comes from the TokenRequest API (for the API server's default audience), exactly as a
    pod's projected token would, so the API server applies that ServiceAccount's RBAC permissions.
    Raises kubernetes.client.ApiException when the ServiceAccount does not exist.
    """
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(expiration_seconds=expiration_seconds)
    )
    response = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request)
    if response.status is None or not response.status.token:
        raise RuntimeError(f"TokenRequest for {namespace}/{name} returned no token")
    return write_kubeconfig(
        path,
        server=server,
        ca_cert=ca_cert,
        user=f"system:serviceaccount:{namespace}:{name}",
        token=response.status.token,
        namespace=namespace,
    )
